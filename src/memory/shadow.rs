//! Shadow paging through the host MMU.
//!
//! With guest paging on, the two windows are shadows of the guest's page
//! tables: the supervisor window (CPL 0-2) and the user window (CPL 3, only
//! user pages), built lazily. A host fault in translated code calls
//! `GuestMemory::shadow_fault`, which walks the guest tables (setting A/D
//! bits) and either maps the physical page at the faulting linear page —
//! read-only until the guest's dirty bit is set, or while the physical page
//! holds translated code — or reports the guest page fault. CR3 writes and
//! INVLPG drop shadow mappings as a TLB flush would (global pages survive a
//! CR3 reload with CR4.PGE).

use std::collections::HashMap;

use super::mmu::{self, Access, PagingRegs};
use super::{GuestMemory, PAGE_SIZE, USER_WINDOW_OFFSET, WINDOW_SIZE};

/// Above this many mappings a flush remaps whole windows instead of pages.
const BULK_FLUSH_THRESHOLD: usize = 16;
/// Pages around a hidden fault that are mapped along with it when the guest
/// has already marked them accessed (their A bit, and D for writable
/// mappings, would not change): one aligned group of page-table entries.
const PREFETCH_GROUP: u32 = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    phys: u32,
    writable: bool,
    global: bool,
}

/// Entries of the VMM's own translation cache (a TLB for `translate`).
const VMM_TLB_ENTRIES: usize = 256;
/// An empty VMM TLB entry (no linear page has the low bits set).
const VMM_TLB_EMPTY: u32 = 1;

/// Shadow mapping bookkeeping.
#[derive(Default)]
pub struct Shadow {
    regs: PagingRegs,
    /// Translations for the VMM's accesses: (linear page | user << 1 |
    /// write << 2, physical page). Only entries whose accessed (and, for
    /// writes, dirty) bits are already set are cached, so a hit changes
    /// nothing a walk would; flushed like the shadow mappings.
    vmm_tlb: std::cell::RefCell<Vec<(u32, u32)>>,
    /// (window << 32 | linear page) -> mapping.
    mapped: HashMap<u64, Entry>,
    /// Physical page -> keys of `mapped` that map it.
    rmap: HashMap<u32, Vec<u64>>,
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
}

fn key(win: u8, lin_page: u32) -> u64 {
    (win as u64) << 32 | lin_page as u64
}

impl Shadow {
    pub fn enabled(&self) -> bool {
        self.regs.enabled()
    }

    pub fn regs(&self) -> PagingRegs {
        self.regs
    }

    /// Change the write protection of every shadow alias of `phys`.
    pub(super) fn protect_aliases(&mut self, window: usize, phys: u32, on: bool) {
        let Some(keys) = self.rmap.get(&phys) else { return };
        for &k in keys {
            let Some(e) = self.mapped.get(&k) else { continue };
            let addr = host_addr(window, k);
            let prot = if on || !e.writable { libc::PROT_READ } else { libc::PROT_READ | libc::PROT_WRITE };
            // SAFETY: `addr` is a page of our own window reservation that
            // currently maps guest RAM.
            unsafe { libc::mprotect(addr as *mut libc::c_void, PAGE_SIZE, prot) };
        }
    }
}

fn host_addr(window: usize, k: u64) -> usize {
    let win = (k >> 32) as usize;
    window + win * USER_WINDOW_OFFSET + (k as u32) as usize
}

/// Replace `len` bytes at `addr` with inaccessible memory.
fn unmap_range(addr: usize, len: usize) {
    // SAFETY: the range lies inside the window reservation owned by
    // GuestMemory; mapping PROT_NONE there touches nothing else.
    unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        );
    }
}

impl GuestMemory {
    pub fn paging(&self) -> PagingRegs {
        self.shadow.regs
    }

