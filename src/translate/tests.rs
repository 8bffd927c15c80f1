//! Translator tests: golden host code for representative guest
//! instructions, and the mechanical safety check of DESIGN.md ("every
//! emitted block can be checked mechanically") run over every block of the
//! committed guest images and over random guest bytes.

use std::collections::{HashSet, VecDeque};

use iced_x86::{
    CodeSize, ConditionCode, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, Mnemonic, OpAccess, OpKind, Register,
};

use super::*;
use crate::cpu::{Mode, OFF_EIP, OFF_EXIT_ARG};
use crate::decode::{GuestBlock, MAX_BLOCK_INSNS, Reach, decode_block, decode_block_at_cpl};

/// Stand-in host addresses: the code is translated and decoded, never run.
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
/// Guest address of the code of the golden tests.
const GUEST_AT: u32 = 0x1000;
const POLL: &str = "mov r13d,[r15-2000h]";

fn opts(mode: Mode) -> Options {
    Options {
        inline_lookup: true,
        mode,
        icount: false,
        kick_check: false,
        pause_gate: false,
        probe: None,
        learn_calls: false,
        continuation_entries: false,
    }
}

/// Guest memory with `guest` at `GUEST_AT`.
fn guest_mem(guest: &[u8]) -> Vec<u8> {
    let mut mem = vec![0u8; GUEST_AT as usize];
    mem.extend_from_slice(guest);
    mem
}

fn translate_at(mem: &[u8], eip: u32, cpl: u8, mode: Mode) -> (GuestBlock, Translation) {
    translate_at_soft(mem, eip, cpl, mode, false)
}

/// `translate_at`, optionally with every eligible access in the soft form.
fn translate_at_soft(mem: &[u8], eip: u32, cpl: u8, mode: Mode, soft: bool) -> (GuestBlock, Translation) {
    let b = decode_block_at_cpl(mem, 0, eip, MAX_BLOCK_INSNS, cpl);
    let tr = Translator::new(HOST_BASE, EXITS, 0, opts(mode), mem);
    let t = if soft { tr.with_soft_all() } else { tr }.translate(&b);
    (b, t)
}

fn translate_guest(guest: &[u8]) -> (GuestBlock, Translation) {
    let mem = guest_mem(guest);
    let b = decode_block(&mem, 0, GUEST_AT, 64);
    let t = Translator::new(HOST_BASE, EXITS, 0, opts(Mode::default()), &mem).translate(&b);
    (b, t)
}

/// Decode `code` (a block at `HOST_BASE`): (offset, instruction) pairs.
fn decode_host(code: &[u8]) -> Vec<(usize, Instruction)> {
    let mut d = Decoder::with_ip(64, code, HOST_BASE as u64, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let off = d.position();
        out.push((off, d.decode()));
    }
    out
}

fn fmt(i: &Instruction) -> String {
    let mut s = String::new();
    IntelFormatter::new().format(i, &mut s);
    s
}

