//! Running a piece of raw 32-bit guest code through the translator, for
//! differential tests against the host CPU and for benchmarks.
//!
//! The code runs in one of two worlds (`SnippetWorld`), with interrupts off
//! and SSE enabled (CR4.OSFXSR, as in a 32-bit Linux process):
//!
//! - `Flat`: placed at `SNIPPET_CODE_ADDR` in a small flat machine, paging
//!   off, CPL 0, followed by HLT.
//! - `User`: a ring-0 stub loads a GDT (ring-0 and ring-3 flat segments and a
//!   TSS), an IDT and two-level page tables, turns paging on and IRETs to
//!   the code at CPL 3. Code, stack and data keep the `Flat` world's
//!   physical addresses but are mapped at other, high, linear addresses.
//!   The code is followed by `INT 0x80` through a DPL-3 gate to a ring-0
//!   HLT; the user's ESP and EFLAGS are read from the gate's frame.

use thiserror::Error;

use crate::cache::DEFAULT_CACHE_SIZE;
use crate::cpu::flags;
use crate::devices::PortBus;
use crate::exec::stats::Stats;
use crate::exec::{Engine, EngineOptions, ExecError, RunOutcome};
use crate::memory::{GuestMemory, MemoryError};

/// Guest address of the code.
pub const SNIPPET_CODE_ADDR: u32 = 0x1_0000;
/// Guest address of the 256-byte data area (give it to the code in ESI).
pub const SNIPPET_DATA_ADDR: u32 = 0x8_0000;
/// Initial ESP for snippets (a 64 KiB stack below it is RAM).
pub const SNIPPET_STACK_TOP: u32 = 0x7_0000;
/// RAM of the snippet machine.
const SNIPPET_RAM: u64 = 1 << 20;
/// HLT, appended to the code.
const HLT: u8 = 0xF4;

/// CR4.OSFXSR | CR4.OSXMMEXCPT: SSE instructions run (instead of #UD).
const CR4_SSE: u32 = (1 << 9) | (1 << 10);

/// The machine a snippet runs in (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnippetWorld {
    #[default]
    Flat,
    User,
}

impl SnippetWorld {
    /// Linear address of the code.
    pub const fn code_addr(self) -> u32 {
        match self {
            SnippetWorld::Flat => SNIPPET_CODE_ADDR,
            SnippetWorld::User => user::CODE_LIN,
        }
    }

    /// Linear address of the 256-byte data area (give it to the code in ESI).
    pub const fn data_addr(self) -> u32 {
        match self {
            SnippetWorld::Flat => SNIPPET_DATA_ADDR,
            SnippetWorld::User => user::DATA_LIN,
        }
    }

    /// Initial ESP (linear) of the code.
    pub const fn stack_top(self) -> u32 {
        match self {
            SnippetWorld::Flat => SNIPPET_STACK_TOP,
            SnippetWorld::User => user::STACK_TOP_LIN,
        }
    }
}

/// Registers, flags and data area before or after a snippet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnippetState {
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub regs: [u32; 8],
    pub eflags: u32,
    pub data: [u8; 256],
}

#[derive(Debug, Error)]
pub enum SnippetError {
    #[error("snippet of {0} bytes does not fit below the stack")]
    TooLong(usize),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("snippet did not reach its end: {0:?}")]
    Outcome(RunOutcome),
    /// The user-world code raised an exception or interrupt other than its
    /// final INT 0x80 (or reached that from elsewhere): the vector and the
    /// first words of the ring-0 stack (error code if any, EIP, CS, EFLAGS...).
    #[error("snippet ended by vector {vector:#x}; ring-0 stack {frame:#x?}")]
    Vector { vector: u32, frame: [u32; 6] },
}

/// Run `code` from `input` to its end.
pub fn run_snippet(code: &[u8], input: &SnippetState) -> Result<SnippetState, SnippetError> {
    run_snippet_with(code, input, false)
}

/// `run_snippet`, optionally with every memory access in the soft-TLB form.
pub fn run_snippet_with(code: &[u8], input: &SnippetState, soft_mmu: bool) -> Result<SnippetState, SnippetError> {
    run_snippet_in(SnippetWorld::Flat, code, input, soft_mmu)
}

/// `run_snippet_with` in `world`. The input's ESP and ESI are the code's
/// (linear) ones; in the user world only the status flags and DF of its
/// EFLAGS are used.
pub fn run_snippet_in(
    world: SnippetWorld,
    code: &[u8],
    input: &SnippetState,
    soft_mmu: bool,
) -> Result<SnippetState, SnippetError> {
    if world == SnippetWorld::User {
        return user::run(code, input, soft_mmu);
    }
    let end = SNIPPET_CODE_ADDR + code.len() as u32;
    match run_snippet_inner(code, input, soft_mmu)? {
        (RunOutcome::Halted { eip, .. }, state, _) if eip == end => Ok(state),
        (other, _, _) => Err(SnippetError::Outcome(other)),
    }
}

