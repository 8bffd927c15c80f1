//! The engine's side of soft-TLB accesses (`translate::soft`): which
//! instructions get the soft form, and the contents of the soft TLB in
//! `HotState`, which must never say more than the guest TLB would.
//!
//! Entries are made only from a completed walk (so the accessed and, for
//! write tables, dirty bits are set as hardware sets them), only for RAM
//! pages, and for writes only to pages that hold no translated code. They
//! are dropped by INVLPG (that page), by any change of CR0/CR3/CR4 (all),
//! and for write tables when a page becomes code.

use crate::cpu::{HotState, SOFT_COUNTERS, SOFT_EMPTY_TAG, SOFT_TLB_ENTRIES, SOFT_TLB_KINDS};
use crate::fastmap::FastMap;
use crate::translate::soft::KIND_WRITE;

/// Fault score at which an instruction is retranslated in the soft form.
const SOFT_SCORE: u32 = 8;
/// Score of a true page fault (the guest's handler runs: worth avoiding
/// the host fault after two of them) and of a hidden one (the shadow
/// mapping keeps being dropped: eight of them).
const TRUE_FAULT_SCORE: u32 = 4;
const HIDDEN_FAULT_SCORE: u32 = 1;
/// Instructions scored at once; the scores restart beyond this.
const MAX_SCORED: usize = 4096;
/// A soft instruction that ran this many times per miss (plus one) since
/// the last review goes back to the shadow window. A soft access costs
/// ~2-3 cycles more than a window access and a window fault ~11 µs here
/// (a host signal, an `mmap`, the first touch's host fault), but a miss
/// of the soft form costs an exit too, and where the window form would
/// fault only on its first touch of a page it is cheaper well before the
/// break-even of the fault alone: 4,096 measured best on qsort, whose
/// merge's store into a freshly allocated buffer faults once per page and
/// then runs a million times (8.9 -> 8.1 ms), while a new process's
/// start-up code runs about once per miss and stays soft.
const REVERT_HITS_PER_MISS: u64 = 4096;
/// ... unless it has missed this often since it turned soft: a sweep over
/// more pages than that (kvm-unit-tests' sieve over 100 MB) would take a
/// host fault and a host mapping per page in the window form, and the
/// mappings would outgrow the host's limit on areas and be flushed.
const MAX_REVERT_MISSES: u32 = 4096;
/// Hidden host faults after which an instruction sent back to the window
/// turns soft again, for good: the window form is thrashing (a sweep over
/// pages that the soft TLB had served without a miss of this instruction's
/// own: kvm-unit-tests' sieve took 40 s instead of 9 with a limit of 1024).
const REFAULT_LIMIT: u32 = 64;
/// `REVERT_HITS_PER_MISS` for soft MOVS/STOS: their callout costs some
/// 150 cycles more than the host's own string instruction (a hot `memcpy`
/// of a few words), so the window form pays off much sooner. They never
/// stay soft uncounted, however often they miss: a sweep through fresh
/// buffers is cheaper in the soft form only while it misses.
const STRING_REVERT_HITS_PER_MISS: u64 = 256;

/// A counted soft instruction: where it was translated, its misses since
/// the last review and since it turned soft.
struct Counted {
    slot: u32,
    phys: u32,
    misses: u32,
    total_misses: u32,
    /// A MOVS/STOS (`STRING_REVERT_HITS_PER_MISS`).
    string: bool,
}

#[derive(Default)]
pub struct SoftTlb {
    /// EIPs translated with soft accesses, each with its hit-counter slot
    /// in `HotState::soft_hits` (0: not counted).
    pub insns: FastMap<u32, u32>,
    /// The instructions with a counter of their own, by EIP.
    counted: FastMap<u32, Counted>,
    /// Counter slots handed out, 1..=`slots_used` (slots are never reused:
    /// a stale soft translation of a reverted EIP may still count in its
    /// old one).
    slots_used: u32,
    /// Instructions sent back to the shadow window, with their hidden host
    /// faults since and whether each is a MOVS/STOS: past `REFAULT_LIMIT`
    /// they turn soft again, without a counter unless a string instruction.
    reverted: FastMap<u32, (u32, bool)>,
    /// Instructions soft for good after `REFAULT_LIMIT` (never counted).
    pinned: FastMap<u32, ()>,
    /// Instructions that kept faulting but have no soft form (`forgo`):
    /// no longer scored.
    formless: FastMap<u32, ()>,
    scores: FastMap<u32, u32>,
    /// `soft_tlb` indices filled since the last flush.
    used: Vec<u32>,
    pub fills: u64,
    pub misses: u64,
    /// Instructions sent back to the shadow window.
    pub reverts: u64,
    /// The entries each recent address space had when the guest loaded
    /// another CR3, by page directory (`stash`, `unstash`).
    stashed: FastMap<u32, Vec<Stashed>>,
    /// Entries refilled from `stashed`.
    pub refills: u64,
}

