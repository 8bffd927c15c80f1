//! The random-program fuzzer (`btvisor-fuzz`, see `btvisor::fuzz`): a
//! bounded campaign, and every program a campaign ever failed on (saved in
//! guest-images/fuzz/ as regression images). No run may end in a host-side
//! failure. `scripts/fuzz-campaign.sh` runs long campaigns.

use std::path::PathBuf;
use std::process::Command;

fn fuzz(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_btvisor-fuzz"))
        .args(["--btvisor", env!("CARGO_BIN_EXE_btvisor")])
        .args(args)
        .output()
        .expect("spawn btvisor-fuzz");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn random_programs_never_fail_the_host() {
    // Seeds differ from run to run of the campaign script, not here: the
    // test must be reproducible.
    let (ok, text) = fuzz(&["--count", "300", "--seed", "424242", "--jobs", "2"]);
    println!("{text}");
    assert!(ok, "host-side failures:\n{text}");
    assert!(text.contains("300 programs"), "{text}");
}

#[test]
fn saved_failures_stay_fixed() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guest-images/fuzz");
    let mut images: Vec<String> = std::fs::read_dir(&dir)
        .expect("guest-images/fuzz")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "elf"))
        .map(|p| p.display().to_string())
        .collect();
    images.sort();
    assert!(!images.is_empty(), "no regression images in {}", dir.display());
    let mut args = vec!["--jobs", "2", "--replay"];
    args.extend(images.iter().map(String::as_str));
    let (ok, text) = fuzz(&args);
    println!("{text}");
    assert!(ok, "host-side failures:\n{text}");
}
