//! Differential tests: random (and targeted) sequences of 32-bit user-level
//! ALU/shift/bit instructions run natively by the host CPU in 32-bit
//! compatibility mode (the oracle) and through `btvisor::snippet`; registers,
//! arithmetic flags and the 256-byte data area must match.
//!
//! Flags that are architecturally undefined after a sequence (tracked by the
//! generator) are not compared; set `BTV_DIFF_STRICT=1` to compare them too.
//! `BTV_DIFF_SEEDS=N` overrides the number of random seeds, `BTV_DIFF_SECS=S`
//! the per-test time budget (default 8 s; seeds not reached are reported).

mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use btvisor::snippet::{SnippetState, SnippetWorld, run_snippet_in};
use common::r#gen::{self as seqgen, AF, ARITH, CF, Family, Gen, OF, PF, Rng, SF, Seq, Size, ZF};
use common::native32::{Native32, State32};

const REG_NAMES: [&str; 8] = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"];
const FLAG_NAMES: [(u32, &str); 6] = [(CF, "CF"), (PF, "PF"), (AF, "AF"), (ZF, "ZF"), (SF, "SF"), (OF, "OF")];
/// How many failure reports to print before giving up.
const MAX_REPORTS: usize = 3;

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn strict() -> bool {
    std::env::var("BTV_DIFF_STRICT").is_ok_and(|v| v != "0")
}

fn budget() -> Duration {
    Duration::from_secs(env_num("BTV_DIFF_SECS").unwrap_or(8))
}

/// Disassembly of 32-bit code, one instruction per line with offsets and bytes.
fn disasm(code: &[u8]) -> String {
    use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter};
    let mut dec = Decoder::with_ip(32, code, 0, DecoderOptions::NONE);
    let mut fmt = IntelFormatter::new();
    let mut ins = Instruction::default();
    let mut out = String::new();
    while dec.can_decode() {
        dec.decode_out(&mut ins);
        let start = ins.ip() as usize;
        let bytes: Vec<String> = code[start..start + ins.len()].iter().map(|b| format!("{b:02x}")).collect();
        let mut text = String::new();
        fmt.format(&ins, &mut text);
        let _ = writeln!(out, "    {start:4x}: {:<30} {text}", bytes.join(" "));
    }
    out
}

fn flag_list(f: u32) -> String {
    let v: Vec<&str> = FLAG_NAMES.iter().filter(|(m, _)| f & m != 0).map(|(_, n)| *n).collect();
    if v.is_empty() { "-".into() } else { v.join(" ") }
}

/// Inputs of one run (ESP and ESI are filled in per world).
#[derive(Clone)]
struct Input {
    regs: [u32; 8],
    eflags: u32,
    data: [u8; 256],
}

impl Input {
    fn random(rng: &mut Rng) -> Input {
        let mut regs = [0u32; 8];
        for r in seqgen::GPRS {
            regs[r as usize] = rng.edge_u32();
        }
        let eflags = rng.next_u32() & ARITH;
        let mut data = [0u8; 256];
        for b in data.iter_mut() {
            *b = if rng.one_in(4) { rng.pick(&[0, 1, 0x7F, 0x80, 0xFF]) } else { rng.next_u32() as u8 };
        }
        Input { regs, eflags, data }
    }
}

/// Outcome of one differential run, as far as the comparison is concerned.
struct Outcome {
    regs: [u32; 8],
    eflags: u32,
    data: [u8; 256],
}

struct Harness {
    native: Native32,
    world: SnippetWorld,
    runs: usize,
    failures: usize,
    reports: String,
}

impl Harness {
    fn new() -> Self {
        Self::in_world(SnippetWorld::Flat)
    }

    /// A harness whose btvisor runs are in `world`.
    fn in_world(world: SnippetWorld) -> Self {
        Harness { native: Native32::new(), world, runs: 0, failures: 0, reports: String::new() }
    }

    /// Runs both worlds; returns (native, btvisor) with ESI/ESP made relative
    /// to the data area / stack top, or an error string from btvisor.
    fn run_both(&mut self, code: &[u8], inp: &Input) -> (Outcome, Result<Outcome, String>) {
        self.runs += 1;
        let mut nregs = inp.regs;
        nregs[4] = self.native.stack_top();
        nregs[6] = self.native.data_addr();
        let mut ndata = inp.data;
        let nout = self.native.run(code, &State32 { regs: nregs, eflags: inp.eflags }, &mut ndata);
        let mut nr = nout.regs;
        nr[4] = nr[4].wrapping_sub(self.native.stack_top());
        nr[6] = nr[6].wrapping_sub(self.native.data_addr());
        let native = Outcome { regs: nr, eflags: nout.eflags, data: ndata };

        let (stack_top, data_addr) = (self.world.stack_top(), self.world.data_addr());
        let mut bregs = inp.regs;
        bregs[4] = stack_top;
        bregs[6] = data_addr;
        let bin = SnippetState { regs: bregs, eflags: inp.eflags, data: inp.data };
        // Every other run translates memory accesses in the soft-TLB form.
        let bt = match run_snippet_in(self.world, code, &bin, self.runs.is_multiple_of(2)) {
            Ok(o) => {
                let mut br = o.regs;
                br[4] = br[4].wrapping_sub(stack_top);
                br[6] = br[6].wrapping_sub(data_addr);
                Ok(Outcome { regs: br, eflags: o.eflags, data: o.data })
            }
            Err(e) => Err(format!("run_snippet returned an error: {e:?}")),
        };
        (native, bt)
    }

