//! Decoding guest code into basic blocks and classifying each instruction
//! by how it must be translated.
//!
//! A block ends after a control transfer, after an instruction the VMM must
//! handle, before an instruction that starts on the next page, and at a
//! length cap.

use iced_x86::{Code, CpuidFeature, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};

use crate::memory::PAGE_SIZE;

/// Maximum number of guest instructions per block.
pub const MAX_BLOCK_INSNS: usize = 64;
/// Conditional branches a block may go on past (side exits): one poll load
/// and one jump fewer per branch on the fall-through path, and longer
/// straight-line host code, for a little code duplication.
pub const MAX_SIDE_EXITS: usize = 4;
/// CALLs a block may go on past to the return site (`Reach::calls`).
pub const MAX_PAST_CALLS: usize = 1;
/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// How an instruction is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Copied, with memory operands moved into the GS window and ESP mapped to R12.
    Ident,
    /// `inc/dec r32/r16` in the one-byte forms (REX prefixes in 64-bit mode).
    IncDecShort,
    /// Opcode 0x82 (an alias of 0x80 that 64-bit mode removed).
    Alias82,
    /// LODS and XLAT: implicit DS-relative memory, copied with GS and addr32.
    ImplicitDs,
    /// MOVS/STOS/SCAS/CMPS: the ES:EDI operand goes through a host pointer.
    StringEs,
    /// MASKMOVQ/MASKMOVDQU: an implicit DS:EDI store, also through a host pointer.
    MaskMov,
    PushReg,
    PushImm,
    PushMem,
    /// PUSH of a segment register (32-bit operand size): the guest selector.
    PushSeg,
    /// MOV r32/r16, Sreg: the guest selector, zero-extended to 32 bits as
    /// on P6-family processors.
    ReadSeg,
    /// MOV ES/DS/FS/GS, r16/r32 and POP ES/DS/FS/GS: skipped in place when
    /// they reload the selector already loaded from an unchanged
    /// descriptor, else run by the VMM (`translate::segment::reload`).
    SegReload,
    /// VERW: ZF as the VMM last found it for the same selector, CPL and
    /// unchanged descriptor, else run by the VMM (`translate::segment::verw`).
    VerifyWrite,
    PopReg,
    PopMem,
    Pushad,
    Popad,
    Leave,
    /// ENTER with nesting level 0.
    Enter0,
    JmpDirect,
    Jcc,
    /// JECXZ / LOOP / LOOPE / LOOPNE on ECX.
    JcxzLoop,
    CallDirect,
    JmpIndirect,
    CallIndirect,
    Ret,
    /// Needs the VMM: the block ends before it and `cpu::interp` runs it.
    Emulate,
    /// CLI, STI, PUSHFD, POPFD and MOV r32, CR2 in a CPL-0 block:
    /// translated inline.
    SysInline,
    /// IN/OUT in a CPL-0 block: a call into the VMM without leaving the block.
    PortIo,
    /// SGDT, SIDT, SLDT, STR and SMSW in 32-bit code: stores of the copies
    /// of GDTR, IDTR, LDTR, TR and CR0 the dispatcher keeps in `HotState`.
    StoreSys,
    /// `F3 0F BC/BD`: TZCNT/LZCNT on CPUs with BMI1/LZCNT, but BSF/BSR with
    /// an ignored REP prefix on the presented CPU, which has neither (the
    /// kernel's `__ffs` uses this encoding on purpose). Copied without F3.
    RepBitScan,
    /// Raises #UD (undefined, or a feature the virtual CPU does not have).
    Invalid,
}

impl Class {
    /// Does the block end after this instruction?
    pub fn ends_block(self) -> bool {
        matches!(
            self,
            Class::JmpDirect
                | Class::Jcc
                | Class::JcxzLoop
                | Class::CallDirect
                | Class::JmpIndirect
                | Class::CallIndirect
                | Class::Ret
                | Class::Emulate
                | Class::Invalid
        )
    }
}

/// CPUID features the virtual CPU has (see `cpu::cpuid`); anything needing
/// another feature is #UD.
fn feature_ok(f: CpuidFeature) -> bool {
    matches!(
        f,
        CpuidFeature::INTEL8086
            | CpuidFeature::INTEL186
            | CpuidFeature::INTEL286
            | CpuidFeature::INTEL386
            | CpuidFeature::INTEL486
            | CpuidFeature::CMOV
            | CpuidFeature::CPUID
            | CpuidFeature::CX8
            | CpuidFeature::FPU
            | CpuidFeature::FPU287
            | CpuidFeature::FPU387
            | CpuidFeature::FXSR
            | CpuidFeature::MMX
            | CpuidFeature::MULTIBYTENOP
            | CpuidFeature::PAUSE
            | CpuidFeature::SSE
            | CpuidFeature::SSE2
            | CpuidFeature::TSC
            | CpuidFeature::MSR
            | CpuidFeature::RDPMC
            | CpuidFeature::SEP
            // ENDBR32/ENDBR64 are NOPs on CPUs without CET.
            | CpuidFeature::CET_IBT
            | CpuidFeature::SERIALIZE
    )
}

