//! Shadow paging through the host MMU.
//!
//! With guest paging on, a pair of windows is a shadow of the guest's page
//! tables: the supervisor window (CPL 0-2) and the user window (CPL 3, only
//! user pages), built lazily. A host fault in translated code calls
//! `GuestMemory::shadow_fault`, which walks the guest tables (setting A/D
//! bits) and either maps the physical page at the faulting linear page —
//! read-only until the guest's dirty bit is set, or while the physical page
//! holds translated code — or reports the guest page fault.
//!
//! Shadows are cached per address space: each of up to `MAX_CONTEXTS`
//! contexts (one per page-directory address loaded into CR3) owns its own
//! window pair, and switching CR3 switches windows instead of unmapping
//! them. Every mapping records the raw guest PDE and PTE it was made from
//! (with the A/D bits already set); a CR3 load revalidates the target
//! context by re-reading those entries, and keeps each mapping whose entries
//! are unchanged — exactly the translation a fresh walk would give, with no
//! A/D bit left to set. Changed ones are unmapped. Global pages survive a
//! CR3 load unvalidated, as in a TLB, and are shared: a global mapping made
//! in one context is mapped in every other when it next becomes current
//! (coalesced into runs), so a new address space starts with the kernel
//! Linux maps global in all of them. INVLPG drops a page in every context
//! (hardware drops global entries too), and a change of CR0 or CR4 flushes
//! all contexts and the global set.

use super::mmu::{self, Access, PagingRegs};
use super::{GuestMemory, PAGE_SIZE, USER_WINDOW_OFFSET, WINDOW_SIZE};
use crate::fastmap::FastMap;

/// Above this many dropped mappings a flush remaps whole windows instead of
/// unmapping page by page.
const BULK_FLUSH_THRESHOLD: usize = 16;
/// Pages around a hidden fault that are mapped along with it when the guest
/// has already marked them accessed (their A bit, and D for writable
/// mappings, would not change): one aligned group of page-table entries.
const PREFETCH_GROUP: u32 = 64;
/// Address spaces whose shadows are kept at once (each reserves 20 GiB of
/// host address space, none of it backed until mapped).
const MAX_CONTEXTS: usize = 8;
/// Host memory areas (`Context::areas`, an upper bound) kept over all
/// contexts before the inactive ones are dropped: a host process has at
/// most ~65530 (vm.max_map_count), and the VMM needs some of its own.
pub(super) const MAX_TOTAL_AREAS: usize = 48_000;
/// `Shadow::global_log` is rebuilt from the live set when it grows past
/// this many times its size (INVLPG removes globals, not their log keys).
const GLOBAL_LOG_SLACK: usize = 4;
/// `Context::cr3` of a context that shadows no address space.
const NO_CR3: u32 = 1;
/// `Context::lowest_global` of a window without global mappings (no page
/// address has the low bits set).
const NO_GLOBAL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    phys: u32,
    writable: bool,
    global: bool,
    /// The guest PDE and PTE the mapping was made from (`mmu::entries`).
    pde: u32,
    pte: u32,
}

/// Entries of the VMM's own translation cache (a TLB for `translate`).
const VMM_TLB_ENTRIES: usize = 256;
/// An empty VMM TLB entry (no linear page has the low bits set).
const VMM_TLB_EMPTY: u32 = 1;

/// The shadow window pair of one guest address space.
pub(super) struct Context {
    /// Page-directory address this context shadows, or `NO_CR3`.
    cr3: u32,
    /// Supervisor window base (the user window is `USER_WINDOW_OFFSET` above).
    pub(super) window: usize,
    /// The host reservation this context owns (the first context uses the
    /// GuestMemory's own window); unmapped on drop.
    pub(super) own: Option<usize>,
    /// (window << 32 | linear page) -> mapping.
    mapped: FastMap<u64, Entry>,
    /// Physical page -> keys of `mapped` that map it.
    rmap: FastMap<u32, Aliases>,
    /// The keys of `mapped` that are not global (what a CR3 load
    /// revalidates), with the PDE and PTE each was made from (as in
    /// `mapped`: revalidation reads this one table).
    locals: FastMap<u64, (u32, u32)>,
    /// An upper bound on the host memory areas the windows hold: each host
    /// call that maps or unmaps part of a window splits at most one area
    /// into three.
    areas: usize,
    /// How much of `Shadow::global_log` this context has mapped.
    globals_seen: usize,
    /// Pages whose access was revoked (PROT_NONE) but whose host area still
    /// maps RAM, by key: the physical page there. Mapping the same page at
    /// the same key again is then one `mprotect`, and the host page-table
    /// entry survives, so the first touch takes no host fault either
    /// (about 2 against 7.5 µs measured here). Processes run one after
    /// another over the same BusyBox text, at the same addresses.
    dormant: FastMap<u64, u32>,
    /// Per window, at most the lowest linear page of a global mapping
    /// (`NO_GLOBAL`: none).
    lowest_global: [u32; 2],
    /// Last use (for replacing the least recently used context).
    used: u64,
}

impl Context {
    pub(super) fn new(window: usize, own: Option<usize>) -> Self {
        Context {
            cr3: NO_CR3,
            window,
            own,
            mapped: FastMap::default(),
            rmap: FastMap::default(),
            locals: FastMap::default(),
            areas: 0,
            globals_seen: 0,
            dormant: FastMap::default(),
            lowest_global: [NO_GLOBAL; 2],
            used: 0,
        }
    }

    fn insert(&mut self, k: u64, e: Entry) {
        self.forget(k);
        self.mapped.insert(k, e);
        if e.global {
            let w = &mut self.lowest_global[(k >> 32) as usize & 1];
            *w = (*w).min(k as u32);
        } else {
            self.locals.insert(k, (e.pde, e.pte));
        }
        self.note_alias(e.phys, k);
    }

    /// The pages `gone` (key, physical page) had their access revoked with
    /// their host areas kept: those of RAM are dormant (a hole's page is an
    /// anonymous one).
    fn note_dormant(&mut self, gone: &[(u64, u32)], ram_size: usize) {
        for &(k, phys) in gone {
            if (phys as usize) < ram_size {
                self.dormant.insert(k, phys);
            }
        }
    }

    fn forget(&mut self, k: u64) -> Option<Entry> {
        let e = self.mapped.remove(&k)?;
        if !e.global {
            self.locals.remove(&k);
        }
        if self.rmap.get_mut(&e.phys).is_some_and(|a| a.remove(k)) {
            self.rmap.remove(&e.phys);
        }
        Some(e)
    }

    /// Forget every mapping (the windows were made inaccessible).
    fn clear(&mut self) {
        self.dormant.clear();
        self.lowest_global = [NO_GLOBAL; 2];
        self.mapped.clear();
        self.rmap.clear();
        self.locals.clear();
        self.areas = 2;
        self.globals_seen = 0;
    }

