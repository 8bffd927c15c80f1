//! What translated code assumes about the guest's mappings: the code TLB
//! behind block lookups, fetching a block's code through the guest page
//! tables, and what a change of paging (CR0/CR3/CR4, INVLPG) unchains and
//! drops from the jump caches.

use super::*;
use crate::decode::MAX_INSN_LEN;

/// Most ring-3 code pages kept with their chains while unconfirmed
/// (`Engine::suspend`); beyond, pages are unlinked as before.
const MAX_SUSPENDED: usize = 4096;

impl Engine {
    /// Can block `id`, found by its first page, run at `lin`? A block that
    /// continues on a second page is stale if that page now maps other
    /// code; a block unlinked by INVLPG is indexed again before it is
    /// chained or jump-cached.
    pub(super) fn still_valid(&mut self, id: BlockId, lin: u32) -> bool {
        let b = &self.cache.blocks[id as usize];
        let (pages, second, indexed, user) = (b.pages, b.second_eip(), b.indexed, b.mode.cpl() == 3);
        let last = self.cpu.seg[SEG_CS].base.wrapping_add(second);
        if pages.1 != pages.0 && self.mem.paging().enabled() && self.code_page_quiet(last, user) != Some(pages.1) {
            return false;
        }
        if !indexed {
            self.cache.index_linear(id, page_of(lin), page_of(last));
        }
        true
    }

    /// `code_page` without raising the fetch fault.
    pub(super) fn code_page_quiet(&mut self, lin: u32, user: bool) -> Option<u32> {
        if !self.mem.paging().enabled() {
            return Some(page_of(lin));
        }
        let key = (user, page_of(lin));
        if let Some(p) = self.code_tlb.get(&key) {
            return Some(p);
        }
        let p = self.mem.translate(page_of(lin), false, user).ok()?;
        if user && let Some(was) = self.suspended.remove(&page_of(lin)) {
            // The page is confirmed again; its blocks' chains are still
            // right only if it maps the code they were translated from.
            if was != p {
                self.cache.unlink_linear(page_of(lin), page_of(lin), &mut self.cpu.hot);
            }
        }
        self.code_tlb.insert(key, p, self.mem.maps_global(page_of(lin), user), &mut self.cpu.hot);
        self.mem.mark_code_lin(lin);
        Some(p)
    }

    /// Physical page of the code at linear `lin` (soft TLB in front of the
    /// guest page tables); a fetch fault becomes the #PF step.
    pub(super) fn code_page(&mut self, lin: u32, user: bool) -> Result<u32, Step> {
        match self.code_page_quiet(lin, user) {
            Some(p) => Ok(p),
            None => Err(self.fetch_fault(lin, user)),
        }
    }

    /// The guest changed its paging registers or executed INVLPG: drop
    /// shadow mappings, the soft TLB, chains and jump-cache entries that a
    /// linear address may now contradict.
    pub(super) fn paging_changed(&mut self, invlpg: Option<u32>, cr_written: bool) {
        self.seg_reloads.paging_changed();
        let regs = self.cpu.paging_regs();
        let old = self.mem.paging();
        self.stats.tlb_flushes += 1;
        if let Some(lin) = invlpg.filter(|_| regs == old) {
            // One page (or one 4 MiB page): only code reached through it.
            self.mem.invlpg(lin);
            soft_tlb::flush_page(&mut self.cpu.hot, lin);
            if self.mem.large_page_at(lin) {
                self.soft.flush_all(&mut self.cpu.hot);
                let (lo, hi) = (lin & 0xFFC0_0000, lin | 0x003F_F000);
                self.code_tlb.remove_range(lo, hi, &mut self.cpu.hot);
                self.forget_code_pages(lo, hi);
            } else {
                let page = page_of(lin);
                let had = self.code_tlb.remove(&(false, page), &mut self.cpu.hot).is_some()
                    | self.code_tlb.remove(&(true, page), &mut self.cpu.hot).is_some();
                if had || self.cache.has_linear(page) {
                    self.forget_code_pages(page, page);
                }
            }
            return;
        }
        let cr3_load = old.enabled() && regs.enabled() && old.cr0 == regs.cr0 && old.cr4 == regs.cr4;
        if cr3_load {
            self.soft.stash(&self.cpu.hot, old.cr3 & !0xFFF);
        } else {
            self.soft.forget_stashed();
        }
        self.mem.set_paging(regs, cr_written);
        self.soft.flush_all(&mut self.cpu.hot);
        if cr3_load {
            self.soft_refill(regs.cr3 & !0xFFF);
        }
        self.sync_poll_pages();
        if old.enabled() != regs.enabled() && !self.watch_pages.is_empty() {
            // Watched pages are protected one way with paging off, another on.
            self.arm_watchpoints();
        }
        if cr3_load {
            // A CR3 load: keep what translated code assumes about the code
            // pages that still map the same physical pages.
            let mem = &self.mem;
            let stale = self.code_tlb.stale_locals(|(user, page), phys| !mem.still_maps(page, user, phys));
            if stale.is_empty() {
                return;
            }
            self.clear_emu_cache();
            let mut unlink = Vec::new();
            for k in &stale {
                match self.code_tlb.remove(k, &mut self.cpu.hot) {
                    // Ring-3 code: its blocks probe the page (`suspend`).
                    Some(phys) if k.0 && !self.code_tlb.contains_key(&(false, k.1)) => self.suspend(k.1, phys),
                    _ => unlink.push(k.1),
                }
            }
            for page in unlink {
                self.unlink_code_page(page);
            }
            return;
        }
        self.clear_emu_cache();
        self.code_tlb.clear(&mut self.cpu.hot);
        self.suspended.clear();
        self.mem.clear_all_code_lin();
        self.cache.unlink_all();
        self.clear_jump_caches();
    }

