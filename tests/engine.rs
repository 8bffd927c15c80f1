//! Engine behaviour seen from outside: precise guest exceptions, bounded time
//! in chained code, code cache flushes, self-modifying stores.

use std::process::Command;

use btvisor::exec::RunOutcome;
use btvisor::snippet::{
    SNIPPET_CODE_ADDR, SNIPPET_DATA_ADDR, SNIPPET_STACK_TOP, SNIPPET_USER_STACK_TOP, SnippetState, SnippetWorld,
    run_snippet_in, run_snippet_outcome,
};

fn state(regs: [(usize, u32); 3]) -> SnippetState {
    let mut s = SnippetState { regs: [0; 8], eflags: 2, data: [0; 256] };
    s.regs[4] = SNIPPET_STACK_TOP;
    s.regs[6] = SNIPPET_DATA_ADDR;
    for (r, v) in regs {
        s.regs[r] = v;
    }
    s
}

const EAX: usize = 0;
const ECX: usize = 1;
const EDX: usize = 2;
const EBX: usize = 3;

#[test]
fn divide_error_is_precise() {
    // add eax, 1 ; inc ebx ; div ecx (ecx = 0) ; mov eax, 99
    let code = [0x83, 0xC0, 0x01, 0x43, 0xF7, 0xF1, 0xB8, 99, 0, 0, 0];
    let (out, st, _) = run_snippet_outcome(&code, &state([(EAX, 6), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Exception { vector: 0, error_code: None, eip: SNIPPET_CODE_ADDR + 4 });
    assert_eq!(st.regs[EAX], 7, "state is as before the faulting DIV");
    assert_eq!(st.regs[EBX], 1);
}

#[test]
fn divide_overflow_through_memory_is_precise() {
    // mov edx, 1 ; div dword [esi] (quotient overflows: [esi] = 1)
    let code = [0xBA, 1, 0, 0, 0, 0xF7, 0x36];
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    s.data[0] = 1;
    let (out, st, _) = run_snippet_outcome(&code, &s).expect("runs");
    assert_eq!(out, RunOutcome::Exception { vector: 0, error_code: None, eip: SNIPPET_CODE_ADDR + 5 });
    assert_eq!(st.regs[EDX], 1);
}

#[test]
fn invalid_opcode_is_precise() {
    // inc eax ; ud2
    let (out, st, _) = run_snippet_outcome(&[0x40, 0x0F, 0x0B], &state([(EAX, 1), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Exception { vector: 6, error_code: None, eip: SNIPPET_CODE_ADDR + 1 });
    assert_eq!(st.regs[EAX], 2);
    // An SSE3 instruction the virtual CPU does not advertise: haddps xmm0, xmm1.
    let (out, _, _) =
        run_snippet_outcome(&[0xF2, 0x0F, 0x7C, 0xC1], &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Exception { vector: 6, error_code: None, eip: SNIPPET_CODE_ADDR });
}

#[test]
fn chained_spin_loop_returns_to_the_dispatcher() {
    // l: dec ecx ; jnz l   with ECX = 2^30: one self-chained block for ~0.3 s.
    let (out, st, stats) =
        run_snippet_outcome(&[0x49, 0x75, 0xFD], &state([(ECX, 1 << 30), (EAX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[ECX], 0);
    assert!(stats.polls > 0, "the interval timer never brought the dispatcher back");
    assert!(stats.chains > 0);
}

#[test]
fn store_into_the_running_block_is_seen() {
    // mov byte [rel], 0x41 patches the following `inc eax` (0x40) into
    // `inc ecx` (0x41) in the same straight-line block.
    let target = SNIPPET_CODE_ADDR + 7;
    let mut code = vec![0xC6, 0x05];
    code.extend_from_slice(&target.to_le_bytes());
    code.push(0x41);
    code.push(0x40); // at +7: inc eax, becomes inc ecx
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!((st.regs[EAX], st.regs[ECX]), (0, 1));
    assert!(stats.smc_pages > 0);
}

#[test]
fn a_write_that_leaves_a_blocks_bytes_alone_keeps_the_block() {
    //    mov ecx, 3
    // l: mov [d], cl      ; d shares the code's page: every store faults
    //    inc eax ; dec ecx ; jnz l ; hlt
    // d: db 0
    // The page is checked before its code runs again: its blocks' bytes
    // are as they were, so none is dropped and translated again.
    let d = (SNIPPET_CODE_ADDR + 16).to_le_bytes();
    let code = [0xB9, 0x03, 0x00, 0x00, 0x00, 0x88, 0x0D, d[0], d[1], d[2], d[3], 0x40, 0x49, 0x75, 0xF6, 0xF4, 0x00];
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 15, interrupts_enabled: false });
    assert_eq!((st.regs[EAX], st.regs[ECX]), (3, 0));
    assert_eq!(stats.smc_pages, 3, "each store should find the page protected again");
    assert_eq!(stats.invalidated_blocks, 0);
    assert!(stats.verified_pages > 0);
}

#[test]
fn tiny_code_cache_flushes_and_goes_on() {
    let out = Command::new(env!("CARGO_BIN_EXE_btvisor"))
        .args(["--cache-size", "64K", "--stats", "guest-images/insn.elf"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run btvisor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("2624 passed, 0 failed"), "{stdout}");
    assert_eq!(out.status.code(), Some(1));
    let flushes: u64 = stderr
        .lines()
        .find_map(|l| l.split("(").nth(1).and_then(|r| r.strip_suffix(" flushes)")))
        .and_then(|n| n.trim().parse().ok())
        .expect("stats line with flushes");
    assert!(flushes >= 1, "{stderr}");
}

#[test]
fn inline_pushf_popf_cli_sti_at_cpl0() {
    // sti ; pushfd ; pop eax ; cli ; pushfd ; pop ebx ; push 0x8d5|0x200|0x3000 ; popfd ; pushfd ; pop edx ; sti ; pushfd ; pop ecx
    let code = [0xFB, 0x9C, 0x58, 0xFA, 0x9C, 0x5B, 0x68, 0xD5, 0x3A, 0x00, 0x00, 0x9D, 0x9C, 0x5A, 0xFB, 0x9C, 0x59];
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    s.eflags = 0x202 | 0x1; // IF and CF
    let (out, st, stats) = run_snippet_outcome(&code, &s).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[EAX], 0x203, "PUSHFD image: CF, bit 1, IF");
    assert_eq!(st.regs[EBX], 0x003, "CLI cleared the virtual IF");
    assert_eq!(st.regs[EDX], 0x3AD7, "POPFD loaded arithmetic flags, DF... and IOPL 3, IF");
    assert_eq!(st.regs[ECX], 0x3AD7);
    let only_hlt = stats.callout_list().iter().all(|(m, _)| *m == iced_x86::Mnemonic::Hlt);
    assert!(only_hlt, "no VMM callout for CLI/STI/PUSHFD/POPFD at CPL 0: {:?}", stats.callout_list());
}

#[test]
fn sixteen_bit_code_segment_runs() {
    // lgdt; ljmp to a 16-bit code segment based at the code (0x10000) that
    // computes with 16-bit and 66-prefixed 32-bit operations and 16-bit
    // addressing, then ljmpl back to flat 32-bit code: mov eax, ebx ; hlt.
    // (Assembled from a .code16/.code32 source with GNU as.)
    let code: [u8; 96] = [
        0x0f, 0x01, 0x15, 0x38, 0x00, 0x01, 0x00, 0xea, 0x3e, 0x00, 0x00, 0x00, 0x18, 0x00, 0x89, 0xd8, 0xf4, 0x8d,
        0xb4, 0x00, 0x00, 0x8d, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00,
        0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x01, 0x9a,
        0x00, 0x00, 0x1f, 0x00, 0x18, 0x00, 0x01, 0x00, 0xb8, 0x34, 0x12, 0x01, 0xc0, 0x89, 0xc3, 0xbe, 0x00, 0x01,
        0x89, 0x1c, 0x8b, 0x0c, 0x41, 0x66, 0xba, 0x22, 0x22, 0x11, 0x11, 0x66, 0x01, 0xca, 0x89, 0xcb, 0x66, 0xea,
        0x0e, 0x00, 0x01, 0x00, 0x08, 0x00,
    ];
    let (out, st, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 0x10, interrupts_enabled: false });
    assert_eq!(st.regs[EBX], 0x2469);
    assert_eq!(st.regs[EAX], 0x2469);
    assert_eq!(st.regs[EDX], 0x1111_468B);
}

#[test]
fn the_same_linear_code_under_two_cs_bases_is_two_translations() {
    // Two 16-bit code segments, based at the code (0x10000) and 16 bytes
    // higher, both run the code at linear 0x10056: `call 1f ; 1: pop bx`
    // (the IP of 1f) and a far return to the flat 32-bit code, whose
    // address is in EDI. The IPs differ by the bases' difference: the second
    // run must not reuse the first's translation, which holds its IPs.
    //   lgdt gdtr ; mov edi, back1 ; ljmp 0x18:0x56
    //   back1: mov esi, ebx ; mov edi, back2 ; ljmp 0x20:0x46 ; back2: hlt
    //   gdt: null, flat code, flat data, code16 base 0x10000, code16 base 0x10010
    //   .code16: call 1f ; 1: pop bx ; push dword 8 ; push edi ; retf (32-bit)
    let code: [u8; 97] = [
        0x0f, 0x01, 0x15, 0x50, 0x00, 0x01, 0x00, 0xbf, 0x13, 0x00, 0x01, 0x00, 0xea, 0x56, 0x00, 0x00, 0x00, 0x18,
        0x00, 0x89, 0xde, 0xbf, 0x21, 0x00, 0x01, 0x00, 0xea, 0x46, 0x00, 0x00, 0x00, 0x20, 0x00, 0xf4, 0x8d, 0xb4,
        0x00, 0x00, 0x66, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a,
        0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x01, 0x9a, 0x00, 0x00,
        0xff, 0xff, 0x10, 0x00, 0x01, 0x9a, 0x00, 0x00, 0x27, 0x00, 0x28, 0x00, 0x01, 0x00, 0xe8, 0x00, 0x00, 0x5b,
        0x66, 0x6a, 0x08, 0x66, 0x57, 0x66, 0xcb,
    ];
    let (out, st, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 0x21, interrupts_enabled: false });
    assert_eq!(st.regs[6] & 0xFFFF, 0x59, "IP of 1f with CS based at 0x10000");
    assert_eq!(st.regs[EBX] & 0xFFFF, 0x49, "IP of 1f with CS based at 0x10010");
}

/// Builds identity page tables for the first MiB plus linear 0x400000 ->
/// physical 0x30000 (and a read-only user page at 0x401000), enables paging
/// with CR0.WP, writes through the new mapping and reads the tables back.
const PAGING_SMOKE: [u8; 119] = [
    0xbf, 0x00, 0x00, 0x02, 0x00, 0xc7, 0x07, 0x07, 0x10, 0x02, 0x00, 0xc7, 0x47, 0x04, 0x07, 0x20, 0x02, 0x00, 0xbf,
    0x00, 0x10, 0x02, 0x00, 0xb8, 0x07, 0x00, 0x00, 0x00, 0xb9, 0x00, 0x01, 0x00, 0x00, 0x89, 0x07, 0x83, 0xc7, 0x04,
    0x05, 0x00, 0x10, 0x00, 0x00, 0xe2, 0xf4, 0xc7, 0x05, 0x00, 0x20, 0x02, 0x00, 0x07, 0x00, 0x03, 0x00, 0xc7, 0x05,
    0x04, 0x20, 0x02, 0x00, 0x05, 0x10, 0x03, 0x00, 0xb8, 0x00, 0x00, 0x02, 0x00, 0x0f, 0x22, 0xd8, 0x0f, 0x20, 0xc0,
    0x0d, 0x00, 0x00, 0x01, 0x80, 0x0f, 0x22, 0xc0, 0xc7, 0x05, 0x10, 0x00, 0x40, 0x00, 0x78, 0x56, 0x34, 0x12, 0x8b,
    0x1d, 0x10, 0x00, 0x03, 0x00, 0x8b, 0x15, 0x10, 0x00, 0x40, 0x00, 0x8b, 0x35, 0x00, 0x20, 0x02, 0x00, 0x8b, 0x2d,
    0x04, 0x00, 0x02, 0x00, 0xf4,
];

#[test]
fn paging_maps_through_the_shadow_window() {
    let (out, st, stats) = run_snippet_outcome(&PAGING_SMOKE, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 118, interrupts_enabled: false });
    assert_eq!(st.regs[EBX], 0x1234_5678, "write through the mapping reached physical 0x30010");
    assert_eq!(st.regs[EDX], 0x1234_5678);
    assert_eq!(st.regs[6], 0x30067, "PTE has accessed and dirty set");
    assert_eq!(st.regs[5], 0x22027, "PDE has accessed set");
    assert!(stats.hidden_faults > 0);
}

#[test]
fn page_fault_write_to_read_only_page_before_idt_is_reported() {
    // The smoke code, then a write to the read-only page at 0x401000 with
    // CR0.WP: #PF with error code 3 (present, write); no IDT is loaded.
    let mut code = PAGING_SMOKE[..118].to_vec();
    code.extend_from_slice(&[0xC7, 0x05, 0x00, 0x10, 0x40, 0x00, 1, 0, 0, 0]); // mov dword [0x401000], 1
    let (out, _, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Exception { vector: 14, error_code: Some(3), eip: SNIPPET_CODE_ADDR + 118 });
}

#[test]
fn compute_image_with_paging_matches_qemu_output() {
    // The compute kernel turns paging on (4 MiB identity pages) with paging=1;
    // its output must be the same as without (QEMU's golden).
    let out = Command::new(env!("CARGO_BIN_EXE_btvisor"))
        .args(["-append", "paging=1", "guest-images/compute.elf"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run btvisor");
    let want = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/guest-images/expected/compute.out"))
        .expect("golden output");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn fault_with_an_empty_idt_triple_faults() {
    // lidt [data] (limit 0) ; ud2 -> #UD -> #GP (no gate) -> #DF -> shutdown
    let mut code = vec![0x0F, 0x01, 0x1D];
    code.extend_from_slice(&SNIPPET_DATA_ADDR.to_le_bytes());
    code.extend_from_slice(&[0x0F, 0x0B]);
    let (out, _, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::TripleFault { eip: SNIPPET_CODE_ADDR + 7 });
}

#[test]
fn device_memory_in_a_loop_stops_taking_host_faults() {
    // mov ecx, 1000 ; l: mov [ecx*2+0xB8000], ax ; loop l ; mov eax, [0xB8002]
    let code = [
        0xB9, 0xE8, 0x03, 0x00, 0x00, 0x66, 0x89, 0x04, 0x4D, 0x00, 0x80, 0x0B, 0x00, 0xE2, 0xF6, 0xA1, 0x02, 0x80,
        0x0B, 0x00,
    ];
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0x0741), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[EAX], 0x0741_0741, "the words reached the device and read back");
    assert_eq!(stats.device_accesses, 1001);
    // The store faults once; from then on it is translated as an exit to
    // the VMM, which reaches the device without a host fault.
    let faults = stats.exits[btvisor::cpu::exit::FAULT as usize];
    assert!(faults < 20, "{faults} host faults for 1001 device accesses");
}

/// How many times the VMM ran instructions with mnemonic `m`.
fn callouts(stats: &btvisor::exec::stats::Stats, m: iced_x86::Mnemonic) -> u64 {
    stats.callout_list().iter().find(|(k, _)| *k == m).map_or(0, |(_, n)| *n)
}

/// Code that builds a GDT at 0x90000 (flat code 0x08, flat data 0x10,
/// data 0x18 based at 0x80000, the snippet's data area) and loads it with
/// LGDT, followed by `rest`. (GNU as source in the history of the tests
/// below.)
fn with_gdt(rest: &[u8]) -> Vec<u8> {
    with_gdt_data_base(0x08, rest)
}

/// `with_gdt` with bits 16-23 of selector 0x18's base set to `base_16_23`.
fn with_gdt_data_base(base_16_23: u8, rest: &[u8]) -> Vec<u8> {
    /// Where that base byte lies in `GDT_SETUP` (`movl $0x00cf9208, 28(%edi)`).
    const BASE_16_23_AT: usize = 56;
    const GDT_SETUP: [u8; 86] = [
        0xbf, 0x00, 0x00, 0x09, 0x00, 0xc7, 0x07, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x47, 0x04, 0x00, 0x00, 0x00, 0x00,
        0xc7, 0x47, 0x08, 0xff, 0xff, 0x00, 0x00, 0xc7, 0x47, 0x0c, 0x00, 0x9a, 0xcf, 0x00, 0xc7, 0x47, 0x10, 0xff,
        0xff, 0x00, 0x00, 0xc7, 0x47, 0x14, 0x00, 0x92, 0xcf, 0x00, 0xc7, 0x47, 0x18, 0xff, 0xff, 0x00, 0x00, 0xc7,
        0x47, 0x1c, 0x08, 0x92, 0xcf, 0x00, 0x66, 0xc7, 0x05, 0x00, 0x01, 0x09, 0x00, 0x1f, 0x00, 0xc7, 0x05, 0x02,
        0x01, 0x09, 0x00, 0x00, 0x00, 0x09, 0x00, 0x0f, 0x01, 0x15, 0x00, 0x01, 0x09, 0x00,
    ];
    let mut code = [&GDT_SETUP[..], rest].concat();
    code[BASE_16_23_AT] = base_16_23;
    code
}

/// A reload of the selector a data segment register already holds is
/// skipped in place only while its descriptor is unchanged: a changed base
/// must take effect. Builds a GDT whose selector 0x18 is data based at the
/// data area, loads DS with it, moves the descriptor's base by 16, reloads
/// DS twice, then copies DS to FS twice with PUSH/POP. (GNU as source in
/// the test's history; `as --32`.)
#[test]
fn segment_reload_sees_a_changed_descriptor() {
    let code = with_gdt(&[
        0xb8, 0x10, 0x00, 0x00, 0x00, 0x8e, 0xc0, 0xb8, 0x18, 0x00, 0x00, 0x00, 0x8e, 0xd8, 0x8b, 0x1d, 0x00, 0x00,
        0x00, 0x00, 0x26, 0x66, 0xc7, 0x05, 0x1a, 0x00, 0x09, 0x00, 0x10, 0x00, 0x8e, 0xd8, 0x8b, 0x0d, 0x00, 0x00,
        0x00, 0x00, 0x8e, 0xd8, 0x8b, 0x15, 0x04, 0x00, 0x00, 0x00, 0x1e, 0x0f, 0xa1, 0x64, 0x8b, 0x2d, 0x08, 0x00,
        0x00, 0x00, 0x1e, 0x0f, 0xa1, 0x64, 0x8b, 0x3d, 0x0c, 0x00, 0x00, 0x00, 0xb8, 0x10, 0x00, 0x00, 0x00, 0x8e,
        0xd8,
    ]);
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    for (k, b) in s.data.iter_mut().enumerate() {
        *b = k as u8;
    }
    let dword = |at: u32| u32::from_le_bytes([at as u8, at as u8 + 1, at as u8 + 2, at as u8 + 3]);
    let (out, st, stats) = run_snippet_outcome(&code, &s).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[EBX], dword(0), "DS based at the data area");
    assert_eq!(st.regs[ECX], dword(16), "the reload took the moved base");
    assert_eq!(st.regs[EDX], dword(20), "a reload of the same descriptor keeps it");
    assert_eq!(st.regs[5], dword(24), "FS loaded from DS's selector");
    assert_eq!(st.regs[7], dword(28));
    // The VMM ran MOV ES, the first two MOV DS and the final one, and the
    // first POP FS; the unchanged reloads were skipped in place.
    assert_eq!(callouts(&stats, iced_x86::Mnemonic::Mov), 4);
    assert_eq!(callouts(&stats, iced_x86::Mnemonic::Pop), 1);
}

/// A segment register toggled between two selectors (Linux's FS on every
/// system call: the user's null selector and the per-CPU segment) is
/// swapped in place after the VMM has run each load once; reads through
/// it and MOV r32, FS see the selector loaded last. Same GDT as above; the
/// loop loads FS from memory, adds fs:[4] to EBX and FS to ESI, and loads
/// the null selector, 50 times. (GNU as source in the test's history.)
#[test]
fn segment_toggle_swaps_in_place() {
    let code = with_gdt(&[
        0x66, 0xc7, 0x05, 0x00, 0x02, 0x09, 0x00, 0x18, 0x00, 0x31, 0xdb, 0x31, 0xf6, 0xb9, 0x32, 0x00, 0x00, 0x00,
        0x8e, 0x25, 0x00, 0x02, 0x09, 0x00, 0x64, 0x03, 0x1d, 0x04, 0x00, 0x00, 0x00, 0x8c, 0xe0, 0x01, 0xc6, 0x31,
        0xd2, 0x8e, 0xe2, 0x49, 0x75, 0xe8, 0x8c, 0xe0, 0xf4,
    ]);
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    for (k, b) in s.data.iter_mut().enumerate() {
        *b = k as u8;
    }
    let (out, st, stats) = run_snippet_outcome(&code, &s).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[EBX], 50u32.wrapping_mul(u32::from_le_bytes([4, 5, 6, 7])), "fs:[4] at base 0x80000 each time");
    assert_eq!(st.regs[6], 50 * 0x18, "MOV r32, FS after each load of 0x18");
    assert_eq!(st.regs[EAX], 0, "FS null at the end");
    // The VMM ran the first load of each selector; the other 98 swapped.
    assert_eq!(callouts(&stats, iced_x86::Mnemonic::Mov), 2);
}

/// VERW's result is repeated in place only for the same selector, CPL and
/// descriptor bytes: making the descriptor read-only must clear ZF.
/// (GNU as source in the test's history; `as --32`.)
#[test]
fn verw_sees_a_changed_descriptor() {
    let code = with_gdt_data_base(
        0x00,
        &[
            0x66, 0xc7, 0x05, 0x00, 0x02, 0x09, 0x00, 0x18, 0x00, 0x31, 0xc0, 0x0f, 0x00, 0x2d, 0x00, 0x02, 0x09, 0x00,
            0x0f, 0x94, 0xc0, 0xc6, 0x05, 0x1d, 0x00, 0x09, 0x00, 0x90, 0x31, 0xdb, 0x0f, 0x00, 0x2d, 0x00, 0x02, 0x09,
            0x00, 0x0f, 0x94, 0xc3, 0xba, 0x18, 0x00, 0x00, 0x00, 0x0f, 0x00, 0xea, 0x0f, 0x94, 0xc1, 0xc6, 0x05, 0x1d,
            0x00, 0x09, 0x00, 0x92, 0x0f, 0x00, 0x2d, 0x00, 0x02, 0x09, 0x00, 0x0f, 0x94, 0xc5,
        ],
    );
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[EAX] & 0xFF, 1, "writable data: ZF set");
    assert_eq!(st.regs[EBX] & 0xFF, 0, "made read-only: ZF clear");
    assert_eq!(st.regs[ECX] & 0xFFFF, 0x0100, "unchanged: clear again (in place); writable again: set");
    assert_eq!(callouts(&stats, iced_x86::Mnemonic::Verw), 3, "the third VERW ran in place");
}