/// Does the instruction use the x87/MMX/SSE state?
#[inline]
pub fn uses_fpu(i: &Instruction) -> bool {
    code_facts(i.code()) & USES_FPU != 0
}

/// `code_facts`: every CPUID feature the instruction needs is the virtual
/// CPU's (`feature_ok`).
const FEATURES_OK: u8 = 1;
/// `code_facts`: the instruction uses the x87/MMX/SSE state.
const USES_FPU: u8 = 2;
/// `code_facts`: `classify` gives `Class::Ident` whatever the operands
/// (`ident_whatever_the_operands`).
const ALWAYS_IDENT: u8 = 4;
/// `code_facts`: a Jcc with a relative target, always `Class::Jcc`.
const ALWAYS_JCC: u8 = 8;

/// Facts the decoder and translator ask of every instruction, per
/// `Code`, worked out once from iced-x86's tables: looking the features up
/// there for each instruction (two table loads and a walk of a feature
/// list, twice) was a tenth of the translator's time.
fn code_facts(c: Code) -> u8 {
    static FACTS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let facts = FACTS.get_or_init(|| {
        use Mnemonic as M;
        Code::values()
            .map(|c| {
                let f = c.cpuid_features();
                let mut v = 0;
                if f.iter().all(|&f| feature_ok(f)) {
                    v |= FEATURES_OK;
                }
                let fence = matches!(c.mnemonic(), M::Lfence | M::Mfence | M::Sfence | M::Pause);
                if v & FEATURES_OK != 0 && ident_whatever_the_operands(c) {
                    v |= ALWAYS_IDENT;
                }
                if v & FEATURES_OK != 0 && c.is_jcc_short_or_near() {
                    v |= ALWAYS_JCC;
                }
                if !fence
                    && f.iter().any(|f| {
                        matches!(
                            f,
                            CpuidFeature::FPU
                                | CpuidFeature::FPU287
                                | CpuidFeature::FPU387
                                | CpuidFeature::MMX
                                | CpuidFeature::SSE
                                | CpuidFeature::SSE2
                                | CpuidFeature::FXSR
                        )
                    })
                {
                    v |= USES_FPU;
                }
                v
            })
            .collect()
    });
    facts.get(c as usize).copied().unwrap_or(0)
}

/// Is every instruction of code `c` (its features present) an ordinary one
/// for `classify`, whatever its operands? Worked out from the code alone:
/// it goes on to the next instruction, moves no stack pointer, names no
/// segment, control, debug or test register and no implicit string operand,
/// is not one the VMM runs (`vmm_verdict`'s mnemonics), and has no form of its
/// own in `classify` (the one-byte INC/DEC, opcode 0x82, TZCNT/LZCNT). Most
/// instructions of compiled code are these; `classify` then skips the
/// operand tests (a test checks the two agree over decoded code).
fn ident_whatever_the_operands(c: Code) -> bool {
    use Code::*;
    use iced_x86::OpCodeOperandKind as K;
    if c == INVALID || matches!(c, Inc_r32 | Inc_r16 | Dec_r32 | Dec_r16) {
        return false;
    }
    let i = Instruction::with(c);
    if matches!(i.mnemonic(), Mnemonic::Tzcnt | Mnemonic::Lzcnt)
        || i.flow_control() != FlowControl::Next
        || i.stack_pointer_increment() != 0
        // (MOV's verdict rests on a control, debug or test register, and
        // MOVSD/CMPSD's on being the string form: both in the operand
        // kinds tested below.)
        || (vmm_verdict(&i).is_some() && !matches!(i.mnemonic(), Mnemonic::Mov | Mnemonic::Movsd | Mnemonic::Cmpsd))
    {
        return false;
    }
    let op = c.op_code();
    if op.table() == iced_x86::OpCodeTableKind::Normal && op.op_code() == 0x82 {
        return false;
    }
    !op.op_kinds().iter().any(|k| {
        matches!(
            k,
            K::seg_reg
                | K::cr_reg
                | K::dr_reg
                | K::tr_reg
                | K::es
                | K::cs
                | K::ss
                | K::ds
                | K::fs
                | K::gs
                | K::seg_rSI
                | K::es_rDI
                | K::seg_rDI
                | K::seg_rBX_al
        )
    })
}