/// A soft-TLB entry put aside at a CR3 load: table, linear page and the
/// host address of its RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stashed {
    pub kind: u32,
    pub lin: u32,
    pub host: u64,
}

/// Address spaces whose entries are kept, and the fills kept per address
/// space: the most recent ones. Each costs a walk at every return, and
/// more cost the pipe round trip more than their misses did (9.3 us with
/// none kept before soft strings, 13.4 with none after, 17.0 with 256,
/// 10.9 with 16).
const MAX_STASHED_SPACES: usize = 64;
const MAX_STASHED_ENTRIES: usize = 16;

fn slot(kind: u32, lin: u32) -> usize {
    kind as usize * SOFT_TLB_ENTRIES + ((lin >> 12) as usize % SOFT_TLB_ENTRIES)
}

/// `-(page + 1)`: never 0 (the empty tag), and a hit is one flag-free
/// `lea rcx, [rcx + tag + 1]` giving zero.
fn tag(lin: u32) -> u64 {
    ((lin >> 12) as u64 + 1).wrapping_neg()
}

impl SoftTlb {
    /// A host fault of the instruction at `eip`; true when it has just
    /// become a soft instruction (its blocks must be retranslated).
    pub fn note_fault(&mut self, eip: u32, true_fault: bool) -> bool {
        if self.insns.contains_key(&eip) || self.formless.contains_key(&eip) {
            return false;
        }
        if let Some((n, string)) = self.reverted.get(&eip).copied() {
            // Only hidden faults: pages the guest maps that the window lacks.
            // True faults (a fresh buffer per call: glibc mmaps every qsort's
            // 4 MiB scratch) cost the guest's handler either way.
            let n = n + u32::from(!true_fault);
            if n < REFAULT_LIMIT {
                self.reverted.insert(eip, (n, string));
                return false;
            }
            // The window form keeps faulting after all: soft for good,
            // without a counter (`count` leaves it alone), unless a string
            // instruction (counted again).
            self.reverted.remove(&eip);
            self.insns.insert(eip, 0);
            if !string {
                self.pinned.insert(eip, ());
            }
            return true;
        }
        if self.scores.len() >= MAX_SCORED {
            self.scores.clear();
        }
        let s = self.scores.entry(eip).or_insert(0);
        *s += if true_fault { TRUE_FAULT_SCORE } else { HIDDEN_FAULT_SCORE };
        if *s < SOFT_SCORE {
            return false;
        }
        self.scores.remove(&eip);
        self.insns.insert(eip, 0);
        true
    }

    /// The instruction at `eip`, which `note_fault` has just made soft, has
    /// no soft form (`translate::has_soft_form`): it stays as it is, and
    /// its faults are no longer scored.
    pub fn forgo(&mut self, eip: u32) {
        self.insns.remove(&eip);
        self.pinned.remove(&eip);
        if self.formless.len() >= MAX_SCORED {
            self.formless.clear();
        }
        self.formless.insert(eip, ());
    }

    /// Give the new soft instruction at `eip`, translated from physical
    /// page `phys`, a hit counter (before its blocks are translated again);
    /// `string`: it is a MOVS/STOS.
    pub fn count(&mut self, hot: &mut HotState, eip: u32, phys: u32, string: bool) {
        let slot = self.slots_used + 1;
        if slot as usize >= SOFT_COUNTERS || !self.insns.contains_key(&eip) || self.pinned.contains_key(&eip) {
            return;
        }
        self.slots_used = slot;
        hot.soft_hits[slot as usize] = 0;
        self.insns.insert(eip, slot);
        self.counted.insert(eip, Counted { slot, phys, misses: 0, total_misses: 0, string });
    }

