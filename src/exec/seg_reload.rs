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
//!
//! Each register also has an *alternative* record: the load it held before
//! the current one, when both leave the mode's flatness for that register
//! as it is (both checked, say). A load of the alternative's selector at
//! the same CPL, from unchanged descriptor bytes, swaps the two records in
//! place (`HotState::alt_*`), so code that toggles a register between two
//! selectors, as Linux does with FS on every system call (the user's null
//! selector and `__KERNEL_PERCPU`), leaves translated code for neither.
//! The engine reconciles after every exit (`SegReloads::reconcile`): a
//! register whose selector in `HotState::seg_sel` differs from the VMM's
//! was swapped, and takes the alternative's hidden part. Null selectors
//! are recorded too (they need no descriptor).

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
    /// Its linear and physical addresses, and its host address.
    lin: u32,
    phys: u32,
    host: u64,
    raw: u64,
}

impl Descriptor {
    /// The descriptor `selector` names, in protected mode outside
    /// virtual-8086 mode, if it is within its table's limit and on one
    /// page of RAM.
    fn locate(cpu: &Cpu, mem: &GuestMemory, selector: u16, paging_gen: u64) -> Option<Self> {
        if !protected(cpu) || is_null(selector) {
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
            lin,
            phys,
            host: mem.alias_ptr() as u64 + u64::from(phys),
            raw: u64::from_le_bytes(b),
        })
    }

    /// Would the same selector still find the descriptor at `host`? After
    /// a change of paging (a CR3 load: every context switch) the table's
    /// linear page is looked up again, without setting an accessed bit;
    /// Linux's GDT stays where it was.
    fn still_located(&mut self, cpu: &Cpu, mem: &GuestMemory, paging_gen: u64) -> bool {
        if self.gdtr != cpu.gdtr || self.ldtr != cpu.ldtr || cpu.hot.sys_flags & flags::VM != 0 {
            return false;
        }
        if self.paging_gen == paging_gen && self.invlpgs == cpu.hot.invlpg_done {
            return true;
        }
        let page = self.lin & !0xFFF;
        let same =
            !mem.paging().enabled() && page == self.phys & !0xFFF || mem.still_maps(page, false, self.phys & !0xFFF);
        if same {
            self.paging_gen = paging_gen;
            self.invlpgs = cpu.hot.invlpg_done;
        }
        same
    }
}

/// A load of a segment register by the VMM.
#[derive(Clone, Copy)]
struct Record {
    /// The segment register as the load left it (selector and hidden part).
    seg: Segment,
    /// Its descriptor; none for a null selector.
    desc: Option<Descriptor>,
    /// The CPL the load's privilege checks passed at.
    cpl: u8,
}

impl Record {
    fn still_located(&mut self, cpu: &Cpu, mem: &GuestMemory, paging_gen: u64) -> bool {
        self.desc.as_mut().is_none_or(|d| d.still_located(cpu, mem, paging_gen))
    }

    /// The key translated code compares `selector | cpl << 16` with.
    fn key(&self) -> u64 {
        jc_key(u32::from(self.seg.selector) | u32::from(self.cpl) << 16)
    }
}

/// Is `selector` null (index 0 in the GDT)?
fn is_null(selector: u16) -> bool {
    selector & SEL_INDEX_MASK == 0 && selector & SEL_TI == 0
}

/// Protected mode outside virtual-8086 mode (where selectors name
/// descriptors)?
fn protected(cpu: &Cpu) -> bool {
    cpu.cr[0] & CR0_PE != 0 && cpu.hot.sys_flags & flags::VM == 0
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
    alts: [Option<Record>; 6],
    verw: Option<VerwRecord>,
    /// Bumped by every change of paging state the engine sees (CR0, CR3,
    /// CR4, INVLPG through the VMM): a descriptor's linear address may map
    /// other memory afterwards.
    paging_gen: u64,
    /// What the last two `sync`s published, and from what, while no record
    /// changed: the same machine state publishes the same thing, so `sync`
    /// copies it back (an INT/IRET round trip exits to the VMM twice, in
    /// two states that alternate, and republishing cost a fifth of it).
    published: [Option<(SyncInputs, Published)>; 2],
}