    fn note_alias(&mut self, phys: u32, k: u64) {
        match self.rmap.entry(phys) {
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().push(k),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Aliases::One(k));
            }
        }
    }
}

/// The keys of the mappings of one physical page in a context: nearly
/// always one (a page mapped in the direct map and in user space has two),
/// so the common case allocates nothing.
#[derive(Debug)]
enum Aliases {
    One(u64),
    Many(Vec<u64>),
}

impl Aliases {
    fn push(&mut self, k: u64) {
        match self {
            Aliases::One(a) => *self = Aliases::Many(vec![*a, k]),
            Aliases::Many(v) => v.push(k),
        }
    }

    /// Remove `k`; true if no key is left.
    fn remove(&mut self, k: u64) -> bool {
        match self {
            Aliases::One(a) => *a == k,
            Aliases::Many(v) => {
                v.retain(|&x| x != k);
                v.is_empty()
            }
        }
    }

    fn keys(&self) -> &[u64] {
        match self {
            Aliases::One(a) => std::slice::from_ref(a),
            Aliases::Many(v) => v,
        }
    }
}

/// The VMM's translation cache: (linear page | kind, physical page) per slot.
struct VmmTlb(Box<[std::cell::Cell<(u32, u32)>; VMM_TLB_ENTRIES]>);

impl Default for VmmTlb {
    fn default() -> Self {
        VmmTlb(Box::new(std::array::from_fn(|_| std::cell::Cell::new((VMM_TLB_EMPTY, 0)))))
    }
}

impl VmmTlb {
    fn clear(&self) {
        for e in self.0.iter() {
            e.set((VMM_TLB_EMPTY, 0));
        }
    }
}

/// Shadow mapping bookkeeping.
#[derive(Default)]
pub struct Shadow {
    regs: PagingRegs,
    /// Translations for the VMM's accesses: (linear page | user << 1 |
    /// write << 2, physical page). Only entries whose accessed (and, for
    /// writes, dirty) bits are already set are cached, so a hit changes
    /// nothing a walk would; flushed like the shadow mappings.
    vmm_tlb: VmmTlb,
    pub(super) contexts: Vec<Context>,
    /// Index of the context whose windows translated code uses.
    pub(super) cur: usize,
    clock: u64,
    /// The global mappings made in any context since the last full flush.
    /// A global TLB entry survives CR3 loads, so every context may map
    /// them: a new address space starts with the kernel (which Linux maps
    /// global in all of them) instead of faulting it in page by page.
    globals: FastMap<u64, Entry>,
    /// Keys in the order they were added to `globals` (a context maps the
    /// part after its `globals_seen` when it becomes current).
    global_log: Vec<u64>,
    /// Watched linear pages (data breakpoints, debugger watchpoints) and
    /// whether only writes are watched: never mapped (read-only if only
    /// writes are watched), so every access faults and is checked.
    watched: Vec<(u32, bool)>,
}

/// Result of handling a host fault in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowFault {
    /// The page is now mapped: resume the faulting instruction.
    Mapped,
    /// A true guest page fault with this error code (CR2 = the address).
    PageFault(u32),
    /// A write to a physical page that holds translated code.
    CodeWrite(u32),
    /// The linear address maps a physical address outside RAM.
    Hole(u32),
    /// The linear address maps a device: the access must be emulated.
    Mmio(u32),
    /// The linear page is watched (`set_watched_pages`): the access must be
    /// checked against the watchpoints.
    Watched,
}

fn key(win: u8, lin_page: u32) -> u64 {
    (win as u64) << 32 | lin_page as u64
}

fn host_addr(window: usize, k: u64) -> usize {
    let win = (k >> 32) as usize;
    window + win * USER_WINDOW_OFFSET + (k as u32) as usize
}

impl Shadow {
    pub fn enabled(&self) -> bool {
        self.regs.enabled()
    }

    pub fn regs(&self) -> PagingRegs {
        self.regs
    }

    /// Supervisor window of the current context.
    pub(super) fn window(&self) -> usize {
        self.contexts[self.cur].window
    }

    /// Change the write protection of every shadow alias of `phys`, in
    /// every context. A mapping of a read-only guest entry is read-only
    /// either way (`prot_of`) and needs no call (a user text page's).
    pub(super) fn protect_aliases(&mut self, phys: u32, on: bool) {
        for c in &self.contexts {
            let Some(aliases) = c.rmap.get(&phys) else { continue };
            for &k in aliases.keys() {
                let Some(e) = c.mapped.get(&k) else { continue };
                if !e.writable {
                    continue;
                }
                let addr = host_addr(c.window, k);
                let prot = if on { libc::PROT_READ } else { libc::PROT_READ | libc::PROT_WRITE };
                // SAFETY: `addr` is a page of a window reservation we own
                // that currently maps guest RAM.
                unsafe { libc::mprotect(addr as *mut libc::c_void, PAGE_SIZE, prot) };
            }
        }
    }
}

/// Did the guest entries a mapping was made from (`was`: PDE, PTE) change
/// to `now` only by losing RW or D in the page-table entry? The frame,
/// presence, U/S and the accessed bit (which the guest may clear to see new
/// accesses) are as before, and the directory entry is unchanged: a
/// read-only mapping still holds.
fn only_lost_write(was: (u32, u32), now: (u32, u32)) -> bool {
    use mmu::pte::{A, D, P, PS, RW};
    let ((was_pde, was_pte), (pde, pte)) = (was, now);
    pde == was_pde && was_pde & PS == 0 && pte & (P | A) == P | A && (pte ^ was_pte) & !(RW | D) == 0
}

/// Largest range `unmap_range` revokes with mprotect rather than replaces.
const MPROTECT_UNMAP_MAX: usize = 16 * PAGE_SIZE;

/// Make `len` bytes at `addr` inaccessible. A few pages (an INVLPG, a short
/// run) keep their mapping with PROT_NONE: a shadow page is usually a host
/// area of its own, and revoking its access costs about a third of
/// replacing it (1.5 against 4.3 µs measured here). A mapping made there
/// later replaces it. Larger ranges are replaced by one inaccessible
/// anonymous area, which merges the areas they held.
/// Returns true when the areas were kept (revoked, not replaced).
fn unmap_range(addr: usize, len: usize) -> bool {
    if len <= MPROTECT_UNMAP_MAX {
        revoke_range(addr, len);
        return true;
    }
    super::make_inaccessible(addr, len);
    false
}

/// Make `len` bytes at `addr` inaccessible, keeping their host areas.
fn revoke_range(addr: usize, len: usize) {
    // SAFETY: the range lies inside a window reservation owned by
    // GuestMemory; only its protection changes.
    unsafe { libc::mprotect(addr as *mut libc::c_void, len, libc::PROT_NONE) };
}