    /// Differences between the two outcomes (empty if they agree).
    fn diff(native: &Outcome, bt: &Result<Outcome, String>, undef: u32) -> String {
        let bt = match bt {
            Ok(b) => b,
            Err(e) => return format!("  {e}\n"),
        };
        let mut d = String::new();
        for (i, name) in REG_NAMES.iter().enumerate() {
            if native.regs[i] != bt.regs[i] {
                let rel = match i {
                    4 => " (relative to stack top)",
                    6 => " (relative to data area)",
                    _ => "",
                };
                let _ = writeln!(
                    d,
                    "  {}{rel}: native {:#010x}  btvisor {:#010x}  (xor {:#010x})",
                    name,
                    native.regs[i],
                    bt.regs[i],
                    native.regs[i] ^ bt.regs[i]
                );
            }
        }
        let mask = if strict() { ARITH } else { ARITH & !undef };
        let fx = (native.eflags ^ bt.eflags) & mask;
        if fx != 0 {
            let _ = writeln!(
                d,
                "  flags differ in {}: native [{}]  btvisor [{}]  (compared: {}; undefined, not compared: {})",
                flag_list(fx),
                flag_list(native.eflags),
                flag_list(bt.eflags),
                flag_list(mask),
                flag_list(ARITH & !mask)
            );
        }
        for i in 0..256 {
            if native.data[i] != bt.data[i] {
                let _ = writeln!(d, "  data[{i:#04x}]: native {:#04x}  btvisor {:#04x}", native.data[i], bt.data[i]);
            }
        }
        d
    }

    /// Runs one case and records a report on mismatch.  Returns false on mismatch.
    fn check(&mut self, label: &str, seq: &Seq, inp: &Input) -> bool {
        let (native, bt) = self.run_both(&seq.code, inp);
        // Sanity of the generator/oracle: ESI and ESP must be untouched natively.
        assert!(
            native.regs[4] == 0 && native.regs[6] == 0,
            "{label}: generated code modified ESP/ESI natively (generator bug)\n{}",
            disasm(&seq.code)
        );
        let d = Self::diff(&native, &bt, seq.undef_flags);
        if d.is_empty() {
            return true;
        }
        self.failures += 1;
        if self.failures > MAX_REPORTS {
            return false;
        }
        let mut r = String::new();
        let _ = writeln!(r, "==== MISMATCH: {label} ({:?} world) ====", self.world);
        let _ = writeln!(r, "code ({} bytes):\n{}", seq.code.len(), disasm(&seq.code));
        let _ = write!(r, "input:");
        for (i, name) in REG_NAMES.iter().enumerate() {
            let v = match i {
                4 => "<stack top>".to_string(),
                6 => "<data area>".to_string(),
                _ => format!("{:#010x}", inp.regs[i]),
            };
            let _ = write!(r, " {name}={v}");
        }
        let _ = writeln!(r, "  flags=[{}]", flag_list(inp.eflags));
        let _ = write!(r, "native output:");
        for i in [0, 1, 2, 3, 5, 7] {
            let _ = write!(r, " {}={:#010x}", REG_NAMES[i], native.regs[i]);
        }
        let _ = writeln!(r, "  flags=[{}]", flag_list(native.eflags & ARITH));
        let _ = writeln!(r, "differences:\n{d}");
        // Find the shortest failing prefix to name the culprit instruction.
        if seq.marks.len() > 1 {
            let mut prev = 0usize;
            for &(len, undef) in &seq.marks {
                let (n, b) = self.run_both(&seq.code[..len], inp);
                if !Self::diff(&n, &b, undef).is_empty() {
                    let _ = writeln!(
                        r,
                        "first diverging prefix ends with (offset {prev:#x}..{len:#x}):\n{}",
                        disasm(&seq.code[prev..len])
                    );
                    break;
                }
                prev = len;
            }
        }
        eprintln!("{r}");
        self.reports.push_str(&r);
        false
    }

    fn finish(self, name: &str) {
        eprintln!("{name}: {} runs, {} mismatches", self.runs, self.failures);
        if self.failures > 0 {
            panic!(
                "{name}: {} of {} runs mismatched (first {} reported):\n{}",
                self.failures,
                self.runs,
                self.failures.min(MAX_REPORTS),
                self.reports
            );
        }
    }
}

/// Runs random sequences from `make(seed)` for `seeds` seeds (or until the
/// time budget is spent), with random inputs.
/// Stops early (reporting how far it got) once `deadline` has passed.
fn run_seeds(name: &str, seeds: u64, deadline: Instant, make: impl Fn(u64) -> Seq) {
    run_seeds_in(SnippetWorld::Flat, name, seeds, deadline, make);
}

/// `run_seeds` with btvisor running the code in `world`.
fn run_seeds_in(world: SnippetWorld, name: &str, seeds: u64, deadline: Instant, make: impl Fn(u64) -> Seq) {
    let seeds = env_num("BTV_DIFF_SEEDS").unwrap_or(seeds);
    let mut h = Harness::in_world(world);
    for seed in 0..seeds {
        if Instant::now() > deadline {
            eprintln!("{name}: time budget spent after {seed} of {seeds} seeds");
            break;
        }
        let seq = make(seed);
        let mut rng = Rng::new(seed ^ 0x1A9E_7000);
        let inp = Input::random(&mut rng);
        h.check(&format!("{name} seed {seed}"), &seq, &inp);
        if h.failures > MAX_REPORTS {
            break;
        }
    }
    h.finish(name);
}

#[test]
fn differential_random_sequences() {
    run_seeds("random", 3000, Instant::now() + budget(), seqgen::random_seq);
}

/// Random short sequences of one family, plus the family's targeted cases.
fn family(fam: Family, seeds: u64, deadline: Instant) {
    let name = format!("{fam:?}");
    run_seeds(&name, seeds, deadline, |seed| seqgen::family_seq(seed, &[fam], 4));
}

