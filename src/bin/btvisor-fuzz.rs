//! `btvisor-fuzz`: run random guest programs (or saved ones) under btvisor
//! and report any host-side failure. See `btvisor::fuzz`.
//!
//! Exit status 0 when every run ended as a guest can end, 1 otherwise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use btvisor::fuzz::{self, GuestEnd, program};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Run random guest programs under btvisor; report host-side failures")]
struct Args {
    /// Programs to generate and run.
    #[arg(long, default_value_t = 100)]
    count: u64,
    /// Seed of the first program (program k uses seed + k).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Programs run at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Time limit of one run, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    limit_ms: u64,
    /// Directory to save failing programs in (as fuzz-SEED.elf with a .txt;
    /// fuzz-SEED-apic.elf for programs run on `-M pc`).
    #[arg(long)]
    save: Option<PathBuf>,
    /// The btvisor binary (default: next to this one).
    #[arg(long)]
    btvisor: Option<PathBuf>,
    /// Write the program of --seed to this file and stop.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Run these saved images instead of generating programs.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
}

/// A progress line on stderr every this many programs.
const PROGRESS_EVERY: usize = 10_000;

/// One unit of work: a program to generate, or a saved image.
enum Job {
    Seed(u64),
    Image(PathBuf),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.write {
        let p = program::generate(args.seed);
        if let Err(e) = std::fs::write(path, &p.elf) {
            eprintln!("btvisor-fuzz: {}: {e}", path.display());
            return ExitCode::from(1);
        }
        println!("seed {} [{}] written to {}", args.seed, p.shape, path.display());
        return ExitCode::SUCCESS;
    }
    let btvisor = match args.btvisor.clone().or_else(|| {
        let me = std::env::current_exe().ok()?;
        Some(me.with_file_name("btvisor"))
    }) {
        Some(p) if p.exists() => p,
        p => {
            eprintln!("btvisor-fuzz: no btvisor binary at {p:?}; give --btvisor PATH");
            return ExitCode::from(1);
        }
    };
    let jobs: Vec<Job> = if args.replay.is_empty() {
        (0..args.count).map(|k| Job::Seed(args.seed.wrapping_add(k))).collect()
    } else {
        args.replay.iter().cloned().map(Job::Image).collect()
    };
    let dir = std::env::temp_dir().join(format!("btvisor-fuzz.{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("btvisor-fuzz: {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    if let Some(s) = &args.save
        && let Err(e) = std::fs::create_dir_all(s)
    {
        eprintln!("btvisor-fuzz: {}: {e}", s.display());
        return ExitCode::from(1);
    }
    let next = AtomicU64::new(0);
    let ends: Mutex<BTreeMap<GuestEnd, u64>> = Mutex::new(BTreeMap::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Runs stopped at the time limit (guest loops with interrupts off), to
    // look at: a wedged monitor would show up here too.
    let timed_out: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let limit = Duration::from_millis(args.limit_ms);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(job) = jobs.get(k) else { break };
                    if k > 0 && k.is_multiple_of(PROGRESS_EVERY) {
                        let failed = failures.lock().map(|f| f.len()).unwrap_or(0);
                        eprintln!("btvisor-fuzz: {k} programs started, {failed} host-side failures so far");
                    }
                    let (name, path, shape, apic) = match job {
                        Job::Seed(seed) => {
                            let p = program::generate(*seed);
                            let path = dir.join(format!("fuzz-{seed}.elf"));
                            if let Err(e) = std::fs::write(&path, &p.elf) {
                                failures.lock().unwrap().push(format!("seed {seed}: writing the image: {e}"));
                                continue;
                            }
                            (format!("seed {seed}"), path, p.shape.to_string(), p.shape.apic)
                        }
                        // Saved images name their machine: "-apic" in the file name.
                        Job::Image(path) => {
                            let apic = path.file_stem().is_some_and(|n| n.to_string_lossy().ends_with("-apic"));
                            (path.display().to_string(), path.clone(), String::new(), apic)
                        }
                    };
                    let verdict =
                        fuzz::run_image(&btvisor, &path, limit, apic).map_err(|e| format!("running btvisor: {e}"));
                    match verdict.and_then(|run| {
                        fuzz::classify(&run).map_err(|why| (why, run)).map_err(|(why, run)| {
                            let msg = format!("{name} [{shape}]: {why}\n--- stderr ---\n{}", run.stderr);
                            if let (Some(save), Job::Seed(seed)) = (&args.save, job) {
                                // The machine goes in the name, for --replay.
                                let stem = if apic { format!("fuzz-{seed}-apic") } else { format!("fuzz-{seed}") };
                                let _ = std::fs::copy(&path, save.join(format!("{stem}.elf")));
                                let _ = std::fs::write(save.join(format!("{stem}.txt")), &msg);
                            }
                            msg
                        })
                    }) {
                        Ok(end) => {
                            if end == GuestEnd::TimeLimit {
                                timed_out.lock().unwrap().push(format!("{name} [{shape}]"));
                            }
                            *ends.lock().unwrap().entry(end).or_insert(0) += 1
                        }
                        Err(msg) => {
                            eprintln!("FAILURE {msg}");
                            failures.lock().unwrap().push(msg);
                        }
                    }
                    if matches!(job, Job::Seed(_)) {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            });
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    let ends = ends.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();
    let total: u64 = ends.values().sum::<u64>() + failures.len() as u64;
    println!("{total} programs in {:.1} s; host-side failures: {}", start.elapsed().as_secs_f64(), failures.len());
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for (end, n) in &ends {
        let kind = match end {
            GuestEnd::DebugExit(s) if *s == (program::DONE_VALUE << 1) | 1 => "event limit (debug exit)".to_string(),
            GuestEnd::DebugExit(_) => "other debug exit".to_string(),
            e => format!("{e:?}"),
        };
        *by_kind.entry(kind).or_insert(0) += n;
    }
    for (kind, n) in by_kind {
        println!("  {kind:<28} {n}");
    }
    let timed_out = timed_out.into_inner().unwrap();
    if !timed_out.is_empty() {
        println!(
            "  at the time limit: {}{}",
            timed_out[..timed_out.len().min(8)].join(", "),
            if timed_out.len() > 8 { ", ..." } else { "" }
        );
    }
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