/// SGDT, SIDT, SLDT, STR and SMSW run in place (no VMM exit) and store what
/// the VMM holds, including a GDTR loaded in the same run. (GNU as source
/// in the test's history; `as --32`.)
#[test]
fn store_system_registers_in_place() {
    let code = with_gdt(&[
        0xbe, 0x00, 0x00, 0x08, 0x00, 0x0f, 0x01, 0x06, 0x0f, 0x01, 0x4e, 0x08, 0x0f, 0x00, 0xc0, 0x0f, 0x00, 0xcb,
        0x0f, 0x01, 0xe1, 0x0f, 0x01, 0x66, 0x10, 0x66, 0xc7, 0x05, 0x00, 0x01, 0x09, 0x00, 0x17, 0x00, 0x0f, 0x01,
        0x15, 0x00, 0x01, 0x09, 0x00, 0x0f, 0x01, 0x46, 0x14, 0x0f, 0x20, 0xc2, 0xf4,
    ]);
    let mut s = state([(EAX, 0xFFFF_FFFF), (ECX, 0), (EDX, 0)]);
    s.data = [0xAA; 256];
    let (out, st, stats) = run_snippet_outcome(&code, &s).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    let d = &st.data;
    let le16 = |k: usize| u16::from_le_bytes([d[k], d[k + 1]]);
    let le32 = |k: usize| u32::from_le_bytes([d[k], d[k + 1], d[k + 2], d[k + 3]]);
    assert_eq!((le16(0), le32(2)), (0x1F, 0x90000), "sgdt");
    assert_eq!(d[6], 0xAA, "sgdt stores 6 bytes");
    assert_eq!(st.regs[EAX], 0, "sldt eax: the null LDT selector, zero-extended");
    assert_eq!(st.regs[EBX], 0, "str ebx");
    assert_eq!(st.regs[ECX], st.regs[EDX], "smsw ecx: all of CR0");
    assert_eq!(le16(16), st.regs[EDX] as u16, "smsw m16");
    assert_eq!(d[18], 0xAA, "smsw m16 stores 2 bytes");
    assert_eq!((le16(20), le32(22)), (0x17, 0x90000), "sgdt after lgdt");
    for m in [
        iced_x86::Mnemonic::Sgdt,
        iced_x86::Mnemonic::Sidt,
        iced_x86::Mnemonic::Sldt,
        iced_x86::Mnemonic::Str,
        iced_x86::Mnemonic::Smsw,
    ] {
        assert_eq!(callouts(&stats, m), 0, "{m:?} left translated code");
    }
}