// ------------------------------------------------------------ targeted cases

/// Builds a one-instruction case from raw bytes with the given flag effects.
fn case(bytes: &[u8], def: u32, undef: u32) -> Seq {
    let mut g = Gen::new(0);
    g.raw(bytes);
    g.effect(def, undef);
    g.finish(1)
}

fn inp(regs: [u32; 8], eflags: u32) -> Input {
    let mut data = [0u8; 256];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0x5A;
    }
    Input { regs, eflags, data }
}

const EDGE: [u32; 10] = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF];

fn opsize(size: Size) -> Vec<u8> {
    if size == Size::W { vec![0x66] } else { vec![] }
}

#[test]
fn family_alu() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    // op eax/ax/al, ebx/bx/bl and op dword [esi+8] forms for every ALU op,
    // edge values and both carry-ins.
    for op in 0u8..8 {
        for size in [Size::B, Size::W, Size::D] {
            let w = (size != Size::B) as u8;
            for &a in &EDGE {
                for &b in &[0u32, 1, 0x7F, 0x80, 0xFFFF_FFFF, 0x8000_0000] {
                    for cf in [0, CF] {
                        let logic = matches!(op, 1 | 4 | 6);
                        let u = if logic { AF } else { 0 };
                        let mut code = opsize(size);
                        code.extend_from_slice(&[(op << 3) | w, 0xD8]); // op eax, ebx (r/m=eax, reg=ebx)
                        let seq = case(&code, ARITH, u);
                        h.check(
                            &format!("alu op{op} {size:?} a={a:#x} b={b:#x} cf={cf}"),
                            &seq,
                            &inp([a, 0, 0, b, 0, 0, 0, 0], cf),
                        );
                        // AH,BH form for bytes
                        if size == Size::B {
                            let seq = case(&[(op << 3) | 2, 0xE7], ARITH, u); // op ah, bh
                            h.check(
                                &format!("alu op{op} ah,bh a={a:#x} b={b:#x} cf={cf}"),
                                &seq,
                                &inp([a << 8, 0, 0, b << 8, 0, 0, 0, 0], cf),
                            );
                        }
                    }
                }
            }
        }
    }
    h.finish("family_alu targeted");
    family(Family::Alu, 600, deadline);
}

#[test]
fn family_incdec() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for &a in &EDGE {
        for cf in [0, CF] {
            for code in
                [&[0x40u8][..], &[0x48], &[0x66, 0x40], &[0x66, 0x48], &[0xFE, 0xC0], &[0xFE, 0xC8], &[0xFE, 0xC4]]
            {
                let seq = case(code, ARITH & !CF, 0);
                h.check(&format!("incdec {code:02x?} a={a:#x} cf={cf}"), &seq, &inp([a, 0, 0, 0, 0, 0, 0, 0], cf | ZF));
            }
        }
    }
    h.finish("family_incdec targeted");
    family(Family::IncDec, 300, deadline);
}

#[test]
fn family_negnot() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for &a in &EDGE {
        for code in [&[0xF7u8, 0xD8][..], &[0x66, 0xF7, 0xD8], &[0xF6, 0xD8], &[0xF6, 0xDC], &[0xF7, 0xD0]] {
            let seq = case(code, ARITH, 0);
            h.check(&format!("negnot {code:02x?} a={a:#x}"), &seq, &inp([a, 0, 0, 0, 0, 0, 0, 0], ARITH));
        }
    }
    h.finish("family_negnot targeted");
    family(Family::NegNot, 300, deadline);
}

#[test]
fn family_shift() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    let counts = [0u8, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33];
    for op in [0u8, 1, 2, 3, 4, 5, 7] {
        for size in [Size::B, Size::W, Size::D] {
            let w = (size != Size::B) as u8;
            for &c in &counts {
                for &v in &[0x8000_0001u32, 0x7FFF_FFFF, 0x5555_5555, 0x80] {
                    for fl in [0, CF | OF | ZF, CF | SF | PF | AF] {
                        // op ebx, imm8
                        let mut g = Gen::new(0);
                        g.raw(&opsize(size));
                        g.raw(&[0xC0 | w, 0xC3 | (op << 3), c]);
                        g.shift_effect(op, size, Some(c));
                        let seq = g.finish(1);
                        let label = format!("shift /{op} {size:?} imm {c} v={v:#x} flags=[{}]", flag_list(fl));
                        h.check(&label, &seq, &inp([0, 0, 0, v, 0, 0, 0, 0], fl));
                        // op ebx, cl
                        let mut g = Gen::new(0);
                        g.raw(&opsize(size));
                        g.raw(&[0xD2 | w, 0xC3 | (op << 3)]);
                        g.shift_effect(op, size, Some(c));
                        let seq = g.finish(1);
                        let label = format!("shift /{op} {size:?} cl={c} v={v:#x} flags=[{}]", flag_list(fl));
                        h.check(&label, &seq, &inp([0, 0xFFFF_FF00 | c as u32, 0, v, 0, 0, 0, 0], fl));
                    }
                }
            }
            // by 1 (D0/D1)
            for &v in &EDGE {
                let mut g = Gen::new(0);
                g.raw(&opsize(size));
                g.raw(&[0xD0 | w, 0xC3 | (op << 3)]);
                g.shift_effect(op, size, Some(1));
                let seq = g.finish(1);
                h.check(&format!("shift /{op} {size:?} by 1 v={v:#x}"), &seq, &inp([0, 0, 0, v, 0, 0, 0, 0], CF));
            }
        }
    }
    h.finish("family_shift targeted");
    family(Family::Shift, 600, deadline);
}