/// The `HotState` fields `sync` publishes.
#[derive(Clone, Copy)]
struct Published {
    reload_key: [u64; 6],
    reload_desc: [u64; 6],
    reload_neg: [u64; 6],
    alt_key: [u64; 6],
    alt_desc: [u64; 6],
    alt_neg: [u64; 6],
    alt_base: [u32; 6],
    alt_lo: [u32; 6],
    alt_hi: [u32; 6],
    verw: [u64; 4],
}

impl Published {
    fn of(h: &crate::cpu::HotState) -> Self {
        Self {
            reload_key: h.reload_key,
            reload_desc: h.reload_desc,
            reload_neg: h.reload_neg,
            alt_key: h.alt_key,
            alt_desc: h.alt_desc,
            alt_neg: h.alt_neg,
            alt_base: h.alt_base,
            alt_lo: h.alt_lo,
            alt_hi: h.alt_hi,
            verw: [h.verw_key, h.verw_desc, h.verw_neg, h.verw_zf],
        }
    }

    fn restore(&self, h: &mut crate::cpu::HotState) {
        h.reload_key = self.reload_key;
        h.reload_desc = self.reload_desc;
        h.reload_neg = self.reload_neg;
        h.alt_key = self.alt_key;
        h.alt_desc = self.alt_desc;
        h.alt_neg = self.alt_neg;
        h.alt_base = self.alt_base;
        h.alt_lo = self.alt_lo;
        h.alt_hi = self.alt_hi;
        [h.verw_key, h.verw_desc, h.verw_neg, h.verw_zf] = self.verw;
    }
}

/// The machine state `sync`'s result depends on besides the records.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SyncInputs {
    gdtr: TableReg,
    ldtr: Segment,
    segs: [Segment; 4],
    cpl: u8,
    cr0: u32,
    vm: bool,
    invlpgs: u64,
}

impl SyncInputs {
    fn of(cpu: &Cpu) -> Self {
        Self {
            gdtr: cpu.gdtr,
            ldtr: cpu.ldtr,
            segs: RELOADABLE.map(|s| cpu.seg[s]),
            cpl: cpu.cpl,
            cr0: cpu.cr[0],
            vm: cpu.hot.sys_flags & flags::VM != 0,
            invlpgs: cpu.hot.invlpg_done,
        }
    }
}

impl SegReloads {
    /// Paging changed: no record stays valid.
    pub fn paging_changed(&mut self) {
        self.paging_gen += 1;
        self.published = [None; 2];
    }

    /// The VMM has just loaded segment register `s` by MOV or POP: record
    /// the load if it can be checked in place later.
    pub fn note_load(&mut self, cpu: &Cpu, mem: &GuestMemory, s: usize) {
        if !RELOADABLE.contains(&s) {
            return;
        }
        self.published = [None; 2];
        let seg = cpu.seg[s];
        let new = if protected(cpu) && is_null(seg.selector) {
            Some(Record { seg, desc: None, cpl: cpu.cpl })
        } else {
            Descriptor::locate(cpu, mem, seg.selector, self.paging_gen).map(|d| Record {
                seg,
                desc: Some(d),
                cpl: cpu.cpl,
            })
        };
        // The load it replaces becomes the alternative (`sync` arms it only
        // beside a current load of the same flatness).
        if let Some(old) = self.records[s].filter(|r| r.seg.selector != seg.selector) {
            self.alts[s] = Some(old);
        }
        self.records[s] = new;
    }

    /// After translated code ran: a register whose selector translated
    /// code changed was swapped with its alternative; give the VMM's copy
    /// the alternative's hidden part and swap the records.
    pub fn reconcile(&mut self, cpu: &mut Cpu) {
        for s in RELOADABLE {
            if cpu.hot.seg_sel[s] == u32::from(cpu.seg[s].selector) {
                continue;
            }
            self.published = [None; 2];
            match self.alts[s] {
                Some(a) if u32::from(a.seg.selector) == cpu.hot.seg_sel[s] => {
                    self.alts[s] = self.records[s];
                    self.records[s] = Some(a);
                    cpu.seg[s] = a.seg;
                }
                _ => debug_assert!(false, "segment {s} changed in translated code without a record"),
            }
        }
    }