/// Text of the host code in `[from, to)` of the block.
fn disasm(code: &[u8], from: usize, to: usize) -> Vec<String> {
    decode_host(code).into_iter().filter(|(o, _)| *o >= from && *o < to).map(|(_, i)| fmt(&i)).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// Host text of the first guest instruction of `guest` (followed by HLT,
/// which ends the block with an emulate exit).
fn first_insn(guest: &[u8]) -> Vec<String> {
    let mut g = guest.to_vec();
    g.push(0xF4);
    let (b, t) = translate_guest(&g);
    assert_eq!(b.insns.len(), 2, "{guest:02x?} should decode as one instruction");
    let all = disasm(&t.code, 0, t.code.len());
    assert_eq!(all[0], POLL);
    // HLT: emulate exit at its EIP.
    let hlt = disasm(&t.code, t.insn_map[2].host_off as usize, t.code.len());
    assert_eq!(hlt, [format!("mov dword ptr [r14+20h],{:X}h", GUEST_AT as usize + guest.len()), emulate_jmp()]);
    disasm(&t.code, t.insn_map[1].host_off as usize, t.insn_map[2].host_off as usize)
}

/// Host text of a whole block (without the poll load, which it has unless
/// it is a leaf return: `needs_poll`).
fn whole_block(guest: &[u8]) -> Vec<String> {
    let (b, t) = translate_guest(guest);
    let all = disasm(&t.code, 0, t.code.len());
    if needs_poll(&b) {
        assert_eq!(all[0], POLL);
        all[1..].to_vec()
    } else {
        assert_ne!(all[0], POLL);
        all
    }
}

#[test]
fn only_instructions_with_a_soft_form_have_one() {
    let form = |guest: &[u8], mode: Mode| {
        let b = decode_block(&guest_mem(guest), 0, GUEST_AT, 1);
        has_soft_form(&b.insns[0], mode)
    };
    let flat = Mode::default();
    assert!(form(&[0x8B, 0x03], flat), "mov eax, [ebx]");
    assert!(form(&[0x01, 0x44, 0x24, 0x08], flat), "add [esp+8], eax");
    assert!(form(&[0xF3, 0xA5], flat), "rep movsd");
    assert!(form(&[0xAB], flat), "stosd");
    assert!(!form(&[0xAD], flat), "lodsd: no soft form");
    assert!(!form(&[0x50], flat), "push eax");
    assert!(!form(&[0xFF, 0x30], flat), "push [eax]");
    assert!(!form(&[0xFF, 0x10], flat), "call [eax]");
    assert!(!form(&[0x8D, 0x03], flat), "lea");
    assert!(!form(&[0x89, 0xC3], flat), "no memory operand");
    assert!(!form(&[0x67, 0x8B, 0x07], flat), "16-bit addressing");
    let gs_based = Mode(1 << (8 + crate::cpu::SEG_GS) | Mode::GS_BASED); // (non-flat bits from bit 8)
    assert!(!form(&[0x65, 0x8B, 0x03], gs_based), "mov eax, gs:[ebx] with a based GS");
    assert!(form(&[0x8B, 0x03], gs_based), "DS still flat");
}

#[test]
fn leaf_returns_have_no_poll() {
    let poll = |guest: &[u8]| {
        // As the engine decodes: past side exits and calls.
        let mem = guest_mem(guest);
        let reach = Reach { side_exits: 8, calls: 8 };
        let b = crate::decode::decode_superblock(&mem, 0, GUEST_AT, 64, 0, 32, reach);
        let t = Translator::new(HOST_BASE, EXITS, 0, opts(Mode::default()), &mem).translate(&b);
        assert_eq!(needs_poll(&b), disasm(&t.code, 0, t.code.len())[0] == POLL);
        needs_poll(&b)
    };
    assert!(!poll(&[0xC3]), "ret");
    assert!(!poll(&[0xC2, 0x08, 0x00]), "ret 8");
    // cmp eax, ecx ; jb +1 ; inc eax ; ret: forward side exit.
    assert!(!poll(&[0x39, 0xC8, 0x72, 0x01, 0x40, 0xC3]));
    // dec eax ; jnz -3 (to itself, at the block start) ; ret: a loop.
    assert!(poll(&[0x48, 0x75, 0xFD, 0xC3]));
    // dec eax ; jnz -8 (below the block) ; ret.
    assert!(poll(&[0x48, 0x75, 0xF8, 0xC3]));
    // loop -2 ; ret.
    assert!(poll(&[0xE2, 0xFE, 0xC3]));
    // call +0 ; ret: a call (its continuation is in the block).
    assert!(poll(&[0xE8, 0x00, 0x00, 0x00, 0x00, 0xC3]));
    // call eax / jmp eax / plain jmp / a block cut by HLT.
    assert!(poll(&[0xFF, 0xD0]));
    assert!(poll(&[0xFF, 0xE0]));
    assert!(poll(&[0xEB, 0x10]));
    assert!(poll(&[0x40, 0xF4]));
}

/// A u32 as iced's Intel formatter prints it.
fn ihex(v: u32) -> String {
    if v < 10 {
        return v.to_string();
    }
    let h = format!("{v:X}h");
    if h.starts_with(|c: char| c.is_ascii_alphabetic()) { format!("0{h}") } else { h }
}

fn jmp_to(target: usize) -> String {
    format!("jmp {target:016X}h")
}
fn emulate_jmp() -> String {
    jmp_to(EXITS.emulate)
}
fn host(off: usize) -> usize {
    HOST_BASE + off
}

// ---------------------------------------------------------------------------
// Golden tests
// ---------------------------------------------------------------------------

#[test]
fn golden_memory_operands_go_through_gs_addr32() {
    // add eax, [ebx+esi*4+8]
    let g = [0x03, 0x44, 0xB3, 0x08];
    assert_eq!(first_insn(&g), ["add eax,gs:[ebx+esi*4+8]"]);
    let (_, t) = translate_guest(&[0x03, 0x44, 0xB3, 0x08, 0xF4]);
    assert_eq!(&t.code[7..13], &[0x65, 0x67, 0x03, 0x44, 0xB3, 0x08], "two prefix bytes, rest copied");
    // mov eax, [0x1234]: relative to the window base below 2 GiB, never
    // RIP-relative; above, the SIB absolute form under GS.
    let g = [0x8B, 0x05, 0x34, 0x12, 0x00, 0x00];
    assert_eq!(first_insn(&g), ["mov eax,[r15+1234h]"]);
    let (_, t) = translate_guest(&[0x8B, 0x05, 0x34, 0x12, 0x00, 0x00, 0xF4]);
    assert_eq!(&t.code[7..14], &[0x41, 0x8B, 0x87, 0x34, 0x12, 0x00, 0x00], "[r15+disp32]");
    assert_eq!(first_insn(&[0x8B, 0x05, 0x00, 0x00, 0x00, 0x80]), ["mov eax,gs:[80000000h]"]);
    // mov eax, [0x12345678] (moffs A1) becomes a MOV relative to R15; above
    // 2 GiB it stays a moffs32 under addr32.
    assert_eq!(first_insn(&[0xA1, 0x78, 0x56, 0x34, 0x12]), ["mov eax,[r15+12345678h]"]);
    assert_eq!(first_insn(&[0xA1, 0x78, 0x56, 0x34, 0xC2]), ["addr32 mov eax,gs:[0C2345678h]"]);
    // mov [0x12345678], al (moffs A2)
    assert_eq!(first_insn(&[0xA2, 0x78, 0x56, 0x34, 0x12]), ["mov [r15+12345678h],al"]);
    assert_eq!(first_insn(&[0xA2, 0x78, 0x56, 0x34, 0x92]), ["addr32 mov gs:[92345678h],al"]);
    // [reg] without displacement is [r15+reg]; LEA and BT with a register
    // bit offset keep 32-bit addressing.
    assert_eq!(first_insn(&[0x8B, 0x03]), ["mov eax,[r15+rbx]"]);
    assert_eq!(first_insn(&[0x8B, 0x43, 0x04]), ["mov eax,gs:[ebx+4]"]);
    assert_eq!(first_insn(&[0x8D, 0x03]), ["lea eax,[ebx]"]);
    assert_eq!(first_insn(&[0x0F, 0xA3, 0x03]), ["bt gs:[ebx],eax"]);
    // Segment overrides are replaced by GS: mov eax, fs:[ecx]
    assert_eq!(first_insn(&[0x64, 0x8B, 0x01]), ["mov eax,[r15+rcx]"]);
    // lock add [esp+4], eax keeps LOCK.
    assert_eq!(first_insn(&[0xF0, 0x01, 0x44, 0x24, 0x04]), ["lock add gs:[r12d+4],eax"]);
}

#[test]
fn golden_esp_maps_to_r12() {
    assert_eq!(first_insn(&[0x8B, 0x4C, 0x24, 0x08]), ["mov ecx,gs:[r12d+8]"]); // mov ecx,[esp+8]
    assert_eq!(first_insn(&[0x89, 0xEC]), ["mov r12d,ebp"]); // mov esp, ebp
    assert_eq!(first_insn(&[0x89, 0xE5]), ["mov ebp,r12d"]); // mov ebp, esp
    assert_eq!(first_insn(&[0x83, 0xEC, 0x10]), ["sub r12d,10h"]); // sub esp, 0x10
    assert_eq!(first_insn(&[0x8D, 0x44, 0x24, 0x04]), ["lea eax,[r12d+4]"]); // lea eax,[esp+4]
    assert_eq!(first_insn(&[0xBC, 0x00, 0x10, 0x00, 0x00]), ["mov r12d,1000h"]); // mov esp, 0x1000
    assert_eq!(first_insn(&[0x94]), ["xchg r12d,eax"]); // xchg esp, eax
    assert_eq!(first_insn(&[0x66, 0x89, 0xC4]), ["mov r12w,ax"]); // mov sp, ax
    assert_eq!(first_insn(&[0x8B, 0x04, 0x34]), ["mov eax,gs:[r12d+esi]"]); // mov eax,[esp+esi]
    // movdqu xmm0, [esp+16]: the mandatory prefix stays before the REX.
    assert_eq!(first_insn(&[0xF3, 0x0F, 0x6F, 0x44, 0x24, 0x10]), ["movdqu xmm0,gs:[r12d+10h]"]);
    let (_, t) = translate_guest(&[0xF3, 0x0F, 0x6F, 0x44, 0x24, 0x10, 0xF4]);
    assert_eq!(&t.code[7..16], &[0x65, 0x67, 0xF3, 0x41, 0x0F, 0x6F, 0x44, 0x24, 0x10]);
}

#[test]
fn golden_fpu_and_sse() {
    assert_eq!(first_insn(&[0xDD, 0x45, 0xF8]), ["fld st,qword ptr gs:[ebp-8]"]); // fld qword [ebp-8]
    assert_eq!(first_insn(&[0xD9, 0x04, 0x24]), ["fld st,dword ptr [r15+r12]"]); // fld dword [esp]
    assert_eq!(first_insn(&[0xD9, 0xE0]), ["fchs"]);
    assert_eq!(first_insn(&[0x0F, 0x58, 0xC1]), ["addps xmm0,xmm1"]);
    let (b, t) = translate_guest(&[0xDD, 0x45, 0xF8, 0xF4]);
    assert!(t.uses_fpu);
    assert_eq!(b.classes[0], Class::Ident);
}

#[test]
fn golden_serialize_is_a_host_mfence() {
    // serialize (0F 01 E8): the virtual CPU has it, the host may not.
    assert_eq!(first_insn(&[0x0F, 0x01, 0xE8]), ["mfence"]);
    let (b, _) = translate_guest(&[0x0F, 0x01, 0xE8, 0xF4]);
    assert_eq!(b.classes[0], Class::Ident);
}

#[test]
fn golden_inc_dec_short_forms() {
    // 0x40..0x4F are REX prefixes in 64-bit mode: FF /0 and FF /1.
    assert_eq!(first_insn(&[0x40]), ["inc eax"]);
    let (_, t) = translate_guest(&[0x40, 0xF4]);
    assert_eq!(&t.code[7..9], &[0xFF, 0xC0]);
    assert_eq!(first_insn(&[0x44]), ["inc r12d"]); // inc esp
    assert_eq!(first_insn(&[0x4F]), ["dec edi"]);
    assert_eq!(first_insn(&[0x4C]), ["dec r12d"]); // dec esp
    assert_eq!(first_insn(&[0x66, 0x41]), ["inc cx"]);
    assert_eq!(first_insn(&[0x66, 0x44]), ["inc r12w"]);
}

#[test]
fn golden_push_pop() {
    assert_eq!(first_insn(&[0x50]), ["mov gs:[r12d-4],eax", "lea r12d,[r12-4]"]); // push eax
    assert_eq!(first_insn(&[0x54]), ["mov gs:[r12d-4],r12d", "lea r12d,[r12-4]"]); // push esp (old value)
    assert_eq!(first_insn(&[0x5B]), ["mov ebx,[r15+r12]", "lea r12d,[r12+4]"]); // pop ebx
    assert_eq!(first_insn(&[0x5C]), ["mov r12d,[r15+r12]"]); // pop esp
    assert_eq!(
        first_insn(&[0x68, 0x78, 0x56, 0x34, 0x12]), // push 0x12345678
        ["mov dword ptr gs:[r12d-4],12345678h", "lea r12d,[r12-4]"]
    );
    assert_eq!(
        first_insn(&[0x6A, 0xFF]), // push -1
        ["mov dword ptr gs:[r12d-4],0FFFFFFFFh", "lea r12d,[r12-4]"]
    );
    assert_eq!(
        first_insn(&[0xFF, 0x30]), // push dword [eax]
        ["mov r13d,[r15+rax]", "mov gs:[r12d-4],r13d", "lea r12d,[r12-4]"]
    );
    assert_eq!(
        first_insn(&[0xFF, 0x74, 0x24, 0x04]), // push dword [esp+4]: address uses the old ESP
        ["mov r13d,gs:[r12d+4]", "mov gs:[r12d-4],r13d", "lea r12d,[r12-4]"]
    );
    assert_eq!(
        first_insn(&[0x8F, 0x44, 0x24, 0x04]), // pop dword [esp+4]: address uses the new ESP
        ["mov r13d,[r15+r12]", "mov gs:[r12d+8],r13d", "lea r12d,[r12+4]"]
    );
    assert_eq!(
        first_insn(&[0x8F, 0x00]), // pop dword [eax]
        ["mov r13d,[r15+r12]", "mov [r15+rax],r13d", "lea r12d,[r12+4]"]
    );
}

#[test]
fn golden_pushad_popad_leave_enter() {
    assert_eq!(
        first_insn(&[0x60]),
        [
            "mov gs:[r12d-4],eax",
            "mov gs:[r12d-8],ecx",
            "mov gs:[r12d-0Ch],edx",
            "mov gs:[r12d-10h],ebx",
            "mov gs:[r12d-14h],r12d",
            "mov gs:[r12d-18h],ebp",
            "mov gs:[r12d-1Ch],esi",
            "mov gs:[r12d-20h],edi",
            "lea r12d,[r12-20h]",
        ]
    );
    assert_eq!(
        first_insn(&[0x61]),
        [
            "mov r13d,[r15+r12]",
            "mov r13d,gs:[r12d+1Ch]",
            "mov edi,[r15+r12]",
            "mov esi,gs:[r12d+4]",
            "mov ebp,gs:[r12d+8]",
            "mov ebx,gs:[r12d+10h]",
            "mov edx,gs:[r12d+14h]",
            "mov ecx,gs:[r12d+18h]",
            "mov eax,gs:[r12d+1Ch]",
            "lea r12d,[r12+20h]",
        ]
    );
    assert_eq!(first_insn(&[0xC9]), ["mov r13d,[r15+rbp]", "lea r12d,[rbp+4]", "mov ebp,r13d"]); // leave
    assert_eq!(
        first_insn(&[0xC8, 0x10, 0x00, 0x00]), // enter 0x10, 0
        ["mov gs:[r12d-4],ebp", "lea ebp,[r12-4]", "lea r12d,[r12-14h]"]
    );
}

/// The continuation after a guest CALL's host CALL (`lookup::host_call`)
/// at host offset `start`, for return address `ret`, ending (when the block
/// ends there) in a jump to host offset `to`.
fn continuation_text(start: usize, ret: u32, to: Option<usize>) -> Vec<String> {
    let ok = start + 3 + 7 + 2 + 8;
    let mut v = vec![
        "mov r11,rcx".to_string(),
        format!("lea ecx,[r13-{ret:X}h]"),
        format!("jrcxz {:016X}h", host(ok)),
        "mov rcx,r11".into(),
        jmp_to(EXITS.ret_miss[0]),
        "mov rcx,r11".into(),
    ];
    v.extend(to.map(|t| jmp_to(host(t))));
    v
}

/// Decode a superblock of `guest` at `GUEST_AT` as `reach` allows, and translate it.
fn superblock(guest: &[u8], reach: Reach) -> (GuestBlock, Translation) {
    let mem = guest_mem(guest);
    let b = crate::decode::decode_superblock(&mem, 0, GUEST_AT, 64, 0, 32, reach);
    let t = Translator::new(HOST_BASE, EXITS, 0, opts(Mode::default()), &mem).translate(&b);
    (b, t)
}

#[test]
fn golden_call_direct() {
    // call $+0x15 at 0x1000: push the return address, a host CALL through a
    // chainable exit, and the continuation the callee's RET comes back to.
    let (_, t) = translate_guest(&[0xE8, 0x10, 0x00, 0x00, 0x00]);
    assert_eq!(t.exits.len(), 2);
    let (call, ret) = (t.exits[0], t.exits[1]);
    assert_eq!((call.target, ret.target), (0x1015, 0x1005));
    let (tail, ret_tail) = (call.tail_off as usize, ret.tail_off as usize);
    let mut want = vec![
        "mov dword ptr gs:[r12d-4],1005h".to_string(),
        "lea r12d,[r12-4]".into(),
        format!("call {:016X}h", host(tail)),
    ];
    want.extend(continuation_text(7 + 11 + 5 + 5, 0x1005, Some(ret_tail)));
    assert_eq!(disasm(&t.code, 7, tail), want);
    assert_eq!(
        disasm(&t.code, tail, ret_tail),
        ["mov dword ptr [r14+20h],1015h", "mov dword ptr [r14+2Ch],0", jmp_to(EXITS.chain).as_str()]
    );
    // A CALL the block goes past: the continuation falls into the return
    // site's code.
    let (b, t) = superblock(&[0xE8, 0x10, 0x00, 0x00, 0x00, 0x40, 0xF4], Reach { side_exits: 0, calls: 1 });
    assert_eq!(b.insns.len(), 3, "call, inc eax, hlt");
    let start = 7 + 11 + 5 + 5;
    let mut want = continuation_text(start, 0x1005, None);
    want.push("inc eax".into());
    assert_eq!(disasm(&t.code, start, start + 3 + 7 + 2 + 3 + 5 + 3 + 2), want);
}

#[test]
fn golden_continuation_entry() {
    // call $+0x15 ; inc eax ; hlt with Options::continuation_entries: the
    // continuation (inc eax at 0x1005) gets an entry stub after the block's
    // code, which polls and jumps to it; the stub maps to 0x1005.
    let guest = [0xE8, 0x10, 0x00, 0x00, 0x00, 0x40, 0xF4];
    let mem = guest_mem(&guest);
    let b = crate::decode::decode_superblock(&mem, 0, GUEST_AT, 64, 0, 32, Reach { side_exits: 0, calls: 1 });
    let o = Options { continuation_entries: true, ..opts(Mode::default()) };
    let t = Translator::new(HOST_BASE, EXITS, 0, o, &mem).translate(&b);
    assert_eq!(t.entries.len(), 1);
    let (eip, stub) = t.entries[0];
    assert_eq!(eip, 0x1005);
    let start = 7 + 11 + 5 + 5;
    let cont = start + 3 + 7 + 2 + 3 + 5 + 3;
    assert_eq!(disasm(&t.code, cont, cont + 2), ["inc eax"]);
    assert_eq!(disasm(&t.code, stub as usize, t.code.len()), [POLL.to_string(), jmp_to(host(cont))]);
    let mapped = t.insn_map.iter().rev().find(|e| e.host_off <= stub).expect("stub mapped");
    assert_eq!((mapped.eip, mapped.esp_delta), (0x1005, 0));
    // A ring-3 block's stub confirms the code page first, as the block's
    // entry does; its miss path leaves with the continuation's EIP.
    let o = Options { continuation_entries: true, probe: Some(GUEST_AT), ..opts(Mode(3)) };
    let t = Translator::new(HOST_BASE, EXITS, 0, o, &mem).translate(&b);
    let (_, stub) = t.entries[0];
    let text = disasm(&t.code, stub as usize, t.code.len());
    assert_eq!(text[0], "mov r11,rcx");
    assert!(text[1].starts_with("movzx ecx,byte ptr [r14+") && text[2].starts_with("jrcxz "), "{text:?}");
    assert_eq!(text[3..5], ["mov rcx,r11".to_string(), POLL.to_string()]);
    let miss = text[2].trim_start_matches("jrcxz ").trim_end_matches('h');
    let miss = usize::from_str_radix(miss, 16).expect("jrcxz target") - HOST_BASE;
    assert_eq!(
        disasm(&t.code, miss, stub as usize),
        ["mov rcx,r11", "mov dword ptr [r14+20h],1005h", jmp_to(EXITS.probe_miss).as_str()]
    );
}

/// `call edx ; inc eax ; hlt` at `GUEST_AT` with `callee` (at 0x1010)
/// inlined at the CALL; the host text after the poll.
fn inlined_call_text(callee: &[u8]) -> Vec<String> {
    let mut guest = vec![0xFF, 0xD2, 0x40, 0xF4];
    guest.resize(0x10, 0xCC);
    guest.extend_from_slice(callee);
    let mem = guest_mem(&guest);
    let mut b = crate::decode::decode_superblock(&mem, 0, GUEST_AT, 64, 0, 32, Reach { side_exits: 0, calls: 1 });
    let leaf = crate::decode::decode_leaf(&mem, 0, 0x1010, 0, 32).expect("a leaf");
    b.inline_call(0, leaf);
    let o = Options { learn_calls: true, ..opts(Mode::default()) };
    let t = Translator::new(HOST_BASE, EXITS, 0, o, &mem).translate(&b);
    assert!(t.exits.is_empty(), "no direct exit: the HLT is the VMM's");
    disasm(&t.code, 7, t.code.len())
}

#[test]
fn golden_inlined_call() {
    // The callee inc ebx ; ret stores nothing: its RET only moves ESP.
    let text = inlined_call_text(&[0x43, 0xC3]);
    // The push's ESP update waits for the callee's RET, which cancels it.
    assert_eq!(text[..3], ["mov dword ptr gs:[r12d-4],1002h", "mov r11,rcx", "lea ecx,[rdx-1010h]"]);
    assert!(text[3].starts_with("jrcxz "), "{text:?}");
    // The guard's miss path: ESP, the target into R13, the usual lookup
    // (which learns nothing: the site is learnt) and host CALL, the
    // continuation, and the jump over the callee to the return site.
    assert_eq!(text[4..7], ["mov rcx,r11", "lea r12d,[r12-4]", "mov r13d,edx"]);
    assert!(text.contains(&jmp_to(EXITS.indirect)), "{text:?}");
    assert!(!text.contains(&jmp_to(EXITS.call_miss)), "{text:?}");
    let hit = text.iter().position(|l| l == "inc ebx").expect("the callee's code");
    assert_eq!(text[hit - 1], "mov rcx,r11");
    assert_eq!(text[hit + 1], "inc eax", "the RET only cancels the deferred push");
    let over = text[..hit].iter().rposition(|l| l.starts_with("jmp ")).expect("the jump over the callee");
    assert_eq!(text[over - 1], "mov rcx,r11", "after the continuation's check");
    // A callee that stores (here to its argument) may rewrite its return
    // address: its RET pops it and checks it.
    let text = inlined_call_text(&[0x89, 0x5C, 0x24, 0x04, 0xC3]);
    let hit = text.iter().position(|l| l == "mov [r15+r12],ebx").expect("the callee's code");
    assert_eq!(text[hit + 1..hit + 4], ["mov r13d,gs:[r12d-4]", "mov r11,rcx", "lea ecx,[r13-1002h]"]);
    assert_eq!(text[hit + 6], jmp_to(EXITS.ret_miss[0]));
    assert_eq!(text[hit + 8], "inc eax");
}

#[test]
fn a_branch_to_an_inlined_callee_leaves_the_block() {
    // je 0x1010 ; call edx ; inc eax ; hlt with inc ebx ; ret at 0x1010
    // inlined at the CALL: the JE goes to a block of its own, not into the
    // inlined copy, whose RET takes the CALL's return address for granted.
    let mut guest = vec![0x74, 0x0E, 0xFF, 0xD2, 0x40, 0xF4];
    guest.resize(0x10, 0xCC);
    guest.extend_from_slice(&[0x43, 0xC3]);
    let mem = guest_mem(&guest);
    let mut b = crate::decode::decode_superblock(&mem, 0, GUEST_AT, 64, 0, 32, Reach { side_exits: 1, calls: 1 });
    b.inline_call(1, crate::decode::decode_leaf(&mem, 0, 0x1010, 0, 32).expect("a leaf"));
    assert_eq!(b.insns[0].near_branch32(), 0x1010);
    let t = Translator::new(HOST_BASE, EXITS, 0, opts(Mode::default()), &mem).translate(&b);
    assert_eq!(t.exits.iter().map(|e| e.target).collect::<Vec<_>>(), [0x1010]);
}

#[test]
fn an_indirect_call_miss_reports_its_return_address() {
    // call edx with Options::learn_calls: the jump-cache miss leaves
    // through CALL_MISS with the return address in exit_arg.
    let mem = guest_mem(&[0xFF, 0xD2, 0xF4]);
    let b = decode_block(&mem, 0, GUEST_AT, 64);
    let o = Options { learn_calls: true, ..opts(Mode::default()) };
    let t = Translator::new(HOST_BASE, EXITS, 0, o, &mem).translate(&b);
    let text = disasm(&t.code, 0, t.code.len());
    let at = text.iter().position(|l| l == "mov dword ptr [r14+2Ch],1002h").expect("the return address");
    assert_eq!(text[at + 1], jmp_to(EXITS.call_miss));
    assert_eq!(text[at - 1], "mov rcx,r11");
}

#[test]
fn golden_side_exit_continues_with_the_fall_through_path() {
    // inc eax; je +0x10; inc ebx; inc ecx; hlt at 0x1000, with one side exit.
    let (b, t) = superblock(&[0x40, 0x74, 0x10, 0x43, 0x41, 0xF4], Reach { side_exits: 1, calls: 0 });
    assert_eq!(b.insns.len(), 5, "the block goes on past the JE to the HLT");
    // The taken JE is the first exit, to 0x1013; the block continues inline.
    assert_eq!(t.exits[0].target, 0x1013);
    let tail = t.exits[0].tail_off as usize;
    let text = disasm(&t.code, 7, 7 + 2 + 6 + 2 + 2);
    assert_eq!(text, ["inc eax", format!("je {:016X}h", host(tail)).as_str(), "inc ebx", "inc ecx"]);
    // Without side exits the JE ends the block, as before.
    let (b, _) = superblock(&[0x40, 0x74, 0x10, 0x43, 0x41, 0xF4], Reach::default());
    assert_eq!(b.insns.len(), 2);
}

#[test]
fn side_exits_into_the_block_jump_within_it() {
    // inc eax; je +1 (to inc ecx); inc ebx; inc ecx; hlt: the JE goes to
    // the block's own code for INC ECX, and no exit goes to 0x1004.
    let (_, t) = superblock(&[0x40, 0x74, 0x01, 0x43, 0x41, 0xF4], Reach { side_exits: 1, calls: 0 });
    assert!(t.exits.iter().all(|e| e.target != 0x1004));
    let inc_ecx = 7 + 2 + 6 + 2;
    let text = disasm(&t.code, 7, inc_ecx + 2);
    assert_eq!(text, ["inc eax", format!("je {:016X}h", host(inc_ecx)).as_str(), "inc ebx", "inc ecx"]);
    // The stack pointer is up to date where the jump lands: push eax; je +1;
    // push ebx; inc ecx (ESP -4 on one path, -8 on the other).
    let (_, t) = superblock(&[0x50, 0x74, 0x01, 0x53, 0x41, 0xF4], Reach { side_exits: 1, calls: 0 });
    let insns = decode_host(&t.code);
    let at = insns.iter().position(|(_, x)| fmt(x) == "inc ecx").expect("inc ecx");
    let je = insns.iter().find(|(_, x)| x.mnemonic() == Mnemonic::Je).expect("je").1;
    assert_eq!(je.near_branch_target(), host(insns[at].0) as u64);
    assert!(fmt(&insns[at - 1].1).starts_with("lea r12d,[r12-"), "{:?}", insns[at - 1].1);
    // Not after STI (the interrupt window check is on the fall-through
    // path), and not backwards.
    let (_, t) = superblock(&[0xFB, 0x74, 0x01, 0x43, 0x41, 0xF4], Reach { side_exits: 1, calls: 0 });
    assert!(t.exits.iter().any(|e| e.target == 0x1004));
}

fn lookup_text(start: usize) -> Vec<String> {
    // start = offset of `movzx r10d, r13w`; the hit path is 8 bytes after the jrcxz.
    let hit = start + 4 + 3 + 8 + 5 + 2 + 8;
    vec![
        "movzx r10d,r13w".into(),
        "mov r11,rcx".into(),
        format!("mov rcx,[r14+r10*8+{:X}h]", crate::cpu::OFF_JC_KEYS),
        "lea rcx,[rcx+r13+1]".into(),
        format!("jrcxz {:016X}h", host(hit)),
        "mov rcx,r11".into(),
        jmp_to(EXITS.indirect),
        "mov rcx,r11".into(),
        format!("jmp qword ptr [r14+r10*8+{:X}h]", crate::cpu::OFF_JC_TARGETS),
    ]
}

#[test]
fn golden_ret_and_indirect_jumps() {
    // ret: mov r13d,[r15+r12] (4 bytes: 47 8B 2C 27), lea (5), and
    // a host RET to the continuation of the host CALL (or the sentinel).
    assert_eq!(whole_block(&[0xC3]), ["mov r13d,[r15+r12]", "lea r12d,[r12+4]", "ret"]);
    let (_, t) = translate_guest(&[0xC3]);
    assert!(t.exits.is_empty());
    // ret 8
    assert_eq!(whole_block(&[0xC2, 0x08, 0x00]), ["mov r13d,[r15+r12]", "lea r12d,[r12+0Ch]", "ret"]);
    // jmp eax
    let mut want = vec!["mov r13d,eax".to_string()];
    want.extend(lookup_text(7 + 3));
    assert_eq!(whole_block(&[0xFF, 0xE0]), want);
    // jmp [ebx+4]
    let mut want = vec!["mov r13d,gs:[ebx+4]".to_string()];
    want.extend(lookup_text(7 + 6));
    assert_eq!(whole_block(&[0xFF, 0x63, 0x04]), want);
    // call [esp+8]: the target is loaded with the old ESP, then the push;
    // a jump-cache hit is entered with a host CALL.
    let mut want =
        vec!["mov r13d,gs:[r12d+8]".to_string(), "mov dword ptr gs:[r12d-4],1004h".into(), "lea r12d,[r12-4]".into()];
    let start = 7 + 7 + 11 + 5;
    let mut lookup = lookup_text(start);
    if let Some(hit) = lookup.last_mut() {
        *hit = format!("call qword ptr [r14+r10*8+{:X}h]", crate::cpu::OFF_JC_TARGETS);
    }
    want.extend(lookup);
    let (_, t) = translate_guest(&[0xFF, 0x54, 0x24, 0x08]);
    let tail = t.exits[0].tail_off as usize;
    want.extend(continuation_text(start + 4 + 3 + 8 + 5 + 2 + 8 + 3 + 8, 0x1004, Some(tail)));
    want.extend(["mov dword ptr [r14+20h],1004h".to_string(), "mov dword ptr [r14+2Ch],0".into(), jmp_to(EXITS.chain)]);
    assert_eq!(whole_block(&[0xFF, 0x54, 0x24, 0x08]), want);
}

#[test]
fn indirect_without_inline_lookup_goes_to_dispatcher() {
    // One-off blocks: JMP r32 and RET (no host RET) look up in the dispatcher.
    let without_lookup = |guest: &[u8]| {
        let mem = guest_mem(guest);
        let b = decode_block(&mem, 0, GUEST_AT, 64);
        let o = Options { inline_lookup: false, ..opts(Mode::default()) };
        let t = Translator::new(HOST_BASE, EXITS, 0, o, &mem).translate(&b);
        // After the 7-byte poll, which a lone RET does without.
        disasm(&t.code, if needs_poll(&b) { 7 } else { 0 }, t.code.len())
    };
    assert_eq!(without_lookup(&[0xFF, 0xE0]), ["mov r13d,eax", "mov [r14+20h],r13d", jmp_to(EXITS.indirect).as_str()]);
    assert_eq!(
        without_lookup(&[0xC3]),
        ["mov r13d,[r15+r12]", "lea r12d,[r12+4]", "mov [r14+20h],r13d", jmp_to(EXITS.indirect).as_str()]
    );
}

#[test]
fn golden_string_instructions() {
    assert_eq!(
        first_insn(&[0xF3, 0xA5]), // rep movsd
        ["lea rdi,[r15+rdi]", "lea rsi,[r15+rsi]", "rep movsd [rdi],[rsi]", "mov edi,edi", "mov esi,esi"]
    );
    assert_eq!(first_insn(&[0xF3, 0xAB]), ["lea rdi,[r15+rdi]", "rep stosd [rdi]", "mov edi,edi"]); // rep stosd
    assert_eq!(first_insn(&[0xAE]), ["lea rdi,[r15+rdi]", "scasb [rdi]", "mov edi,edi"]); // scasb
    assert_eq!(first_insn(&[0xAC]), ["lodsb gs:[esi]"]); // lodsb
    assert_eq!(first_insn(&[0xD7]), ["xlat gs:[ebx]"]); // xlat
    let (b, t) = translate_guest(&[0xF3, 0xA5, 0xF4]);
    assert_eq!(b.classes[0], Class::StringEs);
    assert_eq!(t.insn_map[1].fixup, Fixup::RepString);
    let (_, t) = translate_guest(&[0xA5, 0xF4]);
    assert_eq!(t.insn_map[1].fixup, Fixup::TruncStringPtrs);
    let (_, t) = translate_guest(&[0xAC, 0xF4]);
    assert_eq!(&t.code[7..10], &[0x65, 0x67, 0xAC]);
}

#[test]
fn golden_high_byte_with_esp_substitutes_a_register() {
    // mov ah, [esp+4]: AH forbids the REX that R12 needs.
    assert_eq!(
        first_insn(&[0x8A, 0x64, 0x24, 0x04]),
        ["mov r13,rsi", "mov esi,r12d", "mov ah,gs:[esi+4]", "mov r12d,esi", "mov rsi,r13"]
    );
    let (_, t) = translate_guest(&[0x8A, 0x64, 0x24, 0x04, 0xF4]);
    assert_eq!(t.insn_map[1].fixup, Fixup::Restore { reg: RSI, from: R13 });
    // mov [esp+esi], bh: RSI is taken, RDI stands in.
    assert_eq!(
        first_insn(&[0x88, 0x3C, 0x34]),
        ["mov r13,rdi", "mov edi,r12d", "mov gs:[edi+esi],bh", "mov r12d,edi", "mov rdi,r13"]
    );
    // movzx esp, ah
    assert_eq!(
        first_insn(&[0x0F, 0xB6, 0xE4]),
        ["mov r13,rsi", "mov esi,r12d", "movzx esi,ah", "mov r12d,esi", "mov rsi,r13"]
    );
    // Without ESP no substitution: mov ah, [ebx+4]
    assert_eq!(first_insn(&[0x8A, 0x63, 0x04]), ["mov ah,gs:[ebx+4]"]);
}

#[test]
fn golden_opcode_82_alias() {
    assert_eq!(first_insn(&[0x82, 0xC0, 0x05]), ["add al,5"]); // add al, 5 (82 /0)
    assert_eq!(first_insn(&[0x82, 0x2B, 0x07]), ["sub byte ptr [r15+rbx],7"]); // sub byte [ebx], 7
    assert_eq!(first_insn(&[0x82, 0x7C, 0x24, 0x04, 0x01]), ["cmp byte ptr gs:[r12d+4],1"]);
}

#[test]
fn golden_jecxz_and_loop() {
    for (op, text) in [(0xE3u8, "jecxz"), (0xE2, "addr32 loop"), (0xE1, "addr32 loope"), (0xE0, "addr32 loopne")] {
        let (_, t) = translate_guest(&[op, 0x10]);
        assert_eq!(t.exits.len(), 2);
        assert_eq!((t.exits[0].target, t.exits[1].target), (0x1002, 0x1012));
        let (t0, t1) = (t.exits[0].tail_off as usize, t.exits[1].tail_off as usize);
        assert_eq!(&t.code[7..10], &[0x67, op, 5]);
        assert_eq!(
            disasm(&t.code, 7, t0),
            [format!("{text} {:016X}h", host(15)), jmp_to(host(t0)), jmp_to(host(t1))],
            "{op:#x}"
        );
        assert_eq!(
            disasm(&t.code, t0, t.code.len()),
            [
                "mov dword ptr [r14+20h],1002h",
                "mov dword ptr [r14+2Ch],0",
                &jmp_to(EXITS.chain),
                "mov dword ptr [r14+20h],1012h",
                "mov dword ptr [r14+2Ch],1",
                &jmp_to(EXITS.chain),
            ]
        );
    }
}

#[test]
fn golden_jcc_both_exits() {
    // je +0x10 at 0x1000
    let (_, t) = translate_guest(&[0x74, 0x10]);
    assert_eq!(t.exits.len(), 2);
    assert_eq!((t.exits[0].target, t.exits[1].target), (0x1012, 0x1002));
    let (t0, t1) = (t.exits[0].tail_off as usize, t.exits[1].tail_off as usize);
    assert_eq!(disasm(&t.code, 7, t0), [format!("je {:016X}h", host(t0)), jmp_to(host(t1))]);
    assert_eq!(
        disasm(&t.code, t0, t.code.len()),
        [
            "mov dword ptr [r14+20h],1012h",
            "mov dword ptr [r14+2Ch],0",
            &jmp_to(EXITS.chain),
            "mov dword ptr [r14+20h],1002h",
            "mov dword ptr [r14+2Ch],1",
            &jmp_to(EXITS.chain),
        ]
    );
}

#[test]
fn jcc_condition_is_preserved_for_all_16() {
    let dec32 = |b: &[u8]| Decoder::with_ip(32, b, GUEST_AT as u64, DecoderOptions::NONE).decode();
    for cc in 0..16u8 {
        for guest in [vec![0x70 | cc, 0x20], vec![0x0F, 0x80 | cc, 0x20, 0x01, 0x00, 0x00]] {
            let g = dec32(&guest);
            let (_, t) = translate_guest(&guest);
            let h = decode_host(&t.code);
            let (_, j) = h[1];
            assert_eq!(j.condition_code(), g.condition_code(), "{guest:02x?}");
            assert_ne!(j.condition_code(), ConditionCode::None);
            assert_eq!(t.exits[0].target, g.near_branch32());
            assert_eq!(t.exits[1].target, g.next_ip32());
        }
    }
}

#[test]
fn golden_sensitive_instructions_exit_to_emulate() {
    // cpuid: the block is the poll and the emulate exit at the CPUID's EIP.
    assert_eq!(whole_block(&[0x0F, 0xA2]), ["mov dword ptr [r14+20h],1000h".to_string(), emulate_jmp()]);
    // nop; cpuid
    let (b, t) = translate_guest(&[0x90, 0x0F, 0xA2]);
    assert_eq!(b.classes, [Class::Ident, Class::Emulate]);
    assert_eq!(disasm(&t.code, 7, t.code.len()), ["nop", "mov dword ptr [r14+20h],1001h", &emulate_jmp()]);
    // cli at CPL 3: emulated.
    let mem = guest_mem(&[0xFA]);
    let (_, t) = translate_at(&mem, GUEST_AT, 3, Mode(3));
    assert_eq!(disasm(&t.code, 7, t.code.len()), ["mov dword ptr [r14+20h],1000h", &emulate_jmp()]);
    // cli/sti at CPL 0: a store to the virtual IF.
    let vif = crate::cpu::OFF_VIF;
    assert_eq!(first_insn(&[0xFA]), [format!("mov dword ptr [r14+{vif:X}h],0")]);
    assert_eq!(first_insn(&[0xFB]), [format!("mov dword ptr [r14+{vif:X}h],200h")]);
    // ud2: exception exit with #UD.
    assert_eq!(
        whole_block(&[0x0F, 0x0B]),
        ["mov dword ptr [r14+20h],1000h", "mov dword ptr [r14+2Ch],6", &jmp_to(EXITS.exception)]
    );
    assert_eq!(OFF_EIP, 0x20);
    assert_eq!(OFF_EXIT_ARG, 0x2C);
}

#[test]
fn golden_fpu_fault_modes() {
    // With CR0.TS, an x87 instruction raises #NM at its EIP.
    let mem = guest_mem(&[0xDD, 0x45, 0xF8]);
    let (_, t) = translate_at(&mem, GUEST_AT, 0, Mode(Mode::TS));
    // (The block is not ended by the exception exit: what follows is dead code.)
    assert_eq!(
        disasm(&t.code, 7, t.code.len())[..3],
        ["mov dword ptr [r14+20h],1000h", "mov dword ptr [r14+2Ch],7", &jmp_to(EXITS.exception)]
    );
}

// ---------------------------------------------------------------------------
// Mechanical safety check
// ---------------------------------------------------------------------------

fn is_host_string(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Movsb
            | M::Movsw
            | M::Movsd
            | M::Stosb
            | M::Stosw
            | M::Stosd
            | M::Scasb
            | M::Scasw
            | M::Scasd
            | M::Cmpsb
            | M::Cmpsw
            | M::Cmpsd
            | M::Maskmovq
            | M::Maskmovdqu
    )
}