/// 16-bit addressing (0x67) in 32-bit code: BX+DI+disp wraps at 64 KiB,
/// [disp16] and the moffs16 form. (GNU as source in the test's history.)
#[test]
fn sixteen_bit_addressing_in_32bit_code() {
    let mut code = vec![
        0xb8, 0x78, 0x56, 0x34, 0x12, 0xbb, 0x00, 0x90, 0x00, 0x00, 0xbf, 0x00, 0x01, 0x00, 0x00, 0x67, 0x89, 0x41,
        0x04, 0x67, 0x03, 0x41, 0x04, 0x67, 0x8b, 0x0e, 0x04, 0x91, 0xbb, 0xf0, 0xff, 0x00, 0x00, 0xbf, 0x20, 0x00,
        0x00, 0x00, 0xba, 0xbe, 0xba, 0xfe, 0xca, 0x67, 0x89, 0x51, 0x04, 0x8b, 0x35, 0x14, 0x00, 0x00, 0x00,
    ];
    code.extend_from_slice(&[0x89, 0xc5]); // mov ebp, eax
    code.extend_from_slice(&[0x67, 0xa1, 0x04, 0x91]); // mov eax, [0x9104] (moffs16)
    code.push(0xf4);
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[5], 0x2468_ACF0, "add eax, [bx+di+4]");
    assert_eq!(st.regs[ECX], 0x1234_5678, "mov ecx, [0x9104]");
    assert_eq!(st.regs[6], 0xCAFE_BABE, "[bx+di+4] wrapped to 0x14");
    assert_eq!(st.regs[EAX], 0x1234_5678, "moffs16");
    assert_eq!(stats.exceptions, 0);
}