impl GuestMemory {
    #[inline]
    pub fn paging(&self) -> PagingRegs {
        self.shadow.regs
    }

    /// The guest changed CR0, CR3 or CR4: update the windows.
    /// `cr3_written`: a MOV to CR3 (even of the same value) flushes the
    /// non-global translations.
    pub fn set_paging(&mut self, new: PagingRegs, cr3_written: bool) {
        let old = self.shadow.regs;
        if old == new && !(cr3_written && new.enabled()) {
            return;
        }
        self.shadow.regs = new;
        self.shadow.vmm_tlb.clear();
        match (old.enabled(), new.enabled()) {
            (false, false) => {}
            (false, true) => {
                // The supervisor window stops being an identity map of RAM.
                unmap_range(self.window, WINDOW_SIZE);
                for c in &mut self.shadow.contexts {
                    c.clear();
                    c.cr3 = NO_CR3;
                }
                self.forget_globals();
                self.shadow.cur = 0;
                self.select_context(new.cr3);
            }
            (true, false) => {
                for ci in 0..self.shadow.contexts.len() {
                    self.flush_context(ci);
                    self.shadow.contexts[ci].cr3 = NO_CR3;
                }
                self.forget_globals();
                self.shadow.cur = 0;
                self.map_identity();
                self.unmap_mmio_identity();
            }
            (true, true) => {
                if old.cr0 != new.cr0 || old.cr4 != new.cr4 {
                    // Rights, page sizes or globalness changed: nothing cached holds.
                    for ci in 0..self.shadow.contexts.len() {
                        self.flush_context(ci);
                        self.shadow.contexts[ci].cr3 = NO_CR3;
                    }
                    self.forget_globals();
                }
                self.select_context(new.cr3);
            }
        }
    }

    /// Make the context of page directory `cr3` current (reusing the least
    /// recently used one if none shadows it yet) and revalidate it.
    fn select_context(&mut self, cr3: u32) {
        let pd = cr3 & !0xFFF;
        self.shadow.clock += 1;
        let found = self.shadow.contexts.iter().position(|c| c.cr3 == pd);
        let ci = match found {
            Some(ci) => {
                self.revalidate(ci);
                ci
            }
            None => {
                let sh = &mut self.shadow;
                let ci = match sh.contexts.iter().position(|c| c.cr3 == NO_CR3) {
                    Some(ci) => ci,
                    None if sh.contexts.len() < MAX_CONTEXTS => match super::reserve_window() {
                        Ok((res, window)) => {
                            sh.contexts.push(Context::new(window, Some(res)));
                            sh.contexts.len() - 1
                        }
                        Err(e) => {
                            log::warn!("no window for another address space ({e}); reusing one");
                            self.lru_context()
                        }
                    },
                    None => self.lru_context(),
                };
                self.recycle_context(ci);
                self.shadow.contexts[ci].cr3 = pd;
                ci
            }
        };
        let sh = &mut self.shadow;
        sh.contexts[ci].used = sh.clock;
        sh.cur = ci;
        self.map_new_globals(ci);
    }

    /// Forget the global mappings (a full TLB flush).
    fn forget_globals(&mut self) {
        self.shadow.globals.clear();
        self.shadow.global_log.clear();
        for c in &mut self.shadow.contexts {
            c.globals_seen = 0;
        }
    }

    /// A mapping was made in some context: if it is global, every context
    /// may use it from now on.
    fn note_global(&mut self, k: u64, e: Entry) {
        let sh = &mut self.shadow;
        if sh.globals.insert(k, e).is_none() {
            sh.global_log.push(k);
            if sh.global_log.len() > GLOBAL_LOG_SLACK * sh.globals.len().max(1024) {
                // Mostly keys INVLPG removed since: start over from the
                // live set (each context checks all of it once).
                sh.global_log = sh.globals.keys().copied().collect();
                for c in &mut sh.contexts {
                    c.globals_seen = 0;
                }
            }
        }
    }

    /// Map in context `ci` the global mappings made elsewhere since it last
    /// looked, as runs of contiguous pages.
    fn map_new_globals(&mut self, ci: usize) {
        let sh = &self.shadow;
        let c = &sh.contexts[ci];
        if c.globals_seen == sh.global_log.len() {
            return;
        }
        let todo: Vec<(u64, Entry)> = sh.global_log[c.globals_seen..]
            .iter()
            .filter(|k| !c.mapped.contains_key(k))
            .filter_map(|k| sh.globals.get(k).map(|e| (*k, *e)))
            .collect();
        self.shadow.contexts[ci].globals_seen = self.shadow.global_log.len();
        self.map_entries(ci, todo);
    }

    /// Map `todo` (RAM pages) in context `ci` in runs of consecutive linear
    /// and physical pages with the same protection, one host call per run
    /// (the kernel's direct map, a 4 MiB page, a seeded kernel). Global
    /// entries join the global set.
    ///
    /// Mappings are not populated (MAP_POPULATE): populating a page costs
    /// more than the host's own minor fault on its first touch (about 3.4
    /// against 1.8 µs measured here), and a prefetched page may never be
    /// touched.
    fn map_entries(&mut self, ci: usize, mut todo: Vec<(u64, Entry)>) {
        if !self.shadow.watched.is_empty() {
            // Watched pages: never mapped, or read-only when writes are watched.
            todo.retain_mut(|(k, e)| match self.watch_of(*k as u32) {
                None => true,
                Some(true) => {
                    e.writable = false;
                    true
                }
                Some(false) => false,
            });
        }
        todo.sort_unstable_by_key(|&(k, _)| k);
        todo.dedup_by_key(|&mut (k, _)| k);
        self.shadow.contexts[ci].mapped.reserve(todo.len());
        let mut i = 0;
        while i < todo.len() {
            let (k0, first) = todo[i];
            let prot = self.prot_of(&first);
            let mut j = i + 1;
            while j < todo.len() {
                let ((k, e), (pk, pe)) = (todo[j], todo[j - 1]);
                let joins = k == pk + PAGE_SIZE as u64
                    && k >> 32 == k0 >> 32
                    && e.phys == pe.phys + PAGE_SIZE as u32
                    && self.prot_of(&e) == prot;
                if !joins {
                    break;
                }
                j += 1;
            }
            self.mmap_run(ci, k0, first.phys, j - i, prot);
            for &(k, e) in &todo[i..j] {
                self.shadow.contexts[ci].insert(k, e);
                if e.global {
                    self.note_global(k, e);
                }
            }
            i = j;
        }
    }

    fn lru_context(&self) -> usize {
        let cs = &self.shadow.contexts;
        (0..cs.len()).min_by_key(|&i| cs[i].used).unwrap_or(0)
    }

