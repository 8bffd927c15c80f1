//! Running a piece of raw 32-bit guest code through the translator, for
//! differential tests against the host CPU and for benchmarks.
//!
//! The code is placed at `SNIPPET_CODE_ADDR` in a small flat machine and
//! followed by HLT; it runs at CPL 0 with interrupts off until that HLT.

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
}

/// Run `code` from `input` to its end.
pub fn run_snippet(code: &[u8], input: &SnippetState) -> Result<SnippetState, SnippetError> {
    run_snippet_with(code, input, false)
}

/// `run_snippet`, optionally with every memory access in the soft-TLB form.
pub fn run_snippet_with(code: &[u8], input: &SnippetState, soft_mmu: bool) -> Result<SnippetState, SnippetError> {
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
    let mut mem = GuestMemory::new(SNIPPET_RAM)?;
    // The PC's VGA window (device memory), below the data area's page.
    mem.add_mmio(
        crate::devices::vga::VGA_WINDOW_BASE,
        crate::devices::vga::VGA_WINDOW_SIZE,
        Box::<crate::devices::vga::VgaText>::default(),
    );
    let at = SNIPPET_CODE_ADDR as usize;
    mem.ram_mut()[at..at + code.len()].copy_from_slice(code);
    mem.ram_mut()[at + code.len()] = HLT;
    let d = SNIPPET_DATA_ADDR as usize;
    mem.ram_mut()[d..d + 256].copy_from_slice(&input.data);
    let opts = EngineOptions { cache_size: DEFAULT_CACHE_SIZE / 16, soft_mmu, ..EngineOptions::default() };
    let mut e = Engine::new(mem, PortBus::new(), opts)?;
    e.cpu.hot.gpr = input.regs;
    e.cpu.set_eflags(input.eflags & !(flags::IF | flags::TF));
    e.cpu.hot.eip = SNIPPET_CODE_ADDR;
    let out = e.run();
    let mut data = [0u8; 256];
    data.copy_from_slice(&e.mem.ram()[d..d + 256]);
    let state = SnippetState { regs: e.cpu.hot.gpr, eflags: e.cpu.eflags(), data };
    Ok((out, state, e.stats.clone()))
}