#[test]
fn family_shift_double() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for right in [0u8, 1] {
        for size in [Size::W, Size::D] {
            let counts: &[u8] =
                if size == Size::W { &[0, 1, 2, 8, 15, 16, 32, 33] } else { &[0, 1, 2, 16, 31, 32, 33, 63] };
            for &c in counts {
                for &(a, b) in
                    &[(0x8000_0001u32, 0x1234_5678u32), (0xFFFF_FFFF, 0), (0, 0xFFFF_FFFF), (0x7FFF_8000, 0x8000_7FFF)]
                {
                    // shld/shrd eax, ebx, imm8 ; and with cl
                    for by_cl in [false, true] {
                        let mut g = Gen::new(0);
                        g.raw(&opsize(size));
                        if by_cl {
                            g.raw(&[0x0F, 0xA5 | (right << 3), 0xD8]);
                        } else {
                            g.raw(&[0x0F, 0xA4 | (right << 3), 0xD8, c]);
                        }
                        g.shift_double_effect(Some(c));
                        let seq = g.finish(1);
                        let label = format!(
                            "sh{}d {size:?} count {c} cl={by_cl} a={a:#x} b={b:#x}",
                            if right == 1 { "r" } else { "l" }
                        );
                        h.check(&label, &seq, &inp([a, c as u32, 0, b, 0, 0, 0, 0], CF | OF));
                    }
                }
            }
        }
    }
    h.finish("family_shift_double targeted");
    family(Family::ShiftDouble, 400, deadline);
}

#[test]
fn family_mul() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for &a in &EDGE {
        for &b in &EDGE {
            for code in [
                &[0xF7u8, 0xE3][..], // mul ebx
                &[0xF7, 0xEB],       // imul ebx
                &[0x66, 0xF7, 0xE3], // mul bx
                &[0x66, 0xF7, 0xEB], // imul bx
                &[0xF6, 0xE3],       // mul bl
                &[0xF6, 0xEF],       // imul bh
                &[0x0F, 0xAF, 0xC3], // imul eax, ebx
                &[0x66, 0x0F, 0xAF, 0xC3],
                &[0x6B, 0xC3, 0x80], // imul eax, ebx, -128
                &[0x69, 0xC3, 0xFF, 0xFF, 0xFF, 0x7F],
                &[0x66, 0x69, 0xC3, 0x00, 0x80],
            ] {
                let seq = case(code, CF | OF, SF | ZF | AF | PF);
                h.check(
                    &format!("mul {code:02x?} a={a:#x} b={b:#x}"),
                    &seq,
                    &inp([a, 0, 0x1234_5678, b, 0, 0, 0, 0], 0),
                );
            }
        }
    }
    h.finish("family_mul targeted");
    family(Family::Mul, 400, deadline);
}

#[test]
fn family_div() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    // div ebx / idiv ebx with fixed non-faulting dividends.
    for &(edx, eax, ebx, signed) in &[
        (0u32, 100u32, 7u32, false),
        (0, 0xFFFF_FFFF, 1, false),
        (0xFFFF_FFFE, 0xFFFF_FFFF, 0xFFFF_FFFF, false),
        (0, 100, 7, true),
        (0xFFFF_FFFF, 0xFFFF_FFF9, 2, true),           // -7 / 2
        (0xFFFF_FFFF, 0x8000_0000, 0xFFFF, true),      // -2^31 / 65535
        (0, 7, 0xFFFF_FFFE, true),                     // 7 / -2
        (0xFFFF_FFFF, 0xFFFF_FFF9, 0xFFFF_FFFE, true), // -7 / -2
        (0, 0x7FFF_FFFF, 0xFFFF_FFFF, true),           // 2^31-1 / -1
    ] {
        let code: &[u8] = if signed { &[0xF7, 0xFB] } else { &[0xF7, 0xF3] };
        let seq = case(code, 0, ARITH);
        h.check(
            &format!("div {code:02x?} edx:eax={edx:#x}:{eax:#x} ebx={ebx:#x}"),
            &seq,
            &inp([eax, 0, edx, ebx, 0, 0, 0, 0], 0),
        );
    }
    h.finish("family_div targeted");
    family(Family::Div, 400, deadline);
}

#[test]
fn family_bit_test() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for op in 0u8..4 {
        for &bit in &[0u32, 1, 15, 16, 31, 32, 33, 0xFFFF_FFFF] {
            // bt* eax, ebx ; bt* ax, bx ; bt* eax, imm8 ; bt* dword [esi+0x40], ebx (bounded)
            let cases: Vec<(Vec<u8>, u32)> = vec![
                (vec![0x0F, 0xA3 | (op << 3), 0xD8], bit),
                (vec![0x66, 0x0F, 0xA3 | (op << 3), 0xD8], bit),
                (vec![0x0F, 0xBA, 0xE0 | (op << 3), bit as u8], 0),
                (vec![0x0F, 0xA3 | (op << 3), 0x5E, 0x40], bit & 0x7F),
                (vec![0x66, 0x0F, 0xA3 | (op << 3), 0x5E, 0x40], bit & 0x7F),
            ];
            for (code, b) in cases {
                let seq = case(&code, CF, OF | SF | ZF | AF | PF);
                h.check(&format!("bt /{op} {code:02x?} ebx={b:#x}"), &seq, &inp([0xA5A5_5A5A, 0, 0, b, 0, 0, 0, 0], 0));
            }
        }
    }
    h.finish("family_bit_test targeted");
    family(Family::BitTest, 400, deadline);
}