/// String instructions and XLAT with 16-bit addressing (0x67) in 32-bit
/// code: SI/DI/CX count and wrap, their upper halves untouched; REPE CMPS
/// ends on the count with ZF set. (GNU as source in the test's history.)
#[test]
fn sixteen_bit_string_instructions_in_32bit_code() {
    let code = [
        0xc7, 0x05, 0x00, 0x90, 0x00, 0x00, 0x41, 0x42, 0x43, 0x44, 0xbe, 0x00, 0x90, 0xaa, 0xaa, 0xbf, 0x00, 0x91,
        0xbb, 0xbb, 0xb9, 0x04, 0x00, 0xcc, 0xcc, 0x67, 0xf3, 0xa4, 0x89, 0xf5, 0xbe, 0x00, 0x90, 0xaa, 0xaa, 0xbf,
        0x00, 0x91, 0xbb, 0xbb, 0xb9, 0x04, 0x00, 0x00, 0x00, 0x67, 0xf3, 0xa6, 0x0f, 0x94, 0xc2, 0xbb, 0x00, 0x90,
        0x00, 0x00, 0xb8, 0x02, 0x00, 0x00, 0x00, 0x67, 0xd7, 0xf4,
    ];
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(stats.exceptions, 0);
    assert_eq!(st.regs[5], 0xAAAA_9004, "rep movsb: ESI's upper half kept, SI advanced by 4");
    assert_eq!(st.regs[EDX] & 0xFF, 1, "repe cmpsb over the copy: equal (ZF)");
    assert_eq!(st.regs[7], 0xBBBB_9104, "cmpsb: DI advanced by 4");
    assert_eq!(st.regs[ECX], 0, "count exhausted");
    assert_eq!(st.regs[EAX] & 0xFF, 0x43, "xlat [bx+al]");
}