/// Run `code` until it halts, exits or faults; returns how it ended, the
/// guest state at that point and the engine's statistics.
pub fn run_snippet_outcome(
    code: &[u8],
    input: &SnippetState,
) -> Result<(RunOutcome, SnippetState, Stats), SnippetError> {
    run_snippet_inner(code, input, false)
}

fn run_snippet_inner(
    code: &[u8],
    input: &SnippetState,
    soft_mmu: bool,
) -> Result<(RunOutcome, SnippetState, Stats), SnippetError> {
    let room = (SNIPPET_STACK_TOP - 0x1_0000 - SNIPPET_CODE_ADDR) as usize;
    if code.len() + 1 > room {
        return Err(SnippetError::TooLong(code.len()));
    }
    let mut mem = new_memory()?;
    let at = SNIPPET_CODE_ADDR as usize;
    mem.ram_mut()[at..at + code.len()].copy_from_slice(code);
    mem.ram_mut()[at + code.len()] = HLT;
    let d = SNIPPET_DATA_ADDR as usize;
    mem.ram_mut()[d..d + 256].copy_from_slice(&input.data);
    let mut e = new_engine(mem, soft_mmu)?;
    e.cpu.hot.gpr = input.regs;
    e.cpu.set_eflags(input.eflags & !(flags::IF | flags::TF));
    e.cpu.hot.eip = SNIPPET_CODE_ADDR;
    let out = e.run();
    let mut data = [0u8; 256];
    data.copy_from_slice(&e.mem.ram()[d..d + 256]);
    let state = SnippetState { regs: e.cpu.hot.gpr, eflags: e.cpu.eflags(), data };
    Ok((out, state, e.stats.clone()))
}

/// The snippet machine's RAM, with the PC's VGA window (device memory)
/// above the data area.
fn new_memory() -> Result<GuestMemory, SnippetError> {
    let mut mem = GuestMemory::new(SNIPPET_RAM)?;
    mem.add_mmio(
        crate::devices::vga::VGA_WINDOW_BASE,
        crate::devices::vga::VGA_WINDOW_SIZE,
        Box::<crate::devices::vga::VgaText>::default(),
    );
    Ok(mem)
}

fn new_engine(mem: GuestMemory, soft_mmu: bool) -> Result<Engine, SnippetError> {
    let opts = EngineOptions { cache_size: DEFAULT_CACHE_SIZE / 16, soft_mmu, ..EngineOptions::default() };
    let mut e = Engine::new(mem, PortBus::new(), opts)?;
    e.cpu.cr[4] = CR4_SSE;
    Ok(e)
}

/// The user world: CPL 3 under paging.
/// Where the user world puts the code and the top of its stack (linear).
pub use user::{CODE_LIN as SNIPPET_USER_CODE, STACK_TOP_LIN as SNIPPET_USER_STACK_TOP};

mod user {
    use super::*;
    use crate::fuzz::program::{G32, access, descriptor};
    use crate::memory::mmu::{CR0_PG, pte};

    /// Linear addresses of the code, the top of its stack and the data area:
    /// far from their physical addresses (the flat world's), in three
    /// different page tables.
    pub const CODE_LIN: u32 = 0x8040_0000 + SNIPPET_CODE_ADDR;
    pub const STACK_TOP_LIN: u32 = 0xBFFF_0000;
    pub const DATA_LIN: u32 = 0xC123_4000;
    /// Bytes of user stack mapped below its top.
    const STACK_BYTES: u32 = 0x1_0000;

    /// The ring-0 area, identity-mapped, supervisor-only: between the data
    /// area and the VGA window.
    const SYS: u32 = 0x9_0000;
    const GDT: u32 = SYS;
    /// LGDT's and LIDT's operands (limit, base).
    const GDTR: u32 = SYS + 0x100;
    const IDTR: u32 = SYS + 0x108;
    const TSS: u32 = SYS + 0x200;
    /// One HLT per vector: where the run stops tells the vector.
    const VECTORS: u32 = SYS + 0x400;
    const STUB: u32 = SYS + 0x600;
    const IDT: u32 = SYS + 0x800;
    const PD: u32 = SYS + 0x1000;
    /// Page tables, allocated in order as the mappings need them.
    const PT_FIRST: u32 = SYS + 0x2000;
    const PT_COUNT: u32 = 4;
    const STACK0_TOP: u32 = SYS + 0x8000;
    const SYS_BYTES: u32 = 0x8000;
    /// Size of a TSS without I/O bitmap (its limit is one less).
    const TSS_BYTES: u32 = 0x68;
    /// TSS fields: ESP0, SS0 and the I/O map base (past the limit: no bitmap).
    const TSS_ESP0: u32 = 4;
    const TSS_SS0: u32 = 8;
    const TSS_IOMAP: u32 = 0x66;
    /// Access byte of an available 32-bit TSS.
    const TSS_AVAILABLE: u8 = 0x89;
    /// 32-bit interrupt gate, present, DPL 3 (reachable by INT n at CPL 3).
    const INT_GATE_DPL3: u32 = 0xEE00;
    /// The vector the code ends with.
    const END_VECTOR: u8 = 0x80;
    const PAGE: u32 = 0x1000;