    /// Drop the mappings of context `ci` whose guest entries changed since
    /// they were made (global ones are kept, as a CR3 load keeps them).
    /// An entry that only lost write permission or its dirty bit (fork
    /// write-protects the parent's pages for copy-on-write, then reloads
    /// CR3) keeps its mapping, made read-only: the next write faults and
    /// takes the normal path, and reads cost no fault and no new mapping.
    fn revalidate(&mut self, ci: usize) {
        let regs = self.shadow.regs;
        let ram = self.ram();
        let c = &self.shadow.contexts[ci];
        let mut stale = Vec::new();
        let mut read_only = Vec::new();
        // (The entries are read from `locals`, one table, not `mapped`.)
        for (&k, &was) in c.locals.iter() {
            let now = mmu::entries(ram, regs, k as u32);
            if now == was {
                continue;
            }
            if only_lost_write(was, now) {
                read_only.push((k, now));
            } else {
                stale.push(k);
            }
        }
        self.drop_mappings(ci, stale);
        let c = &mut self.shadow.contexts[ci];
        for (k, (pde, pte)) in read_only {
            let Some(e) = c.mapped.get_mut(&k) else { continue };
            if e.writable {
                // SAFETY: a page of a window reservation we own that maps
                // guest RAM; only its protection changes.
                unsafe { libc::mprotect(host_addr(c.window, k) as *mut libc::c_void, PAGE_SIZE, libc::PROT_READ) };
            }
            *e = Entry { writable: false, pde, pte, ..*e };
            c.locals.insert(k, (pde, pte));
        }
    }

    /// Unmap the pages `keys` of context `ci`.
    fn drop_mappings(&mut self, ci: usize, keys: Vec<u64>) {
        let c = &mut self.shadow.contexts[ci];
        if keys.len() > BULK_FLUSH_THRESHOLD && keys.len() * 2 > c.mapped.len() {
            let kept: Vec<(u64, Entry)> = {
                let gone: std::collections::HashSet<u64> = keys.into_iter().collect();
                c.mapped.iter().filter(|(k, _)| !gone.contains(k)).map(|(k, e)| (*k, *e)).collect()
            };
            let seen = c.globals_seen;
            self.revoke_windows(ci);
            // (A hole's all-ones page is not RAM: it faults in again.)
            let kept = kept.into_iter().filter(|(_, e)| self.is_ram(e.phys)).collect();
            self.map_entries(ci, kept);
            // Every global it had is among the kept ones.
            self.shadow.contexts[ci].globals_seen = seen;
            return;
        }
        self.unmap_keys(ci, keys);
    }

    /// Unmap the pages `keys` of context `ci` one by one: contiguous pages
    /// (an address space's teardown, a CR3 load after many PTEs changed)
    /// go out as one host call per run.
    fn unmap_keys(&mut self, ci: usize, keys: Vec<u64>) {
        let ram_size = self.ram_size;
        let c = &mut self.shadow.contexts[ci];
        let mut gone: Vec<(u64, u32)> = keys.into_iter().filter_map(|k| c.forget(k).map(|e| (k, e.phys))).collect();
        gone.sort_unstable();
        let mut i = 0;
        while i < gone.len() {
            let mut j = i + 1;
            while j < gone.len() && gone[j].0 == gone[j - 1].0 + PAGE_SIZE as u64 && gone[j].0 >> 32 == gone[i].0 >> 32
            {
                j += 1;
            }
            if unmap_range(host_addr(c.window, gone[i].0), (j - i) * PAGE_SIZE) {
                c.note_dormant(&gone[i..j], ram_size);
            }
            c.areas += 2;
            i = j;
        }
    }

    /// Revoke access to both windows of context `ci` and forget its
    /// mappings, keeping the host areas: its RAM pages become dormant.
    fn revoke_windows(&mut self, ci: usize) {
        let ram_size = self.ram_size;
        let c = &mut self.shadow.contexts[ci];
        if c.mapped.is_empty() {
            return;
        }
        revoke_range(c.window, WINDOW_SIZE);
        revoke_range(c.window + USER_WINDOW_OFFSET, WINDOW_SIZE);
        let gone: Vec<(u64, u32)> = c.mapped.iter().map(|(k, e)| (*k, e.phys)).collect();
        // Forgotten as by `clear`, but the areas (and what they map) stay.
        let (dormant, areas) = (std::mem::take(&mut c.dormant), c.areas);
        c.clear();
        (c.dormant, c.areas) = (dormant, areas + 2);
        c.note_dormant(&gone, ram_size);
    }

    /// Make both windows of context `ci` inaccessible and forget its mappings.
    fn clear_windows(&mut self, ci: usize) {
        let c = &mut self.shadow.contexts[ci];
        if c.mapped.is_empty() && c.dormant.is_empty() {
            return;
        }
        unmap_range(c.window, WINDOW_SIZE);
        unmap_range(c.window + USER_WINDOW_OFFSET, WINDOW_SIZE);
        c.clear();
    }

    /// Map RAM at the supervisor window again (paging turned off),
    /// restoring the code-page protections.
    fn map_identity(&mut self) {
        // SAFETY: remapping our own memfd over the RAM part of our window.
        unsafe {
            libc::mmap(
                self.window as *mut libc::c_void,
                self.ram_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.memfd,
                0,
            );
        }
        for idx in 0..self.protected.len() {
            if self.protected[idx] {
                // SAFETY: a RAM page of the window just mapped.
                unsafe {
                    libc::mprotect((self.window + idx * PAGE_SIZE) as *mut libc::c_void, PAGE_SIZE, libc::PROT_READ)
                };
            }
        }
    }

    /// Move the device at `from` to `to` (the local APIC's base MSR):
    /// the old range is what it would be without the device again, the new
    /// one reaches the device. Every shadow mapping goes (either page may
    /// be mapped as something else).
    pub fn move_mmio(&mut self, from: u32, to: u32) {
        let Some(k) = self.mmio.iter().position(|r| r.base == from) else { return };
        if from == to {
            return;
        }
        self.mmio[k].base = to;
        self.mmio_ranges[k].0 = to;
        self.note_mmio_ranges();
        self.shadow.vmm_tlb.clear();
        if self.shadow.enabled() {
            for ci in 0..self.shadow.contexts.len() {
                self.flush_context(ci);
                self.shadow.contexts[ci].cr3 = NO_CR3;
            }
            self.forget_globals();
            let cr3 = self.shadow.regs.cr3;
            self.select_context(cr3);
        } else {
            self.map_identity();
            self.unmap_mmio_identity();
        }
    }

    /// Drop every mapping of context `ci`.
    fn flush_context(&mut self, ci: usize) {
        self.clear_windows(ci);
    }