    /// The guest changed CR0, CR3 or CR4: update the windows.
    /// `cr3_written`: a MOV to CR3 (even of the same value) flushes the
    /// non-global translations.
    pub fn set_paging(&mut self, new: PagingRegs, cr3_written: bool) {
        let old = self.shadow.regs;
        if old == new {
            if cr3_written && new.enabled() {
                self.flush_shadow(new.cr4 & mmu::CR4_PGE != 0);
            }
            return;
        }
        self.shadow.regs = new;
        self.shadow.vmm_tlb.borrow_mut().clear();
        match (old.enabled(), new.enabled()) {
            (false, false) => {}
            (false, true) => {
                // The supervisor window stops being an identity map of RAM.
                unmap_range(self.window, WINDOW_SIZE);
                self.shadow.mapped.clear();
                self.shadow.rmap.clear();
            }
            (true, false) => {
                self.flush_shadow(false);
                self.map_identity();
            }
            (true, true) => {
                let only_cr3 = old.cr0 == new.cr0 && old.cr4 == new.cr4;
                let keep_global = only_cr3 && new.cr4 & mmu::CR4_PGE != 0;
                self.flush_shadow(keep_global);
            }
        }
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

    /// Drop shadow mappings (all, or all but global ones).
    pub fn flush_shadow(&mut self, keep_global: bool) {
        self.shadow.vmm_tlb.borrow_mut().clear();
        let sh = &mut self.shadow;
        if !keep_global || sh.mapped.len() > BULK_FLUSH_THRESHOLD {
            let kept: Vec<(u64, Entry)> = if keep_global {
                sh.mapped.iter().filter(|(_, e)| e.global).map(|(k, e)| (*k, *e)).collect()
            } else {
                Vec::new()
            };
            unmap_range(self.window, WINDOW_SIZE);
            unmap_range(self.window + USER_WINDOW_OFFSET, WINDOW_SIZE);
            sh.mapped.clear();
            sh.rmap.clear();
            for (k, e) in kept {
                self.map_page((k >> 32) as u8, k as u32, e);
            }
        } else {
            let drop: Vec<u64> = sh.mapped.iter().filter(|(_, e)| !e.global).map(|(k, _)| *k).collect();
            for k in drop {
                self.unmap_page(k);
            }
        }
    }

    /// INVLPG: drop the mappings of the page holding `lin` in both windows
    /// (all 4 MiB of it when a large page maps it).
    pub fn invlpg(&mut self, lin: u32) {
        self.shadow.vmm_tlb.borrow_mut().clear();
        let regs = self.shadow.regs;
        let pde = self.read_u32((regs.cr3 & !0xFFF) + ((lin >> 22) << 2));
        if regs.cr4 & mmu::CR4_PSE != 0 && pde & mmu::pte::PS != 0 {
            let base = lin & 0xFFC0_0000;
            let keys: Vec<u64> =
                self.shadow.mapped.keys().copied().filter(|&k| (k as u32) & 0xFFC0_0000 == base).collect();
            for k in keys {
                self.unmap_page(k);
            }
            return;
        }
        let page = lin & !(PAGE_SIZE as u32 - 1);
        for win in 0..2 {
            self.unmap_page(key(win, page));
        }
    }

    fn unmap_page(&mut self, k: u64) {
        if let Some(e) = self.shadow.mapped.remove(&k) {
            if let Some(v) = self.shadow.rmap.get_mut(&e.phys) {
                v.retain(|&x| x != k);
            }
            unmap_range(host_addr(self.window, k), PAGE_SIZE);
        }
    }

    /// Map a read-only page of 0xFF bytes for a linear page that maps a hole.
    fn map_hole(&mut self, win: u8, lin_page: u32, phys: u32) {
        let k = key(win, lin_page);
        super::map_ones_page(host_addr(self.window, k));
        self.shadow.mapped.insert(k, Entry { phys, writable: false, global: false });
    }

    fn map_page(&mut self, win: u8, lin_page: u32, e: Entry) {
        let k = key(win, lin_page);
        let prot =
            if e.writable && !self.is_protected(e.phys) { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: maps one page of our memfd at a page of our own window.
        unsafe {
            libc::mmap(
                host_addr(self.window, k) as *mut libc::c_void,
                PAGE_SIZE,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.memfd,
                e.phys as libc::off_t,
            );
        }
        if let Some(old) = self.shadow.mapped.insert(k, e) {
            if let Some(v) = self.shadow.rmap.get_mut(&old.phys) {
                v.retain(|&x| x != k);
            }
        }
        self.shadow.rmap.entry(e.phys).or_default().push(k);
    }

    /// Handle a host fault at linear `lin` of window `win` (1 = user).
    pub fn shadow_fault(&mut self, win: u8, lin: u32, write: bool) -> ShadowFault {
        let regs = self.shadow.regs;
        let access = Access { write, user: win == 1 };
        let t = match mmu::walk(self.ram_mut(), regs, lin, access) {
            Ok(t) => t,
            Err(code) => return ShadowFault::PageFault(code),
        };
        if !self.is_ram(t.phys_page) {
            if !write {
                // Reads of a hole see all ones: an anonymous read-only page.
                self.map_hole(win, lin & !(PAGE_SIZE as u32 - 1), t.phys_page);
                return ShadowFault::Mapped;
            }
            return ShadowFault::Hole(t.phys_page);
        }
        if write && self.is_protected(t.phys_page) {
            return ShadowFault::CodeWrite(t.phys_page);
        }
        let lin_page = lin & !(PAGE_SIZE as u32 - 1);
        let e = Entry { phys: t.phys_page, writable: t.writable && t.dirty, global: t.global };
        self.map_page(win, lin_page, e);
        self.prefetch_neighbours(win, lin_page);
        ShadowFault::Mapped
    }

    /// Map the pages of `lin_page`'s group that the guest has already
    /// accessed, so a working set refaults once per group, not per page,
    /// after a CR3 switch. Only entries whose A bit is set are mapped (and
    /// writable only with D set), so no accessed/dirty bit the guest would
    /// see set by hardware is missed.
    fn prefetch_neighbours(&mut self, win: u8, lin_page: u32) {
        let regs = self.shadow.regs;
        let access = Access { write: false, user: win == 1 };
        let group = lin_page & !((PREFETCH_GROUP * PAGE_SIZE as u32) - 1);
        for k in 0..PREFETCH_GROUP {
            let p = group + k * PAGE_SIZE as u32;
            if p == lin_page || self.shadow.mapped.contains_key(&key(win, p)) {
                continue;
            }
            let Ok((t, updates)) = mmu::lookup(self.ram(), regs, p, access) else { continue };
            // Any A/D update needed means the guest has not touched it: skip.
            if updates.iter().any(|u| u.is_some()) || !self.is_ram(t.phys_page) {
                continue;
            }
            let e = Entry { phys: t.phys_page, writable: t.writable && t.dirty, global: t.global };
            self.map_page(win, p, e);
        }
    }

    /// The guest returned from a page-fault handler: if the faulting page is
    /// now mapped, map it before the instruction retries (saves a host fault).
    pub fn prefetch_after_fault(&mut self, win: u8, lin: u32, write: bool) {
        if self.shadow.enabled() && !self.shadow.mapped.contains_key(&key(win, lin & !(PAGE_SIZE as u32 - 1))) {
            let access = Access { write, user: win == 1 };
            if let Ok((t, _)) = mmu::lookup(self.ram(), self.shadow.regs, lin, access) {
                if self.is_ram(t.phys_page) && !(write && self.is_protected(t.phys_page)) {
                    let _ = self.shadow_fault(win, lin, write);
                }
            }
        }
    }

    /// Translate a linear address for the VMM's own accesses (identity with
    /// paging off). Errors are page-fault error codes.
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

    /// `translate` for reads without changing guest memory: an access whose
    /// accessed bits are not set yet is translated but not cached.
    pub fn translate_read(&self, lin: u32, user: bool) -> Result<u32, u32> {
        let regs = self.shadow.regs;
        if !regs.enabled() {
            return Ok(lin);
        }
        if let Some(p) = self.tlb_get(lin, false, user) {
            return Ok(p);
        }
        let (t, updates) = mmu::lookup(self.ram(), regs, lin, Access { write: false, user })?;
        if updates.iter().all(|u| u.is_none()) {
            self.tlb_put(lin, false, user, t.phys_page);
        }
        Ok(t.phys_page | (lin & (PAGE_SIZE as u32 - 1)))
    }

    fn tlb_key(lin: u32, write: bool, user: bool) -> (usize, u32) {
        let page = lin & !(PAGE_SIZE as u32 - 1);
        let kind = (u32::from(user) << 1) | (u32::from(write) << 2);
        // Read and write entries of one page live in different slots.
        (((page >> 10) | kind) as usize % VMM_TLB_ENTRIES, page | kind)
    }

    fn tlb_get(&self, lin: u32, write: bool, user: bool) -> Option<u32> {
        let (slot, key) = Self::tlb_key(lin, write, user);
        let tlb = self.shadow.vmm_tlb.borrow();
        let &(k, p) = tlb.get(slot)?;
        (k == key).then_some(p | (lin & (PAGE_SIZE as u32 - 1)))
    }

    fn tlb_put(&self, lin: u32, write: bool, user: bool, phys_page: u32) {
        let (slot, key) = Self::tlb_key(lin, write, user);
        let mut tlb = self.shadow.vmm_tlb.borrow_mut();
        if tlb.is_empty() {
            tlb.resize(VMM_TLB_ENTRIES, (VMM_TLB_EMPTY, 0));
        }
        tlb[slot] = (key, phys_page);
    }
}