    /// Linear pages `[lo, hi]` may map other code now: unchain the blocks
    /// fetched through them and forget decoded instructions.
    pub(super) fn forget_code_pages(&mut self, lo: u32, hi: u32) {
        self.clear_emu_cache();
        if lo == hi {
            self.unlink_code_page(lo);
            return;
        }
        self.cache.unlink_linear(lo, hi, &mut self.cpu.hot);
        self.suspended.retain(|&p, _| !(lo..=hi).contains(&p));
        if !self.code_tlb.any_in(lo, hi) {
            self.mem.clear_code_lin(lo, hi);
        }
    }

    /// Ring-3 code page `page` (its blocks translated from `phys`) is not
    /// mapped so in the address space just loaded, which may fault it in
    /// again: Linux switches between processes that map the same text pages
    /// and a new process maps them one at a time. Its blocks keep their
    /// chains and jump-cache entries: every entry from another page tests
    /// `HotState::code_ok`, now 0, and leaves for the dispatcher
    /// (`exit::PROBE_MISS`), whose walk confirms the page, or drops the
    /// chains if it maps other code now (`code_page_quiet`). Before, each
    /// new process re-chained every block it ran (shell workload: ~700
    /// chain exits and ~700 jump-cache misses per process).
    fn suspend(&mut self, page: u32, phys: u32) {
        if self.suspended.len() >= MAX_SUSPENDED {
            self.unlink_code_page(page);
            return;
        }
        self.suspended.insert(page, phys);
        self.cache.suspend_linear_page(page, &mut self.cpu.hot);
    }

    /// Linear page `page` may map other code now (its `code_tlb` entries
    /// are already gone or revalidated): unchain the blocks fetched through
    /// it, and unmark it unless a mapping for the other privilege remains.
    pub(super) fn unlink_code_page(&mut self, page: u32) {
        self.cache.unlink_linear(page, page, &mut self.cpu.hot);
        self.suspended.remove(&page);
        if !self.code_tlb.contains_key(&(false, page)) && !self.code_tlb.contains_key(&(true, page)) {
            self.mem.clear_code_lin(page, page);
        }
    }

    /// The current shadow context changed: move the timer's poll request
    /// (if one is pending) to the new windows' poll pages.
    pub(super) fn sync_poll_pages(&mut self) {
        let pages = self.mem.poll_pages();
        if pages == self.sig.poll_pages {
            return;
        }
        if self.sig.disarm_poll() {
            self.time_due = true;
        }
        self.sig.poll_pages = pages;
    }

    /// Empty the entries of jump-cache table `table`.
    pub(super) fn clear_jump_table(&mut self, table: usize) {
        let range = (table * JUMP_CACHE_ENTRIES) as u32..((table + 1) * JUMP_CACHE_ENTRIES) as u32;
        let (keys, marked) = (&mut self.cpu.hot.jc_keys, &mut self.jc_marked);
        self.jc_used.retain(|&s| {
            if range.contains(&s) {
                keys[s as usize] = crate::cpu::JC_EMPTY_KEY;
                marked[s as usize] = false;
                false
            } else {
                true
            }
        });
    }

    /// Empty every jump-cache entry filled since the last clear.
    pub(super) fn clear_jump_caches(&mut self) {
        for s in self.jc_used.drain(..) {
            self.cpu.hot.jc_keys[s as usize] = crate::cpu::JC_EMPTY_KEY;
            self.jc_marked[s as usize] = false;
        }
    }

    /// The code bytes from linear `lin` on: guest RAM itself with paging
    /// off, else a copy of the rest of its page and (when mapped) the first
    /// `reach` bytes of the next one — but no more than `max_insns`
    /// instructions can span (a block of 64 needs at most 960 bytes, where
    /// the rest of a page averages 2 KiB).
    pub(super) fn fetch_code(&mut self, lin: u32, user: bool, reach: usize, max_insns: usize) -> Result<Fetch, Step> {
        if !self.mem.paging().enabled() {
            return Ok(Fetch::Flat);
        }
        let page = lin & !0xFFF;
        let p0 = match self.mem.translate(page, false, user) {
            Ok(p) => p,
            Err(_) => return Err(self.fetch_fault(lin, user)),
        };
        let head = PAGE_SIZE - (lin - page) as usize;
        let limit = max_insns * MAX_INSN_LEN;
        let next = page.wrapping_add(PAGE_SIZE as u32);
        let p1 = if head < limit { self.mem.translate(next, false, user).ok() } else { None };
        let first = head.min(limit);
        let second = if p1.is_some() { reach.min(limit - first) } else { 0 };
        // The last fetch's buffer: no allocation per block.
        let mut buf = std::mem::take(&mut self.fetch_buf);
        buf.clear();
        buf.resize(first + second, 0);
        self.mem.read(p0 + (lin - page), &mut buf[..first]);
        if let Some(p) = p1 {
            self.mem.read(p, &mut buf[first..]);
        }
        Ok(Fetch::Paged { buf, start: lin, phys: [Some(p0), p1] })
    }

    /// The #PF of an instruction fetch at `lin`.
    pub(super) fn fetch_fault(&mut self, lin: u32, user: bool) -> Step {
        let code = self.mem.translate(lin, false, user).err().unwrap_or(0);
        self.cpu.cr[2] = lin;
        self.stats.page_faults += 1;
        self.exception(Exception::with_code(vector::PF, code))
    }
}