    const CODE0: u16 = 0x08;
    const DATA0: u16 = 0x10;
    const CODE3: u16 = 0x18 | 3;
    const DATA3: u16 = 0x20 | 3;
    const TSS_SEL: u16 = 0x28;

    fn put32(ram: &mut [u8], addr: u32, v: u32) {
        let a = addr as usize;
        ram[a..a + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get32(ram: &[u8], addr: u32) -> u32 {
        let a = addr as usize;
        u32::from_le_bytes([ram[a], ram[a + 1], ram[a + 2], ram[a + 3]])
    }

    /// Maps `bytes` (rounded up to pages) at `lin` to `phys`.
    fn map(ram: &mut [u8], next_pt: &mut u32, lin: u32, phys: u32, bytes: u32, flags: u32) {
        for off in (0..bytes).step_by(PAGE as usize) {
            let l = lin + off;
            let pde_at = PD + 4 * (l >> 22);
            let mut pde = get32(ram, pde_at);
            if pde & pte::P == 0 {
                assert!(*next_pt < PT_FIRST + PT_COUNT * PAGE, "snippet page tables exhausted");
                pde = *next_pt | pte::P | pte::RW | pte::US;
                *next_pt += PAGE;
                put32(ram, pde_at, pde);
            }
            put32(ram, (pde & !(PAGE - 1)) + 4 * ((l >> 12) & 0x3FF), (phys + off) | flags);
        }
    }

    /// GDT, TSS, IDT, vector HLTs and page tables.
    fn write_tables(ram: &mut [u8], code_bytes: u32) {
        let gdt = [
            0,
            descriptor(0, 0xF_FFFF, access(0, true, true, false), G32),
            descriptor(0, 0xF_FFFF, access(0, false, true, false), G32),
            descriptor(0, 0xF_FFFF, access(3, true, true, false), G32),
            descriptor(0, 0xF_FFFF, access(3, false, true, false), G32),
            descriptor(TSS, TSS_BYTES - 1, TSS_AVAILABLE, 0),
        ];
        for (i, d) in gdt.iter().enumerate() {
            let at = (GDT + 8 * i as u32) as usize;
            ram[at..at + 8].copy_from_slice(&d.to_le_bytes());
        }
        let gdt_limit = 8 * gdt.len() as u32 - 1;
        put32(ram, GDTR, gdt_limit | (GDT << 16));
        put32(ram, GDTR + 4, GDT >> 16);
        const IDT_LIMIT: u32 = 256 * 8 - 1;
        put32(ram, IDTR, IDT_LIMIT | (IDT << 16));
        put32(ram, IDTR + 4, IDT >> 16);
        for v in 0..256u32 {
            let handler = VECTORS + v;
            put32(ram, IDT + 8 * v, (handler & 0xFFFF) | u32::from(CODE0) << 16);
            put32(ram, IDT + 8 * v + 4, (handler & 0xFFFF_0000) | INT_GATE_DPL3);
            ram[handler as usize] = HLT;
        }
        put32(ram, TSS + TSS_ESP0, STACK0_TOP);
        put32(ram, TSS + TSS_SS0, u32::from(DATA0));
        let iomap = (TSS + TSS_IOMAP) as usize;
        ram[iomap..iomap + 2].copy_from_slice(&(TSS_BYTES as u16).to_le_bytes());
        let mut next_pt = PT_FIRST;
        let user = pte::P | pte::RW | pte::US;
        map(ram, &mut next_pt, SYS, SYS, SYS_BYTES, pte::P | pte::RW);
        map(ram, &mut next_pt, CODE_LIN, SNIPPET_CODE_ADDR, code_bytes, user);
        map(ram, &mut next_pt, STACK_TOP_LIN - STACK_BYTES, SNIPPET_STACK_TOP - STACK_BYTES, STACK_BYTES, user);
        map(ram, &mut next_pt, DATA_LIN, SNIPPET_DATA_ADDR, 256, user);
    }

    /// The ring-0 entry: load the tables, turn paging on, IRET to the code
    /// at CPL 3 with `esp` and `eflags`. Keeps every GPR but ESP.
    fn write_stub(ram: &mut [u8], esp: u32, eflags: u32) {
        let mut c: Vec<u8> = Vec::new();
        let d = |c: &mut Vec<u8>, v: u32| c.extend_from_slice(&v.to_le_bytes());
        let w = |c: &mut Vec<u8>, v: u16| c.extend_from_slice(&v.to_le_bytes());
        c.extend_from_slice(&[0x0F, 0x01, 0x15]); // lgdt [GDTR]
        d(&mut c, GDTR);
        c.extend_from_slice(&[0x0F, 0x01, 0x1D]); // lidt [IDTR]
        d(&mut c, IDTR);
        c.push(0x50); // push eax
        c.extend_from_slice(&[0x66, 0xB8]); // mov ax, TSS_SEL ; ltr ax
        w(&mut c, TSS_SEL);
        c.extend_from_slice(&[0x0F, 0x00, 0xD8]);
        c.push(0xB8); // mov eax, PD ; mov cr3, eax
        d(&mut c, PD);
        c.extend_from_slice(&[0x0F, 0x22, 0xD8]);
        c.extend_from_slice(&[0x0F, 0x20, 0xC0, 0x0D]); // mov eax, cr0 ; or eax, PG ; mov cr0, eax
        d(&mut c, CR0_PG);
        c.extend_from_slice(&[0x0F, 0x22, 0xC0]);
        c.extend_from_slice(&[0x66, 0xB8]); // mov ax, DATA3 ; mov ds/es/fs/gs, ax
        w(&mut c, DATA3);
        c.extend_from_slice(&[0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xE0, 0x8E, 0xE8]);
        c.push(0x58); // pop eax
        for v in [u32::from(DATA3), esp, eflags, u32::from(CODE3), CODE_LIN] {
            c.push(0x68); // push imm32
            d(&mut c, v);
        }
        c.push(0xCF); // iret
        let at = STUB as usize;
        ram[at..at + c.len()].copy_from_slice(&c);
    }

    pub(super) fn run(code: &[u8], input: &SnippetState, soft_mmu: bool) -> Result<SnippetState, SnippetError> {
        const INT_N: u8 = 0xCD;
        let room = (SNIPPET_STACK_TOP - STACK_BYTES - SNIPPET_CODE_ADDR) as usize;
        let mut full = code.to_vec();
        full.extend_from_slice(&[INT_N, END_VECTOR]);
        if full.len() > room {
            return Err(SnippetError::TooLong(code.len()));
        }
        let mut mem = new_memory()?;
        let ram = mem.ram_mut();
        let at = SNIPPET_CODE_ADDR as usize;
        ram[at..at + full.len()].copy_from_slice(&full);
        let d = SNIPPET_DATA_ADDR as usize;
        ram[d..d + 256].copy_from_slice(&input.data);
        write_tables(ram, full.len() as u32);
        let eflags = (input.eflags & flags::HOST_LIVE) | flags::FIXED1;
        write_stub(ram, input.regs[crate::cpu::ESP], eflags);
        let mut e = new_engine(mem, soft_mmu)?;
        e.cpu.hot.gpr = input.regs;
        e.cpu.hot.gpr[crate::cpu::ESP] = STACK0_TOP;
        e.cpu.set_eflags(flags::FIXED1);
        e.cpu.hot.eip = STUB;
        let out = e.run();
        let vector = match out {
            RunOutcome::Halted { eip, .. } if (VECTORS..VECTORS + 256).contains(&eip) => eip - VECTORS,
            other => return Err(SnippetError::Outcome(other)),
        };
        let ram = e.mem.ram();
        let sp = e.cpu.hot.gpr[crate::cpu::ESP];
        let mut frame = [0u32; 6];
        for (i, f) in frame.iter_mut().enumerate() {
            let a = sp.wrapping_add(4 * i as u32);
            if (SYS..STACK0_TOP).contains(&a) {
                *f = get32(ram, a);
            }
        }
        // Frame of INT n from CPL 3: EIP, CS, EFLAGS, ESP, SS.
        let end = CODE_LIN + full.len() as u32;
        if vector != u32::from(END_VECTOR) || frame[0] != end || frame[1] != u32::from(CODE3) {
            return Err(SnippetError::Vector { vector, frame });
        }
        let mut regs = e.cpu.hot.gpr;
        regs[crate::cpu::ESP] = frame[3];
        let mut data = [0u8; 256];
        data.copy_from_slice(&ram[d..d + 256]);
        Ok(SnippetState { regs, eflags: frame[2], data })
    }
}