    /// A soft-TLB miss of the instruction at `eip`.
    pub fn note_miss(&mut self, eip: u32) {
        self.misses += 1;
        if let Some(c) = self.counted.get_mut(&eip) {
            c.misses = c.misses.saturating_add(1);
            c.total_misses = c.total_misses.saturating_add(1);
        }
    }

    /// Review the counted instructions: those that ran far more often than
    /// they missed since the last review leave the soft form; those that
    /// missed on too many pages for the window form stay soft without a
    /// counter. Returns the (EIP, physical page) of both, whose blocks the
    /// caller must retranslate.
    pub fn review(&mut self, hot: &mut HotState) -> Vec<(u32, u32)> {
        let (mut back, mut settled) = (Vec::new(), Vec::new());
        for (&eip, c) in self.counted.iter_mut() {
            let hits = std::mem::take(&mut hot.soft_hits[c.slot as usize]) as u64;
            let misses = std::mem::take(&mut c.misses) as u64;
            let per_miss = if c.string { STRING_REVERT_HITS_PER_MISS } else { REVERT_HITS_PER_MISS };
            if c.total_misses > MAX_REVERT_MISSES && !c.string {
                settled.push((eip, c.phys));
            } else if hits >= per_miss * (misses + 1) {
                back.push((eip, c.phys));
            }
        }
        for &(eip, _) in &back {
            let string = self.counted.remove(&eip).is_some_and(|c| c.string);
            self.insns.remove(&eip);
            self.reverted.insert(eip, (0, string));
        }
        for &(eip, _) in &settled {
            self.counted.remove(&eip);
            self.insns.insert(eip, 0);
        }
        self.reverts += back.len() as u64;
        back.extend(settled);
        back
    }

    /// Does table `kind` hold the page of `lin`?
    pub fn holds(&self, hot: &HotState, kind: u32, lin: u32) -> bool {
        hot.soft_tlb[slot(kind, lin)][0] == tag(lin)
    }

    /// Enter the page of `lin` in table `kind`; `host_page` is the host
    /// address of its RAM.
    pub fn fill(&mut self, hot: &mut HotState, kind: u32, lin: u32, host_page: u64) {
        if self.used.len() >= SOFT_TLB_ENTRIES * SOFT_TLB_KINDS {
            // Refilled slots are listed again: start over rather than grow.
            self.flush_all(hot);
        }
        let s = slot(kind, lin);
        hot.soft_tlb[s] = [tag(lin), host_page.wrapping_sub((lin & !0xFFF) as u64)];
        self.used.push(s as u32);
        self.fills += 1;
    }

    /// The guest is about to load a CR3 other than `pd`: keep the entries
    /// of the address space `pd` (page directory address) for its return.
    pub fn stash(&mut self, hot: &HotState, pd: u32) {
        // The most recent fills (a slot filled twice is listed twice, and
        // holds its last entry).
        let recent = self.used.len().saturating_sub(MAX_STASHED_ENTRIES);
        let mut slots = self.used[recent..].to_vec();
        slots.sort_unstable();
        slots.dedup();
        let v: Vec<Stashed> = slots
            .into_iter()
            .filter_map(|s| {
                let [t, addend] = hot.soft_tlb[s as usize];
                let lin = ((t.wrapping_neg().wrapping_sub(1)) << 12) as u32;
                (t != SOFT_EMPTY_TAG).then(|| Stashed {
                    kind: s / SOFT_TLB_ENTRIES as u32,
                    lin,
                    host: addend.wrapping_add(lin as u64),
                })
            })
            .collect();
        if self.stashed.len() >= MAX_STASHED_SPACES && !self.stashed.contains_key(&pd) {
            self.stashed.clear();
        }
        self.stashed.insert(pd, v);
    }

    /// The entries put aside for address space `pd`, which the caller must
    /// check against the guest tables before it enters them again.
    pub fn unstash(&mut self, pd: u32) -> Vec<Stashed> {
        self.stashed.remove(&pd).unwrap_or_default()
    }

    /// Forget every address space's entries (the guest tables may say
    /// anything after a change of CR0 or CR4).
    pub fn forget_stashed(&mut self) {
        self.stashed.clear();
    }

    /// Drop every entry.
    pub fn flush_all(&mut self, hot: &mut HotState) {
        for s in self.used.drain(..) {
            hot.soft_tlb[s as usize][0] = SOFT_EMPTY_TAG;
        }
    }

