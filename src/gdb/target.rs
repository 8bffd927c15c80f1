//! The guest as gdb sees it: registers in gdb's i386 layout (the guest's
//! own EIP, EFLAGS and selectors, x87 from the live FPU, XMM and MXCSR from
//! the guest state), memory at linear addresses through the guest's page
//! tables, breakpoints and watchpoints kept by the engine.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use gdbstub::common::Signal;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep, SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps, SwBreakpoint,
    SwBreakpointOps, WatchKind as GdbWatchKind,
};
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::X86_SSE;
use gdbstub_arch::x86::reg::X86CoreRegs;

use super::Shared;
use crate::cpu::{SEG_CS, SEG_DS, SEG_ES, SEG_FS, SEG_GS, SEG_SS, flags};
use crate::exec::{Engine, RunOutcome, WatchKind, Watchpoint};

use crate::exec::fxsave::{
    FCS as FX_FCS, FCW as FX_FCW, FDP as FX_FDP, FDS as FX_FDS, FIP as FX_FIP, FOP as FX_FOP, FSW as FX_FSW,
    FTW as FX_FTW, MXCSR as FX_MXCSR, ST0 as FX_ST0, XMM0 as FX_XMM0,
};
/// gdb's full x87 tag values.
const TAG_VALID: u32 = 0;
const TAG_ZERO: u32 = 1;
const TAG_SPECIAL: u32 = 2;
const TAG_EMPTY: u32 = 3;

/// The debugged machine for one gdb connection.
pub struct GdbTarget<'a> {
    pub(super) engine: &'a mut Engine,
    shared: Arc<Shared>,
    /// The guest halted with nothing to wake it: it stays halted.
    pub(super) halted: bool,
    /// How the guest ended, once it has.
    pub(super) outcome: Option<RunOutcome>,
}

impl<'a> GdbTarget<'a> {
    pub(super) fn new(engine: &'a mut Engine, shared: Arc<Shared>) -> Self {
        GdbTarget { engine, shared, halted: false, outcome: None }
    }

    /// Run the guest until it stops for any reason.
    pub(super) fn run_guest(&mut self) -> RunOutcome {
        self.shared.stop.store(false, Ordering::Relaxed);
        self.shared.running.store(true, Ordering::Relaxed);
        let out = super::run_in_time(self.engine);
        self.shared.running.store(false, Ordering::Relaxed);
        self.shared.stop.store(false, Ordering::Relaxed);
        out
    }
}

impl Target for GdbTarget<'_> {
    type Arch = X86_SSE;
    type Error = &'static str;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    // Breakpoints never touch guest memory: gdb must not fall back to
    // writing INT3 itself.
    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }
}

/// gdb's full tag of each physical x87 register from an FXSAVE image
/// (which keeps only empty/non-empty bits).
fn full_tag(img: &[u8; 512]) -> u32 {
    let fsw = u16::from_le_bytes([img[FX_FSW], img[FX_FSW + 1]]);
    let top = ((fsw >> 11) & 7) as usize;
    let mut tag = 0;
    for phys in 0..8 {
        let t = if img[FX_FTW] & (1 << phys) == 0 {
            TAG_EMPTY
        } else {
            let st = FX_ST0 + 16 * ((phys + 8 - top) % 8);
            let mant = u64::from_le_bytes(img[st..st + 8].try_into().unwrap_or([0; 8]));
            let exp = u16::from_le_bytes([img[st + 8], img[st + 9]]) & 0x7FFF;
            match exp {
                0x7FFF => TAG_SPECIAL,
                0 if mant == 0 => TAG_ZERO,
                0 => TAG_SPECIAL,
                _ if mant >> 63 == 0 => TAG_SPECIAL,
                _ => TAG_VALID,
            }
        };
        tag |= t << (2 * phys);
    }
    tag
}

fn u16_at(img: &[u8; 512], at: usize) -> u32 {
    u16::from_le_bytes([img[at], img[at + 1]]) as u32
}