#[test]
fn family_bit_scan() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for &v in &[0u32, 1, 0x8000_0000, 0x0001_0000, 0x0000_8000, 0xFFFF_FFFF, 0x0F00] {
        for code in
            [&[0x0Fu8, 0xBC, 0xC3][..], &[0x0F, 0xBD, 0xC3], &[0x66, 0x0F, 0xBC, 0xC3], &[0x66, 0x0F, 0xBD, 0xC3]]
        {
            let seq = case(code, ZF, CF | OF | SF | AF | PF);
            h.check(&format!("bsf/bsr {code:02x?} src={v:#x}"), &seq, &inp([0xDEAD_BEEF, 0, 0, v, 0, 0, 0, 0], 0));
        }
    }
    h.finish("family_bit_scan targeted");
    family(Family::BitScan, 300, deadline);
}

#[test]
fn family_setcc_cmovcc() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    // Every condition against all 64 combinations of CF PF ZF SF OF (+AF).
    for cc in 0u8..16 {
        for bits in 0u32..64 {
            let fl = [CF, PF, ZF, SF, OF, AF]
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .fold(0, |a, (_, f)| a | f);
            let seq = case(&[0x0F, 0x90 | cc, 0xC4], 0, 0); // setcc ah
            h.check(
                &format!("setcc {cc:#x} flags=[{}]", flag_list(fl)),
                &seq,
                &inp([0x1234_5678, 0, 0, 0, 0, 0, 0, 0], fl),
            );
            let seq = case(&[0x0F, 0x40 | cc, 0xC3], 0, 0); // cmovcc eax, ebx
            h.check(
                &format!("cmovcc {cc:#x} flags=[{}]", flag_list(fl)),
                &seq,
                &inp([0x1111_1111, 0, 0, 0x2222_2222, 0, 0, 0, 0], fl),
            );
            let seq = case(&[0x66, 0x0F, 0x40 | cc, 0x46, 0x10], 0, 0); // cmovcc ax, [esi+0x10]
            h.check(
                &format!("cmovcc16 mem {cc:#x} flags=[{}]", flag_list(fl)),
                &seq,
                &inp([0x1111_1111, 0, 0, 0, 0, 0, 0, 0], fl),
            );
        }
    }
    h.finish("family_setcc_cmovcc targeted");
    family(Family::SetCc, 300, deadline);
    family(Family::CMovCc, 300, deadline);
}

#[test]
fn family_data_movement() {
    let deadline = Instant::now() + budget();
    // BSWAP, XCHG, XADD, CMPXCHG, MOVZX/MOVSX, LEA, MOV: random sequences only.
    family(Family::Bswap, 100, deadline);
    family(Family::Xchg, 300, deadline);
    family(Family::Xadd, 300, deadline);
    family(Family::Cmpxchg, 300, deadline);
    family(Family::MovExt, 300, deadline);
    family(Family::Lea, 400, deadline);
    family(Family::Mov, 200, deadline);
}

#[test]
fn family_convert() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for &a in &EDGE {
        for code in [&[0x66u8, 0x98][..], &[0x98], &[0x66, 0x99], &[0x99]] {
            let seq = case(code, 0, 0);
            h.check(&format!("convert {code:02x?} eax={a:#x}"), &seq, &inp([a, 0, 0x5555_5555, 0, 0, 0, 0, 0], 0));
        }
    }
    h.finish("family_convert targeted");
    family(Family::Convert, 100, deadline);
}

#[test]
fn family_lahf_sahf_carry() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for ah in 0u32..256 {
        let seq = case(&[0x9E], SF | ZF | AF | PF | CF, 0); // sahf
        h.check(&format!("sahf ah={ah:#x}"), &seq, &inp([ah << 8, 0, 0, 0, 0, 0, 0, 0], OF));
        let seq = case(&[0x9E, 0x9F], SF | ZF | AF | PF | CF, 0); // sahf; lahf
        h.check(&format!("sahf;lahf ah={ah:#x}"), &seq, &inp([ah << 8 | 0xFFFF_00FF, 0, 0, 0, 0, 0, 0, 0], 0));
    }
    for fl in [0, ARITH, CF, ARITH & !CF] {
        for code in [0xF8u8, 0xF9, 0xF5, 0x9F] {
            let seq = case(&[code], CF, 0);
            h.check(&format!("{code:#x} flags=[{}]", flag_list(fl)), &seq, &inp([0; 8], fl));
        }
    }
    h.finish("family_lahf_sahf_carry targeted");
    family(Family::LahfSahf, 200, deadline);
    family(Family::CarryFlag, 100, deadline);
}

#[test]
fn family_bcd() {
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    for al in 0u32..256 {
        for fl in [0, CF, AF, CF | AF] {
            let ax = 0x0300 | al;
            let seq = case(&[0x27], SF | ZF | PF | CF | AF, OF); // daa
            h.check(&format!("daa al={al:#x} flags=[{}]", flag_list(fl)), &seq, &inp([ax, 0, 0, 0, 0, 0, 0, 0], fl));
            let seq = case(&[0x2F], SF | ZF | PF | CF | AF, OF); // das
            h.check(&format!("das al={al:#x} flags=[{}]", flag_list(fl)), &seq, &inp([ax, 0, 0, 0, 0, 0, 0, 0], fl));
            if fl & CF == 0 {
                let seq = case(&[0x37], AF | CF, OF | SF | ZF | PF); // aaa
                h.check(
                    &format!("aaa ax={ax:#x} flags=[{}]", flag_list(fl)),
                    &seq,
                    &inp([ax, 0, 0, 0, 0, 0, 0, 0], fl),
                );
                let seq = case(&[0x3F], AF | CF, OF | SF | ZF | PF); // aas
                h.check(
                    &format!("aas ax={ax:#x} flags=[{}]", flag_list(fl)),
                    &seq,
                    &inp([ax, 0, 0, 0, 0, 0, 0, 0], fl),
                );
            }
        }
        for imm in [10u8, 16, 1, 0xFF] {
            let seq = case(&[0xD4, imm], SF | ZF | PF, OF | AF | CF); // aam
            h.check(&format!("aam {imm} al={al:#x}"), &seq, &inp([0xFFFF_0000 | al, 0, 0, 0, 0, 0, 0, 0], 0));
            let seq = case(&[0xD5, imm], SF | ZF | PF, OF | AF | CF); // aad
            h.check(
                &format!("aad {imm} ax={:#x}", al << 8 | al),
                &seq,
                &inp([0xFFFF_0000 | al << 8 | (al ^ 0x5A), 0, 0, 0, 0, 0, 0, 0], 0),
            );
        }
    }
    h.finish("family_bcd targeted");
    family(Family::Bcd, 200, deadline);
}

