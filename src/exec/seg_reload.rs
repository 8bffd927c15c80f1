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

use crate::cpu::{Cpu, SEG_DS, SEG_ES, SEG_FS, SEG_GS, Segment, TableReg, flags, jc_key};
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

/// A descriptor the VMM read: its host address in the RAM alias and its
/// bytes, with the state that located it (GDTR, LDTR, and the paging
/// generation and INVLPG count then).
#[derive(Clone, Copy, PartialEq)]
struct Descriptor {
    gdtr: TableReg,
    ldtr: Segment,
    paging_gen: u64,
    invlpgs: u64,
    host: u64,
    raw: u64,
}

impl Descriptor {
    /// The descriptor `selector` names, in protected mode outside
    /// virtual-8086 mode, if it is within its table's limit and on one
    /// page of RAM.
    fn locate(cpu: &Cpu, mem: &GuestMemory, selector: u16, paging_gen: u64) -> Option<Self> {
        let protected = cpu.cr[0] & CR0_PE != 0 && cpu.hot.sys_flags & flags::VM == 0;
        if !protected || selector & SEL_INDEX_MASK == 0 && selector & SEL_TI == 0 {
            return None; // real or virtual-8086 mode, or a null selector
        }
        let (base, limit) = if selector & SEL_TI != 0 {
            (cpu.ldtr.base, cpu.ldtr.limit)
        } else {
            (cpu.gdtr.base, u32::from(cpu.gdtr.limit))
        };
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
        Some(Descriptor {
            gdtr: cpu.gdtr,
            ldtr: cpu.ldtr,
            paging_gen,
            invlpgs: cpu.hot.invlpg_done,
            host: mem.alias_ptr() as u64 + u64::from(phys),
            raw: u64::from_le_bytes(b),
        })
    }

    /// Would the same selector still find the descriptor at `host`?
    fn still_located(&self, cpu: &Cpu, paging_gen: u64) -> bool {
        self.gdtr == cpu.gdtr
            && self.ldtr == cpu.ldtr
            && self.paging_gen == paging_gen
            && self.invlpgs == cpu.hot.invlpg_done
            && cpu.hot.sys_flags & flags::VM == 0
    }
}

/// A load of a segment register by the VMM.
#[derive(Clone, Copy)]
struct Record {
    /// The segment register as the load left it (selector and hidden part).
    seg: Segment,
    desc: Descriptor,
}

/// What the VMM's last VERW found.
#[derive(Clone, Copy)]
struct VerwRecord {
    selector: u16,
    cpl: u8,
    zf: bool,
    desc: Descriptor,
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
        let seg = cpu.seg[s];
        self.records[s] = RELOADABLE
            .contains(&s)
            .then(|| Descriptor::locate(cpu, mem, seg.selector, self.paging_gen))
            .flatten()
            .map(|desc| Record { seg, desc });
    }

    /// The VMM has just run a VERW of `selector` that set ZF to `zf`.
    pub fn note_verw(&mut self, cpu: &Cpu, mem: &GuestMemory, selector: u16, zf: bool) {
        self.verw = Descriptor::locate(cpu, mem, selector, self.paging_gen).map(|desc| VerwRecord {
            selector,
            cpl: cpu.cpl,
            zf,
            desc,
        });
    }

    /// Publish the records that still describe the machine to `HotState`
    /// (and disarm the others), before translated code runs.
    pub fn sync(&mut self, cpu: &mut Cpu) {
        let paging_gen = self.paging_gen;
        for s in RELOADABLE {
            match self.records[s].filter(|r| r.seg == cpu.seg[s] && r.desc.still_located(cpu, paging_gen)) {
                Some(r) => {
                    let hot = &mut cpu.hot;
                    hot.reload_key[s] = jc_key(u32::from(r.seg.selector));
                    hot.reload_desc[s] = r.desc.host;
                    hot.reload_neg[s] = r.desc.raw.wrapping_neg();
                }
                None => cpu.hot.reload_key[s] = 0,
            }
        }
        match self.verw.filter(|r| r.cpl == cpu.cpl && r.desc.still_located(cpu, paging_gen)) {
            Some(r) => {
                let hot = &mut cpu.hot;
                hot.verw_key = jc_key(u32::from(r.selector));
                hot.verw_desc = r.desc.host;
                hot.verw_neg = r.desc.raw.wrapping_neg();
                hot.verw_zf = if r.zf { u64::from(flags::ZF) } else { 0 };
            }
            None => cpu.hot.verw_key = 0,
        }
    }
}