fn u32_at(img: &[u8; 512], at: usize) -> u32 {
    u32::from_le_bytes([img[at], img[at + 1], img[at + 2], img[at + 3]])
}

/// The segment registers in gdb's order (CS, SS, DS, ES, FS, GS).
const GDB_SEGS: [usize; 6] = [SEG_CS, SEG_SS, SEG_DS, SEG_ES, SEG_FS, SEG_GS];

impl SingleThreadBase for GdbTarget<'_> {
    fn read_registers(&mut self, regs: &mut X86CoreRegs) -> TargetResult<(), Self> {
        let cpu = &self.engine.cpu;
        let g = cpu.hot.gpr;
        (regs.eax, regs.ecx, regs.edx, regs.ebx) = (g[0], g[1], g[2], g[3]);
        (regs.esp, regs.ebp, regs.esi, regs.edi) = (g[4], g[5], g[6], g[7]);
        regs.eip = cpu.hot.eip;
        regs.eflags = cpu.eflags();
        let sel = |s: usize| cpu.seg[s].selector as u32;
        let s = &mut regs.segments;
        (s.cs, s.ss, s.ds, s.es, s.fs, s.gs) =
            (sel(SEG_CS), sel(SEG_SS), sel(SEG_DS), sel(SEG_ES), sel(SEG_FS), sel(SEG_GS));
        let img = self.engine.fpu_image();
        for (i, st) in regs.st.iter_mut().enumerate() {
            st.copy_from_slice(&img[FX_ST0 + 16 * i..FX_ST0 + 16 * i + 10]);
        }
        let f = &mut regs.fpu;
        f.fctrl = u16_at(&img, FX_FCW);
        f.fstat = u16_at(&img, FX_FSW);
        f.ftag = full_tag(&img);
        f.fiseg = u16_at(&img, FX_FCS);
        f.fioff = u32_at(&img, FX_FIP);
        f.foseg = u16_at(&img, FX_FDS);
        f.fooff = u32_at(&img, FX_FDP);
        f.fop = u16_at(&img, FX_FOP) & 0x7FF;
        for (i, x) in regs.xmm.iter_mut().enumerate() {
            let at = FX_XMM0 + 16 * i;
            *x = u128::from_le_bytes(img[at..at + 16].try_into().unwrap_or([0; 16]));
        }
        regs.mxcsr = u32_at(&img, FX_MXCSR);
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86CoreRegs) -> TargetResult<(), Self> {
        let e = &mut *self.engine;
        e.cpu.hot.gpr = [regs.eax, regs.ecx, regs.edx, regs.ebx, regs.esp, regs.ebp, regs.esi, regs.edi];
        e.cpu.hot.eip = regs.eip;
        // VM stays as it is (virtual-8086 mode is entered by IRET or a task
        // switch, not by a debugger); bit 1 always reads as one.
        let old = e.cpu.eflags();
        e.cpu.set_eflags((regs.eflags & !flags::VM) | (old & flags::VM) | flags::FIXED1);
        let s = &regs.segments;
        for (seg, sel) in GDB_SEGS.into_iter().zip([s.cs, s.ss, s.ds, s.es, s.fs, s.gs]) {
            if e.cpu.seg[seg].selector as u32 != sel && !e.debug_set_segment(seg, sel as u16) {
                return Err(TargetError::NonFatal);
            }
        }
        let mut img = e.fpu_image();
        for (i, st) in regs.st.iter().enumerate() {
            img[FX_ST0 + 16 * i..FX_ST0 + 16 * i + 10].copy_from_slice(st);
        }
        let f = &regs.fpu;
        img[FX_FCW..FX_FCW + 2].copy_from_slice(&(f.fctrl as u16).to_le_bytes());
        img[FX_FSW..FX_FSW + 2].copy_from_slice(&(f.fstat as u16).to_le_bytes());
        img[FX_FTW] = (0..8).filter(|p| (f.ftag >> (2 * p)) & 3 != TAG_EMPTY).fold(0, |a, p| a | (1 << p));
        img[FX_FOP..FX_FOP + 2].copy_from_slice(&(f.fop as u16 & 0x7FF).to_le_bytes());
        for (i, x) in regs.xmm.iter().enumerate() {
            img[FX_XMM0 + 16 * i..FX_XMM0 + 16 * (i + 1)].copy_from_slice(&x.to_le_bytes());
        }
        img[FX_MXCSR..FX_MXCSR + 4].copy_from_slice(&regs.mxcsr.to_le_bytes());
        e.set_fpu_image(&img);
        Ok(())
    }

    fn read_addrs(&mut self, start_addr: u32, data: &mut [u8]) -> TargetResult<usize, Self> {
        Ok(self.engine.debug_read(start_addr, data))
    }

    fn write_addrs(&mut self, start_addr: u32, data: &[u8]) -> TargetResult<(), Self> {
        if self.engine.debug_write(start_addr, data) { Ok(()) } else { Err(TargetError::NonFatal) }
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for GdbTarget<'_> {
    /// Signals have no meaning for a machine: a requested one is ignored,
    /// as QEMU's stub does.
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for GdbTarget<'_> {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.engine.request_step();
        Ok(())
    }
}