/// FXSAVE stores bytes 0-287 of its area (bytes 288-511 are reserved or
/// software's: left alone) and raises #GP(0) on a misaligned area.
#[test]
fn fxsave_area_and_alignment() {
    // fxsave [esi - 272] ; hlt: the area's byte 288 is data[16].
    let code = [0x0f, 0xae, 0x86, 0xf0, 0xfe, 0xff, 0xff, 0xf4];
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    s.data = [0xAA; 256];
    let (out, st, _) = run_snippet_outcome(&code, &s).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert!(st.data[16..].iter().all(|&b| b == 0xAA), "bytes 288.. untouched: {:02x?}", &st.data[16..32]);
    assert!(st.data[..16].iter().any(|&b| b != 0xAA), "XMM7's image (bytes 272-287) stored");
    // fxsave [esi+8]: not 16-byte aligned.
    let (out, _, _) = run_snippet_outcome(&[0x0f, 0xae, 0x46, 0x08, 0xf4], &s).expect("runs");
    assert!(matches!(out, RunOutcome::Exception { vector: 13, error_code: Some(0), .. }), "{out:?}");
}

/// MASKMOVQ stores the bytes its mask selects to DS:[EDI]; a misaligned
/// FXRSTOR (host #GP) is the guest's #GP(0) at that instruction.
#[test]
fn maskmovq_and_misaligned_fxrstor() {
    let code = [
        0x89, 0xf7, 0xc7, 0x06, 0x44, 0x33, 0x22, 0x11, 0xc7, 0x46, 0x04, 0x88, 0x77, 0x66, 0x55, 0xc7, 0x46, 0x08,
        0x00, 0x80, 0x00, 0x80, 0xc7, 0x46, 0x0c, 0x80, 0x00, 0x80, 0x00, 0x0f, 0x6f, 0x4e, 0x08, 0xc7, 0x46, 0x10,
        0xdd, 0xcc, 0xbb, 0xaa, 0xc7, 0x46, 0x14, 0x11, 0x00, 0xff, 0xee, 0x0f, 0x6f, 0x46, 0x10, 0x0f, 0xf7, 0xc1,
        0x0f, 0x77, 0x0f, 0xae, 0x4e, 0x08, 0xf4,
    ];
    let (out, st, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(&st.data[..8], &[0x44, 0xCC, 0x22, 0xAA, 0x11, 0x77, 0xFF, 0x55], "maskmovq ({out:?})");
    let fxrstor_at = btvisor::snippet::SNIPPET_CODE_ADDR + code.len() as u32 - 5;
    assert!(
        matches!(out, RunOutcome::Exception { vector: 13, error_code: Some(0), eip } if eip == fxrstor_at),
        "{out:?}"
    );
}

/// Virtual-8086 mode is not implemented: an IRET into it ends the run with
/// an error naming the feature (never a loop).
#[test]
fn iret_to_virtual_8086_mode_is_reported() {
    let mut code = Vec::new();
    for _ in 0..6 {
        code.extend_from_slice(&[0x6a, 0x00]); // GS FS DS ES SS ESP
    }
    code.extend_from_slice(&[0x68, 0x02, 0x00, 0x02, 0x00]); // EFLAGS: VM
    code.extend_from_slice(&[0x6a, 0x00, 0x6a, 0x00, 0xcf, 0xf4]); // CS, EIP, iret
    let (out, _, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Unsupported(f) if f.contains("virtual-8086")), "{out:?}");
}

