//! Translation throughput: guest instructions decoded and translated per
//! second over the .text of real compiled 32-bit code (the committed guest
//! images: compute.elf is gcc -O2 C, insn.elf mostly hand-written asm).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use btvisor::cpu::Mode;
use btvisor::decode::{MAX_BLOCK_INSNS, decode_block};
use btvisor::translate::{ExitTargets, Options, Translator};

mod common;

/// Stand-in host addresses: the code is translated, never run.
const HOST_BASE: usize = 0x7000_0000_0000;
const EXITS: ExitTargets = ExitTargets {
    chain: HOST_BASE - 0x100,
    indirect: HOST_BASE - 0xC0,
    emulate: HOST_BASE - 0x80,
    exception: HOST_BASE - 0x40,
    soft_miss: HOST_BASE - 0x140,
    probe_miss: HOST_BASE - 0x180,
    call_miss: HOST_BASE - 0x1C0,
    ret_miss: [HOST_BASE - 0x200, HOST_BASE - 0x240, HOST_BASE - 0x280, HOST_BASE - 0x2C0],
};

/// Translate the whole text range block after block; returns guest instructions.
fn translate_all(ram: &[u8], text: &[(u32, u32)]) -> (u64, usize) {
    let mut insns = 0u64;
    let mut bytes = 0usize;
    for &(start, end) in text {
        let mut eip = start;
        while eip < end {
            let b = decode_block(ram, 0, eip, MAX_BLOCK_INSNS);
            let t = Translator::new(
                HOST_BASE,
                EXITS,
                0,
                Options {
                    inline_lookup: true,
                    mode: Mode::default(),
                    icount: false,
                    kick_check: false,
                    pause_gate: false,
                    probe: None,
                    learn_calls: false,
                    continuation_entries: true,
                },
                ram,
            )
            .translate(&b);
            insns += b.insns.len() as u64;
            bytes += t.code.len();
            eip = b.end;
        }
    }
    (insns, bytes)
}

fn bench(c: &mut Criterion) {
    for image in ["compute", "insn"] {
        let (ram, text) = common::load_image(&format!("guest-images/{image}.elf"));
        let (insns, _) = translate_all(&ram, &text);
        let mut g = c.benchmark_group("translate");
        g.throughput(Throughput::Elements(insns));
        g.bench_function(image, |b| b.iter(|| translate_all(&ram, &text)));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