// ----------------------------------------------------- self-checks (oracle)

/// The generator's output decodes cleanly, never writes ESP/ESI, and only
/// reads ESI as a memory base/index (checked with iced's instruction info).
#[test]
fn generator_output_is_well_formed() {
    use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, Mnemonic, OpAccess, Register};
    let mut info = InstructionInfoFactory::new();
    let mut seen = std::collections::HashSet::new();
    for seed in 0..3000u64 {
        let seq = if seed % 2 == 0 {
            seqgen::random_seq(seed)
        } else {
            seqgen::family_seq(seed, &[Family::ALL[(seed / 2) as usize % Family::ALL.len()]], 4)
        };
        let mut dec = Decoder::with_ip(32, &seq.code, 0, DecoderOptions::NONE);
        let mut n = 0;
        for ins in &mut dec {
            n += ins.len();
            assert!(!ins.is_invalid(), "seed {seed}: invalid instruction\n{}", disasm(&seq.code));
            seen.insert(ins.mnemonic());
            let inf = info.info(&ins);
            let addr_regs: Vec<Register> = inf
                .used_memory()
                .iter()
                .flat_map(|m| [m.base(), m.index()])
                .chain(if ins.mnemonic() == Mnemonic::Lea {
                    vec![]
                } else {
                    vec![ins.memory_base(), ins.memory_index()]
                })
                .collect();
            for u in inf.used_registers() {
                let full = u.register().full_register32();
                if full == Register::ESP || full == Register::ESI {
                    let write = !matches!(u.access(), OpAccess::Read | OpAccess::CondRead);
                    let addr_read = !write && addr_regs.contains(&u.register());
                    assert!(
                        addr_read && full == Register::ESI,
                        "seed {seed}: {:?} uses {:?} ({:?})\n{}",
                        ins.mnemonic(),
                        u.register(),
                        u.access(),
                        disasm(&seq.code)
                    );
                }
            }
        }
        assert_eq!(n, seq.code.len(), "seed {seed}: decode length mismatch");
        let last = seq.marks.last().unwrap();
        assert_eq!((last.0, last.1), (seq.code.len(), seq.undef_flags));
    }
    for m in [
        Mnemonic::Adc,
        Mnemonic::Sbb,
        Mnemonic::Test,
        Mnemonic::Inc,
        Mnemonic::Dec,
        Mnemonic::Neg,
        Mnemonic::Not,
        Mnemonic::Rcl,
        Mnemonic::Rcr,
        Mnemonic::Rol,
        Mnemonic::Ror,
        Mnemonic::Shl,
        Mnemonic::Shr,
        Mnemonic::Sar,
        Mnemonic::Shld,
        Mnemonic::Shrd,
        Mnemonic::Mul,
        Mnemonic::Imul,
        Mnemonic::Div,
        Mnemonic::Idiv,
        Mnemonic::Bt,
        Mnemonic::Bts,
        Mnemonic::Btr,
        Mnemonic::Btc,
        Mnemonic::Bsf,
        Mnemonic::Bsr,
        Mnemonic::Setb,
        Mnemonic::Cmovle,
        Mnemonic::Bswap,
        Mnemonic::Xchg,
        Mnemonic::Xadd,
        Mnemonic::Cmpxchg,
        Mnemonic::Movzx,
        Mnemonic::Movsx,
        Mnemonic::Lea,
        Mnemonic::Cbw,
        Mnemonic::Cwde,
        Mnemonic::Cwd,
        Mnemonic::Cdq,
        Mnemonic::Lahf,
        Mnemonic::Sahf,
        Mnemonic::Daa,
        Mnemonic::Das,
        Mnemonic::Aaa,
        Mnemonic::Aas,
        Mnemonic::Aam,
        Mnemonic::Aad,
        Mnemonic::Clc,
        Mnemonic::Stc,
        Mnemonic::Cmc,
    ] {
        assert!(seen.contains(&m), "generator never produced {m:?}");
    }
}

/// The oracle agrees with itself: two native instances give identical results
/// (catches state leaking between runs, e.g. through the trampoline).
#[test]
fn native_oracle_is_deterministic() {
    let mut a = Native32::new();
    let mut b = Native32::new();
    for seed in 0..500u64 {
        let seq = seqgen::random_seq(seed);
        let inp = Input::random(&mut Rng::new(seed));
        let mut outs = Vec::new();
        for n in [&mut a, &mut b] {
            let mut regs = inp.regs;
            regs[4] = n.stack_top();
            regs[6] = n.data_addr();
            let mut data = inp.data;
            let o = n.run(&seq.code, &State32 { regs, eflags: inp.eflags }, &mut data);
            assert_eq!(o.regs[6], n.data_addr(), "seed {seed}: ESI changed");
            assert_eq!(o.regs[4], n.stack_top(), "seed {seed}: ESP changed");
            outs.push((o.regs[0..4].to_vec(), o.regs[5], o.regs[7], o.eflags & ARITH, data));
        }
        assert!(outs[0] == outs[1], "seed {seed}: native runs differ\n{}", disasm(&seq.code));
    }
}