    /// Drop the write entries (a page became code).
    pub fn flush_writes(&mut self, hot: &mut HotState) {
        if self.used.is_empty() {
            return;
        }
        self.used.retain(|&s| {
            let write = (s as usize / SOFT_TLB_ENTRIES) as u32 & KIND_WRITE != 0;
            if write {
                hot.soft_tlb[s as usize][0] = SOFT_EMPTY_TAG;
            }
            !write
        });
    }
}

/// Bytes a soft string callout moves before it lets the dispatcher look
/// (interrupts are taken between iterations of a long REP, as on hardware).
const STRING_BUDGET: u32 = 1 << 16;

/// The host address of linear `lin` through soft-TLB table `kind`, or the
/// miss.
fn host_at(hot: &HotState, kind: u32, lin: u32) -> Option<*mut u8> {
    let e = hot.soft_tlb[slot(kind, lin)];
    (e[0] == tag(lin)).then(|| e[1].wrapping_add(lin as u64) as *mut u8)
}

/// Elements of `size` bytes from `lin` on, in direction `down`, that lie
/// wholly in the page of `lin` (0: the first one crosses into the next).
fn in_page(lin: u32, size: u32, down: bool) -> u32 {
    let off = lin & 0xFFF;
    match (off + size <= 0x1000, down) {
        (false, _) => 0,
        (true, false) => (0x1000 - off) / size,
        (true, true) => off / size + 1,
    }
}

/// MOVS/STOS in the soft form (`translate::string::soft`), called from
/// translated code with guest EAX, ECX, ESI, EDI in `str_regs` and the
/// guest RFLAGS as the first thing `call_vmm` pushed. Runs iterations as
/// long as the soft TLB holds their pages, a page-sized chunk at a time
/// with the host's own string instruction (so overlapping copies and DF
/// behave exactly), and writes the registers back as they stand after the
/// last whole iteration: a miss leaves before the iteration that needs the
/// page, with `exit_arg`/`soft_kind` naming it (the source before the
/// destination, as the instruction reads before it writes).
pub(super) extern "sysv64" fn string_callout(hot: *mut HotState) -> u32 {
    use crate::translate::string::{
        SOFT_COUNTER_SHIFT, SOFT_DONE, SOFT_MISSED, SOFT_REP, SOFT_STOS, SOFT_USER, SOFT_YIELD,
    };
    // SAFETY: translated code passes the running vCPU's HotState.
    let hot = unsafe { &mut *hot };
    // SAFETY: `call_vmm` switched to the dispatcher's stack at `host_rsp`
    // and pushed the guest RFLAGS first.
    let rflags = unsafe { *(hot.host_rsp as *const u64).sub(1) };
    let info = hot.str_info;
    let size = info & 7;
    let (stos, rep) = (info & SOFT_STOS != 0, info & SOFT_REP != 0);
    let user = if info & SOFT_USER != 0 { crate::translate::soft::KIND_USER } else { 0 };
    let counter = (info >> SOFT_COUNTER_SHIFT) as usize;
    if counter != 0 {
        let c = &mut hot.soft_hits[counter % SOFT_COUNTERS];
        *c = c.wrapping_add(1);
    }
    let down = rflags & crate::cpu::flags::DF as u64 != 0;
    let [eax, ecx, mut esi, mut edi] = hot.str_regs;
    let mut count = if rep { ecx } else { 1 };
    let mut budget = STRING_BUDGET / size;
    let (read, write) = (user, user | KIND_WRITE);
    let result = loop {
        if count == 0 {
            break SOFT_DONE;
        }
        if budget == 0 {
            break SOFT_YIELD;
        }
        // Every byte of the next element, source first.
        let missing = (0..size)
            .filter(|_| !stos)
            .map(|k| (read, esi.wrapping_add(k)))
            .chain((0..size).map(|k| (write, edi.wrapping_add(k))))
            .find(|&(kind, lin)| host_at(hot, kind, lin).is_none());
        if let Some((kind, lin)) = missing {
            hot.exit_arg = lin;
            hot.soft_kind = kind;
            break SOFT_MISSED;
        }
        let src_n = if stos { u32::MAX } else { in_page(esi, size, down) };
        let n = count.min(budget).min(src_n).min(in_page(edi, size, down));
        // (Both held: checked above.)
        let src = if stos { std::ptr::null_mut() } else { host_at(hot, read, esi).unwrap_or(std::ptr::null_mut()) };
        let Some(dst) = host_at(hot, write, edi) else {
            (hot.exit_arg, hot.soft_kind) = (edi, write);
            break SOFT_MISSED;
        };
        if n == 0 {
            // One element across a page boundary: byte by byte (its pages
            // are all held, checked above).
            let v = if stos {
                eax
            } else {
                (0..size).fold(0u32, |v, k| {
                    let p = host_at(hot, read, esi.wrapping_add(k)).unwrap_or(std::ptr::null_mut());
                    // SAFETY: a soft-TLB entry points into the RAM alias.
                    v | (unsafe { p.read() } as u32) << (8 * k)
                })
            };
            for k in 0..size {
                if let Some(p) = host_at(hot, write, edi.wrapping_add(k)) {
                    // SAFETY: as above.
                    unsafe { p.write((v >> (8 * k)) as u8) };
                }
            }
            advance(&mut esi, &mut edi, size, 1, down, stos);
            count -= 1;
            budget -= 1;
            continue;
        }
        // SAFETY: `n` elements from `src`/`dst` in direction DF stay inside
        // pages the soft TLB maps to the RAM alias.
        unsafe { host_string(src, dst, n as usize, size, stos, eax, down) };
        advance(&mut esi, &mut edi, size, n, down, stos);
        count -= n;
        budget -= n;
    };
    hot.str_regs = [eax, if rep { count } else { ecx }, esi, edi];
    result
}