/// LOOP and JCXZ with the 0x67 prefix count and test CX alone (ECX's
/// upper half is neither decremented nor tested). (GNU as source in the
/// test's history.)
#[test]
fn loop_and_jcxz_with_cx() {
    let code = [
        0xb9, 0x03, 0x00, 0xaa, 0xaa, 0x31, 0xc0, 0x40, 0x67, 0xe2, 0xfc, 0x89, 0xcb, 0xb9, 0x00, 0x00, 0x55, 0x55,
        0xba, 0x07, 0x00, 0x00, 0x00, 0x67, 0xe3, 0x05, 0xba, 0x09, 0x00, 0x00, 0x00, 0xf4,
    ];
    let (out, st, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert_eq!(st.regs[EAX], 3, "loop ran CX = 3 times");
    assert_eq!(st.regs[EBX], 0xAAAA_0000, "CX counted down, ECX's upper half kept");
    assert_eq!(st.regs[EDX], 7, "jcxz taken: CX is 0 though ECX is not");
}

/// The user snippet world really runs the code at CPL 3 under paging: a
/// privileged instruction is #GP(0) at its EIP, the data area's physical
/// address is not mapped (#PF), and the stack and data area are reached
/// through their linear mappings.
#[test]
fn user_snippet_world_is_ring3_under_paging() {
    use btvisor::snippet::{SnippetError, SnippetWorld, run_snippet_in};
    let w = SnippetWorld::User;
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    s.regs[4] = w.stack_top();
    s.regs[6] = w.data_addr();
    // mov eax, cr0
    match run_snippet_in(w, &[0x0F, 0x20, 0xC0], &s, false) {
        Err(SnippetError::Vector { vector: 13, frame }) => {
            assert_eq!(frame[..3], [0, w.code_addr(), 0x1B], "#GP(0) at the MOV, from CS 0x1B")
        }
        other => panic!("{other:?}"),
    }
    // mov eax, [SNIPPET_DATA_ADDR]: not mapped at CPL 3.
    let mut code = vec![0xA1];
    code.extend_from_slice(&SNIPPET_DATA_ADDR.to_le_bytes());
    match run_snippet_in(w, &code, &s, true) {
        Err(SnippetError::Vector { vector: 14, frame }) => assert_eq!(frame[..2], [4, w.code_addr()], "#PF(U)"),
        other => panic!("{other:?}"),
    }
    // push 0x12345678 ; pop ecx ; push ecx ; mov [esi+4], ecx ; pushfd ; pop edx
    let code = [0x68, 0x78, 0x56, 0x34, 0x12, 0x59, 0x51, 0x89, 0x4E, 0x04, 0x9C, 0x5A];
    let st = run_snippet_in(w, &code, &s, false).expect("runs to its end");
    assert_eq!(st.regs[ECX], 0x1234_5678);
    assert_eq!(st.regs[4], w.stack_top() - 4, "user ESP from the gate's frame");
    assert_eq!(st.data[4..8], 0x1234_5678u32.to_le_bytes());
    assert_eq!(st.regs[EDX] & 0x3000, 0, "IOPL 0");
    assert_eq!(st.eflags, st.regs[EDX], "EFLAGS from the gate's frame");
}

// The host return stack (`exec::return_stack`): guest CALL/RET as host
// CALL/RET, which must stay correct when guests do not pair them.

#[test]
fn calls_without_returns_overflow_the_host_return_stack_safely() {
    //    mov ecx, 100000
    // l: call next          ; a host CALL that nothing returns from
    // next: pop eax
    //    dec ecx ; jnz l
    let code = [0xB9, 0xA0, 0x86, 0x01, 0x00, 0xE8, 0, 0, 0, 0, 0x58, 0x49, 0x75, 0xF7, 0xF4];
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert!(stats.return_stack_resets > 0, "the host return stack never filled up");
    assert_eq!((st.regs[ECX], st.regs[EAX]), (0, SNIPPET_CODE_ADDR + 10));
    assert_eq!(st.regs[4], SNIPPET_STACK_TOP);
}

#[test]
fn deep_recursion_returns_through_and_past_the_host_return_stack() {
    //    mov ecx, 50000 ; xor eax, eax ; call f ; hlt
    // f: inc eax ; dec ecx ; jz done ; call f
    // done: ret
    let code = [
        0xB9, 0x50, 0xC3, 0x00, 0x00, 0x31, 0xC0, 0xE8, 0x01, 0, 0, 0, 0xF4, 0x40, 0x49, 0x74, 0x05, 0xE8, 0xF7, 0xFF,
        0xFF, 0xFF, 0xC3,
    ];
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 12, interrupts_enabled: false });
    assert!(stats.return_stack_resets > 0, "the recursion never filled the host return stack");
    assert_eq!((st.regs[EAX], st.regs[ECX]), (50_000, 0));
    assert_eq!(st.regs[4], SNIPPET_STACK_TOP);
}

#[test]
fn a_rewritten_return_address_is_followed() {
    //    mov ecx, 3
    // l: call g
    //    mov eax, 1 ; hlt   ; the return site, never reached
    // back: inc ebx ; dec ecx ; jnz l ; hlt
    // g: mov dword [esp], back ; ret
    let back = (SNIPPET_CODE_ADDR + 16).to_le_bytes();
    let code = [
        0xB9, 0x03, 0x00, 0x00, 0x00, 0xE8, 0x0B, 0, 0, 0, 0xB8, 0x01, 0, 0, 0, 0xF4, 0x43, 0x49, 0x75, 0xF1, 0xF4,
        0xC7, 0x04, 0x24, back[0], back[1], back[2], back[3], 0xC3,
    ];
    let (out, st, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 20, interrupts_enabled: false });
    assert_eq!((st.regs[EAX], st.regs[EBX], st.regs[ECX]), (0, 3, 0));
}