    /// Make context `ci` ready for another address space: drop its
    /// non-global mappings and keep the global ones (which hold in every
    /// address space, as in a TLB). The non-global part of each window
    /// below its lowest global page goes with one host call; Linux maps
    /// only the kernel global, at the top, so that is all of user space.
    fn recycle_context(&mut self, ci: usize) {
        let c = &mut self.shadow.contexts[ci];
        if c.locals.is_empty() {
            return;
        }
        if c.locals.len() == c.mapped.len() {
            self.clear_windows(ci);
            return;
        }
        let mut stragglers = Vec::new();
        let ram_size = self.ram_size;
        for win in 0..2u8 {
            // (A bound: a global dropped since may have been the lowest,
            // and then less is revoked at once and more page by page.)
            let below = c.lowest_global[win as usize];
            let base = c.window + win as usize * USER_WINDOW_OFFSET;
            let len = if below != NO_GLOBAL { below as usize } else { WINDOW_SIZE };
            let in_win = |k: u64| (k >> 32) as u8 == win;
            if len > 0 {
                // Revoked with their areas kept: the next address space
                // this context shadows likely maps much the same pages
                // (`Context::dormant`).
                revoke_range(base, len);
                let gone: Vec<(u64, u32)> = c
                    .locals
                    .keys()
                    .filter(|&&k| in_win(k) && (k as u32) < below)
                    .filter_map(|k| c.mapped.get(k).map(|e| (*k, e.phys)))
                    .collect();
                c.note_dormant(&gone, ram_size);
                for (k, _) in gone {
                    c.forget(k);
                }
                c.areas += 2;
            }
            stragglers.extend(c.locals.keys().copied().filter(|&k| in_win(k)));
        }
        // The locals among the globals, page by page (in runs). Only the
        // locals are forgotten, one by one: clearing the maps and entering
        // the globals again cost as much per recycle as the kernel's
        // direct map has pages (3% of the shell workload).
        self.unmap_keys(ci, stragglers);
    }

    /// Does a 4 MiB page map `lin` (with CR4.PSE)?
    pub fn large_page_at(&self, lin: u32) -> bool {
        let regs = self.shadow.regs;
        regs.cr4 & mmu::CR4_PSE != 0 && self.read_u32((regs.cr3 & !0xFFF) + ((lin >> 22) << 2)) & mmu::pte::PS != 0
    }

    /// INVLPG: drop the mappings of the page holding `lin` in both windows
    /// of every context (all 4 MiB of it when a large page maps it). Returns
    /// whether any mapping was dropped.
    pub fn invlpg(&mut self, lin: u32) -> bool {
        let large = self.large_page_at(lin);
        if large {
            self.shadow.vmm_tlb.clear();
        } else {
            self.tlb_drop_page(lin);
        }
        let page = lin & !(PAGE_SIZE as u32 - 1);
        if large {
            let base = lin & 0xFFC0_0000;
            self.shadow.globals.retain(|&k, _| (k as u32) & 0xFFC0_0000 != base);
        } else {
            for w in 0..2 {
                self.shadow.globals.remove(&key(w, page));
            }
        }
        // The current context's mappings of the page go, and every
        // context's global ones (a TLB holds global entries across CR3
        // loads). Another context's non-global mappings may stay: a CR3 load
        // revalidates them against the guest's entries before they are used
        // again, as a TLB would hold none of them. (Linux breaks a
        // copy-on-write in the child with an INVLPG; dropping the page in
        // all eight contexts cost ~8 `mprotect`s each time.)
        let cur = self.shadow.cur;
        let ram_size = self.ram_size;
        let mut any = false;
        for ci in 0..self.shadow.contexts.len() {
            let c = &mut self.shadow.contexts[ci];
            let goes = |c: &Context, k: u64| ci == cur || c.mapped.get(&k).is_some_and(|e| e.global);
            if large {
                let base = lin & 0xFFC0_0000;
                let keys: Vec<u64> =
                    c.mapped.keys().copied().filter(|&k| (k as u32) & 0xFFC0_0000 == base && goes(c, k)).collect();
                any |= !keys.is_empty();
                self.drop_mappings(ci, keys);
                continue;
            }
            // One page (the common case): no list to build.
            for w in 0..2 {
                let k = key(w, page);
                if goes(c, k)
                    && let Some(e) = c.forget(k)
                {
                    if unmap_range(host_addr(c.window, k), PAGE_SIZE) {
                        c.note_dormant(&[(k, e.phys)], ram_size);
                    }
                    c.areas += 2;
                    any = true;
                }
            }
        }
        any
    }

    /// Watch linear pages `pages` ((page, write-only) pairs) in place of
    /// the ones watched so far, which are returned. Both sets' mappings are
    /// dropped in every context; watched pages are mapped again only as
    /// `map_entries` allows.
    pub fn set_watched_pages(&mut self, pages: Vec<(u32, bool)>) -> Vec<(u32, bool)> {
        let old = std::mem::replace(&mut self.shadow.watched, pages);
        if self.shadow.enabled() {
            let all: Vec<u32> = old.iter().chain(&self.shadow.watched).map(|&(p, _)| p).collect();
            for p in all {
                self.invlpg(p);
            }
        }
        old
    }

    /// Is linear page `lin_page` watched, and only for writes?
    fn watch_of(&self, lin_page: u32) -> Option<bool> {
        let page = lin_page & !(PAGE_SIZE as u32 - 1);
        self.shadow.watched.iter().find(|&&(p, _)| p == page).map(|&(_, w)| w)
    }

    /// Map a read-only page of 0xFF bytes for a linear page that maps a hole.
    fn map_hole(&mut self, win: u8, lin_page: u32, e: Entry) {
        let c = &mut self.shadow.contexts[self.shadow.cur];
        let k = key(win, lin_page);
        super::map_ones_page(host_addr(c.window, k));
        c.dormant.remove(&k);
        c.insert(k, e);
        c.areas += 2;
    }

    /// The host protection of a mapping of `e`.
    fn prot_of(&self, e: &Entry) -> libc::c_int {
        if e.writable && !self.is_protected(e.phys) { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ }
    }

    /// The host half of mapping a run: `pages` pages of RAM from `phys` at
    /// key `k0` of context `ci`, with protection `prot`.
    fn mmap_run(&mut self, ci: usize, k0: u64, phys: u32, pages: usize, prot: libc::c_int) {
        let c = &mut self.shadow.contexts[ci];
        let page = |j: usize| (k0 + (j * PAGE_SIZE) as u64, phys + (j * PAGE_SIZE) as u32);
        if (0..pages).all(|j| {
            let (k, p) = page(j);
            c.dormant.get(&k) == Some(&p)
        }) {
            // SAFETY: the run's host areas map exactly these RAM pages
            // (`Context::dormant`); only their protection changes.
            unsafe { libc::mprotect(host_addr(c.window, k0) as *mut libc::c_void, pages * PAGE_SIZE, prot) };
            for j in 0..pages {
                c.dormant.remove(&page(j).0);
            }
            c.areas += 2;
            return;
        }
        for j in 0..pages {
            c.dormant.remove(&page(j).0);
        }
        // SAFETY: maps consecutive pages of our memfd at consecutive pages
        // of our own window (a run never crosses the window's end: its keys
        // are consecutive pages of one window).
        unsafe {
            libc::mmap(
                host_addr(c.window, k0) as *mut libc::c_void,
                pages * PAGE_SIZE,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.memfd,
                phys as libc::off_t,
            );
        }
        c.areas += 2;
    }