/// LEA with 16-bit addressing (0x67) in 32-bit code: the offset wraps at
/// 64 KiB and is zero-extended into a 32-bit destination; a 16-bit
/// destination keeps its upper half. No memory is touched, so the host CPU
/// runs the same bytes.
#[test]
fn family_lea_16bit_addressing() {
    let mut h = Harness::new();
    lea_16bit_cases(&mut h);
    h.finish("family_lea_16bit_addressing");
}

fn lea_16bit_cases(h: &mut Harness) {
    let forms: &[&[u8]] = &[
        &[0x67, 0x8D, 0x41, 0x04],       // lea eax, [bx+di+4]
        &[0x66, 0x67, 0x8D, 0x41, 0x04], // lea ax, [bx+di+4]
        &[0x67, 0x8D, 0x06, 0x34, 0x12], // lea eax, [0x1234]
        &[0x67, 0x8D, 0x43, 0xFF],       // lea eax, [bp+di-1]
        &[0x67, 0x8D, 0x87, 0xFF, 0xFF], // lea eax, [bx+0xFFFF]
        &[0x67, 0x8D, 0x1B],             // lea ebx, [bp+di]
        &[0x67, 0x8D, 0x6D, 0x80],       // lea ebp, [di-0x80]
        &[0x66, 0x67, 0x8D, 0x3D],       // lea di, [di]
    ];
    let values = [0u32, 1, 0x7FFF, 0x8000, 0xFFFF, 0x1_0000, 0xDEAD_BEEF, 0xFFFF_FFFF];
    for code in forms {
        for (k, &v) in values.iter().enumerate() {
            let w = values[(k + 3) % values.len()];
            // EBX, EBP, EDI: the address registers (ESI holds the data
            // area's address, which differs between the worlds: no SI).
            let seq = case(code, 0, 0);
            h.check(&format!("lea16 {code:02x?} v={v:#x}"), &seq, &inp([0x1111_1111, 0, 0, v, 0, w, 0, v ^ w], 0));
        }
    }
}

/// MASKMOVQ: the bytes of MM0 whose mask byte (MM1) has its top bit set go
/// to DS:[EDI] (EDI = the data area + 16), the rest stay; random data and
/// masks against the host CPU.
#[test]
fn family_maskmovq() {
    let mut h = Harness::new();
    maskmovq_cases(&mut h);
    h.finish("family_maskmovq");
}

fn maskmovq_cases(h: &mut Harness) {
    let mut rng = Rng::new(0x6d61_736b);
    let code = [
        0x0f, 0x6f, 0x06, 0x0f, 0x6f, 0x4e, 0x08, 0x89, 0xf7, 0x83, 0xc7, 0x10, 0x0f, 0xf7, 0xc1, 0x0f, 0x77, 0x29,
        0xf7, // sub edi, esi: EDI relative to the data area in both worlds
    ];
    for k in 0..64 {
        let mut input = Input::random(&mut rng);
        input.regs[7] = 0; // EDI is set by the code (and compared)
        let seq = case(&code, 0, 0);
        h.check(&format!("maskmovq #{k}"), &seq, &input);
    }
}

/// MASKMOVDQU: the bytes of XMM0 whose mask byte (XMM1) has its top bit set
/// go to DS:[EDI] (EDI = the data area + 0x20..0x3F, any alignment), the
/// rest stay; random data and masks against the host CPU.
#[test]
fn family_maskmovdqu() {
    let mut h = Harness::new();
    maskmovdqu_cases(&mut h);
    h.finish("family_maskmovdqu");
}

fn maskmovdqu_cases(h: &mut Harness) {
    let mut rng = Rng::new(0x6d61_736b_6471);
    for k in 0..64u8 {
        let code = [
            0xf3,
            0x0f,
            0x6f,
            0x06, // movdqu xmm0, [esi]
            0xf3,
            0x0f,
            0x6f,
            0x4e,
            0x10, // movdqu xmm1, [esi+0x10]
            0x89,
            0xf7, // mov edi, esi
            0x83,
            0xc7,
            0x20 + k % 0x20, // add edi, 0x20..0x3F
            0x66,
            0x0f,
            0xf7,
            0xc1, // maskmovdqu xmm0, xmm1
            0x29,
            0xf7, // sub edi, esi: EDI relative to the data area in both worlds
        ];
        let mut input = Input::random(&mut rng);
        input.regs[7] = 0; // EDI is set by the code (and compared)
        let seq = case(&code, 0, 0);
        h.check(&format!("maskmovdqu #{k}"), &seq, &input);
    }
}

// ------------------------------------------- ring 3 under paging (user world)

/// Random sequences run by btvisor at CPL 3 with paging on, code, stack and
/// data at linear addresses other than their physical ones.
#[test]
fn user_world_random_sequences() {
    run_seeds_in(SnippetWorld::User, "user random", 3000, Instant::now() + budget(), seqgen::random_seq);
}

