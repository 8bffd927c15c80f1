//! `monitor` commands: the machine state gdb's registers do not show, in
//! the form of QEMU's monitor (`info registers`, `info mem`, `info tlb`).

use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, outputln};

use super::GdbTarget;
use crate::memory::GuestMemory;
use crate::memory::mmu::{CR4_PSE, pte};

const HELP: &str = "\
info registers  CPU state: general registers, EFLAGS, CPL, segment caches,
                GDTR/IDTR/LDTR/TR, control and debug registers
info mem        mapped linear ranges with their rights (paging on)
info tlb        each mapped page: linear, physical address and PTE flags
help            this list";

impl MonitorCmd for GdbTarget<'_> {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(cmd);
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let text = match words.as_slice() {
            // QEMU's form of the state.
            ["info", "registers"] | ["info", "reg"] | ["info", "r"] => self.engine.cpu.dump(),
            ["info", "mem"] => mappings(&self.engine.mem, false),
            ["info", "tlb"] => mappings(&self.engine.mem, true),
            [] | ["help"] | ["h"] => HELP.to_string(),
            _ => format!("unknown command `{cmd}`; try `monitor help`"),
        };
        for line in text.lines() {
            outputln!(out, "{line}");
        }
        Ok(())
    }
}

/// PTE flags as QEMU's `info tlb` prints them.
fn flags(e: u32) -> String {
    [
        (pte::G, 'G'),
        (pte::PS, 'P'),
        (pte::D, 'D'),
        (pte::A, 'A'),
        (1 << 4, 'C'),
        (1 << 3, 'T'),
        (pte::US, 'U'),
        (pte::RW, 'W'),
    ]
    .iter()
    .map(|&(bit, c)| if e & bit != 0 { c } else { '-' })
    .collect()
}

/// `info tlb` (`per_page`) or `info mem`: the guest's two-level page
/// tables, read without setting accessed bits.
fn mappings(mem: &GuestMemory, per_page: bool) -> String {
    let regs = mem.paging();
    if !regs.enabled() {
        return "PG disabled".into();
    }
    let mut s = String::new();
    // `info mem`: a run of pages with the same rights, printed when it ends.
    let mut run: Option<(u32, u32, u32)> = None; // (start, end, rights)
    let end_run = |s: &mut String, run: &mut Option<(u32, u32, u32)>, next: Option<(u32, u32, u32)>| {
        if let Some((start, end, r)) = *run {
            let joins = next.is_some_and(|(ns, _, nr)| ns == end && nr == r);
            if joins {
                if let (Some(cur), Some((_, ne, _))) = (run.as_mut(), next) {
                    cur.1 = ne;
                }
                return;
            }
            let u = if r & pte::US != 0 { 'u' } else { '-' };
            let w = if r & pte::RW != 0 { 'w' } else { '-' };
            s.push_str(&format!("{start:08x}-{end:08x} {:08x} {u}r{w}\n", end.wrapping_sub(start)));
        }
        *run = next;
    };
    let pd = regs.cr3 & !0xFFF;
    for i in 0..1024u32 {
        let pde = mem.read_u32(pd + 4 * i);
        if pde & pte::P == 0 {
            continue;
        }
        let base = i << 22;
        if pde & pte::PS != 0 && regs.cr4 & CR4_PSE != 0 {
            if per_page {
                s.push_str(&format!("{base:08x}: {:08x} {}\n", pde & 0xFFC0_0000, flags(pde)));
            } else {
                let r = pde & (pte::US | pte::RW);
                end_run(&mut s, &mut run, Some((base, base.wrapping_add(1 << 22), r)));
            }
            continue;
        }
        let pt = pde & !0xFFF;
        for j in 0..1024u32 {
            let e = mem.read_u32(pt + 4 * j);
            if e & pte::P == 0 {
                continue;
            }
            let lin = base | (j << 12);
            if per_page {
                s.push_str(&format!("{lin:08x}: {:08x} {}\n", e & !0xFFF, flags(e)));
            } else {
                let r = pde & e & (pte::US | pte::RW);
                end_run(&mut s, &mut run, Some((lin, lin.wrapping_add(0x1000), r)));
            }
        }
    }
    end_run(&mut s, &mut run, None);
    s
}