    /// Keep the number of host memory areas bounded: drop the inactive
    /// contexts' shadows first, then the current one's.
    fn limit_mappings(&mut self) {
        let total: usize = self.shadow.contexts.iter().map(|c| c.areas).sum();
        if total < self.area_budget {
            return;
        }
        let cur = self.shadow.cur;
        for ci in 0..self.shadow.contexts.len() {
            if ci != cur {
                self.flush_context(ci);
            }
        }
        if self.shadow.contexts[cur].areas >= self.area_budget / 2 {
            self.flush_context(cur);
        }
    }

    /// Handle a host fault at linear `lin` of window `win` (1 = user) of
    /// the current context.
    pub fn shadow_fault(&mut self, win: u8, lin: u32, write: bool) -> ShadowFault {
        let regs = self.shadow.regs;
        let access = Access { write, user: win == 1 };
        let t = match mmu::walk(self.ram_mut(), regs, lin, access) {
            Ok(t) => t,
            Err(code) => return ShadowFault::PageFault(code),
        };
        let lin_page = lin & !(PAGE_SIZE as u32 - 1);
        let (pde, pte) = mmu::entries(self.ram(), regs, lin);
        self.limit_mappings();
        let cur = self.shadow.cur;
        if self.is_mmio(t.phys_page) {
            return ShadowFault::Mmio(t.phys_page);
        }
        if !self.is_ram(t.phys_page) {
            if !write {
                // Reads of a hole see all ones: an anonymous read-only page.
                let e = Entry { phys: t.phys_page, writable: false, global: t.global, pde, pte };
                self.map_hole(win, lin_page, e);
                return ShadowFault::Mapped;
            }
            return ShadowFault::Hole(t.phys_page);
        }
        if let Some(write_only) = self.watch_of(lin_page)
            && (write || !write_only)
        {
            return ShadowFault::Watched;
        }
        if write && self.is_protected(t.phys_page) {
            return ShadowFault::CodeWrite(t.phys_page);
        }
        let e = Entry { phys: t.phys_page, writable: t.writable && t.dirty, global: t.global, pde, pte };
        self.map_entries(cur, vec![(key(win, lin_page), e)]);
        self.prefetch_neighbours(win, lin_page);
        ShadowFault::Mapped
    }

    /// Map the pages of `lin_page`'s group that the guest has already
    /// accessed, so a working set refaults once per group, not per page.
    /// Only entries whose A bit is set are mapped (and writable only with D
    /// set), so no accessed/dirty bit the guest would see set by hardware is
    /// missed.
    fn prefetch_neighbours(&mut self, win: u8, lin_page: u32) {
        let regs = self.shadow.regs;
        let cur = self.shadow.cur;
        let access = Access { write: false, user: win == 1 };
        let group = lin_page & !((PREFETCH_GROUP * PAGE_SIZE as u32) - 1);
        let mut todo = Vec::new();
        for k in 0..PREFETCH_GROUP {
            let p = group + k * PAGE_SIZE as u32;
            if p == lin_page || self.shadow.contexts[cur].mapped.contains_key(&key(win, p)) {
                continue;
            }
            match mmu::lookup(self.ram(), regs, p, access) {
                // Any A/D update needed means the guest has not touched it: skip.
                Ok((t, updates)) if !updates.iter().any(|u| u.is_some()) && self.is_ram(t.phys_page) => {
                    let (pde, pte) = mmu::entries(self.ram(), regs, p);
                    let e = Entry { phys: t.phys_page, writable: t.writable && t.dirty, global: t.global, pde, pte };
                    todo.push((key(win, p), e));
                }
                _ => {}
            }
        }
        self.map_entries(cur, todo);
    }

    /// The guest returned from a page-fault handler: if the faulting page is
    /// now mapped, map it before the instruction retries (saves a host fault).
    pub fn prefetch_after_fault(&mut self, win: u8, lin: u32, write: bool) {
        let cur = self.shadow.cur;
        if self.shadow.enabled()
            && !self.shadow.contexts[cur].mapped.contains_key(&key(win, lin & !(PAGE_SIZE as u32 - 1)))
        {
            let access = Access { write, user: win == 1 };
            if let Ok((t, _)) = mmu::lookup(self.ram(), self.shadow.regs, lin, access)
                && self.is_ram(t.phys_page)
                && !(write && self.is_protected(t.phys_page))
            {
                let _ = self.shadow_fault(win, lin, write);
            }
        }
    }

    /// Translate a linear address for the VMM's own accesses (identity with
    /// paging off). Errors are page-fault error codes.
    #[inline]
    pub fn translate(&mut self, lin: u32, write: bool, user: bool) -> Result<u32, u32> {
        let regs = self.shadow.regs;
        if !regs.enabled() {
            return Ok(lin);
        }
        if let Some(p) = self.tlb_get(lin, write, user) {
            return Ok(p);
        }
        let t = mmu::walk(self.ram_mut(), regs, lin, Access { write, user })?;
        self.tlb_put(lin, write, user, t.phys_page);
        Ok(t.phys_page | (lin & (PAGE_SIZE as u32 - 1)))
    }

    /// `translate` for reads through a shared reference (the interpreter's
    /// loads). The walk sets accessed bits as hardware does.
    #[inline]
    pub fn translate_read(&self, lin: u32, user: bool) -> Result<u32, u32> {
        let regs = self.shadow.regs;
        if !regs.enabled() {
            return Ok(lin);
        }
        if let Some(p) = self.tlb_get(lin, false, user) {
            return Ok(p);
        }
        let (t, updates) = mmu::lookup(self.ram(), regs, lin, Access { write: false, user })?;
        for (addr, v) in updates.into_iter().flatten() {
            self.write_u32_shared(addr, v);
        }
        self.tlb_put(lin, false, user, t.phys_page);
        Ok(t.phys_page | (lin & (PAGE_SIZE as u32 - 1)))
    }

    /// Does a global mapping (CR4.PGE and the G bit) translate `lin_page`
    /// now? Such a translation survives CR3 loads, as in a TLB.
    pub fn maps_global(&self, lin_page: u32, user: bool) -> bool {
        matches!(mmu::lookup(self.ram(), self.shadow.regs, lin_page, Access { write: false, user }),
            Ok((t, _)) if t.global)
    }