impl Breakpoints for GdbTarget<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for GdbTarget<'_> {
    fn add_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.engine.add_breakpoint(addr, false);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.engine.remove_breakpoint(addr, false))
    }
}

impl HwBreakpoint for GdbTarget<'_> {
    fn add_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        self.engine.add_breakpoint(addr, true);
        Ok(true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.engine.remove_breakpoint(addr, true))
    }
}

fn watchpoint(addr: u32, len: u32, kind: GdbWatchKind) -> Watchpoint {
    let kind = match kind {
        GdbWatchKind::Write => WatchKind::Write,
        GdbWatchKind::Read => WatchKind::Read,
        GdbWatchKind::ReadWrite => WatchKind::Access,
    };
    Watchpoint { addr, len, kind }
}

impl HwWatchpoint for GdbTarget<'_> {
    fn add_hw_watchpoint(&mut self, addr: u32, len: u32, kind: GdbWatchKind) -> TargetResult<bool, Self> {
        if len == 0 {
            return Ok(false);
        }
        self.engine.add_watchpoint(watchpoint(addr, len, kind));
        Ok(true)
    }

    fn remove_hw_watchpoint(&mut self, addr: u32, len: u32, kind: GdbWatchKind) -> TargetResult<bool, Self> {
        Ok(self.engine.remove_watchpoint(watchpoint(addr, len, kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x87_full_tags() {
        let mut img = [0u8; 512];
        // TOP = 6: ST0 is physical register 6, ST1 is 7, ST2 is 0.
        img[FX_FSW + 1] = 6 << 3;
        img[FX_FTW] = (1 << 6) | (1 << 7) | 1;
        // ST0 = 1.0 (valid), ST1 = +0 (zero), ST2 = infinity (special).
        img[FX_ST0 + 7] = 0x80;
        img[FX_ST0 + 8..FX_ST0 + 10].copy_from_slice(&0x3FFFu16.to_le_bytes());
        let st2 = FX_ST0 + 32;
        img[st2 + 7] = 0x80;
        img[st2 + 8..st2 + 10].copy_from_slice(&0x7FFFu16.to_le_bytes());
        let tag = full_tag(&img);
        assert_eq!((tag >> 12) & 3, TAG_VALID);
        assert_eq!((tag >> 14) & 3, TAG_ZERO);
        assert_eq!(tag & 3, TAG_SPECIAL);
        for phys in 1..6 {
            assert_eq!((tag >> (2 * phys)) & 3, TAG_EMPTY, "R{phys}");
        }
    }
}