/// ESI (unless STOS) and EDI after `n` elements.
fn advance(esi: &mut u32, edi: &mut u32, size: u32, n: u32, down: bool, stos: bool) {
    let d = if down { (size * n).wrapping_neg() } else { size * n };
    if !stos {
        *esi = esi.wrapping_add(d);
    }
    *edi = edi.wrapping_add(d);
}

/// `n` iterations of the host's MOVS (from `src`) or STOS (of `eax`) of
/// `size`-byte elements at `dst`, downwards if `down`.
///
/// # Safety
/// The elements must lie in memory the caller may read and write.
unsafe fn host_string(src: *mut u8, dst: *mut u8, n: usize, size: u32, stos: bool, eax: u32, down: bool) {
    use core::arch::asm;
    macro_rules! string_op {
        ($op:literal) => {
            // SAFETY: see the function's contract; DF is set only for the
            // instruction and cleared again, as the ABI requires.
            unsafe {
                if down {
                    asm!("std", concat!("rep ", $op), "cld", inout("rcx") n => _, inout("rsi") src => _,
                         inout("rdi") dst => _, in("eax") eax, options(nostack));
                } else {
                    asm!(concat!("rep ", $op), inout("rcx") n => _, inout("rsi") src => _,
                         inout("rdi") dst => _, in("eax") eax, options(nostack, preserves_flags));
                }
            }
        };
    }
    match (stos, size) {
        (false, 1) => string_op!("movsb"),
        (false, 2) => string_op!("movsw"),
        (false, _) => string_op!("movsd"),
        (true, 1) => string_op!("stosb"),
        (true, 2) => string_op!("stosw"),
        (true, _) => string_op!("stosd"),
    }
}