/// Does the instruction's memory operand use 16-bit addressing?
pub fn has_16bit_addressing(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| matches!(i.op_kind(n), OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI))
        || (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory) && i.memory_displ_size() == 2
        || matches!(i.memory_base(), Register::BX | Register::BP | Register::SI | Register::DI)
        || matches!(i.memory_index(), Register::SI | Register::DI)
}

/// An implicit [(E)SI]/[(E)DI] operand: MOVS/STOS/LODS/CMPS/SCAS, INS/OUTS,
/// MASKMOVQ (the memory forms, not SSE's CMPSD/MOVSD).
pub fn has_string_operand(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| {
        matches!(
            i.op_kind(n),
            OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegDI
                | OpKind::MemorySegEDI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
        )
    })
}

fn has_sreg_operand(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_segment_register())
}

/// Classify one decoded instruction (of a 32- or 16-bit code segment).
/// 16-bit addressing, the norm in 16-bit code and a 0x67 prefix away in
/// 32-bit code, the translator handles for ordinary instructions.
pub fn classify(i: &Instruction) -> Class {
    let facts = code_facts(i.code());
    if facts & ALWAYS_IDENT != 0 {
        return Class::Ident;
    }
    if facts & ALWAYS_JCC != 0 {
        return Class::Jcc;
    }
    classify_by_operands(i)
}

/// `classify` of an instruction whose class its code alone does not give.
fn classify_by_operands(i: &Instruction) -> Class {
    if matches!(i.mnemonic(), Mnemonic::Tzcnt | Mnemonic::Lzcnt) && !i.is_invalid() {
        return Class::RepBitScan;
    }
    if i.is_invalid() || code_facts(i.code()) & FEATURES_OK == 0 {
        return Class::Invalid;
    }
    use Code::*;
    let c = i.code();
    let mem16 = i.op_count() > 0 && has_16bit_addressing(i);
    match c {
        Inc_r32 | Inc_r16 | Dec_r32 | Dec_r16 => return Class::IncDecShort,
        Push_r32 => return Class::PushReg,
        Pop_r32 => return Class::PopReg,
        Pushd_imm32 | Pushd_imm8 => return Class::PushImm,
        Pushd_ES | Pushd_CS | Pushd_SS | Pushd_DS | Pushd_FS | Pushd_GS => return Class::PushSeg,
        Popd_ES | Popd_DS | Popd_FS | Popd_GS => return Class::SegReload,
        Mov_r32m16_Sreg | Mov_rm16_Sreg if i.op0_kind() == OpKind::Register => return Class::ReadSeg,
        Verw_rm16 | Verw_r32m16 if !mem16 => return Class::VerifyWrite,
        Mov_Sreg_r32m16 | Mov_Sreg_rm16
            if (i.op1_kind() == OpKind::Register || !mem16)
                && matches!(i.op0_register(), Register::ES | Register::DS | Register::FS | Register::GS) =>
        {
            return Class::SegReload;
        }
        Push_rm32 if !mem16 => {
            return if i.op0_kind() == OpKind::Register { Class::PushReg } else { Class::PushMem };
        }
        Pop_rm32 if !mem16 => {
            return if i.op0_kind() == OpKind::Register { Class::PopReg } else { Class::PopMem };
        }
        Pushad => return Class::Pushad,
        Popad => return Class::Popad,
        Leaved => return Class::Leave,
        Enterd_imm16_imm8 if i.immediate8_2nd() & 0x1F == 0 => return Class::Enter0,
        Jmp_rel8_32 | Jmp_rel32_32 => return Class::JmpDirect,
        Call_rel32_32 => return Class::CallDirect,
        Jmp_rm32 if !mem16 => return Class::JmpIndirect,
        Call_rm32 if !mem16 => return Class::CallIndirect,
        Retnd | Retnd_imm16 => return Class::Ret,
        Jecxz_rel8_32 | Loop_rel8_32_ECX | Loope_rel8_32_ECX | Loopne_rel8_32_ECX => {
            return Class::JcxzLoop;
        }
        Lodsb_AL_m8 | Lodsw_AX_m16 | Lodsd_EAX_m32 | Xlat_m8 if !mem16 => return Class::ImplicitDs,
        Movsb_m8_m8 | Movsw_m16_m16 | Movsd_m32_m32 | Stosb_m8_AL | Stosw_m16_AX | Stosd_m32_EAX | Scasb_AL_m8
        | Scasw_AX_m16 | Scasd_EAX_m32 | Cmpsb_m8_m8 | Cmpsw_m16_m16 | Cmpsd_m32_m32
            if !mem16 =>
        {
            return Class::StringEs;
        }
        Maskmovq_rDI_mm_mm | Maskmovdqu_rDI_xmm_xmm if !mem16 => return Class::MaskMov,
        Ud0 | Ud0_r16_rm16 | Ud0_r32_rm32 | Ud1_r16_rm16 | Ud1_r32_rm32 | Ud2 => {
            return Class::Invalid;
        }
        _ => {}
    }
    let direct = matches!(i.op0_kind(), OpKind::NearBranch32 | OpKind::NearBranch16);
    if i.flow_control() == FlowControl::ConditionalBranch && direct && i.code().is_jcc_short_or_near() {
        return Class::Jcc;
    }
    if matches!(c, Jmp_rel8_16 | Jmp_rel16) {
        return Class::JmpDirect;
    }
    if i.flow_control() != FlowControl::Next || has_sreg_operand(i) {
        return Class::Emulate;
    }
    // Anything else that moves the stack pointer implicitly would use the
    // host RSP, and any other implicit [ESI]/[EDI] operand would be a host
    // address: never copy them.
    if needs_vmm(i) || i.stack_pointer_increment() != 0 || has_string_operand(i) {
        return Class::Emulate;
    }
    if i.op_code().table() == iced_x86::OpCodeTableKind::Normal && i.op_code().op_code() == 0x82 {
        return Class::Alias82;
    }
    Class::Ident
}