/// Legacy prefix bytes of an instruction (before any REX/opcode).
fn prefix_bytes(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|&&x| matches!(x, 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0x67 | 0xF0 | 0xF2 | 0xF3))
        .count();
    &b[..n]
}

fn writes(acc: OpAccess) -> bool {
    matches!(acc, OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
}

/// Check every rule of DESIGN.md on a block of emitted host code at
/// `HOST_BASE`:
/// (a) memory goes through GS, except vCPU fields ([r14+...]), the poll
///     load ([r15-2000h], first instruction only) and the host string
///     instructions right after `lea rdi,[r15+rdi]` (`lea rsi,[r15+rsi]`);
/// (b) GS memory uses 32-bit addressing (0x67, 32-bit base/index);
/// (c) no PUSH/POP/CALL/RET/PUSHF/POPF/SYSCALL/INT, nothing writes RSP —
///     except the two balanced flag templates of the CPL-0 inline
///     PUSHFD/POPFD (`pushfq; pop r13` and `push r13; popfq`) on the host
///     stack, which is the VMM's own, the VMM callouts (which move to the
///     dispatcher's stack and back), and the host return stack's forms
///     (`exec::return_stack`): a guest CALL's host CALL (to a block-local
///     target or the jump-cache hit) followed by its continuation check,
///     and a guest RET's bare RET after the stack pointer update;
/// (d) nothing RIP-relative;
/// (e) nothing writes R14/R15 or the FS/GS bases, and control flow stays in
///     the block or goes to the exit routines (indirectly only through
///     `jmp qword [r14+r10*8+...]`).
fn check_block(code: &[u8]) -> Result<(), String> {
    let insns = decode_host(code);
    let mut info = InstructionInfoFactory::new();
    let exits = [
        EXITS.chain,
        EXITS.indirect,
        EXITS.emulate,
        EXITS.exception,
        EXITS.soft_miss,
        EXITS.probe_miss,
        EXITS.ret_miss[0],
        EXITS.ret_miss[1],
        EXITS.ret_miss[2],
        EXITS.ret_miss[3],
    ];
    let (mut di_rebased, mut si_rebased) = (false, false);
    // Soft-TLB form (`translate::soft`): the register holding the host
    // address the lookup just produced, valid for the next access only
    // (through `mov r11, rX; mov rX, r13` when a legacy register is borrowed).
    let (mut soft_base, mut soft_borrow): (Option<Register>, Option<Register>) = (None, None);
    let mut end = 0;
    // The port-I/O, INVLPG and soft string callouts (`translate::io`,
    // `translate::string::soft`): from the PUSHFQ before a
    // `call [r14+io_fn]` to the POPFQ after it the host stack is used to
    // save caller-saved registers around a call into the VMM.
    let mut io_spans = Vec::new();
    for (c, (_, x)) in insns.iter().enumerate() {
        let is_io_call = x.mnemonic() == Mnemonic::Call
            && x.op0_kind() == OpKind::Memory
            && x.memory_base() == Register::R14
            && (x.memory_displacement64() == crate::cpu::OFF_IO_FN as u64
                || x.memory_displacement64() == crate::cpu::OFF_INVLPG_FN as u64
                || x.memory_displacement64() == crate::cpu::OFF_STR_FN as u64);
        if is_io_call {
            let lo = insns[..c].iter().rposition(|(_, y)| y.mnemonic() == Mnemonic::Pushfq).unwrap_or(c);
            let hi = insns[c..].iter().position(|(_, y)| y.mnemonic() == Mnemonic::Popfq).map_or(c, |p| c + p);
            // `mov r13, rsp ; mov rsp, [r14+host_rsp]` before, `mov rsp, r13` after.
            let switch_in = lo >= 2
                && fmt(&insns[lo - 2].1) == "mov r13,rsp"
                && fmt(&insns[lo - 1].1) == format!("mov rsp,[r14+{:X}h]", crate::cpu::OFF_HOST_RSP);
            let switch_out = insns.get(hi + 1).is_some_and(|(_, y)| fmt(y) == "mov rsp,r13");
            if !switch_in || !switch_out {
                return Err(format!("callout at insn {c} does not switch to the dispatcher's stack"));
            }
            io_spans.push(lo - 2..=hi + 1);
        }
    }
    // The checked access of a non-flat segment or 16-bit addressing
    // (`segment::check_and_add_base`): `pushfq ; cmp r13d, [r14+seg_lo+..]`
    // ... then a POPFQ on the in-range path and one on the fault path.
    let mut check_spans = Vec::new();
    for (c, (_, x)) in insns.iter().enumerate() {
        let checks = x.mnemonic() == Mnemonic::Pushfq
            && insns.get(c + 1).is_some_and(|(_, n)| {
                n.mnemonic() == Mnemonic::Cmp
                    && n.op0_kind() == OpKind::Register
                    && n.op0_register() == Register::R13D
                    && n.op1_kind() == OpKind::Memory
                    && n.memory_base() == Register::R14
            });
        if checks {
            let pops: Vec<usize> = insns[c..]
                .iter()
                .enumerate()
                .filter(|(_, (_, y))| y.mnemonic() == Mnemonic::Popfq)
                .map(|(p, _)| c + p)
                .take(2)
                .collect();
            if pops.len() == 2 {
                check_spans.push((c, pops[0], pops[1]));
            }
        }
    }
    for (k, &(off, i)) in insns.iter().enumerate() {
        let in_io_span = io_spans.iter().any(|s| s.contains(&k));
        let in_check = check_spans.iter().any(|&(a, p1, p2)| k == a || k == p1 || k == p2);
        let bytes = &code[off..off + i.len()];
        let err = |why: &str| Err(format!("host insn at +{off:#x} `{}` ({}): {why}", fmt(&i), hex(bytes)));
        end = off + i.len();
        if i.is_invalid() {
            return err("does not decode");
        }
        if i.is_ip_rel_memory_operand() || i.memory_base() == Register::RIP || i.memory_base() == Register::EIP {
            return err("RIP-relative");
        }
        let m = i.mnemonic();
        let prev = k.checked_sub(1).map(|p| insns[p].1);
        let next = insns.get(k + 1).map(|x| x.1);
        let is_r13 = |x: &Instruction| {
            x.op_count() == 1 && x.op0_kind() == OpKind::Register && x.op0_register() == Register::R13
        };
        // The host return stack: a CALL followed by its continuation check
        // (`mov r11,rcx ; lea ecx,[r13+disp]`), a RET after `lea r12d,[r12+n]`.
        let continuation = |c: usize| {
            insns.get(c + 1).is_some_and(|(_, y)| fmt(y) == "mov r11,rcx")
                && insns.get(c + 2).is_some_and(|(_, y)| fmt(y).starts_with("lea ecx,[r13"))
        };
        let host_call = m == Mnemonic::Call
            && continuation(k)
            && match i.op0_kind() {
                OpKind::NearBranch64 => {
                    (HOST_BASE..HOST_BASE + code.len()).contains(&(i.near_branch_target() as usize))
                }
                OpKind::Memory => {
                    i.memory_base() == Register::R14 && i.memory_index() == Register::R10 && i.memory_index_scale() == 8
                }
                _ => false,
            };
        // (No LEA when the pops the RET completes cancel deferred pushes.)
        let host_ret = m == Mnemonic::Ret
            && i.op_count() == 0
            && prev.is_some_and(|p| fmt(&p).starts_with("lea r12d,[r12") || fmt(&p).starts_with("mov r13d,gs:[r12d"));
        // (c) the only host stack use: the balanced flag templates.
        let template = match m {
            Mnemonic::Pushfq => next.is_some_and(|n| n.mnemonic() == Mnemonic::Pop && is_r13(&n)),
            Mnemonic::Pop => is_r13(&i) && prev.is_some_and(|p| p.mnemonic() == Mnemonic::Pushfq),
            Mnemonic::Push => is_r13(&i) && next.is_some_and(|n| n.mnemonic() == Mnemonic::Popfq),
            Mnemonic::Popfq => prev.is_some_and(|p| p.mnemonic() == Mnemonic::Push && is_r13(&p)),
            _ => false,
        } || io_spans.iter().any(|s| s.contains(&k))
            || in_check
            || host_call
            || host_ret;
        if !template {
            use Mnemonic as M;
            if matches!(
                m,
                M::Push
                    | M::Pop
                    | M::Pushf
                    | M::Pushfd
                    | M::Pushfq
                    | M::Popf
                    | M::Popfd
                    | M::Popfq
                    | M::Call
                    | M::Ret
                    | M::Retf
                    | M::Syscall
                    | M::Sysenter
                    | M::Sysexit
                    | M::Sysret
                    | M::Int
                    | M::Int1
                    | M::Int3
                    | M::Into
                    | M::Iret
                    | M::Iretd
                    | M::Iretq
                    | M::Enter
                    | M::Leave
                    | M::Wrfsbase
                    | M::Wrgsbase
                    | M::Swapgs
            ) {
                return err("forbidden instruction");
            }
            if i.stack_pointer_increment() != 0 {
                return err("moves the host stack pointer");
            }
        }
        match i.flow_control() {
            FlowControl::Next | FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {}
            FlowControl::IndirectCall if in_io_span || host_call => {}
            FlowControl::Call | FlowControl::Return if host_call || host_ret => {}
            FlowControl::IndirectBranch => {
                let ok = m == Mnemonic::Jmp
                    && i.op0_kind() == OpKind::Memory
                    && i.memory_base() == Register::R14
                    && i.memory_index() == Register::R10
                    && i.memory_index_scale() == 8;
                if !ok {
                    return err("indirect branch other than the jump-cache hit");
                }
            }
            f => return err(&format!("control flow {f:?}")),
        }
        if matches!(i.flow_control(), FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch) {
            let t = i.near_branch_target() as usize;
            let inside = (HOST_BASE..=HOST_BASE + code.len()).contains(&t);
            if !inside && !exits.contains(&t) {
                return err("branch target outside the block and the exit routines");
            }
        }
        let ii = info.info(&i);
        for r in ii.used_registers() {
            let full = r.register().full_register();
            if writes(r.access()) && matches!(full, Register::RSP | Register::R14 | Register::R15) && !template {
                return err(&format!("writes {:?}", r.register()));
            }
            if writes(r.access()) && r.register().is_segment_register() {
                return err("writes a segment register");
            }
        }
        let string_ok = is_host_string(m) && {
            let mut ok = true;
            for mem in ii.used_memory() {
                ok &= matches!(mem.segment(), Register::ES | Register::DS)
                    && mem.address_size() == CodeSize::Code64
                    && mem.index() == Register::None
                    && match mem.base() {
                        Register::RDI => di_rebased,
                        Register::RSI => si_rebased,
                        _ => false,
                    };
            }
            ok
        };
        for mem in ii.used_memory() {
            if mem.access() == OpAccess::NoMemAccess {
                continue;
            }
            if mem.segment() == Register::GS {
                if mem.address_size() != CodeSize::Code32 || !prefix_bytes(bytes).contains(&0x67) {
                    return err("GS access without 32-bit addressing");
                }
                let idx_ok = mem.index() == Register::None
                    || mem.index().size() == 4
                    || (m == Mnemonic::Xlatb && mem.index() == Register::AL);
                if !(mem.base() == Register::None || mem.base().size() == 4) || !idx_ok {
                    return err("GS access with a non-32-bit base or index");
                }
                continue;
            }
            let base = mem.base();
            if base == Register::R14 && mem.address_size() == CodeSize::Code64 {
                continue; // vCPU state (and the jump cache)
            }
            // The poll opens the block, after the code-page probe of a
            // ring-3 block (`Translator::code_page_probe`) if it has one.
            let after_probe = k >= 4
                && fmt(&insns[k - 4].1) == "mov r11,rcx"
                && {
                    let l = &insns[k - 3].1;
                    let d = l.memory_displacement64();
                    let table = crate::cpu::OFF_CODE_OK as u64;
                    l.mnemonic() == Mnemonic::Movzx
                        && l.op0_register() == Register::ECX
                        && l.memory_base() == Register::R14
                        && (table..table + crate::cpu::CODE_PAGES as u64).contains(&d)
                }
                && insns[k - 2].1.mnemonic() == Mnemonic::Jrcxz
                && fmt(&insns[k - 1].1) == "mov rcx,r11";
            if base == Register::R15 && (k == 0 || after_probe) && fmt(&i) == POLL {
                continue;
            }
            // A direct window access (`direct_window_operand`): `[r15 + reg]`
            // with a guest register (zero-extended) or `[r15 + disp32]` below
            // 2 GiB, with the default segment.
            let guest_reg = |r: Register| {
                matches!(
                    r,
                    Register::RAX
                        | Register::RCX
                        | Register::RDX
                        | Register::RBX
                        | Register::RBP
                        | Register::RSI
                        | Register::RDI
                        | Register::R12
                        | Register::R13
                )
            };
            if base == Register::R15
                && mem.address_size() == CodeSize::Code64
                && matches!(mem.segment(), Register::DS | Register::SS)
                && ((guest_reg(mem.index()) && mem.scale() == 1 && mem.displacement() == 0)
                    || (mem.index() == Register::None && mem.displacement() < 1 << 31))
            {
                continue;
            }
            if template && base == Register::RSP {
                continue;
            }
            if string_ok {
                continue;
            }
            if soft_base == Some(base)
                && mem.address_size() == CodeSize::Code64
                && mem.index() == Register::None
                && mem.displacement() == 0
                && matches!(mem.segment(), Register::DS | Register::SS)
            {
                continue;
            }
            // The in-place segment reload (`translate::segment::reload`)
            // reads the descriptor the VMM published: `mov r11,
            // [r14+reload_desc+8*s]` (or `alt_desc`) then `mov rcx, [r11]`.
            let reads_descriptor = m == Mnemonic::Mov
                && base == Register::R11
                && mem.access() == OpAccess::Read
                && mem.index() == Register::None
                && mem.displacement() == 0
                && prev.is_some_and(|p| {
                    let d = p.memory_displacement64();
                    let in_table = |lo: i32| {
                        let lo = lo as u64;
                        (lo..lo + 48).contains(&d) && (d - lo).is_multiple_of(8)
                    };
                    p.mnemonic() == Mnemonic::Mov
                        && p.op0_register() == Register::R11
                        && p.memory_base() == Register::R14
                        && p.memory_index() == Register::None
                        && (in_table(crate::cpu::OFF_RELOAD_DESC)
                            || in_table(crate::cpu::OFF_ALT_DESC)
                            || d == crate::cpu::OFF_VERW_DESC as u64)
                });
            if reads_descriptor {
                continue;
            }
            return err(&format!("memory access through {:?} with base {:?}", mem.segment(), base));
        }
        // Soft-TLB state: `mov r11, [r14+r13*8+addend]`, `mov rcx, r10`,
        // `addr32 lea r13d, [ea]`, `lea r13, [r13+r11]` make R13 a checked
        // host address for the next instruction.
        let is_addend_load = |x: &Instruction| {
            let tlb = crate::cpu::OFF_SOFT_TLB as u64;
            let d = x.memory_displacement64();
            x.mnemonic() == Mnemonic::Mov
                && x.op0_register() == Register::R11
                && x.op1_kind() == OpKind::Memory
                && x.memory_base() == Register::R14
                && x.memory_index() == Register::R13
                && x.memory_index_scale() == 8
                && d >= tlb + 8
                && (d - tlb - 8).is_multiple_of(crate::cpu::SOFT_TLB_TABLE_BYTES as u64)
                && d - tlb < 4 * crate::cpu::SOFT_TLB_TABLE_BYTES as u64
        };
        let finishes_lookup = m == Mnemonic::Lea
            && i.op0_register() == Register::R13
            && i.memory_base() == Register::R13
            && i.memory_index() == Register::R11
            && i.memory_index_scale() == 1
            && i.memory_displacement64() == 0
            && k >= 3
            && is_addend_load(&insns[k - 3].1)
            && fmt(&insns[k - 2].1) == "mov rcx,r10"
            && fmt(&insns[k - 1].1).starts_with("lea r13d,");
        let is_mov_rr = |x: &Instruction, d: Register, src: Register| {
            x.mnemonic() == Mnemonic::Mov
                && x.op0_kind() == OpKind::Register
                && x.op1_kind() == OpKind::Register
                && x.op0_register() == d
                && x.op1_register() == src
        };
        if finishes_lookup {
            (soft_base, soft_borrow) = (Some(Register::R13), None);
        } else if soft_base == Some(Register::R13)
            && soft_borrow.is_none()
            && [Register::RSI, Register::RDI, Register::RBP].iter().any(|&r| is_mov_rr(&i, Register::R11, r))
        {
            soft_borrow = Some(i.op1_register());
        } else if soft_borrow.is_some_and(|r| is_mov_rr(&i, r, Register::R13)) {
            (soft_base, soft_borrow) = (soft_borrow, None);
        } else {
            (soft_base, soft_borrow) = (None, None);
        }
        // String rebasing state: valid only immediately before the string op.
        let lea_rebase = |dst: Register| {
            m == Mnemonic::Lea
                && i.op0_register() == dst
                && i.memory_base() == Register::R15
                && i.memory_index() == dst
                && i.memory_index_scale() == 1
                && i.memory_displacement64() == 0
        };
        if lea_rebase(Register::RDI) {
            di_rebased = true;
        } else if lea_rebase(Register::RSI) {
            si_rebased = true;
        } else {
            di_rebased = false;
            si_rebased = false;
        }
    }
    if end != code.len() {
        return Err(format!("block does not decode to its end ({end} of {})", code.len()));
    }
    Ok(())
}

/// Map a guest register to the host register IDENT translation uses.
fn host_reg(r: Register) -> Register {
    match r {
        Register::ESP => Register::R12D,
        Register::SP => Register::R12W,
        r => r,
    }
}

/// An IDENT-translated guest instruction must decode back to the same
/// operation on the same (mapped) operands.
/// `esp_delta`: the stack updates deferred at `g` (`InsnMapEntry::esp_delta`),
/// which an ESP base's displacement takes.
fn check_ident(g: &Instruction, h: &Instruction, cls: Class, esp_delta: i32) -> Result<(), String> {
    let bad = |why: &str| Err(format!("guest `{}` became `{}`: {why}", fmt(g), fmt(h)));
    if h.mnemonic() != g.mnemonic() {
        return bad("mnemonic");
    }
    if h.op_count() != g.op_count() {
        return bad("operand count");
    }
    for n in 0..g.op_count() {
        let (gk, hk) = (g.op_kind(n), h.op_kind(n));
        if gk != hk {
            return bad(&format!("operand {n} kind {gk:?} vs {hk:?}"));
        }
        match gk {
            OpKind::Register if host_reg(g.op_register(n)) != h.op_register(n) => {
                return bad(&format!("operand {n} register"));
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8_2nd
                if g.immediate(n) != h.immediate(n) =>
            {
                return bad(&format!("operand {n} immediate"));
            }
            _ => {}
        }
    }
    let gm = (0..g.op_count()).any(|n| g.op_kind(n) == OpKind::Memory);
    if gm {
        let base = if g.memory_base() == Register::None { Register::None } else { host_reg(g.memory_base()) };
        let sp_delta = if is_sp(g.memory_base()) { esp_delta } else { 0 };
        let disp = g.memory_displacement32().wrapping_add(sp_delta as u32);
        if h.memory_base() == Register::R15 {
            // The direct window form (`direct_window_operand`).
            let (gb, gi) = (g.memory_base(), g.memory_index());
            let ok = match (gb, gi) {
                (Register::None, Register::None) => h.memory_index() == Register::None && disp < 1 << 31,
                (r, Register::None) | (Register::None, r) => {
                    (gb != Register::None || g.memory_index_scale() == 1)
                        && h.memory_index() == host_reg(r).full_register()
                        && h.memory_index_scale() == 1
                        && (disp == 0 || r == Register::None)
                        && h.memory_displacement32() == 0
                }
                _ => false,
            };
            if !ok || h.memory_displacement32() != disp || h.memory_size() != g.memory_size() {
                return bad(&format!(
                    "direct window operand for base {gb:?} index {gi:?} disp {disp:#x}: {:?}+{:?}*{}+{:#x}",
                    h.memory_base(),
                    h.memory_index(),
                    h.memory_index_scale(),
                    h.memory_displacement32()
                ));
            }
        } else if h.memory_base() != base
            || h.memory_index() != g.memory_index()
            || (g.memory_index() != Register::None && h.memory_index_scale() != g.memory_index_scale())
            || h.memory_displacement32() != g.memory_displacement32().wrapping_add(sp_delta as u32)
            || h.memory_size() != g.memory_size()
        {
            return bad(&format!(
                "memory operand: base {:?}/{:?} index {:?}/{:?} scale {}/{} disp {:#x}/{:#x} size {:?}/{:?}",
                g.memory_base(),
                h.memory_base(),
                g.memory_index(),
                h.memory_index(),
                g.memory_index_scale(),
                h.memory_index_scale(),
                g.memory_displacement32(),
                h.memory_displacement32(),
                g.memory_size(),
                h.memory_size()
            ));
        }
        let direct = h.memory_base() == Register::R15 && matches!(h.memory_segment(), Register::DS | Register::SS);
        if h.memory_segment() != Register::GS && !direct {
            return bad("segment");
        }
    }
    // (REP/REPNE on the one-byte INC/DEC mean nothing and are dropped.)
    if h.has_lock_prefix() != g.has_lock_prefix()
        || cls != Class::IncDecShort
            && (h.has_rep_prefix() != g.has_rep_prefix() || h.has_repne_prefix() != g.has_repne_prefix())
    {
        return bad("prefixes");
    }
    Ok(())
}

/// A displacement as iced's Intel formatter prints it after a register.
fn signed_hex(d: i32) -> String {
    if d < 0 { format!("-{}", ihex(d.unsigned_abs())) } else { format!("+{}", ihex(d as u32)) }
}

/// insn_map and exit-site invariants of one translation.
fn check_metadata(b: &GuestBlock, t: &Translation) -> Result<(), String> {
    let m = &t.insn_map;
    if m.len() != b.insns.len() + 1 || m[0].host_off != 0 || m[0].eip != b.start {
        return Err(format!("insn_map shape {:?}", m.iter().map(|e| (e.host_off, e.eip)).collect::<Vec<_>>()));
    }
    // Stack updates are deferred only across instructions that take them.
    let takes_delta = |c: Class| {
        matches!(
            c,
            Class::PushReg
                | Class::PushImm
                | Class::PushMem
                | Class::PopReg
                | Class::CallDirect
                | Class::CallIndirect
                | Class::Ret
                | Class::Ident
                | Class::IncDecShort
        )
    };
    // (m[k] is instruction k-1; m[0] the block's entry.)
    for (k, e) in m.iter().enumerate() {
        if e.esp_delta != 0 && !(k >= 2 && takes_delta(b.classes[k - 2]) && takes_delta(b.classes[k - 1])) {
            return Err(format!("insn_map[{k}]: ESP updates deferred into {:?}", b.classes.get(k.wrapping_sub(1))));
        }
    }
    for (k, e) in m[1..].iter().enumerate() {
        if e.eip != b.insns[k].ip32() {
            return Err(format!("insn_map[{}] eip {:#x} != {:#x}", k + 1, e.eip, b.insns[k].ip32()));
        }
    }
    if !m.windows(2).all(|w| w[0].host_off <= w[1].host_off) {
        return Err("insn_map not sorted by host_off".into());
    }
    if m.last().unwrap().host_off as usize > t.code.len() {
        return Err("insn_map entry past the code".into());
    }
    let starts: HashSet<usize> = decode_host(&t.code).into_iter().map(|(o, _)| o).collect();
    for e in m {
        if (e.host_off as usize) < t.code.len() && !starts.contains(&(e.host_off as usize)) {
            return Err(format!("insn_map host_off {:#x} is not an instruction boundary", e.host_off));
        }
    }
    for (k, x) in t.exits.iter().enumerate() {
        let at = x.rel32_off as usize;
        if at + 4 > t.code.len() || at < 1 {
            return Err(format!("exit {k}: rel32_off {at:#x} out of range"));
        }
        let c = &t.code;
        // E8: a guest CALL's host CALL (`exec::return_stack`).
        let jmp = matches!(c[at - 1], 0xE9 | 0xE8) && starts.contains(&(at - 1));
        let jcc = at >= 2 && c[at - 2] == 0x0F && c[at - 1] & 0xF0 == 0x80 && starts.contains(&(at - 2));
        if !jmp && !jcc {
            return Err(format!(
                "exit {k}: rel32_off {at:#x} does not follow E8 / E9 / 0F 8x: {}",
                hex(&c[at.saturating_sub(2)..at])
            ));
        }
        let rel = i32::from_le_bytes(c[at..at + 4].try_into().unwrap()) as i64;
        if at as i64 + 4 + rel != x.tail_off as i64 {
            return Err(format!("exit {k}: rel32 does not point at its tail"));
        }
        let tail = x.tail_off as usize;
        let want = [
            format!("mov dword ptr [r14+20h],{}", ihex(x.target)),
            format!("mov dword ptr [r14+2Ch],{}", ihex(k as u32)),
            jmp_to(EXITS.chain),
        ];
        let got: Vec<String> = disasm(c, tail, c.len()).into_iter().take(3).collect();
        if got != want {
            return Err(format!("exit {k}: tail {got:?}, want {want:?}"));
        }
    }
    Ok(())
}

/// Every rule, plus IDENT equivalence, for one translated block.
fn check_translation(mem: &[u8], b: &GuestBlock, t: &Translation) -> Result<(), String> {
    check_translation_as(mem, b, t, false)
}

/// `check_translation`; `soft`: accesses are in the soft-TLB form, so the
/// copied instruction is not the first host instruction (not compared).
fn check_translation_as(mem: &[u8], b: &GuestBlock, t: &Translation, soft: bool) -> Result<(), String> {
    let ctx = |e: String| format!("block at {:#x}: {e}\n{}", b.start, dump(mem, b, t));
    check_block(&t.code).map_err(ctx)?;
    check_metadata(b, t).map_err(ctx)?;
    if soft {
        return Ok(());
    }
    let host = decode_host(&t.code);
    for (k, (g, &cls)) in b.insns.iter().zip(&b.classes).enumerate() {
        if !matches!(cls, Class::Ident | Class::Alias82 | Class::IncDecShort) {
            continue;
        }
        let uses_sp = (0..g.op_count()).any(|n| g.op_kind(n) == OpKind::Register && is_sp(g.op_register(n)))
            || is_sp(g.memory_base())
            || is_sp(g.memory_index());
        let high = (0..g.op_count()).any(|n| g.op_kind(n) == OpKind::Register && is_high_byte(g.op_register(n)));
        if uses_sp && high {
            continue; // substituted sequence, see the golden tests
        }
        if crate::decode::has_16bit_addressing(g) {
            continue; // the checked 16-bit address first (`segment::offset16`)
        }
        let off = t.insn_map[k + 1].host_off as usize;
        let Some(mut h) = host.iter().find(|(o, _)| *o == off).map(|&(_, h)| h) else {
            return Err(ctx(format!("no host instruction at {off:#x} for guest {:#x}", g.ip32())));
        };
        if matches!(g.mnemonic(), Mnemonic::Div | Mnemonic::Idiv) {
            // After the divide-by-zero check: the copied instruction itself.
            let end = t.insn_map.get(k + 2).map_or(usize::MAX, |e| e.host_off as usize);
            if let Some(&(_, d)) = host.iter().find(|(o, x)| *o >= off && *o < end && x.mnemonic() == g.mnemonic()) {
                h = d;
            }
        }
        if fpu_fault(g, Mode::default()).is_some() {
            continue;
        }
        let delta = t.insn_map[k + 1].esp_delta;
        check_ident(g, &h, cls, delta).map_err(|e| ctx(format!("at {:#x}: {e}", g.ip32())))?;
        // DIV/IDIV carry a zero check; the instruction after STI carries the
        // interrupt-window check.
        let after_sti = k > 0 && b.insns[k - 1].mnemonic() == Mnemonic::Sti;
        let divide = matches!(g.mnemonic(), Mnemonic::Div | Mnemonic::Idiv) || after_sti;
        // The next instruction may need the deferred stack updates made
        // first: `lea r12d,[r12+delta]` ends this one's code.
        let flush = host
            .iter()
            .find(|(o, _)| *o == off + h.len())
            .filter(|_| delta != 0 && t.insn_map.get(k + 2).is_some_and(|n| n.esp_delta == 0))
            .filter(|(_, x)| fmt(x) == format!("lea r12d,[r12{}]", signed_hex(delta)))
            .map_or(0, |(_, x)| x.len());
        if let Some(n) = t.insn_map.get(k + 2).filter(|_| !divide)
            && n.host_off as usize != off + h.len() + flush
        {
            return Err(ctx(format!("guest {:#x}: IDENT emitted more than one host instruction", g.ip32())));
        }
    }
    Ok(())
}

fn dump(mem: &[u8], b: &GuestBlock, t: &Translation) -> String {
    let mut s = String::from("guest:\n");
    for (g, c) in b.insns.iter().zip(&b.classes) {
        let a = g.ip32() as usize;
        let bytes = mem.get(a..a + g.len()).unwrap_or(&[]);
        s += &format!("  {a:08x}  {:<30} {:<40} {c:?}\n", hex(bytes), fmt(g));
    }
    s += "host:\n";
    for (o, i) in decode_host(&t.code) {
        s += &format!("  +{o:04x}  {:<40} {}\n", hex(&t.code[o..o + i.len()]), fmt(&i));
    }
    s
}

#[test]
fn check_block_rejects_unsafe_code() {
    let bad: &[(&[u8], &str)] = &[
        (&[0x8B, 0x03], "mov eax,[rbx] (no GS)"),
        (&[0x65, 0x8B, 0x03], "mov eax,gs:[rbx] (64-bit address)"),
        (&[0x65, 0x8B, 0x04, 0x25, 0, 0, 0, 0x80], "gs:[disp32] without addr32"),
        (&[0x8B, 0x05, 0, 0, 0, 0], "RIP-relative"),
        (&[0x50], "push rax"),
        (&[0x9C], "lone pushfq"),
        (&[0xC3], "ret"),
        (&[0xCD, 0x80], "int"),
        (&[0x0F, 0x05], "syscall"),
        (&[0x48, 0x83, 0xC4, 0x08], "add rsp,8"),
        (&[0x4D, 0x31, 0xFF], "xor r15,r15"),
        (&[0xFF, 0xE0], "jmp rax"),
        (&[0xAA], "stosb without rebasing"),
        (&[0x41, 0x8B, 0x44, 0x07, 0x08], "mov eax,[r15+rax+8] (no 32-bit wrap)"),
        (&[0x41, 0x8B, 0x04, 0x87], "mov eax,[r15+rax*4]"),
        (&[0x41, 0x8B, 0x47, 0xF8], "mov eax,[r15-8] (below the window)"),
        (&[0x43, 0x8B, 0x04, 0x37], "mov eax,[r15+r14]"),
        (&[0x64, 0x41, 0x8B, 0x04, 0x07], "mov eax,fs:[r15+rax]"),
        (&[0x41, 0x8B, 0x45, 0x00], "mov eax,[r13] without a soft-TLB lookup"),
        // lea r13,[r13+r11] not preceded by the addend load: still unchecked.
        (&[0x4F, 0x8D, 0x6C, 0x1D, 0x00, 0x41, 0x8B, 0x45, 0x00], "mov eax,[r13] after a bare lea"),
    ];
    for (code, what) in bad {
        assert!(check_block(code).is_err(), "{what} must be rejected");
    }
    let good: &[&[u8]] = &[
        &[0x45, 0x8B, 0xAF, 0x00, 0xE0, 0xFF, 0xFF], // the poll
        &[0x65, 0x67, 0x8B, 0x03],                   // mov eax,[r15+rbx]
        &[0x41, 0x8B, 0x46, 0x20],                   // mov eax,[r14+20h]
        &[0x49, 0x8D, 0x3C, 0x3F, 0xAA, 0x89, 0xFF], // lea rdi,[r15+rdi]; stosb; mov edi,edi
        &[0x9C, 0x41, 0x5D],                         // pushfq; pop r13
    ];
    for code in good {
        check_block(code).unwrap();
    }
}

#[test]
fn golden_blocks_pass_check_block() {
    let cases: &[&[u8]] = &[
        &[0x03, 0x44, 0xB3, 0x08, 0xF4],
        &[0xE8, 0x10, 0x00, 0x00, 0x00],
        &[0xC3],
        &[0xC2, 0x08, 0x00],
        &[0xFF, 0xE0],
        &[0xF3, 0xA5, 0xF3, 0xA4, 0xA6, 0xAB, 0xAC, 0xD7, 0xF4],
        &[0x8A, 0x64, 0x24, 0x04, 0xF4],
        &[0x60, 0x61, 0xC9, 0xC8, 0x10, 0x00, 0x00, 0xF4],
        &[0x9C, 0x9D, 0xFA, 0xFB, 0xF4],
        &[0xE3, 0x10],
        &[0x74, 0x10],
        &[0x0F, 0xA2],
    ];
    for c in cases {
        let mem = guest_mem(c);
        let (b, t) = translate_at(&mem, GUEST_AT, 0, Mode::default());
        if let Err(e) = check_translation(&mem, &b, &t) {
            panic!("{e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Whole guest images and random code
// ---------------------------------------------------------------------------

const RAM: usize = 8 << 20;
const MAX_BLOCKS: usize = 4000;

/// Translate every block reachable through direct exits and fallthroughs
/// from the entry of each committed guest image, in CPL 0 and CPL 3 modes.
#[test]
fn guest_images_pass_check_block() {
    check_guest_images(false);
}

/// The same with every eligible access in the soft-TLB form.
#[test]
fn guest_images_pass_check_block_soft() {
    check_guest_images(true);
}

fn check_guest_images(soft: bool) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images");
    let mut images: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "elf"))
        // The soft form: the kernels with the most kinds of memory operands
        // (all images take minutes in a debug build).
        .filter(|p| !soft || ["insn", "pm", "paging"].iter().any(|n| p.file_stem().is_some_and(|s| s == *n)))
        .collect();
    images.sort();
    assert!(!images.is_empty());
    let mut failures = Vec::new();
    for path in &images {
        let image = std::fs::read(path).unwrap();
        let mut ram = vec![0u8; RAM];
        let info = crate::loader::load_multiboot(&image, &mut ram, "", "btvisor-test").unwrap();
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([info.entry]);
        let mut n = 0;
        while let Some(eip) = queue.pop_front() {
            if n >= MAX_BLOCKS || (eip as usize) >= RAM || !seen.insert(eip) {
                continue;
            }
            n += 1;
            for (cpl, mode) in [(0, Mode::default()), (3, Mode(3))] {
                let (b, t) = if cpl == 3 && !soft {
                    // Ring-3 blocks probe their code page, as the engine
                    // translates them with paging on.
                    let b = decode_block_at_cpl(&ram, 0, eip, MAX_BLOCK_INSNS, cpl);
                    let o = Options { probe: Some(eip), ..opts(mode) };
                    let t = Translator::new(HOST_BASE, EXITS, 0, o, &ram).translate(&b);
                    (b, t)
                } else {
                    translate_at_soft(&ram, eip, cpl, mode, soft)
                };
                if let Err(e) = check_translation_as(&ram, &b, &t, soft) {
                    failures.push(format!("{} (cpl {cpl}): {e}", path.display()));
                    assert!(failures.len() < 10, "{}", failures.join("\n"));
                }
                if cpl == 0 {
                    queue.extend(t.exits.iter().map(|x| x.target));
                    queue.push_back(b.end); // after calls and emulated instructions
                }
            }
        }
        assert!(n > 20, "{}: only {n} blocks reached", path.display());
        eprintln!("{}: {n} blocks", path.display());
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }
}

/// Random guest bytes: `biased` mixes in prefixes and two-byte opcodes
/// so that more unusual forms reach the translator.
fn random_page(rng: &mut XorShift, biased: bool) -> Vec<u8> {
    const INTERESTING: &[u8] =
        &[0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x0F, 0x24, 0x44, 0x64, 0xE4];
    let mut mem = vec![0u8; 0x3000];
    for b in &mut mem[0x1000..0x2000] {
        let r = rng.byte();
        *b = if biased && r < 80 { INTERESTING[rng.byte() as usize % INTERESTING.len()] } else { rng.byte() };
    }
    mem
}

/// Guest instructions whose translation is known to break the rules (see
/// `maskmov_stores_through_the_window`): blocks holding them are skipped by
/// the random tests until that is fixed.
const KNOWN_UNSAFE: &[Mnemonic] = &[];

fn random_blocks(seeds: std::ops::Range<u64>, biased: bool) {
    let mut failures = Vec::new();
    let (mut blocks, mut skipped) = (0, 0);
    for seed in seeds {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x1234_5678_9ABC_DEF1) | 1);
        let mem = random_page(&mut rng, biased);
        for _ in 0..64 {
            let eip = 0x1000 + (rng.next() % 0x1000) as u32;
            for (cpl, mode) in [(0, Mode::default()), (3, Mode(3))] {
                blocks += 1;
                let r = std::panic::catch_unwind(|| translate_at(&mem, eip, cpl, mode));
                match r {
                    Err(_) => {
                        let b = decode_block_at_cpl(&mem, 0, eip, MAX_BLOCK_INSNS, cpl);
                        let g: Vec<String> = b
                            .insns
                            .iter()
                            .map(|i| format!("{} ({})", hex(&mem[i.ip32() as usize..][..i.len()]), fmt(i)))
                            .collect();
                        failures.push(format!("seed {seed} eip {eip:#x} cpl {cpl}: translation panicked; block {g:?}"));
                    }
                    Ok((b, _)) if b.insns.iter().any(|i| KNOWN_UNSAFE.contains(&i.mnemonic())) => skipped += 1,
                    Ok((b, t)) => {
                        if let Err(e) = check_translation(&mem, &b, &t) {
                            failures.push(format!("seed {seed} cpl {cpl}: {e}"));
                        }
                    }
                }
            }
        }
    }
    eprintln!("{blocks} random blocks, {skipped} skipped (known bugs), {} failures", failures.len());
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

#[test]
fn random_code_passes_check_block() {
    random_blocks(0..40, false);
}

#[test]
fn random_prefixed_code_passes_check_block() {
    random_blocks(1000..1040, true);
}

#[test]
fn insn_map_and_exit_sites_are_consistent() {
    let cases: &[&[u8]] = &[
        &[0x90, 0x40, 0x03, 0x44, 0xB3, 0x08, 0x74, 0x10],
        &[0xE3, 0x10],
        &[0xE2, 0xF0],
        &[0xE8, 0x10, 0x00, 0x00, 0x00],
        &[0xEB, 0xFE],
        &[0x50, 0x5B, 0x90, 0xEB, 0x00],
        &[0x9C, 0x9D, 0x0F, 0x84, 0x00, 0x01, 0x00, 0x00],
    ];
    for c in cases {
        let mem = guest_mem(c);
        let (b, t) = translate_at(&mem, GUEST_AT, 0, Mode::default());
        check_metadata(&b, &t).unwrap_or_else(|e| panic!("{c:02x?}: {e}\n{}", dump(&mem, &b, &t)));
        assert!(!t.exits.is_empty());
    }
    // First exit ids are numbered from first_exit_id.
    let mem = guest_mem(&[0x74, 0x10]);
    let b = decode_block(&mem, 0, GUEST_AT, 64);
    let t = Translator::new(HOST_BASE, EXITS, 40, opts(Mode::default()), &mem).translate(&b);
    let d = disasm(&t.code, t.exits[1].tail_off as usize, t.code.len());
    assert_eq!(d[1], "mov dword ptr [r14+2Ch],29h");
}

// ---------------------------------------------------------------------------
// Regression tests for bugs found by these tests
// ---------------------------------------------------------------------------

/// MASKMOVQ / MASKMOVDQU store to DS:[EDI] implicitly (iced: operand kind
/// MemorySegEDI, not Memory), so `ident` sees no memory operand and copies
/// the bytes verbatim: the host instruction stores to DS:[RDI], i.e. host
/// address EDI below 4 GiB, outside the GS window.
#[test]
fn maskmov_stores_through_the_window() {
    for g in [&[0x0F, 0xF7, 0xC1, 0xF4][..], &[0x66, 0x0F, 0xF7, 0xC1, 0xF4]] {
        let mem = guest_mem(g);
        let (b, t) = translate_at(&mem, GUEST_AT, 0, Mode::default());
        check_block(&t.code).unwrap_or_else(|e| panic!("{e}\n{}", dump(&mem, &b, &t)));
    }
}

/// With the 0x67 prefix a 32-bit string instruction addresses [SI]/[DI]
/// and counts with CX; the translation drops the prefix and runs it on
/// ESI/EDI (and RCX), so it reads/writes other addresses and updates the
/// full registers. (`decode::has_16bit_addressing` looks at
/// `memory_base()`, which is None for the MemorySeg* operand kinds of
/// string instructions, so they are not sent to the VMM.)
#[test]
fn addr16_string_instructions_are_not_widened() {
    for g in [&[0x67, 0xAC][..], &[0x67, 0xA5], &[0x67, 0xF3, 0xAA], &[0x67, 0xAE]] {
        let mem = guest_mem(g);
        let (b, t) = translate_at(&mem, GUEST_AT, 0, Mode::default());
        assert_eq!(
            disasm(&t.code, 7, t.code.len())[..2],
            ["mov dword ptr [r14+20h],1000h".to_string(), emulate_jmp()],
            "{}",
            dump(&mem, &b, &t)
        );
    }
}

/// An instruction that runs off the end of guest memory raises #UD at its
/// own address. `decode_block_at_cpl` builds it with `set_ip32(end)` before
/// `set_len(1)`; iced keeps the next IP, so the IP becomes `end - 1`.
#[test]
fn running_off_memory_faults_at_the_right_eip() {
    let (b, t) = translate_guest(&[0x90]);
    assert_eq!(b.insns[1].ip32(), 0x1001);
    assert_eq!(
        disasm(&t.code, 7, t.code.len()),
        ["nop", "mov dword ptr [r14+20h],1001h", "mov dword ptr [r14+2Ch],6", &jmp_to(EXITS.exception)]
    );
}

/// ENDBR32 (F3 0F 1E FB) is in the reserved-NOP space: a NOP on every CPU
/// without CET. gcc emits it at every function entry with
/// -fcf-protection (the default of several distributions).
#[test]
fn endbr32_is_a_nop() {
    let (b, _) = translate_guest(&[0xF3, 0x0F, 0x1E, 0xFB, 0xF4]);
    assert_eq!(b.classes[0], Class::Ident);
}

/// Host text of the first instruction of `guest` translated in the soft form.
fn first_insn_soft(guest: &[u8]) -> Vec<String> {
    let mut g = guest.to_vec();
    g.push(0xF4);
    let mem = guest_mem(&g);
    let b = decode_block(&mem, 0, GUEST_AT, 64);
    let t = Translator::new(HOST_BASE, EXITS, 0, opts(Mode::default()), &mem).with_soft_all().translate(&b);
    disasm(&t.code, t.insn_map[1].host_off as usize, t.insn_map[2].host_off as usize)
}

#[test]
fn soft_form_golden() {
    // mov eax, [ebx+8]: a read of 4 bytes, CPL 0 read table (kind 0).
    let tbl = crate::cpu::OFF_SOFT_TLB;
    let got = first_insn_soft(&[0x8B, 0x43, 0x08]);
    let want = [
        "lea r13d,[ebx+8]".to_string(),
        "mov r10,rcx".into(),
        "mov r11d,0Ch".into(),
        "lea ecx,[r13+3]".into(),
        "shrx ecx,ecx,r11d".into(),
        "shrx r11d,r13d,r11d".into(),
        "movzx r13d,r11w".into(),
        "lea r13,[r13+r13]".into(),
        format!("mov r11,[r14+r13*8+{}]", ihex(tbl as u32)),
        "lea rcx,[rcx+r11+1]".into(),
    ];
    assert_eq!(got[..10], want[..10], "{got:#?}");
    assert!(got[10].starts_with("jrcxz"), "{got:#?}");
    let tail = &got[got.len() - 5..];
    assert_eq!(
        tail,
        [
            format!("mov r11,[r14+r13*8+{}]", ihex(tbl as u32 + 8)),
            "mov rcx,r10".to_string(),
            "lea r13d,[ebx+8]".into(),
            "lea r13,[r13+r11]".into(),
            "mov eax,[r13]".into(),
        ]
    );
    // The miss path records EIP, kind and the linear address, then exits.
    assert!(got.contains(&format!("mov dword ptr [r14+20h],{:X}h", GUEST_AT)), "{got:#?}");
    assert!(got.contains(&jmp_to(EXITS.soft_miss)), "{got:#?}");
}

#[test]
fn soft_form_kinds_and_borrowed_registers() {
    let tbl = |kind: i32| ihex((crate::cpu::OFF_SOFT_TLB + kind * crate::cpu::SOFT_TLB_TABLE_BYTES) as u32);
    // add [esi+ecx*4], ah: a write (kind 1) naming AH: the host address
    // goes through a borrowed legacy register (no REX possible).
    let got = first_insn_soft(&[0x00, 0x24, 0x8E]);
    assert!(got.contains(&format!("mov r11,[r14+r13*8+{}]", tbl(1))), "{got:#?}");
    assert!(got.contains(&"lea ecx,[r13]".to_string()), "1-byte access: last byte = first {got:#?}");
    let n = got.len();
    // (ESI, the base, is free again once the address is in R13.)
    assert_eq!(got[n - 4..], ["mov r11,rsi", "mov rsi,r13", "add [rsi],ah", "mov rsi,r11"], "{got:#?}");
    // push dword [esp+4] is a stack instruction (not soft); mov [esp+4], esp keeps R12.
    let got = first_insn_soft(&[0x89, 0x64, 0x24, 0x04]);
    assert_eq!(got.last().map(String::as_str), Some("mov [r13],r12d"), "{got:#?}");
    assert!(got.contains(&"lea r13d,[r12d+4]".to_string()), "{got:#?}");
    // LEA and a BT with a register bit offset never take the soft form.
    assert!(!first_insn_soft(&[0x8D, 0x43, 0x08]).iter().any(|l| l.contains("shrx")));
    assert!(!first_insn_soft(&[0x0F, 0xA3, 0x03]).iter().any(|l| l.contains("shrx")));
}

#[test]
fn ring3_blocks_probe_their_code_page() {
    // nop at 0x1000, ring 3: the miss path, the probe, then the poll.
    let mem = guest_mem(&[0x90, 0xF4]);
    let b = decode_block_at_cpl(&mem, 0, GUEST_AT, MAX_BLOCK_INSNS, 3);
    let o = Options { probe: Some(GUEST_AT), ..opts(Mode(3)) };
    let t = Translator::new(HOST_BASE, EXITS, 0, o, &mem).translate(&b);
    let text = disasm(&t.code, 0, t.entry_skip as usize + 7);
    let table = ihex((crate::cpu::OFF_CODE_OK + (GUEST_AT >> 12) as i32) as u32);
    assert_eq!(
        text,
        [
            "mov rcx,r11".to_string(),
            format!("mov dword ptr [r14+20h],{:X}h", GUEST_AT),
            jmp_to(EXITS.probe_miss),
            "mov r11,rcx".into(),
            format!("movzx ecx,byte ptr [r14+{table}]"),
            format!("jrcxz {:016X}h", HOST_BASE),
            "mov rcx,r11".into(),
            POLL.into(),
        ]
    );
    assert_eq!(disasm(&t.code, t.entry_off as usize, t.entry_off as usize + 3), ["mov r11,rcx"]);
    check_translation(&mem, &b, &t).unwrap();
}

#[test]
fn invlpg_at_cpl0_is_a_callout() {
    // invlpg [eax+10h]
    let mem = guest_mem(&[0x0F, 0x01, 0x78, 0x10]);
    let (_, t) = translate_at(&mem, GUEST_AT, 0, Mode::default());
    let text = disasm(&t.code, 0, t.code.len());
    assert!(text.contains(&"lea r13d,[eax+10h]".to_string()), "{text:#?}");
    let call = format!("call qword ptr [r14+{}]", ihex(crate::cpu::OFF_INVLPG_FN as u32));
    assert!(text.contains(&call), "{text:#?}");
    // Refused by the VMM: emulated after an exit at the INVLPG's EIP.
    assert!(text.contains(&format!("mov dword ptr [r14+20h],{:X}h", GUEST_AT)), "{text:#?}");
    assert!(text.contains(&emulate_jmp()), "{text:#?}");
    // Otherwise on to the next instruction through a chainable exit.
    assert_eq!(t.exits.len(), 1);
    assert_eq!(t.exits[0].target, GUEST_AT + 4);
    // At CPL 3 it raises #GP: the VMM emulates it.
    let (_, t) = translate_at(&mem, GUEST_AT, 3, Mode(3));
    let text = disasm(&t.code, 0, t.code.len());
    assert!(!text.contains(&call), "{text:#?}");
}

#[test]
fn layout_knows_16bit_addressing_displacements() {
    // (bytes, code16, end of ModRM + SIB + displacement)
    let cases: &[(&[u8], bool, usize)] = &[
        (&[0x21, 0x26, 0x40, 0xB5], true, 4),       // and [0xB540], sp: disp16 alone
        (&[0x8B, 0x47, 0x04], true, 3),             // mov ax, [bx+4]: disp8
        (&[0x8B, 0x80, 0x00, 0x01], true, 4),       // mov ax, [bx+si+0x100]: disp16
        (&[0x8B, 0x00], true, 2),                   // mov ax, [bx+si]
        (&[0x67, 0x8B, 0x40, 0x04], false, 4),      // addr16 in 32-bit code
        (&[0x67, 0x8B, 0x05, 1, 2, 3, 4], true, 7), // addr32 in 16-bit code: disp32
        (&[0x8B, 0x05, 1, 2, 3, 4], false, 6),      // 32-bit [disp32]
        (&[0x8B, 0x44, 0x24, 0x08], false, 4),      // [esp+8]: SIB + disp8
    ];
    for &(bytes, code16, end) in cases {
        assert_eq!(layout(bytes, true, code16).modrm_end, end, "{bytes:02x?} code16={code16}");
    }
}

#[test]
fn golden_based_segment_access() {
    // mov eax, gs:[0x14] with GS based (TLS): a null test, the base, and the
    // access with the base folded into the operand; no flags pushed.
    let mem = guest_mem(&[0x65, 0xA1, 0x14, 0x00, 0x00, 0x00, 0xF4]);
    let gs_nonflat = 1 << (8 + crate::cpu::SEG_GS);
    let (_, t) = translate_at(&mem, GUEST_AT, 3, Mode(3 | gs_nonflat | Mode::GS_BASED));
    let text = disasm(&t.code, 7, t.code.len());
    // iced's hex: a leading 0 before a letter digit.
    let hex = |v: i32| {
        let h = format!("{v:X}h");
        if h.starts_with(|c: char| c.is_ascii_alphabetic()) { format!("0{h}") } else { h }
    };
    let hi = hex(crate::cpu::OFF_SEG_HI + 4 * crate::cpu::SEG_GS as i32);
    let base = hex(crate::cpu::OFF_SEG_BASE + 4 * crate::cpu::SEG_GS as i32);
    assert_eq!(text[..3], ["mov r11,rcx".to_string(), format!("mov ecx,[r14+{hi}]"), text[2].clone()]);
    assert!(text[2].starts_with("jrcxz"), "{text:?}");
    let ok = text.iter().position(|l| l.starts_with("mov r13d,[r14+")).expect("the base load");
    assert_eq!(text[ok - 1], "mov rcx,r11");
    assert_eq!(text[ok], format!("mov r13d,[r14+{base}]"));
    assert_eq!(text[ok + 1], "mov eax,gs:[r13d+14h]");
    assert!(!text.iter().any(|l| l.contains("pushf")), "{text:?}");
    check_block(&t.code).expect("passes the mechanical check");
}