/// Every family's random sequences, the 16-bit-addressing LEA cases,
/// MASKMOVQ and MASKMOVDQU in the user world.
#[test]
fn user_world_families() {
    let deadline = Instant::now() + budget();
    for fam in Family::ALL {
        let name = format!("user {fam:?}");
        run_seeds_in(SnippetWorld::User, &name, 100, deadline, |seed| seqgen::family_seq(seed, &[fam], 4));
    }
    let mut h = Harness::in_world(SnippetWorld::User);
    lea_16bit_cases(&mut h);
    h.finish("user lea_16bit_addressing");
    let mut h = Harness::in_world(SnippetWorld::User);
    maskmovq_cases(&mut h);
    h.finish("user maskmovq");
    let mut h = Harness::in_world(SnippetWorld::User);
    maskmovdqu_cases(&mut h);
    h.finish("user maskmovdqu");
}

// ------------------------------------------------- inlined indirect calls

/// A loop of `calls`: each iteration calls every callee through a memory
/// operand (`call dword [esp]`, the target computed position-independently
/// and never left in a register, so the worlds agree), the callees being
/// random sequences ending in RET, the first on the next page. btvisor
/// inlines those it can at their call sites (`exec::inline_calls`) after
/// each site's first call. Returns the code and the callees' offsets.
fn calls_loop(seed: u64, iterations: u32) -> (Seq, Vec<usize>) {
    let mut rng = Rng::new(seed ^ 0xCA11_0000);
    let n_callees = rng.range(1, 3) as usize;
    let bodies: Vec<Seq> = (0..n_callees).map(|k| seqgen::random_seq(seed * 7 + k as u64)).collect();
    // The callees: cmp eax, eax (defined flags) ; body ; ret.
    let callee_code: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| {
            let mut c = vec![0x39, 0xC0];
            c.extend_from_slice(&b.code);
            c.push(0xC3);
            c
        })
        .collect();
    const FIRST_CALLEE: usize = 0x1000;
    let mut offsets = Vec::new();
    let mut at = FIRST_CALLEE;
    for c in &callee_code {
        offsets.push(at);
        at += c.len().next_multiple_of(16);
    }
    let end = at;
    let mut code = vec![0x68];
    code.extend_from_slice(&iterations.to_le_bytes()); // push N
    let loop_top = code.len();
    for &off in &offsets {
        code.push(0x50); // push eax
        code.extend_from_slice(&[0xE8, 0, 0, 0, 0]); // call 1f
        let here = code.len();
        code.push(0x58); // 1: pop eax
        code.extend_from_slice(&[0x8D, 0x80]); // lea eax, [eax + off - here]
        code.extend_from_slice(&((off as i64 - here as i64) as i32).to_le_bytes());
        code.extend_from_slice(&[0x87, 0x04, 0x24]); // xchg eax, [esp]
        code.extend_from_slice(&[0xFF, 0x14, 0x24]); // call dword [esp]
        code.extend_from_slice(&[0x8D, 0x64, 0x24, 0x04]); // lea esp, [esp+4]
    }
    code.extend_from_slice(&[0xFF, 0x0C, 0x24]); // dec dword [esp]
    code.extend_from_slice(&[0x0F, 0x85]); // jnz loop_top
    let rel = loop_top as i64 - (code.len() + 4) as i64;
    code.extend_from_slice(&(rel as i32).to_le_bytes());
    code.extend_from_slice(&[0x8D, 0x64, 0x24, 0x04]); // lea esp, [esp+4]
    code.push(0xE9); // jmp end
    let rel = end as i64 - (code.len() + 4) as i64;
    code.extend_from_slice(&(rel as i32).to_le_bytes());
    assert!(code.len() <= FIRST_CALLEE, "the loop overran its page");
    code.resize(FIRST_CALLEE, 0xCC);
    for (c, &off) in callee_code.iter().zip(&offsets) {
        code.resize(off, 0xCC);
        code.extend_from_slice(c);
    }
    code.resize(end, 0xCC);
    // DEC defines every arithmetic flag but CF, which the last callee left.
    let undef = CF;
    let len = code.len();
    (Seq { code, undef_flags: undef, insns: n_callees, marks: vec![(len, undef)] }, offsets)
}

#[test]
fn differential_inlined_callees() {
    let seeds = env_num("BTV_DIFF_SEEDS").unwrap_or(1500);
    let deadline = Instant::now() + budget();
    let mut h = Harness::new();
    // Ring 3 with paging, where the callee's page is probed and remapped.
    let mut user = Harness::in_world(SnippetWorld::User);
    let mut inlined = 0;
    let mut run = 0;
    for seed in 0..seeds {
        if Instant::now() > deadline {
            eprintln!("inlined callees: time budget spent after {seed} of {seeds} seeds");
            break;
        }
        let (seq, _) = calls_loop(seed, 20);
        let mut rng = Rng::new(seed ^ 0x1A9E_7000);
        let inp = Input::random(&mut rng);
        h.check(&format!("inlined callees seed {seed}"), &seq, &inp);
        user.check(&format!("inlined callees seed {seed}"), &seq, &inp);
        if h.failures + user.failures > MAX_REPORTS {
            break;
        }
        // How many of these runs inline something (the flat world's stats).
        let mut regs = inp.regs;
        regs[4] = btvisor::snippet::SNIPPET_STACK_TOP;
        regs[6] = btvisor::snippet::SNIPPET_DATA_ADDR;
        let s = SnippetState { regs, eflags: inp.eflags, data: inp.data };
        if let Ok((_, _, stats)) = btvisor::snippet::run_snippet_outcome(&seq.code, &s) {
            run += 1;
            inlined += usize::from(stats.inlined_calls > 0);
        }
    }
    h.finish("inlined callees");
    user.finish("inlined callees at ring 3");
    eprintln!("inlined callees: {inlined} of {run} programs had a callee inlined");
    assert!(inlined * 2 > run, "only {inlined} of {run} programs had a callee inlined");
}