#[test]
fn a_return_that_misses_the_host_stack_enters_the_continuation() {
    //    mov ecx, 3
    // l: call g
    // c: inc eax          ; the call's continuation, inside the block of l
    //    dec ecx ; jnz l ; hlt
    // g: mov ebx, cr0     ; the VMM's: translated code leaves, and the host
    //    ret              ; return stack with it, so RET looks c up
    let code =
        [0xB9, 0x03, 0x00, 0x00, 0x00, 0xE8, 0x05, 0, 0, 0, 0x40, 0x49, 0x75, 0xF7, 0xF4, 0x0F, 0x20, 0xC3, 0xC3];
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 14, interrupts_enabled: false });
    assert_eq!((st.regs[EAX], st.regs[ECX]), (3, 0));
    assert!(stats.continuation_entries > 0, "the return never entered at the continuation");
}

#[test]
fn a_store_into_a_continuation_is_seen_by_the_next_return() {
    // As above, but on its second call g rewrites the continuation's
    // `inc eax` into `inc edx`: the second and third returns run that.
    //    mov ecx, 3
    // l: call g
    // c: inc eax
    //    dec ecx ; jnz l ; hlt
    // g: cmp ecx, 2 ; jne skip
    //    mov byte [c], 0x42
    // skip: mov ebx, cr0 ; ret
    let c = (SNIPPET_CODE_ADDR + 10).to_le_bytes();
    let code = [
        0xB9, 0x03, 0x00, 0x00, 0x00, 0xE8, 0x05, 0, 0, 0, 0x40, 0x49, 0x75, 0xF7, 0xF4, 0x83, 0xF9, 0x02, 0x75, 0x07,
        0xC6, 0x05, c[0], c[1], c[2], c[3], 0x42, 0x0F, 0x20, 0xC3, 0xC3,
    ];
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Halted { eip: SNIPPET_CODE_ADDR + 14, interrupts_enabled: false });
    assert_eq!((st.regs[EAX], st.regs[EDX], st.regs[ECX]), (1, 2, 0));
    assert!(stats.continuation_entries > 0 && stats.smc_pages > 0);
}

#[test]
fn continuations_entered_after_a_first_chain_exit_in_both_worlds() {
    //    mov ecx, 3
    // l: call g
    //    inc eax ; dec ecx ; jnz l ; jmp end
    // g: jmp g2           ; untranslated the first time: translated code
    // g2: ret             ;   leaves, and the RET looks its return site up
    // end:
    let code =
        [0xB9, 0x03, 0x00, 0x00, 0x00, 0xE8, 0x06, 0, 0, 0, 0x40, 0x49, 0x75, 0xF7, 0xEB, 0x03, 0xEB, 0x00, 0xC3];
    let input = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    let (_, st, stats) = run_snippet_outcome(&code, &input).expect("runs");
    assert_eq!((st.regs[EAX], st.regs[ECX]), (3, 0));
    assert!(stats.continuation_entries > 0);
    // At ring 3 with paging the entry stub confirms the code page first.
    let mut input = input;
    input.regs[4] = SNIPPET_USER_STACK_TOP;
    let st = run_snippet_in(SnippetWorld::User, &code, &input, false).expect("runs");
    assert_eq!((st.regs[EAX], st.regs[ECX]), (3, 0));
}

/// Accesses through a segment with a base and a 4 GiB limit (the TLS GS,
/// Linux's per-CPU FS) add the base without a limit check, and the same
/// translation form faults when the register is null. Loads GS with the
/// data area's selector, reads gs:[4] and gs:[esi+8], loads the null
/// selector and reads gs:[4]: #GP(0) there.
#[test]
fn based_segment_accesses_and_null_faults() {
    let code = with_gdt(&[
        0xB8, 0x18, 0x00, 0x00, 0x00, // mov eax, 0x18
        0x8E, 0xE8, // mov gs, eax
        0x65, 0x8B, 0x1D, 0x04, 0x00, 0x00, 0x00, // mov ebx, gs:[4]
        0xBE, 0x00, 0x00, 0x00, 0x00, // mov esi, 0
        0x65, 0x8B, 0x4E, 0x08, // mov ecx, gs:[esi+8]
        0x31, 0xC0, // xor eax, eax
        0x8E, 0xE8, // mov gs, eax
        0x65, 0x8B, 0x15, 0x04, 0x00, 0x00, 0x00, // mov edx, gs:[4]
    ]);
    let fault_at = SNIPPET_CODE_ADDR + code.len() as u32 - 7;
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    for (k, b) in s.data.iter_mut().enumerate() {
        *b = k as u8;
    }
    let (out, st, _) = run_snippet_outcome(&code, &s).expect("runs");
    assert_eq!(out, RunOutcome::Exception { vector: 13, error_code: Some(0), eip: fault_at });
    assert_eq!(st.regs[EBX], u32::from_le_bytes([4, 5, 6, 7]));
    assert_eq!(st.regs[ECX], u32::from_le_bytes([8, 9, 10, 11]));
    assert_eq!(st.regs[EDX], 0, "the faulting load wrote nothing");
}

// Leaf functions inlined at indirect CALLs (`exec::inline_calls`): the
// guard on the target, a callee that rewrites its return address, and a
// store into the inlined callee's code.

/// `main` at the code's start ending in a JMP to the end of the code, and
/// each of `callees` on the next page, 8 bytes apart: the code and the
/// callees' addresses, for code at `base`.
fn with_callees(base: u32, main: impl Fn(&[u32]) -> Vec<u8>, callees: &[&[u8]]) -> Vec<u8> {
    const CALLEES: usize = 0x1000;
    let at: Vec<u32> = (0..callees.len()).map(|k| base + (CALLEES + 8 * k) as u32).collect();
    let mut code = main(&at);
    let end = (CALLEES + 8 * callees.len()) as u32;
    let jmp_from = code.len() as u32 + 5;
    code.push(0xE9);
    code.extend_from_slice(&end.wrapping_sub(jmp_from).to_le_bytes());
    code.resize(CALLEES, 0xCC);
    for c in callees {
        let mut c = c.to_vec();
        c.resize(8, 0xCC);
        code.extend_from_slice(&c);
    }
    code
}