/// Sensitive and privileged instructions, and forms whose 64-bit encoding
/// means something else, that the VMM carries out itself.
fn needs_vmm(i: &Instruction) -> bool {
    vmm_verdict(i) == Some(true)
}

/// `needs_vmm`'s answer for the mnemonics it concerns, `None` for the
/// others (whose instructions the VMM never needs to run for their own sake).
fn vmm_verdict(i: &Instruction) -> Option<bool> {
    use Mnemonic as M;
    Some(match i.mnemonic() {
        M::Mov => has_control_or_debug_reg(i),
        M::Push | M::Pop | M::Pusha | M::Pushad | M::Popa | M::Popad => true,
        M::Pushf | M::Pushfd | M::Popf | M::Popfd | M::Enter | M::Leave => true,
        M::Cli | M::Sti | M::Hlt | M::Cpuid | M::In | M::Out => true,
        M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => true,
        M::Lgdt | M::Lidt | M::Lldt | M::Ltr | M::Sgdt | M::Sidt | M::Sldt | M::Str | M::Smsw | M::Lmsw => true,
        M::Clts | M::Invd | M::Wbinvd | M::Invlpg | M::Rdmsr | M::Wrmsr | M::Rdpmc => true,
        M::Lar | M::Lsl | M::Verr | M::Verw | M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => true,
        // They store the x87 instruction pointer, which is a host address.
        M::Fnstenv | M::Fstenv | M::Fnsave | M::Fsave | M::Fxsave => true,
        M::Bound | M::Arpl | M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad | M::Salc => true,
        // String forms left over here use 16-bit addressing.
        M::Movsb | M::Movsw | M::Movsd | M::Stosb | M::Stosw | M::Stosd | M::Scasb | M::Scasw | M::Scasd => {
            i.op_count() == 2 && !(0..2).any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_xmm())
        }
        M::Cmpsb | M::Cmpsw | M::Lodsb | M::Lodsw | M::Lodsd | M::Xlatb => true,
        M::Cmpsd => !(0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Register && i.op_register(n).is_xmm()),
        _ => return None,
    })
}

fn has_control_or_debug_reg(i: &Instruction) -> bool {
    (0..i.op_count()).any(|n| {
        i.op_kind(n) == OpKind::Register && {
            let r = i.op_register(n);
            r.is_cr() || r.is_dr() || r.is_tr()
        }
    })
}

/// A decoded guest block.
pub struct GuestBlock {
    pub start: u32,
    pub insns: Vec<Instruction>,
    pub classes: Vec<Class>,
    /// Address after the last instruction.
    pub end: u32,
    /// The last instruction ran past the end of the bytes given (it is
    /// marked invalid; with paging, its next page may just be unmapped).
    pub truncated: bool,
    /// A leaf function spliced in after an indirect CALL (`inline_call`).
    pub inlined: Option<Inlined>,
}