/// Drop the soft-TLB entries of the page of `lin` (INVLPG).
pub fn flush_page(hot: &mut HotState, lin: u32) {
    for kind in 0..SOFT_TLB_KINDS as u32 {
        let s = slot(kind, lin);
        if hot.soft_tlb[s][0] == tag(lin) {
            hot.soft_tlb[s][0] = SOFT_EMPTY_TAG;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft string callout against an element-by-element model of
    /// MOVS/STOS: random lengths, both directions, overlapping copies,
    /// elements across page boundaries, and a page the soft TLB lacks.
    #[test]
    fn soft_string_callout_matches_the_model() {
        use crate::translate::string::{SOFT_DONE, SOFT_MISSED, SOFT_REP, SOFT_STOS};
        const PAGES: u32 = 4; // linear pages 1..=4; page 5 is never held
        let mut hot = HotState::new_boxed();
        let mut t = SoftTlb::default();
        let mut ram = vec![0u8; PAGES as usize * 4096];
        let mut host_stack = [0u64; 4];
        let mut seed = 0x1234_5678u32;
        let mut rnd = |n: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 8) % n
        };
        // The model: linear address -> RAM offset.
        let at = |lin: u32| (0x1000..0x1000 * (PAGES + 1)).contains(&lin).then(|| (lin - 0x1000) as usize);
        for case in 0..400 {
            for (k, b) in ram.iter_mut().enumerate() {
                *b = (k as u32 * 7 + case) as u8;
            }
            t.flush_all(&mut hot);
            for p in 1..=PAGES {
                for kind in [0, KIND_WRITE] {
                    let host = ram.as_mut_ptr() as u64 + (p as u64 - 1) * 4096;
                    t.fill(&mut hot, kind, p << 12, host);
                }
            }
            let size = [1, 2, 4][rnd(3) as usize];
            let stos = rnd(4) == 0;
            let down = rnd(3) == 0;
            let count = rnd(3000);
            let (esi, edi) = (0x1000 + rnd(PAGES * 4096 + 64), 0x1000 + rnd(PAGES * 4096 + 64));
            let eax = 0xA1B2_C3D4;
            host_stack[3] = if down { crate::cpu::flags::DF as u64 } else { 0 } | 2;
            hot.host_rsp = host_stack.as_ptr() as u64 + 32;
            hot.str_regs = [eax, count, esi, edi];
            hot.str_info = size | SOFT_REP | if stos { SOFT_STOS } else { 0 };
            let mut want = ram.clone();
            let (mut ws, mut wd, mut wc) = (esi, edi, count);
            let mut want_result = SOFT_DONE;
            let mut want_miss = None;
            let step = if down { size.wrapping_neg() } else { size };
            while wc > 0 {
                let src: Option<Vec<usize>> = (0..size).map(|k| at(ws.wrapping_add(k))).collect();
                let dst: Option<Vec<usize>> = (0..size).map(|k| at(wd.wrapping_add(k))).collect();
                let (Some(src), Some(dst)) = (if stos { Some(vec![]) } else { src }, dst) else {
                    // The first byte missing, source before destination.
                    let reads = (0..size).filter(|_| !stos).map(|k| (0, ws.wrapping_add(k)));
                    want_miss = reads
                        .chain((0..size).map(|k| (KIND_WRITE, wd.wrapping_add(k))))
                        .find(|&(_, l)| at(l).is_none());
                    want_result = SOFT_MISSED;
                    break;
                };
                for k in 0..size as usize {
                    want[dst[k]] = if stos { (eax >> (8 * k)) as u8 } else { want[src[k]] };
                }
                (ws, wd, wc) = (if stos { ws } else { ws.wrapping_add(step) }, wd.wrapping_add(step), wc - 1);
            }
            let ctx =
                format!("case {case}: size {size} stos {stos} down {down} count {count} esi {esi:#x} edi {edi:#x}");
            let mut result = string_callout(&mut *hot);
            let mut calls = 1;
            while result == crate::translate::string::SOFT_YIELD && calls < 100 {
                result = string_callout(&mut *hot);
                calls += 1;
            }
            assert_eq!(result, want_result, "{ctx}");
            assert_eq!(hot.str_regs, [eax, wc, ws, wd], "{ctx}");
            assert!(ram == want, "{ctx}: memory differs");
            if result == SOFT_MISSED {
                assert_eq!(Some((hot.soft_kind, hot.exit_arg)), want_miss, "{ctx}");
            }
        }
    }

    #[test]
    fn fills_flushes_and_scores() {
        let mut hot = HotState::new_boxed();
        let mut t = SoftTlb::default();
        t.fill(&mut hot, KIND_WRITE, 0x1234_5678, 0x7000_0000_0000);
        assert!(t.holds(&hot, KIND_WRITE, 0x1234_5000));
        assert!(!t.holds(&hot, 0, 0x1234_5000), "other kind");
        assert!(!t.holds(&hot, KIND_WRITE, 0x1334_5000), "same slot, other page");
        // host address = linear address + addend
        let e = hot.soft_tlb[slot(KIND_WRITE, 0x1234_5678)];
        assert_eq!(e[1].wrapping_add(0x1234_5678), 0x7000_0000_0678);
        t.fill(&mut hot, 0, 0x9000, 0x7000_0001_0000);
        t.flush_writes(&mut hot);
        assert!(!t.holds(&hot, KIND_WRITE, 0x1234_5000));
        assert!(t.holds(&hot, 0, 0x9000));
        flush_page(&mut hot, 0x9ABC);
        assert!(!t.holds(&hot, 0, 0x9000));
        // Refilling one slot forever does not grow the list without bound.
        for _ in 0..10_000 {
            t.fill(&mut hot, 0, 0x9000, 0x7000_0001_0000);
        }
        assert!(t.used.len() <= SOFT_TLB_ENTRIES * SOFT_TLB_KINDS);
        assert!(t.holds(&hot, 0, 0x9000));
        // Two true faults, or eight hidden ones, make an instruction soft.
        assert!(!t.note_fault(0x100, true));
        assert!(t.note_fault(0x100, true));
        assert!(!t.note_fault(0x100, true), "already soft");
        assert!((0..7).all(|_| !t.note_fault(0x200, false)));
        assert!(t.note_fault(0x200, false));
        // One without a soft form is let go and no longer scored.
        t.forgo(0x200);
        assert!(!t.insns.contains_key(&0x200));
        assert!((0..100).all(|_| !t.note_fault(0x200, true)));
    }

    #[test]
    fn hot_soft_instructions_go_back_to_the_window() {
        let mut hot = HotState::new_boxed();
        let mut t = SoftTlb::default();
        for eip in [0x100, 0x200] {
            assert!(!t.note_fault(eip, true));
            assert!(t.note_fault(eip, true));
            t.count(&mut hot, eip, 0x5000, false);
        }
        let (a, b) = (t.insns[&0x100], t.insns[&0x200]);
        assert!(a != 0 && b != 0 && a != b, "each has a counter of its own");
        // 0x100: a loop's store, one miss per 10,000 runs; 0x200: start-up
        // code, run about once per miss.
        hot.soft_hits[a as usize] = 20_000;
        t.note_miss(0x100);
        hot.soft_hits[b as usize] = 40;
        (0..30).for_each(|_| t.note_miss(0x200));
        assert_eq!(t.review(&mut hot), vec![(0x100, 0x5000)]);
        assert!(!t.insns.contains_key(&0x100) && t.insns.contains_key(&0x200));
        assert_eq!(hot.soft_hits[b as usize], 0, "counts restart at each review");
        // A reverted instruction turns soft again only after many faults,
        // and then for good (no counter).
        assert!((0..1000).all(|_| !t.note_fault(0x100, true)), "true faults do not count");
        assert!((1..REFAULT_LIMIT).all(|_| !t.note_fault(0x100, false)));
        assert!(t.note_fault(0x100, false));
        t.count(&mut hot, 0x100, 0x5000, false);
        assert_eq!(t.insns[&0x100], 0, "no counter");
        // One that missed on more pages than the window form could map
        // stays soft.
        assert!(!t.note_fault(0x300, true));
        assert!(t.note_fault(0x300, true));
        t.count(&mut hot, 0x300, 0x5000, false);
        (0..=MAX_REVERT_MISSES).for_each(|_| t.note_miss(0x300));
        assert_eq!(t.review(&mut hot), vec![(0x300, 0x5000)], "retranslated without its counter");
        assert_eq!(t.insns[&0x300], 0);
        assert!(t.review(&mut hot).is_empty());
        // A string instruction goes back sooner, never settles uncounted,
        // and turns soft again with a counter.
        assert!(!t.note_fault(0x400, true));
        assert!(t.note_fault(0x400, true));
        t.count(&mut hot, 0x400, 0x5000, true);
        let s = t.insns[&0x400];
        (0..=MAX_REVERT_MISSES).for_each(|_| t.note_miss(0x400));
        assert!(t.review(&mut hot).is_empty(), "stays counted");
        hot.soft_hits[s as usize] = STRING_REVERT_HITS_PER_MISS as u32;
        assert_eq!(t.review(&mut hot), vec![(0x400, 0x5000)]);
        assert!(!t.insns.contains_key(&0x400));
        (1..REFAULT_LIMIT).for_each(|_| assert!(!t.note_fault(0x400, false)));
        assert!(t.note_fault(0x400, false));
        t.count(&mut hot, 0x400, 0x5000, true);
        assert_ne!(t.insns[&0x400], 0, "counted again");
        // Runs without a miss count as one miss: a little use stays soft.
        hot.soft_hits[b as usize] = 4000;
        assert!(t.review(&mut hot).is_empty());
    }
}