/// mov ecx, 1000 ; l: mov edx, f1 ; test cl, 1 ; jz 1f ; mov edx, f2 ;
/// 1: call edx ; dec ecx ; jnz l — with f1: add ebx, 1 ; ret and
/// f2: add ebx, 100 ; ret: one site, two targets alternating.
fn alternating_calls(base: u32) -> Vec<u8> {
    let main = |f: &[u32]| {
        let mut c = vec![0xB9, 0xE8, 0x03, 0x00, 0x00, 0xBA];
        c.extend_from_slice(&f[0].to_le_bytes());
        c.extend_from_slice(&[0xF6, 0xC1, 0x01, 0x74, 0x05, 0xBA]);
        c.extend_from_slice(&f[1].to_le_bytes());
        c.extend_from_slice(&[0xFF, 0xD2, 0x49, 0x75, 0xEC]);
        c
    };
    with_callees(base, main, &[&[0x83, 0xC3, 0x01, 0xC3], &[0x83, 0xC3, 0x64, 0xC3]])
}

#[test]
fn an_inlined_callee_runs_only_for_its_own_target() {
    use btvisor::snippet::{SnippetWorld, run_snippet_in};
    let code = alternating_calls(SNIPPET_CODE_ADDR);
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert!(stats.inlined_calls > 0, "nothing was inlined");
    assert_eq!((st.regs[EBX], st.regs[ECX]), (500 * 100 + 500, 0));
    assert_eq!(st.regs[4], SNIPPET_STACK_TOP);
    // Ring 3 under paging: the callee's page is another linear page too.
    let w = SnippetWorld::User;
    let mut s = state([(EAX, 0), (ECX, 0), (EDX, 0)]);
    s.regs[4] = w.stack_top();
    s.regs[6] = w.data_addr();
    let st = run_snippet_in(w, &alternating_calls(w.code_addr()), &s, false).expect("runs to its end");
    assert_eq!((st.regs[EBX], st.regs[ECX]), (500 * 100 + 500, 0));
}

#[test]
fn an_inlined_callee_that_rewrites_its_return_address() {
    // mov ecx, 100 ; l: mov edx, g ; call edx ; mov eax, 1 ; jmp end (never)
    // back: inc ebx ; dec ecx ; jnz l — with g: mov dword [esp], back ; ret
    let back = SNIPPET_CODE_ADDR + 22;
    let main = |f: &[u32]| {
        let mut c = vec![0xB9, 0x64, 0x00, 0x00, 0x00, 0xBA];
        c.extend_from_slice(&f[0].to_le_bytes());
        c.extend_from_slice(&[0xFF, 0xD2, 0xB8, 0x01, 0x00, 0x00, 0x00, 0xE9]);
        c.extend_from_slice(&(0x1008u32 - 22).to_le_bytes());
        c.extend_from_slice(&[0x43, 0x49, 0x75, 0xEB]);
        c
    };
    let mut g = vec![0xC7, 0x04, 0x24];
    g.extend_from_slice(&back.to_le_bytes());
    g.push(0xC3);
    let code = with_callees(SNIPPET_CODE_ADDR, main, &[&g]);
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert!(stats.inlined_calls > 0, "nothing was inlined");
    assert_eq!((st.regs[EAX], st.regs[EBX], st.regs[ECX]), (0, 100, 0));
    assert_eq!(st.regs[4], SNIPPET_STACK_TOP);
}

#[test]
fn a_store_into_an_inlined_callee_is_seen() {
    // mov ecx, 100 ; l: mov edx, f ; call edx ; cmp ecx, 50 ; jne 1f ;
    // mov byte [f+2], 10 ; 1: dec ecx ; jnz l — with f: add ebx, 1 ; ret,
    // which becomes add ebx, 10 after the call with ECX = 50.
    let main = |f: &[u32]| {
        let mut c = vec![0xB9, 0x64, 0x00, 0x00, 0x00, 0xBA];
        c.extend_from_slice(&f[0].to_le_bytes());
        c.extend_from_slice(&[0xFF, 0xD2, 0x83, 0xF9, 0x32, 0x75, 0x07, 0xC6, 0x05]);
        c.extend_from_slice(&(f[0] + 2).to_le_bytes());
        c.extend_from_slice(&[0x0A, 0x49, 0x75, 0xEA]);
        c
    };
    let code = with_callees(SNIPPET_CODE_ADDR, main, &[&[0x83, 0xC3, 0x01, 0xC3]]);
    let (out, st, stats) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert!(matches!(out, RunOutcome::Halted { .. }), "{out:?}");
    assert!(stats.inlined_calls > 0, "nothing was inlined");
    assert_eq!((st.regs[EBX], st.regs[ECX]), (51 + 49 * 10, 0));
}

#[test]
fn an_execution_breakpoint_set_after_translation_is_taken() {
    //    mov ecx, 3
    // l: call f ; dec ecx ; jnz l          ; f's block is translated and chained
    //    mov eax, f+1 ; mov dr0, eax ; mov eax, 1 ; mov dr7, eax   ; L0, execute
    //    call f                             ; #DB at f+1, inside f's block
    //    hlt
    // f: inc ebx ; nop ; ret
    let f = SNIPPET_CODE_ADDR + 35;
    let mut code = vec![0xB9, 0x03, 0x00, 0x00, 0x00, 0xE8];
    code.extend_from_slice(&(f - (SNIPPET_CODE_ADDR + 10)).to_le_bytes());
    code.extend_from_slice(&[0x49, 0x75, 0xF8, 0xB8]);
    code.extend_from_slice(&(f + 1).to_le_bytes());
    code.extend_from_slice(&[0x0F, 0x23, 0xC0, 0xB8, 0x01, 0x00, 0x00, 0x00, 0x0F, 0x23, 0xF8, 0xE8]);
    code.extend_from_slice(&(f - (SNIPPET_CODE_ADDR + 34)).to_le_bytes());
    code.push(0xF4);
    assert_eq!(code.len() as u32, f - SNIPPET_CODE_ADDR);
    code.extend_from_slice(&[0x43, 0x90, 0xC3]);
    let (out, st, _) = run_snippet_outcome(&code, &state([(EAX, 0), (ECX, 0), (EDX, 0)])).expect("runs");
    assert_eq!(out, RunOutcome::Exception { vector: 1, error_code: None, eip: f + 1 });
    assert_eq!(st.regs[EBX], 4, "three calls, and the INC of the fourth before the breakpoint");
}