/// A callee's instructions spliced into a block after the indirect CALL
/// that reached it (`GuestBlock::inline_call`): `insns[call]` is the CALL,
/// `insns[call + 1..=call + len]` the callee, ending in its RET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inlined {
    pub call: usize,
    pub len: usize,
    /// The callee's guest addresses, `[start, end)`.
    pub start: u32,
    pub end: u32,
    /// Some callee instruction may store to memory (and so rewrite the
    /// return address the CALL pushed).
    pub stores: bool,
}

/// Most instructions of a callee worth inlining (comparison functions,
/// accessors): past this the CALL's cost no longer matters.
pub const MAX_INLINE_INSNS: usize = 16;

impl GuestBlock {
    /// First and last guest page the block's bytes touch.
    pub fn pages(&self) -> (u32, u32) {
        let mask = !(PAGE_SIZE as u32 - 1);
        (self.start & mask, self.end.wrapping_sub(1) & mask)
    }

    /// Is `eip` in the block's inlined callee?
    pub fn in_callee(&self, eip: u32) -> bool {
        self.inlined.is_some_and(|c| eip.wrapping_sub(c.start) < c.end.wrapping_sub(c.start))
    }

    /// Splice `callee` (a `decode_leaf` block) in after the indirect CALL
    /// `insns[call]`, which the block went past.
    pub fn inline_call(&mut self, call: usize, callee: GuestBlock) {
        let len = callee.insns.len();
        let mut info = iced_x86::InstructionInfoFactory::new();
        let stores = callee.insns.iter().any(|i| {
            info.info(i).used_memory().iter().any(|m| {
                !matches!(
                    m.access(),
                    iced_x86::OpAccess::Read | iced_x86::OpAccess::CondRead | iced_x86::OpAccess::NoMemAccess
                )
            })
        });
        self.inlined = Some(Inlined { call, len, start: callee.start, end: callee.end, stores });
        self.insns.splice(call + 1..call + 1, callee.insns);
        self.classes.splice(call + 1..call + 1, callee.classes);
    }
}

/// Decode the function at `eip` if it can be inlined at a CALL: at most
/// `MAX_INLINE_INSNS` instructions ending in a plain RET, with nothing that
/// leaves for the VMM, calls, or jumps but forward conditional branches to
/// its own instructions. Such a callee, spliced into its caller's block,
/// runs start to RET without leaving the block except by a fault.
pub fn decode_leaf(code: &[u8], base: u32, eip: u32, cpl: u8, bitness: u32) -> Option<GuestBlock> {
    let reach = Reach { side_exits: MAX_INLINE_INSNS, calls: 0 };
    let b = decode_superblock(code, base, eip, MAX_INLINE_INSNS, cpl, bitness, reach);
    let (last, body) = b.insns.split_last()?;
    let ok = !b.truncated
        && b.classes.last() == Some(&Class::Ret)
        && last.op_count() == 0
        && body.iter().zip(&b.classes).all(|(i, &c)| match c {
            Class::Ident | Class::Alias82 | Class::IncDecShort | Class::PushReg | Class::PushImm | Class::PopReg => {
                true
            }
            Class::Jcc => {
                let t = i.near_branch32();
                t > i.ip32() && b.insns.iter().any(|j| j.ip32() == t)
            }
            _ => false,
        });
    ok.then_some(b)
}

/// Decode a block at `eip` from `code` (guest memory starting at guest
/// address `base`) for CPL 0.
pub fn decode_block(code: &[u8], base: u32, eip: u32, max_insns: usize) -> GuestBlock {
    decode_block_at_cpl(code, base, eip, max_insns, 0)
}

/// Decode a block for code running at `cpl` (CPL 0 blocks run CLI, STI,
/// PUSHFD and POPFD inline). Bytes past the end of `code` decode as invalid.
pub fn decode_block_at_cpl(code: &[u8], base: u32, eip: u32, max_insns: usize, cpl: u8) -> GuestBlock {
    decode_block_in(code, base, eip, max_insns, cpl, 32)
}

/// Decode a block of `bitness` (16 or 32) code running at `cpl`.
pub fn decode_block_in(code: &[u8], base: u32, eip: u32, max_insns: usize, cpl: u8, bitness: u32) -> GuestBlock {
    decode_superblock(code, base, eip, max_insns, cpl, bitness, Reach::default())
}

/// How far a superblock goes on past branches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reach {
    /// Conditional branches to go past: the block continues with the
    /// fall-through path, and the translator makes each taken branch a
    /// chainable side exit.
    pub side_exits: usize,
    /// CALLs to go past to the return site (when the translator makes them
    /// host CALLs, whose continuation is the code after them).
    pub calls: usize,
}

