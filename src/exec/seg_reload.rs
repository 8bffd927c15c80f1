//! The engine's side of the in-place segment reloads
//! (`translate::segment::reload`): which loads of ES, DS, FS and GS the
//! translated check may skip.
//!
//! After the VMM has run a MOV or POP to one of them in protected mode, the
//! engine records what the load produced and where its descriptor lives in
//! guest RAM. Before translated code runs, the dispatcher publishes a
//! record to `HotState` only while it still describes the machine: the
//! segment register holds exactly what that load left there (no other path
//! has loaded it since), and GDTR, LDTR and the paging state are the ones
//! the descriptor's address was resolved with. Translated code then checks
//! the rest at run time: the same selector, and the same 8 descriptor bytes.

use crate::cpu::{Cpu, HotState, SEG_DS, SEG_ES, SEG_FS, SEG_GS, Segment, TableReg, flags, jc_key};
use crate::memory::GuestMemory;

/// The segment registers with in-place reloads (SS is excluded: a load
/// of SS blocks interrupts for one instruction, and Linux does not reload
/// it on hot paths).
const RELOADABLE: [usize; 4] = [SEG_ES, SEG_DS, SEG_FS, SEG_GS];
/// Selector bits of the descriptor index, and the table indicator.
const SEL_INDEX_MASK: u16 = !7;
const SEL_TI: u16 = 4;
/// CR0.PE.
const CR0_PE: u32 = 1;

#[derive(Clone, Copy, PartialEq)]
struct Record {
    /// The segment register as the load left it (selector and hidden part).
    seg: Segment,
    gdtr: TableReg,
    ldtr: Segment,
    /// `SegReloads::paging_gen` and `HotState::invlpg_done` at the load.
    paging_gen: u64,
    invlpgs: u64,
    /// Host address of the descriptor in the RAM alias, and its bytes.
    host: u64,
    raw: u64,
}

/// What the VMM's last VERW found.
#[derive(Clone, Copy, PartialEq)]
struct VerwRecord {
    selector: u16,
    cpl: u8,
    gdtr: TableReg,
    ldtr: Segment,
    paging_gen: u64,
    invlpgs: u64,
    host: u64,
    raw: u64,
    zf: bool,
}

#[derive(Default)]
pub struct SegReloads {
    records: [Option<Record>; 6],
    verw: Option<VerwRecord>,
    /// Bumped by every change of paging state the engine sees (CR0, CR3,
    /// CR4, INVLPG through the VMM): a descriptor's linear address may map
    /// other memory afterwards.
    paging_gen: u64,
}

impl SegReloads {
    /// Paging changed: no record stays valid.
    pub fn paging_changed(&mut self) {
        self.paging_gen += 1;
    }

    /// The VMM has just loaded segment register `s` by MOV or POP: record
    /// the load if it can be checked in place later.
    pub fn note_load(&mut self, cpu: &Cpu, mem: &GuestMemory, s: usize) {
        self.records[s] = None;
        if !RELOADABLE.contains(&s) {
            return;
        }
        let seg = cpu.seg[s];
        if let Some((host, raw)) = descriptor(cpu, mem, seg.selector) {
            self.records[s] = Some(Record {
                seg,
                gdtr: cpu.gdtr,
                ldtr: cpu.ldtr,
                paging_gen: self.paging_gen,
                invlpgs: cpu.hot.invlpg_done,
                host,
                raw,
            });
        }
    }

    /// The VMM has just run a VERW of `selector` that set ZF to `zf`.
    pub fn note_verw(&mut self, cpu: &Cpu, mem: &GuestMemory, selector: u16, zf: bool) {
        self.verw = descriptor(cpu, mem, selector).map(|(host, raw)| VerwRecord {
            selector,
            cpl: cpu.cpl,
            gdtr: cpu.gdtr,
            ldtr: cpu.ldtr,
            paging_gen: self.paging_gen,
            invlpgs: cpu.hot.invlpg_done,
            host,
            raw,
            zf,
        });
    }

    /// Publish the records that still describe the machine to `HotState`
    /// (and disarm the others), before translated code runs.
    pub fn sync(&mut self, cpu: &mut Cpu) {
        for s in RELOADABLE {
            let valid = self.records[s].filter(|r| {
                r.seg == cpu.seg[s]
                    && r.gdtr == cpu.gdtr
                    && r.ldtr == cpu.ldtr
                    && r.paging_gen == self.paging_gen
                    && r.invlpgs == cpu.hot.invlpg_done
                    && cpu.hot.sys_flags & flags::VM == 0
            });
            publish(&mut cpu.hot, s, valid);
        }
        let verw = self.verw.filter(|r| {
            r.cpl == cpu.cpl
                && r.gdtr == cpu.gdtr
                && r.ldtr == cpu.ldtr
                && r.paging_gen == self.paging_gen
                && r.invlpgs == cpu.hot.invlpg_done
                && cpu.hot.sys_flags & flags::VM == 0
        });
        match verw {
            Some(r) => {
                cpu.hot.verw_key = jc_key(u32::from(r.selector));
                cpu.hot.verw_desc = r.host;
                cpu.hot.verw_neg = r.raw.wrapping_neg();
                cpu.hot.verw_zf = if r.zf { u64::from(flags::ZF) } else { 0 };
            }
            None => cpu.hot.verw_key = 0,
        }
    }
}

/// The host address in the RAM alias and the bytes of the descriptor
/// `selector` names, in protected mode outside virtual-8086 mode, if it is
/// within its table's limit and on one page of RAM.
fn descriptor(cpu: &Cpu, mem: &GuestMemory, selector: u16) -> Option<(u64, u64)> {
    let protected = cpu.cr[0] & CR0_PE != 0 && cpu.hot.sys_flags & flags::VM == 0;
    if !protected || selector & SEL_INDEX_MASK == 0 && selector & SEL_TI == 0 {
        return None; // real or virtual-8086 mode, or a null selector
    }
    let (base, limit) =
        if selector & SEL_TI != 0 { (cpu.ldtr.base, cpu.ldtr.limit) } else { (cpu.gdtr.base, u32::from(cpu.gdtr.limit)) };
    let offset = u32::from(selector & SEL_INDEX_MASK);
    if offset + 7 > limit {
        return None;
    }
    let lin = base.wrapping_add(offset);
    if lin & 0xFFF > 0xFF8 {
        return None; // the descriptor straddles two pages
    }
    let phys = mem.translate_read(lin, false).ok()?;
    if !mem.is_plain_ram(phys, 8) {
        return None;
    }
    let mut b = [0u8; 8];
    mem.read(phys, &mut b);
    Some((mem.alias_ptr() as u64 + u64::from(phys), u64::from_le_bytes(b)))
}

fn publish(hot: &mut HotState, s: usize, r: Option<Record>) {
    match r {
        Some(r) => {
            hot.reload_key[s] = jc_key(u32::from(r.seg.selector));
            hot.reload_desc[s] = r.host;
            hot.reload_neg[s] = r.raw.wrapping_neg();
        }
        None => hot.reload_key[s] = 0,
    }
}
