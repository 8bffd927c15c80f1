//! Dispatch and chaining: guest loops whose cost is dominated by block
//! transitions (a self-chained loop, call/ret through the inline return
//! lookup, an indirect jump, and a VMM callout per iteration). Throughput is
//! guest loop iterations; each run also pays one machine setup, amortised
//! over `ITERS`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use btvisor::snippet::{SNIPPET_DATA_ADDR, SNIPPET_STACK_TOP, SnippetState, run_snippet};

const ITERS: u32 = 2_000_000;

fn state() -> SnippetState {
    let mut regs = [0u32; 8];
    regs[4] = SNIPPET_STACK_TOP;
    regs[6] = SNIPPET_DATA_ADDR;
    regs[1] = ITERS; // ECX: loop counter
    SnippetState { regs, eflags: 2, data: [0; 256] }
}

fn bench(c: &mut Criterion) {
    let loops: [(&str, &[u8]); 4] = [
        // l: dec ecx ; jnz l
        ("chained_loop", &[0x49, 0x75, 0xFD]),
        // l: call f ; dec ecx ; jnz l ; jmp end ; f: ret ; end:
        ("call_ret", &[0xE8, 0x05, 0, 0, 0, 0x49, 0x75, 0xF8, 0xEB, 0x01, 0xC3]),
        // mov ebx, t ; l: jmp ebx ; t: dec ecx ; jnz l   (t = code + 7)
        ("indirect_jmp", &[0xBB, 0x07, 0x00, 0x01, 0x00, 0xFF, 0xE3, 0x49, 0x75, 0xFB]),
        // l: out 0x80, al ; dec ecx ; jnz l   (one VMM callout per iteration)
        ("port_out", &[0xE6, 0x80, 0x49, 0x75, 0xFB]),
    ];
    let mut g = c.benchmark_group("dispatch");
    g.sample_size(10);
    for (name, code) in loops {
        let iters = if name == "port_out" { ITERS / 20 } else { ITERS };
        let mut s = state();
        s.regs[1] = iters;
        g.throughput(Throughput::Elements(iters as u64));
        g.bench_function(name, |b| b.iter(|| run_snippet(code, &s).expect("loop runs to its end")));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