/// `decode_block_in` that goes on past branches as `reach` allows.
pub fn decode_superblock(
    code: &[u8],
    base: u32,
    eip: u32,
    max_insns: usize,
    cpl: u8,
    bitness: u32,
    reach: Reach,
) -> GuestBlock {
    let mut side_exits_left = reach.side_exits;
    let mut calls_left = reach.calls;
    let off = eip.wrapping_sub(base) as usize;
    let bytes = code.get(off..).unwrap_or(&[]);
    let mut d = Decoder::with_ip(bitness, bytes, eip as u64, DecoderOptions::NONE);
    let page_end = (eip as u64 & !(PAGE_SIZE as u64 - 1)) + PAGE_SIZE as u64;
    // Sized for the longest block at once: growing the vectors cost more
    // (reallocation and copying) than the unused room does.
    let mut insns = Vec::with_capacity(max_insns.min(MAX_BLOCK_INSNS));
    let mut classes = Vec::with_capacity(max_insns.min(MAX_BLOCK_INSNS));
    let mut end = eip;
    let mut truncated = false;
    loop {
        let i = if d.can_decode() { Some(d.decode()) } else { None };
        let Some(i) = i.filter(|_| d.last_error() != iced_x86::DecoderError::NoMoreBytes) else {
            // Ran off the end of the bytes: an invalid instruction at `end`.
            let mut inv = Instruction::default();
            // The length first: iced derives the next IP from it.
            inv.set_len(1);
            inv.set_ip32(end);
            insns.push(inv);
            classes.push(Class::Invalid);
            end = end.wrapping_add(1);
            truncated = true;
            break;
        };
        let mut cls = classify(&i);
        let reads_cr2 = i.code() == Code::Mov_r32_cr && i.op1_register() == Register::CR2;
        if cls == Class::Emulate
            && cpl == 0
            && (matches!(i.code(), Code::Cli | Code::Sti | Code::Pushfd | Code::Popfd) || reads_cr2)
        {
            cls = Class::SysInline;
        } else if cls == Class::Emulate
            && cpl == 0
            && bitness == 32
            && matches!(i.mnemonic(), Mnemonic::In | Mnemonic::Out)
        {
            cls = Class::PortIo;
        } else if cls == Class::Emulate
            && bitness == 32
            && matches!(i.mnemonic(), Mnemonic::Sgdt | Mnemonic::Sidt | Mnemonic::Sldt | Mnemonic::Str | Mnemonic::Smsw)
            && !has_16bit_addressing(&i)
        {
            cls = Class::StoreSys;
        }
        end = i.next_ip32();
        insns.push(i);
        classes.push(cls);
        let is_call = matches!(cls, Class::CallDirect | Class::CallIndirect);
        let side_exit = (cls == Class::Jcc && side_exits_left > 0) || (is_call && calls_left > 0);
        if side_exit && is_call {
            calls_left -= 1;
        } else if side_exit {
            side_exits_left -= 1;
        }
        if (cls.ends_block() && !side_exit) || insns.len() >= max_insns || end as u64 >= page_end || end == 0 {
            break;
        }
    }
    GuestBlock { start: eip, insns, classes, end, truncated, inlined: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(code: &[u8]) -> Vec<Class> {
        decode_block_at_cpl(code, 0x1000, 0x1000, 64, 3).classes
    }

    /// `classify`'s shortcut by code agrees with the operand tests, over
    /// every opcode byte pair with varied ModRM/SIB bytes and prefixes
    /// (operand size, address size, segment, REP, LOCK), in 32- and 16-bit
    /// code, and over the committed guest images' code.
    #[test]
    fn classify_by_code_agrees_with_the_operand_tests() {
        let mut checked = 0usize;
        let mut check = |bytes: &[u8], bitness: u32| {
            let mut d = Decoder::new(bitness, bytes, DecoderOptions::NONE);
            while d.can_decode() {
                let i = d.decode();
                if i.is_invalid() {
                    continue;
                }
                assert_eq!(classify(&i), classify_by_operands(&i), "{:?} {:02x?}", i.code(), bytes);
                checked += 1;
            }
        };
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        };
        let prefixes: [&[u8]; 8] = [&[], &[0x66], &[0x67], &[0x26], &[0xF3], &[0xF2], &[0xF0], &[0x66, 0x67]];
        for p in prefixes {
            for op in 0..=0xFFu8 {
                for op2 in [None, Some(0x0Fu8)] {
                    for _ in 0..12 {
                        let mut b = p.to_vec();
                        if let Some(e) = op2 {
                            b.push(e);
                        }
                        b.push(op);
                        b.extend((0..8).map(|_| next()));
                        check(&b, 32);
                        check(&b, 16);
                    }
                }
            }
        }
        for img in ["insn.elf", "compute.elf", "insn-sse.elf"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/guest-images/").to_string() + img;
            if let Ok(bytes) = std::fs::read(path) {
                check(&bytes, 32);
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn code_facts_index_every_code() {
        // The table answers for each Code what iced-x86's own lookups do.
        for c in Code::values() {
            let f = c.cpuid_features();
            let ok = f.iter().all(|&f| feature_ok(f));
            assert_eq!(code_facts(c) & FEATURES_OK != 0, ok, "{c:?}");
        }
        let fpu = |code: &[u8]| uses_fpu(&decode_block(code, 0, 0, 1).insns[0]);
        assert!(fpu(&[0xD9, 0xE8]), "fld1");
        assert!(fpu(&[0x0F, 0x58, 0xC1]), "addps xmm0, xmm1");
        assert!(fpu(&[0x0F, 0xAE, 0x00]), "fxsave [eax]");
        assert!(!fpu(&[0x0F, 0xAE, 0xE8]), "lfence");
        assert!(!fpu(&[0x01, 0xC8]), "add eax, ecx");
        assert_eq!(classes(&[0xC5, 0xF8, 0x58, 0xC1])[0], Class::Invalid, "vaddps: no AVX");
    }

    #[test]
    fn leaf_functions_that_can_be_inlined() {
        let leaf = |code: &[u8]| decode_leaf(code, 0x1000, 0x1000, 3, 32).map(|b| b.insns.len());
        assert_eq!(leaf(&[0x43, 0xC3]), Some(2), "inc ebx ; ret");
        // qsort's comparator: loads, a forward JB to its RET, SETB.
        let cmp = [
            0x8B, 0x44, 0x24, 0x04, 0x8B, 0x10, 0x8B, 0x44, 0x24, 0x08, 0x8B, 0x08, 0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0x39,
            0xCA, 0x72, 0x07, 0x31, 0xC0, 0x39, 0xD1, 0x0F, 0x92, 0xC0, 0xC3,
        ];
        assert_eq!(leaf(&cmp), Some(11));
        assert_eq!(leaf(&[0x53, 0x5B, 0xC3]), Some(3), "push ebx ; pop ebx ; ret");
        assert_eq!(leaf(&[0xC2, 0x04, 0x00]), None, "ret 4");
        assert_eq!(leaf(&[0xE8, 0, 0, 0, 0, 0xC3]), None, "a call");
        assert_eq!(leaf(&[0xFF, 0xD0, 0xC3]), None, "an indirect call");
        assert_eq!(leaf(&[0x74, 0x01, 0x43, 0xC3]), Some(3), "je to its ret");
        assert_eq!(leaf(&[0x43, 0x74, 0xFD, 0xC3]), None, "a backward branch");
        assert_eq!(leaf(&[0x74, 0x10, 0xC3]), None, "a branch out of the function");
        assert_eq!(leaf(&[0xEB, 0x00, 0xC3]), None, "a JMP");
        assert_eq!(leaf(&[0xEE, 0xC3]), None, "out dx, al (the VMM's)");
        assert_eq!(leaf(&[0xFA, 0xC3]), None, "cli");
        assert_eq!(leaf(&[0x43; 20]), None, "no RET within MAX_INLINE_INSNS");
        assert_eq!(leaf(&[0x43]), None, "runs off the code");
    }

    #[test]
    fn an_inlined_callee_is_spliced_after_its_call() {
        // call edx ; inc eax ; hlt — with the callee `callee` at 0x2000.
        let spliced = |callee: &[u8]| {
            let reach = Reach { calls: 1, ..Reach::default() };
            let mut b = decode_superblock(&[0xFF, 0xD2, 0x40, 0xF4], 0x1000, 0x1000, 64, 3, 32, reach);
            b.inline_call(0, decode_leaf(callee, 0x2000, 0x2000, 3, 32).expect("a leaf"));
            b
        };
        // mov [esp+4], ebx ; ret
        let b = spliced(&[0x89, 0x5C, 0x24, 0x04, 0xC3]);
        let ips: Vec<u32> = b.insns.iter().map(|i| i.ip32()).collect();
        assert_eq!(ips, [0x1000, 0x2000, 0x2004, 0x1002, 0x1003]);
        assert_eq!(b.classes[1..3], [Class::Ident, Class::Ret]);
        assert_eq!(b.inlined, Some(Inlined { call: 0, len: 2, start: 0x2000, end: 0x2005, stores: true }));
        assert_eq!(b.end, 0x1004, "the block's own extent");
        assert!(b.in_callee(0x2004) && !b.in_callee(0x2005) && !b.in_callee(0x1002));
        // mov eax, [esp+4] ; ret
        let b = spliced(&[0x8B, 0x44, 0x24, 0x04, 0xC3]);
        assert!(!b.inlined.is_some_and(|c| c.stores), "a callee that only loads");
    }

    #[test]
    fn interrupt_flag_instructions_are_inline_at_cpl0() {
        for code in [&[0xFA][..], &[0xFB], &[0x9C], &[0x9D]] {
            assert_eq!(decode_block(code, 0x1000, 0x1000, 64).classes[0], Class::SysInline);
        }
        // mov eax, cr2: inline at CPL 0, the VMM's (#GP) at CPL 3; other
        // control registers always the VMM's.
        assert_eq!(decode_block(&[0x0F, 0x20, 0xD0], 0x1000, 0x1000, 64).classes[0], Class::SysInline);
        assert_eq!(classes(&[0x0F, 0x20, 0xD0])[0], Class::Emulate);
        assert_eq!(decode_block(&[0x0F, 0x20, 0xD8], 0x1000, 0x1000, 64).classes[0], Class::Emulate);
        // 16-bit PUSHF stays with the VMM.
        assert_eq!(decode_block(&[0x66, 0x9C], 0x1000, 0x1000, 64).classes[0], Class::Emulate);
    }

    #[test]
    fn block_ends_at_control_transfer() {
        // inc eax; add ebx, [esp+4]; jmp $
        let c = classes(&[0x40, 0x03, 0x5C, 0x24, 0x04, 0xEB, 0xFE, 0x90]);
        assert_eq!(c, [Class::IncDecShort, Class::Ident, Class::JmpDirect]);
    }

    #[test]
    fn sensitive_and_privileged_need_vmm() {
        for code in [
            &[0xFA][..],         // cli
            &[0x9C],             // pushfd
            &[0x9D],             // popfd
            &[0x66, 0x9D],       // popfw
            &[0x0F, 0x20, 0xC0], // mov eax, cr0
            &[0xE6, 0x80],       // out 0x80, al
            &[0x27],             // daa
            &[0x0F, 0xA2],       // cpuid
            &[0xCD, 0x80],       // int 0x80
        ] {
            assert_eq!(classes(code)[0], Class::Emulate, "{code:02x?}");
        }
        // SGDT/SIDT/SLDT/STR/SMSW store the dispatcher's copies, at any CPL.
        for code in [
            &[0x0F, 0x01, 0x05, 0, 0, 0, 0][..], // sgdt [0]
            &[0x0F, 0x01, 0x0C, 0x24],           // sidt [esp]
            &[0x0F, 0x00, 0xC0],                 // sldt eax
            &[0x0F, 0x00, 0x08],                 // str [eax]
            &[0x0F, 0x01, 0xE0],                 // smsw eax
        ] {
            assert_eq!(classes(code)[0], Class::StoreSys, "{code:02x?}");
        }
        // 16-bit addressing stays with the VMM.
        assert_eq!(classes(&[0x67, 0x0F, 0x01, 0x07])[0], Class::Emulate); // sgdt [bx]
        // MOV r, Sreg reads the guest's selector (kept by the dispatcher),
        // as PUSH Sreg does: CS shows the guest's CPL, never the real one.
        assert_eq!(classes(&[0x8C, 0xC8])[0], Class::ReadSeg); // mov eax, cs
        assert_eq!(classes(&[0x8C, 0x00])[0], Class::Emulate); // mov [eax], es
    }

    #[test]
    fn unsupported_features_are_invalid() {
        // vaddps ymm0, ymm1, ymm2 (AVX, not advertised)
        assert_eq!(classes(&[0xC5, 0xF4, 0x58, 0xC2])[0], Class::Invalid);
        assert_eq!(classes(&[0x0F, 0x0B])[0], Class::Invalid); // ud2
        assert_eq!(classes(&[0x0F, 0x05])[0], Class::Invalid); // syscall
    }

    #[test]
    fn block_stops_at_page_boundary() {
        let code = vec![0x90u8; 8192];
        let b = decode_block(&code, 0, 4090, 64);
        assert_eq!(b.end, 4096);
        assert_eq!(b.insns.len(), 6);
    }
}