    /// Would a fetch from linear page `lin_page` still read physical page
    /// `phys`, without setting an accessed bit? (Revalidates what translated
    /// code assumes after a CR3 load.)
    pub fn still_maps(&self, lin_page: u32, user: bool, phys: u32) -> bool {
        self.still_allows(lin_page, false, user, phys)
    }

    /// Would a walk for this access of `lin_page` now reach `phys` without
    /// setting an accessed or dirty bit (so a TLB entry made now would be
    /// the one made earlier)?
    pub fn still_allows(&self, lin_page: u32, write: bool, user: bool, phys: u32) -> bool {
        matches!(mmu::lookup(self.ram(), self.shadow.regs, lin_page, Access { write, user }),
            Ok((t, [None, None])) if t.phys_page == phys)
    }

    #[inline]
    fn tlb_key(lin: u32, write: bool, user: bool) -> (usize, u32) {
        let page = lin & !(PAGE_SIZE as u32 - 1);
        let kind = u32::from(user) | (u32::from(write) << 1);
        // Four slots per page number (one per kind), so neither the kinds
        // of one page nor neighbouring pages evict each other.
        ((((page >> 12) << 2) | kind) as usize % VMM_TLB_ENTRIES, page | (kind << 1))
    }

    #[inline]
    fn tlb_get(&self, lin: u32, write: bool, user: bool) -> Option<u32> {
        let (slot, key) = Self::tlb_key(lin, write, user);
        let (k, p) = self.shadow.vmm_tlb.0[slot].get();
        (k == key).then_some(p | (lin & (PAGE_SIZE as u32 - 1)))
    }

    /// Drop the VMM TLB entries of the page holding `lin`.
    fn tlb_drop_page(&self, lin: u32) {
        for (write, user) in [(false, false), (false, true), (true, false), (true, true)] {
            let (slot, key) = Self::tlb_key(lin, write, user);
            let e = &self.shadow.vmm_tlb.0[slot];
            if e.get().0 == key {
                e.set((VMM_TLB_EMPTY, 0));
            }
        }
    }

    #[inline]
    fn tlb_put(&self, lin: u32, write: bool, user: bool, phys_page: u32) {
        let (slot, key) = Self::tlb_key(lin, write, user);
        self.shadow.vmm_tlb.0[slot].set((key, phys_page));
    }
}