    /// The VMM has just run a VERW of `selector` that set ZF to `zf`.
    pub fn note_verw(&mut self, cpu: &Cpu, mem: &GuestMemory, selector: u16, zf: bool) {
        self.published = [None; 2];
        self.verw = Descriptor::locate(cpu, mem, selector, self.paging_gen).map(|desc| VerwRecord {
            selector,
            cpl: cpu.cpl,
            zf,
            desc,
        });
    }

    /// Publish the records that still describe the machine to `HotState`
    /// (and disarm the others), before translated code runs.
    pub fn sync(&mut self, cpu: &mut Cpu, mem: &GuestMemory) {
        let inputs = SyncInputs::of(cpu);
        if let Some((_, p)) = self.published.iter().flatten().find(|(i, _)| *i == inputs) {
            p.restore(&mut cpu.hot);
            return;
        }
        let kept = (self.records, self.alts, self.verw.is_some());
        self.publish(cpu, mem);
        let same =
            |a: &[Option<Record>; 6], b: &[Option<Record>; 6]| a.iter().zip(b).all(|(x, y)| x.is_some() == y.is_some());
        if !same(&kept.0, &self.records) || !same(&kept.1, &self.alts) || kept.2 != self.verw.is_some() {
            // A record went: what was published before used it.
            self.published = [None; 2];
        }
        self.published = [Some((inputs, Published::of(&cpu.hot))), self.published[0]];
    }

    /// `sync`'s work: drop the records that no longer describe the machine
    /// and publish the others.
    fn publish(&mut self, cpu: &mut Cpu, mem: &GuestMemory) {
        let paging_gen = self.paging_gen;
        let null_desc = std::ptr::addr_of!(cpu.hot.null_desc) as u64;
        for s in RELOADABLE {
            self.records[s].take_if(|r| r.seg != cpu.seg[s] || !r.still_located(cpu, mem, paging_gen));
            self.alts[s].take_if(|a| !a.still_located(cpu, mem, paging_gen));
            let current = self.records[s];
            let desc = |r: &Record| match r.desc {
                Some(d) => (d.host, d.raw.wrapping_neg()),
                None => (null_desc, 0),
            };
            match current {
                Some(r) => {
                    let (d, n) = desc(&r);
                    let hot = &mut cpu.hot;
                    hot.reload_key[s] = r.key();
                    hot.reload_desc[s] = d;
                    hot.reload_neg[s] = n;
                }
                None => cpu.hot.reload_key[s] = 0,
            }
            // The alternative only beside an armed current record (a swap
            // moves the current one into the alternative's place).
            let alt = self.alts[s].filter(|a| {
                current.is_some()
                    && a.seg.selector != cpu.seg[s].selector
                    && cpu.seg_nonflat(s, &a.seg) == cpu.seg_nonflat(s, &cpu.seg[s])
                    && cpu.seg_based_or_null(s, &a.seg) == cpu.seg_based_or_null(s, &cpu.seg[s])
            });
            match alt {
                Some(a) => {
                    let (d, n) = desc(&a);
                    let (base, lo, hi) = cpu.checked_range(s, &a.seg);
                    let hot = &mut cpu.hot;
                    hot.alt_key[s] = a.key();
                    hot.alt_desc[s] = d;
                    hot.alt_neg[s] = n;
                    hot.alt_base[s] = base;
                    hot.alt_lo[s] = lo;
                    hot.alt_hi[s] = hi;
                }
                None => cpu.hot.alt_key[s] = 0,
            }
        }
        self.verw.take_if(|v| !v.desc.still_located(cpu, mem, paging_gen));
        match self.verw.filter(|v| v.cpl == cpu.cpl) {
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
