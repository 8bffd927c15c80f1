//! Dispatch and chaining: guest loops whose cost is dominated by block
//! transitions or VMM entries (a self-chained loop, call/ret through the
//! inline return lookup, an indirect jump, a port write on its inline fast
//! path, a CPUID called out to the VMM from translated code, and an IRET
//! that leaves translated code for the dispatcher). Throughput is
//! guest loop iterations; each run also pays one machine setup, amortised
//! over `ITERS`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use btvisor::snippet::{
    SNIPPET_DATA_ADDR, SNIPPET_STACK_TOP, SNIPPET_USER_CODE, SNIPPET_USER_STACK_TOP, SnippetState, SnippetWorld,
    run_snippet_in,
};

const ITERS: u32 = 2_000_000;

/// l: pushfd ; push cs ; push l2 ; iretd ; l2: dec ecx ; jnz l — in the
/// user world, where the code starts at `SNIPPET_USER_CODE`.
const IRET_TO_SELF: [u8; 11] = {
    let l2 = (SNIPPET_USER_CODE + 8).to_le_bytes();
    [0x9C, 0x0E, 0x68, l2[0], l2[1], l2[2], l2[3], 0xCF, 0x49, 0x75, 0xF5]
};

fn state() -> SnippetState {
    let mut regs = [0u32; 8];
    regs[4] = SNIPPET_STACK_TOP;
    regs[6] = SNIPPET_DATA_ADDR;
    regs[1] = ITERS; // ECX: loop counter
    SnippetState { regs, eflags: 2, data: [0; 256] }
}

fn bench(c: &mut Criterion) {
    let loops: [(&str, &[u8]); 6] = [
        // l: dec ecx ; jnz l
        ("chained_loop", &[0x49, 0x75, 0xFD]),
        // l: call f ; dec ecx ; jnz l ; jmp end ; f: ret ; end:
        ("call_ret", &[0xE8, 0x05, 0, 0, 0, 0x49, 0x75, 0xF8, 0xEB, 0x01, 0xC3]),
        // mov ebx, t ; l: jmp ebx ; t: dec ecx ; jnz l   (t = code + 7)
        ("indirect_jmp", &[0xBB, 0x07, 0x00, 0x01, 0x00, 0xFF, 0xE3, 0x49, 0x75, 0xFB]),
        // l: out 0x80, al ; dec ecx ; jnz l   (the port's inline fast path)
        ("port_out", &[0xE6, 0x80, 0x49, 0x75, 0xFB]),
        // l: mov esi, ecx ; cpuid ; mov ecx, esi ; dec ecx ; jnz l
        // (a round trip through the VMM per iteration: CPUID is emulated)
        ("cpuid_exit", &[0x89, 0xCE, 0x31, 0xC0, 0x0F, 0xA2, 0x89, 0xF1, 0x49, 0x75, 0xF5]),
        // An IRET to the next instruction, as Linux's sync_core does, at
        // ring 3 with paging: a round trip through the dispatcher.
        ("iret_to_self", &IRET_TO_SELF),
    ];
    let mut g = c.benchmark_group("dispatch");
    g.sample_size(10);
    for (name, code) in loops {
        let iters = if matches!(name, "port_out" | "cpuid_exit" | "iret_to_self") { ITERS / 20 } else { ITERS };
        let mut s = state();
        s.regs[1] = iters;
        g.throughput(Throughput::Elements(iters as u64));
        let world = if name == "iret_to_self" { SnippetWorld::User } else { SnippetWorld::Flat };
        if world == SnippetWorld::User {
            s.regs[4] = SNIPPET_USER_STACK_TOP;
        }
        g.bench_function(name, |b| b.iter(|| run_snippet_in(world, code, &s, false).expect("loop runs to its end")));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