/// Release the reservations of the extra contexts.
pub(super) fn release(sh: &mut Shadow) {
    for c in sh.contexts.drain(..) {
        if let Some(res) = c.own {
            // SAFETY: `res` is a reservation made by reserve_window and
            // owned by this context alone.
            unsafe { libc::munmap(res as *mut libc::c_void, super::RESERVE_SIZE) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::mmu::{CR0_PG, pte};

    const PD_A: u32 = 0x1000;
    const PD_B: u32 = 0x2000;
    const PT: u32 = 0x3000;
    const LIN: u32 = 0x5000;

    fn regs(cr3: u32) -> PagingRegs {
        PagingRegs { cr0: CR0_PG | 1, cr3, cr4: 0 }
    }

    fn set(m: &mut GuestMemory, addr: u32, v: u32) {
        m.write(addr, &v.to_le_bytes());
    }

    fn mapped(m: &GuestMemory, win: u8, lin: u32) -> bool {
        m.shadow.contexts[m.shadow.cur].mapped.contains_key(&key(win, lin))
    }

    /// Both directories share the page table mapping LIN -> 0x9000.
    fn setup() -> GuestMemory {
        let mut m = GuestMemory::new(1 << 20).expect("memory");
        for pd in [PD_A, PD_B] {
            set(&mut m, pd, PT | pte::P | pte::RW | pte::US);
        }
        set(&mut m, PT + 4 * (LIN >> 12), 0x9000 | pte::P | pte::RW);
        set(&mut m, 0x9000, 0xC0FF_EE00);
        m
    }

    #[test]
    fn contexts_survive_switches_and_revalidate() {
        let mut m = setup();
        m.set_paging(regs(PD_A), true);
        let wa = m.window_for(0);
        assert_eq!(m.shadow_fault(0, LIN + 4, false), ShadowFault::Mapped);
        // SAFETY: the fault just mapped this page of the window read-only.
        assert_eq!(unsafe { std::ptr::read_volatile((wa + LIN as usize) as *const u32) }, 0xC0FF_EE00);
        assert_eq!(m.read_u32(PT + 4 * (LIN >> 12)) & (pte::A | pte::D), pte::A, "A set by the walk");

        m.set_paging(regs(PD_B), true);
        assert_ne!(m.window_for(0), wa, "another address space, other windows");
        assert!(!mapped(&m, 0, LIN));
        m.set_paging(regs(PD_A), true);
        assert_eq!(m.window_for(0), wa);
        assert!(mapped(&m, 0, LIN), "unchanged entries keep their mapping");

        // The PTE changes while B runs; loading A's CR3 drops the mapping.
        m.set_paging(regs(PD_B), true);
        set(&mut m, PT + 4 * (LIN >> 12), 0xA000 | pte::P | pte::RW | pte::A);
        m.set_paging(regs(PD_A), true);
        assert!(!mapped(&m, 0, LIN));
        // So does clearing the accessed bit (the next access must set it).
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        set(&mut m, PT + 4 * (LIN >> 12), 0xA000 | pte::P | pte::RW);
        m.set_paging(regs(PD_A), true);
        assert!(!mapped(&m, 0, LIN), "a reload of the same CR3 revalidates too");

        // INVLPG drops the current context's mapping; another context's
        // non-global one stays while its entries do (a CR3 load checks them).
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        m.set_paging(regs(PD_B), true);
        m.invlpg(LIN);
        m.set_paging(regs(PD_A), true);
        assert!(mapped(&m, 0, LIN), "unchanged entries in A");
        m.invlpg(LIN);
        assert!(!mapped(&m, 0, LIN));
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        m.set_paging(regs(PD_B), true);
        set(&mut m, PT + 4 * (LIN >> 12), 0xB000 | pte::P | pte::RW | pte::A);
        m.invlpg(LIN);
        m.set_paging(regs(PD_A), true);
        assert!(!mapped(&m, 0, LIN), "A's entry changed: dropped at the CR3 load");
    }

    #[test]
    fn global_mappings_reach_every_address_space_until_invlpg() {
        let mut m = setup();
        // CR4.PGE on, and LIN global in A's (shared) page table.
        let regs_g = |cr3| PagingRegs { cr4: mmu::CR4_PGE, ..regs(cr3) };
        set(&mut m, PT + 4 * (LIN >> 12), 0x9000 | pte::P | pte::RW | pte::G);
        m.set_paging(regs_g(PD_A), true);
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        // B has never run: it starts with the global mapping, as a TLB
        // keeps global entries over a CR3 load.
        m.set_paging(regs_g(PD_B), true);
        assert!(mapped(&m, 0, LIN));
        // INVLPG drops it everywhere; a new address space no longer gets it.
        m.invlpg(LIN);
        let pd_c = 0x20000;
        set(&mut m, pd_c, PT | pte::P | pte::RW | pte::US);
        m.set_paging(regs_g(pd_c), true);
        assert!(!mapped(&m, 0, LIN));
        // A change of CR4 forgets globals too.
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        m.set_paging(regs(pd_c), false);
        m.set_paging(regs_g(PD_A), true);
        assert!(!mapped(&m, 0, LIN));
    }

    #[test]
    fn a_recycled_context_keeps_globals_and_drops_the_rest() {
        let mut m = setup();
        let regs_g = |cr3| PagingRegs { cr4: mmu::CR4_PGE, ..regs(cr3) };
        // LIN is global; LIN + 4 KiB (same table) is not.
        set(&mut m, PT + 4 * (LIN >> 12), 0x9000 | pte::P | pte::RW | pte::G);
        set(&mut m, PT + 4 * ((LIN >> 12) + 1), 0xA000 | pte::P | pte::RW);
        m.set_paging(regs_g(PD_A), true);
        let wa = m.window_for(0);
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        assert_eq!(m.shadow_fault(0, LIN + 0x1000, false), ShadowFault::Mapped);
        // Enough other address spaces that A's context is recycled.
        for k in 0..MAX_CONTEXTS as u32 {
            let pd = 0x20000 + k * 0x1000;
            set(&mut m, pd, PT | pte::P | pte::RW | pte::US);
            m.set_paging(regs_g(pd), true);
        }
        let again = (0..m.shadow.contexts.len()).find(|&ci| m.shadow.contexts[ci].window == wa).expect("context");
        assert_eq!(m.shadow.cur, again, "the least recently used context (A's) was reused");
        assert!(mapped(&m, 0, LIN), "the global mapping stays");
        assert!(!mapped(&m, 0, LIN + 0x1000), "the other one is gone");
        // SAFETY: the global page is mapped read-only in this window.
        assert_eq!(unsafe { std::ptr::read_volatile((wa + LIN as usize) as *const u32) }, 0xC0FF_EE00);
    }

    /// A mapping dropped at a CR3 load stays dormant: mapped again only if
    /// the same RAM page comes back at the same key, and reading through the
    /// window always shows the page the guest tables name now.
    #[test]
    fn dropped_mappings_wake_only_for_the_same_page() {
        let mut m = setup();
        set(&mut m, 0xA000, 0x0A0A_0A0A);
        let pte_at = PT + 4 * (LIN >> 12);
        let read = |m: &GuestMemory| {
            // SAFETY: called right after a fault mapped LIN in window 0.
            unsafe { std::ptr::read_volatile((m.window_for(0) + LIN as usize) as *const u32) }
        };
        let dormant = |m: &GuestMemory| m.shadow.contexts[m.shadow.cur].dormant.get(&key(0, LIN)).copied();
        m.set_paging(regs(PD_A), true);
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        assert_eq!(read(&m), 0xC0FF_EE00);
        // Another page at LIN: the old mapping goes dormant, the new one replaces it.
        set(&mut m, pte_at, 0xA000 | pte::P | pte::RW | pte::A);
        m.set_paging(regs(PD_A), true);
        assert!(!mapped(&m, 0, LIN));
        assert_eq!(dormant(&m), Some(0x9000));
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        assert_eq!(dormant(&m), None, "replaced by a mapping of another page");
        assert_eq!(read(&m), 0x0A0A_0A0A);
        // The first page again: dropped, then woken from its dormant area.
        set(&mut m, pte_at, 0x9000 | pte::P | pte::RW | pte::A);
        m.set_paging(regs(PD_A), true);
        assert_eq!(dormant(&m), Some(0xA000));
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        assert_eq!(read(&m), 0xC0FF_EE00);
        set(&mut m, pte_at, 0xA000 | pte::P | pte::RW | pte::A);
        m.set_paging(regs(PD_A), true);
        set(&mut m, pte_at, 0x9000 | pte::P | pte::RW | pte::A);
        m.set_paging(regs(PD_A), true);
        assert_eq!(m.shadow_fault(0, LIN, false), ShadowFault::Mapped);
        assert_eq!(dormant(&m), None, "woken");
        assert_eq!(read(&m), 0xC0FF_EE00);
        // A change of paging mode destroys the areas: nothing stays dormant.
        set(&mut m, pte_at, 0xA000 | pte::P | pte::RW | pte::A);
        m.set_paging(regs(PD_A), true);
        m.set_paging(PagingRegs { cr0: 1, cr3: PD_A, cr4: 0 }, false);
        assert!(m.shadow.contexts.iter().all(|c| c.dormant.is_empty()));
    }

    #[test]
    fn vmm_tlb_kinds_and_neighbours_do_not_collide() {
        let mut m = setup();
        set(&mut m, PT + 4 * 4, 0xA000 | pte::P | pte::RW);
        m.set_paging(regs(PD_A), true);
        // A read of one page and a write of the page below it (an IDT page
        // and a stack page, say) both stay cached.
        assert_eq!(m.translate(0x5010, false, false), Ok(0x9010));
        assert_eq!(m.translate(0x4020, true, false), Ok(0xA020));
        assert_eq!(m.tlb_get(0x5000, false, false), Some(0x9000));
        assert_eq!(m.tlb_get(0x4000, true, false), Some(0xA000));
        assert_eq!(m.tlb_get(0x4000, false, false), None, "a write entry is not a read entry");
        // INVLPG drops only its page.
        m.invlpg(0x4000);
        assert_eq!(m.tlb_get(0x4000, true, false), None);
        assert_eq!(m.tlb_get(0x5000, false, false), Some(0x9000));
    }

    #[test]
    fn many_address_spaces_recycle_contexts() {
        let mut m = setup();
        for k in 0..(MAX_CONTEXTS as u32 + 3) {
            let pd = 0x20000 + k * 0x1000;
            set(&mut m, pd, PT | pte::P | pte::RW | pte::US);
            m.set_paging(regs(pd), true);
            assert_eq!(m.shadow_fault(0, LIN, true), ShadowFault::Mapped);
            assert!(mapped(&m, 0, LIN));
        }
        assert_eq!(m.shadow.contexts.len(), MAX_CONTEXTS);
        // Paging off: one identity window again, no shadow left.
        m.set_paging(PagingRegs { cr0: 1, cr3: 0, cr4: 0 }, false);
        assert_eq!(m.window_for(0), m.window_base());
        assert!(m.shadow.contexts.iter().all(|c| c.mapped.is_empty()));
    }
}
