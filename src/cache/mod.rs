//! The code cache: translated blocks in executable memory, their lookup
//! structures and the chaining links between them.
//!
//! The cache is one memfd mapped twice: RW for the emitter and RX for
//! execution, so no page is ever writable and executable at once (W^X).
//! Blocks are appended; a full cache is flushed whole. The shared
//! trampolines live at the start and survive flushes.

use std::ptr::NonNull;

use thiserror::Error;

use crate::cpu::{HotState, JC_EMPTY_KEY, JUMP_CACHE_ENTRIES, Mode};
use crate::emit::rel32;
use crate::memory::PAGE_SIZE;
use crate::translate::{ExitSite, InsnMapEntry, Translation};

use crate::fastmap::FastMap;

/// Default code cache size.
pub const DEFAULT_CACHE_SIZE: usize = 64 << 20;
/// Smallest usable cache: the trampolines and a few blocks.
pub const MIN_CACHE_SIZE: usize = 64 * 1024;
/// Cache bytes given pages at a time (`CodeCache::populate_to`; a Linux
/// boot's code grows by about 8 MiB).
const POPULATE_CHUNK: usize = 512 << 10;
/// Alignment of block entries (a cache line start helps the decoder).
const BLOCK_ALIGN: usize = 16;
/// Cache bytes per block the block and exit tables are reserved for at
/// construction (a Linux boot averages about 195). Growing them by
/// doubling instead copied both tables again and again while a boot
/// translated its first tens of thousands of blocks; the reservation is
/// address space only until blocks fill it.
const RESERVED_BYTES_PER_BLOCK: usize = 128;
/// Exits per block the exit table is reserved for (a Linux boot averages
/// about 1.3).
const RESERVED_EXITS_PER_BLOCK: usize = 2;
/// Cache sizes above this reserve no more (a huge `-cache-size` should
/// not reserve gigabytes of tables it may never fill).
const RESERVED_CACHE_CAP: usize = 128 << 20;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("code cache setup failed ({what}): {source}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("code cache of {0} bytes is too small")]
    TooSmall(usize),
}

pub type BlockId = u32;

/// A translated block.
pub struct Block {
    /// Linear address (CS base + EIP) of the block's first instruction.
    pub eip: u32,
    /// The CS base it was translated under: its code holds EIPs, which
    /// another base would give the same linear code other values of (real
    /// mode's segment:offset aliases), so a lookup under another base
    /// misses (`CodeCache::lookup`).
    pub cs_base: u32,
    pub mode: Mode,
    /// Physical page of `eip` (part of the key: the same linear code in two
    /// address spaces is two blocks).
    pub phys: u32,
    /// EIP after the block (an offset in CS, unlike `eip`).
    pub end: u32,
    /// Host (RX) address of the block's code.
    pub host: usize,
    /// Offset of the entry in the code (after the code-page probe's miss
    /// path, `translate::Options::probe`; 0 without a probe).
    pub entry_off: u32,
    /// Offset past the probe: a chain from a block on the same linear and
    /// physical page enters here (`same_page`).
    pub entry_skip: u32,
    pub host_len: usize,
    pub insn_map: Vec<InsnMapEntry>,
    /// Global ids of this block's exits.
    pub first_exit: u32,
    pub exit_count: u32,
    /// Exits of other blocks chained to this one.
    pub incoming: Vec<u32>,
    pub valid: bool,
    pub pages: (u32, u32),
    /// Listed in `lin_blocks` (INVLPG and CR3 loads can find its chains).
    pub indexed: bool,
    /// The guest addresses `[start, end)` of a callee inlined in the block
    /// (`exec::inline_calls`), whose page is `pages.1`.
    pub inlined: Option<(u32, u32)>,
    /// Entries at the continuations of the block's CALLs: (linear address,
    /// offset of the entry stub), on the block's first page
    /// (`translate::Options::continuation_entries`, `CodeCache::lookup_entry`).
    pub entries: Vec<(u32, u32)>,
    /// Where the guest bytes the block was translated from are kept in
    /// `CodeCache::sources` (offset, length): only for a block wholly on
    /// its first page, without an inlined callee, which a write to its
    /// page need not drop if its bytes come out unchanged
    /// (`CodeCache::suspect_page`).
    pub source: Option<(u32, u16)>,
}

impl Block {
    /// A guest address of the block's code on its second page (`pages.1`):
    /// the inlined callee's start, else the last byte.
    pub fn second_eip(&self) -> u32 {
        self.inlined.map_or(self.end.wrapping_sub(1), |(start, _)| start)
    }

    /// Do the block's instructions cover `eip`, an offset in CS like `end`
    /// and `inlined` (the block's own `eip` field is linear)?
    fn covers(&self, eip: u32) -> bool {
        let within = |start: u32, end: u32| eip.wrapping_sub(start) < end.wrapping_sub(start);
        within(self.eip.wrapping_sub(self.cs_base), self.end)
            || self.inlined.is_some_and(|(start, end)| within(start, end))
    }

    /// Host address where chains from other pages, the jump cache and the
    /// dispatcher enter.
    pub fn entry(&self) -> usize {
        self.host + self.entry_off as usize
    }

    /// Can the block run while its page is unconfirmed in the current
    /// address space (`suspend_linear_page`)? Only if its entry probes the
    /// page and it lies on that page alone.
    fn probes_its_page(&self) -> bool {
        self.entry_skip > self.entry_off && self.pages.0 == self.pages.1
    }
}

/// The blocks fetched through one linear page (`CodeCache::index_linear`).
#[derive(Default)]
struct LinPage {
    /// Blocks wholly on the page whose entry probes it: they keep their
    /// chains while the page is suspended (`suspend_linear_page`).
    probed: Vec<BlockId>,
    /// The others (ring 0, or crossing into or out of the page).
    other: Vec<BlockId>,
}

/// A direct exit, globally numbered.
#[derive(Clone, Copy)]
pub struct Exit {
    pub block: BlockId,
    /// RX address of the rel32 field.
    pub rel32: usize,
    /// RX address of the unchained tail.
    pub tail: usize,
    pub target: u32,
    /// Block it is chained to, if any.
    pub linked: Option<BlockId>,
}

pub struct CodeCache {
    rw: NonNull<u8>,
    rx: NonNull<u8>,
    size: usize,
    memfd: libc::c_int,
    /// The process is about to exit (`leave_mapped_at_exit`): Drop leaves
    /// the mappings to the exit.
    exiting: bool,
    used: usize,
    /// Bytes from the start already backed by pages in both mappings
    /// (`populate_to`), or `usize::MAX` once the kernel refused to.
    populated: usize,
    /// End of the trampolines (start of the flushable area).
    base_used: usize,
    pub blocks: Vec<Block>,
    /// (`Mode::key(linear eip)`, physical page of the eip) -> block.
    pub map: FastMap<(u64, u32), BlockId>,
    pub exits: Vec<Exit>,
    page_blocks: FastMap<u32, Vec<BlockId>>,
    /// Linear page -> blocks whose code it holds (paging: INVLPG of a page
    /// unchains only the blocks reached through it).
    lin_blocks: FastMap<u32, LinPage>,
    /// (`Mode::key(linear address)`, physical page) -> the block holding an
    /// entry there and the entry's offset (`Block::entries`).
    entry_map: FastMap<(u64, u32), (BlockId, u32)>,
    /// The guest bytes of blocks that record them (`Block::source`),
    /// appended; emptied by a flush.
    sources: Vec<u8>,
    /// Physical pages written since their blocks were last checked
    /// (`suspect_page`): unprotected, their blocks out of the jump cache
    /// and unchained from other pages until `verify_page`.
    unverified: FastMap<u32, ()>,
    pub flushes: u64,
}

// SAFETY: the mappings are owned by the cache and only used by its owner.
unsafe impl Send for CodeCache {}

impl CodeCache {
    pub fn new(size: usize) -> Result<Self, CacheError> {
        if size < MIN_CACHE_SIZE {
            return Err(CacheError::TooSmall(size));
        }
        let os = |what| CacheError::Os { what, source: std::io::Error::last_os_error() };
        let reserved_blocks = size.min(RESERVED_CACHE_CAP) / RESERVED_BYTES_PER_BLOCK;
        // SAFETY: syscalls whose results are checked; the mappings are owned
        // by the returned value and released in Drop.
        unsafe {
            let fd = libc::memfd_create(c"btvisor-code".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(os("memfd_create"));
            }
            if libc::ftruncate(fd, size as libc::off_t) != 0 {
                libc::close(fd);
                return Err(os("ftruncate"));
            }
            let rw =
                libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            if rw == libc::MAP_FAILED {
                libc::close(fd);
                return Err(os("mmap RW"));
            }
            let rx = libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_SHARED, fd, 0);
            if rx == libc::MAP_FAILED {
                libc::munmap(rw, size);
                libc::close(fd);
                return Err(os("mmap RX"));
            }
            Ok(CodeCache {
                rw: NonNull::new_unchecked(rw as *mut u8),
                rx: NonNull::new_unchecked(rx as *mut u8),
                size,
                memfd: fd,
                exiting: false,
                used: 0,
                populated: 0,
                base_used: 0,
                blocks: Vec::with_capacity(reserved_blocks),
                map: FastMap::default(),
                exits: Vec::with_capacity(reserved_blocks * RESERVED_EXITS_PER_BLOCK),
                page_blocks: FastMap::default(),
                lin_blocks: FastMap::default(),
                entry_map: FastMap::default(),
                sources: Vec::new(),
                unverified: FastMap::default(),
                flushes: 0,
            })
        }
    }

    /// RX address where the next emitted code will start.
    pub fn next_addr(&self) -> usize {
        self.rx.as_ptr() as usize + align(self.used)
    }

    pub fn rx_range(&self) -> (usize, usize) {
        let s = self.rx.as_ptr() as usize;
        (s, s + self.size)
    }

    pub fn base_used(&self) -> usize {
        self.base_used
    }

    pub fn used(&self) -> usize {
        self.used
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Room left for one more block of `len` bytes?
    pub fn fits(&self, len: usize) -> bool {
        align(self.used) + len <= self.size
    }

    /// Copy raw code (trampolines) to the cache; returns its RX address.
    /// Code stored before `seal_base` survives flushes.
    pub fn put_raw(&mut self, code: &[u8]) -> Option<usize> {
        if !self.fits(code.len()) {
            return None;
        }
        let off = align(self.used);
        if off + code.len() > self.populated {
            self.populate_to(off + code.len());
        }
        // SAFETY: off + len <= size, inside the RW mapping.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.as_ptr().add(off), code.len()) };
        self.used = off + code.len();
        Some(self.rx.as_ptr() as usize + off)
    }

    /// Back the cache up to at least `end` bytes, a `POPULATE_CHUNK` at a
    /// time, with pages in both mappings at once: otherwise every fresh page
    /// costs two host page faults, one when the emitter first writes it
    /// (RW) and one when its code first runs (RX) — a tenth of the host
    /// faults of a Linux boot. Kernels before 5.14 lack the advice: then
    /// the pages come by faults as before.
    fn populate_to(&mut self, end: usize) {
        let from = self.populated;
        let to = end.next_multiple_of(POPULATE_CHUNK).min(self.size);
        let advise = |base: NonNull<u8>, advice| {
            // SAFETY: [from, to) lies inside the mapping at `base` (to <=
            // size); the advice only faults its pages in.
            unsafe { libc::madvise(base.as_ptr().add(from) as *mut libc::c_void, to - from, advice) == 0 }
        };
        self.populated = if advise(self.rw, libc::MADV_POPULATE_WRITE) && advise(self.rx, libc::MADV_POPULATE_READ) {
            to
        } else {
            usize::MAX
        };
    }

    /// Mark everything emitted so far as permanent (trampolines).
    pub fn seal_base(&mut self) {
        self.used = align(self.used);
        self.base_used = self.used;
    }

    /// Id the next installed block's first exit will get.
    pub fn next_exit_id(&self) -> u32 {
        self.exits.len() as u32
    }

    /// Install a translation made for `next_addr()`. `register` = false makes
    /// a one-off block (not looked up, not tied to its pages).
    // The block's key (EIP, mode, physical page), its extent and pages, the
    // code and the registration flag are all the block's own facts.
    #[allow(clippy::too_many_arguments)]
    pub fn install(
        &mut self,
        eip: u32,
        cs_base: u32,
        mode: Mode,
        phys: u32,
        end: u32,
        pages: (u32, u32),
        inlined: Option<(u32, u32)>,
        t: Translation,
        register: bool,
    ) -> Option<BlockId> {
        let host = self.put_raw(&t.code)?;
        let id = self.blocks.len() as BlockId;
        let first_exit = self.exits.len() as u32;
        for e in &t.exits {
            let ExitSite { rel32_off, tail_off, target } = *e;
            self.exits.push(Exit {
                block: id,
                rel32: host + rel32_off as usize,
                tail: host + tail_off as usize,
                target,
                linked: None,
            });
        }
        self.blocks.push(Block {
            eip,
            cs_base,
            mode,
            phys,
            end,
            host,
            entry_off: t.entry_off,
            entry_skip: t.entry_skip,
            host_len: t.code.len(),
            insn_map: t.insn_map,
            first_exit,
            exit_count: t.exits.len() as u32,
            incoming: Vec::new(),
            valid: register,
            pages,
            indexed: false,
            inlined,
            entries: if register { t.entries } else { Vec::new() },
            source: None,
        });
        if register {
            self.map.insert((mode.key(eip), phys), id);
            for &(lin, off) in &self.blocks[id as usize].entries {
                self.entry_map.insert((mode.key(lin), phys), (id, off));
            }
            self.page_blocks.entry(pages.0).or_default().push(id);
            if pages.1 != pages.0 {
                self.page_blocks.entry(pages.1).or_default().push(id);
            }
        }
        Some(id)
    }

    /// Keep the guest bytes block `id` was translated from, so that a
    /// write to its page drops it only if they changed (`suspect_page`).
    /// For a block wholly on its first page without an inlined callee.
    pub fn record_source(&mut self, id: BlockId, bytes: &[u8]) {
        let Some(b) = self.blocks.get_mut(id as usize) else { return };
        let Ok(len) = u16::try_from(bytes.len()) else { return };
        if !b.valid || b.pages.0 != b.pages.1 || b.inlined.is_some() || len == 0 {
            return;
        }
        b.source = Some((self.sources.len() as u32, len));
        self.sources.extend_from_slice(bytes);
    }

    /// Guest physical page `page` is being written (self-modifying code,
    /// ftrace and alternatives patching the kernel's text): its blocks
    /// cannot run until `verify_page` has compared their bytes, so every way
    /// into them from elsewhere is cut — chains from other pages' blocks
    /// unlinked, jump-cache entries dropped (the host return stack goes with
    /// the exit that brought the VMM here) — and the dispatcher's lookup
    /// finds the page unverified. Blocks that keep no source bytes are
    /// dropped at once. Chains between the page's own blocks stay: their
    /// source runs only after the whole page is verified. Returns the blocks
    /// dropped.
    pub fn suspect_page(&mut self, page: u32, hot: &mut HotState) -> usize {
        let Some(ids) = self.page_blocks.remove(&page) else { return 0 };
        let mut dropped = 0;
        let mut kept = Vec::with_capacity(ids.len());
        for id in ids {
            // (A block with source bytes lies on its first page alone.)
            if self.blocks[id as usize].source.is_some() {
                kept.push(id);
            } else {
                dropped += usize::from(self.drop_block(id, page, hot));
            }
        }
        kept.retain(|&id| self.blocks[id as usize].valid);
        for &id in &kept {
            self.cut_ways_in(id, hot, |from, _| from.valid && from.source.is_some() && from.phys == page);
        }
        if !kept.is_empty() {
            self.page_blocks.insert(page, kept);
            self.unverified.insert(page, ());
        }
        dropped
    }

    /// Is physical page `page` waiting for `verify_page`?
    pub fn is_unverified(&self, page: u32) -> bool {
        !self.unverified.is_empty() && self.unverified.contains_key(&page)
    }

    /// The page written since `suspect_page` is write-protected again (by
    /// the caller, before this): drop its blocks whose bytes in `ram` (the
    /// page's 4 KiB) differ from those they were translated from, keep the
    /// rest. Returns the blocks dropped.
    pub fn verify_page(&mut self, page: u32, ram: &[u8], hot: &mut HotState) -> usize {
        if self.unverified.remove(&page).is_none() {
            return 0;
        }
        let Some(list) = self.page_blocks.get_mut(&page) else { return 0 };
        let (blocks, sources) = (&self.blocks, &self.sources);
        let mut changed = Vec::new();
        list.retain(|&id| {
            let b = &blocks[id as usize];
            // (Blocks translated since the write hold no source here yet.)
            let same = b.source.is_none_or(|(off, len)| {
                let at = (b.eip & (PAGE_SIZE as u32 - 1)) as usize;
                ram.get(at..at + len as usize) == sources.get(off as usize..off as usize + len as usize)
            });
            if !same {
                changed.push(id);
            }
            same
        });
        changed.into_iter().filter(|&id| self.drop_block(id, page, hot)).count()
    }

    /// The block at linear `eip` of physical page `phys` in `mode`,
    /// translated under CS base `cs_base`.
    pub fn lookup(&self, eip: u32, cs_base: u32, mode: Mode, phys: u32) -> Option<BlockId> {
        let &id = self.map.get(&(mode.key(eip), phys))?;
        self.blocks.get(id as usize).is_some_and(|b| b.cs_base == cs_base).then_some(id)
    }

    /// A valid block with an entry at linear `eip` of physical page `phys`
    /// in `mode` under CS base `cs_base` (`Block::entries`), and the
    /// entry's host address.
    pub fn lookup_entry(&self, eip: u32, cs_base: u32, mode: Mode, phys: u32) -> Option<(BlockId, usize)> {
        let &(id, off) = self.entry_map.get(&(mode.key(eip), phys))?;
        let b = self.blocks.get(id as usize).filter(|b| b.valid && b.cs_base == cs_base)?;
        Some((id, b.host + off as usize))
    }

    /// Record the linear pages a block's code was fetched from.
    pub fn index_linear(&mut self, id: BlockId, first: u32, last: u32) {
        if let Some(b) = self.blocks.get_mut(id as usize) {
            b.indexed = true;
        }
        let probes = first == last && self.blocks.get(id as usize).is_some_and(Block::probes_its_page);
        let e = self.lin_blocks.entry(first).or_default();
        if probes {
            e.probed.push(id)
        } else {
            e.other.push(id)
        }
        if last != first {
            self.lin_blocks.entry(last).or_default().other.push(id);
        }
    }

    /// The mapping of linear pages `[lo, hi]` changed (INVLPG): unchain the
    /// blocks fetched through them and drop their jump-cache entries; a
    /// later lookup finds them again only if the page still maps the same
    /// physical code (the block key holds the physical page).
    pub fn unlink_linear(&mut self, lo: u32, hi: u32, hot: &mut HotState) {
        if lo == hi {
            self.unlink_linear_page(lo, hot);
            return;
        }
        let pages: Vec<u32> = self.lin_blocks.keys().copied().filter(|p| (lo..=hi).contains(p)).collect();
        for p in pages {
            self.unlink_linear_page(p, hot);
        }
    }

    /// `unlink_linear` of one page. A chain between two blocks that start
    /// on this page at the same physical page stays, when its target lies
    /// wholly on the page: a block runs only while its first page maps the
    /// physical page it was translated from (it is entered by a lookup
    /// keyed by that page, from the jump cache, which drops it here, or by
    /// a chain that is valid on the same terms), so its page maps the
    /// target's code too. Linux's processes switch address spaces all the
    /// time; these chains are most of their code's.
    fn unlink_linear_page(&mut self, page: u32, hot: &mut HotState) {
        if let Some(l) = self.lin_blocks.remove(&page) {
            self.unlink_blocks(l.probed, hot);
            self.unlink_blocks(l.other, hot);
        }
    }

    /// `unlink_linear_page` of blocks `ids` (listed under one page).
    fn unlink_blocks(&mut self, ids: Vec<BlockId>, hot: &mut HotState) {
        for id in ids {
            let Some(b) = self.blocks.get_mut(id as usize) else { continue };
            b.indexed = false;
            self.cut_ways_in(id, hot, same_page);
        }
    }

    /// Cut the ways into block `id` that a lookup would not check again:
    /// its jump-cache entries (and its continuation entries' there) and the
    /// chains into it, except those from blocks `keep(from, id's block)`
    /// accepts.
    fn cut_ways_in(&mut self, id: BlockId, hot: &mut HotState, keep: impl Fn(&Block, &Block) -> bool) {
        let b = &mut self.blocks[id as usize];
        let (eip, mode, host) = (b.eip, b.mode, b.entry());
        let incoming = std::mem::take(&mut b.incoming);
        let mut kept = Vec::new();
        for ex in incoming {
            let e = self.exits[ex as usize];
            if e.linked != Some(id) {
                continue;
            }
            if keep(&self.blocks[e.block as usize], &self.blocks[id as usize]) {
                kept.push(ex);
            } else {
                self.patch(e.rel32, e.tail);
                self.exits[ex as usize].linked = None;
            }
        }
        self.blocks[id as usize].incoming = kept;
        let slot = jc_slot(mode, eip);
        if hot.jc_targets[slot] == host as u64 {
            hot.jc_keys[slot] = JC_EMPTY_KEY;
        }
        self.forget_entries_in_jump_cache(id, hot);
    }

    /// Drop the jump-cache entries that lead to block `id`'s further
    /// entries (`Block::entries`).
    fn forget_entries_in_jump_cache(&self, id: BlockId, hot: &mut HotState) {
        let b = &self.blocks[id as usize];
        for &(lin, off) in &b.entries {
            let slot = jc_slot(b.mode, lin);
            if hot.jc_targets[slot] == (b.host + off as usize) as u64 {
                hot.jc_keys[slot] = JC_EMPTY_KEY;
            }
        }
    }

    /// Linear page `page` is no longer confirmed for ring 3 in the current
    /// address space (`HotState::code_ok` is 0), but may map the same code
    /// again (Linux's processes share text pages they fault in one by one):
    /// blocks that probe the page keep their chains and jump-cache entries,
    /// since any entry from another page finds the page unconfirmed and
    /// leaves for the dispatcher, which walks the guest tables. Other blocks
    /// (ring 0, page-crossing) are unlinked as by `unlink_linear_page`.
    pub fn suspend_linear_page(&mut self, page: u32, hot: &mut HotState) {
        let Some(l) = self.lin_blocks.get_mut(&page) else { return };
        let other = std::mem::take(&mut l.other);
        if l.probed.is_empty() {
            self.lin_blocks.remove(&page);
        }
        self.unlink_blocks(other, hot);
    }

    /// Were blocks fetched through linear page `page` (since it was last
    /// unlinked)?
    pub fn has_linear(&self, page: u32) -> bool {
        self.lin_blocks.contains_key(&page)
    }

    /// Unchain every exit (the linear-to-physical mapping changed, so a
    /// chained jump could reach code of another address space).
    pub fn unlink_all(&mut self) {
        for k in 0..self.exits.len() {
            let e = self.exits[k];
            if e.linked.is_some() {
                self.patch(e.rel32, e.tail);
                self.exits[k].linked = None;
            }
        }
        for b in &mut self.blocks {
            b.incoming.clear();
        }
    }

    /// Write a rel32 field at RX address `field` through the RW mapping.
    fn patch(&mut self, field: usize, target: usize) {
        let off = field - self.rx.as_ptr() as usize;
        let v = rel32(field, target);
        // SAFETY: `field` is the rel32 of an exit inside the cache; the
        // write goes through the RW alias of the same page.
        unsafe { std::ptr::write_unaligned(self.rw.as_ptr().add(off) as *mut u32, v) };
    }

    /// Chain exit `exit` to block `to`.
    pub fn link(&mut self, exit: u32, to: BlockId) -> bool {
        let Some(e) = self.exits.get(exit as usize).copied() else {
            return false;
        };
        let Some(b) = self.blocks.get(to as usize) else {
            return false;
        };
        if !b.valid || e.linked.is_some() || !self.blocks[e.block as usize].valid {
            return false;
        }
        // A block on the same page runs only while that page maps the
        // target's code too (see `unlink_linear_page`): it skips the probe.
        let host =
            if same_page(&self.blocks[e.block as usize], b) { b.host + b.entry_skip as usize } else { b.entry() };
        self.patch(e.rel32, host);
        self.exits[exit as usize].linked = Some(to);
        self.blocks[to as usize].incoming.push(exit);
        true
    }

    /// Invalidate every block whose code lies on guest page `page`; returns
    /// how many. Chains into them are unlinked and jump-cache entries cleared.
    pub fn invalidate_page(&mut self, page: u32, hot: &mut HotState) -> usize {
        let ids = self.page_blocks.remove(&page).unwrap_or_default();
        ids.into_iter().filter(|&id| self.drop_block(id, page, hot)).count()
    }

    /// Invalidate the blocks on guest page `page` whose instructions cover
    /// guest EIP `eip` (one instruction is to be translated otherwise);
    /// returns how many. The page's other blocks stay.
    pub fn invalidate_at(&mut self, page: u32, eip: u32, hot: &mut HotState) -> usize {
        let Some(list) = self.page_blocks.get(&page) else { return 0 };
        let hit: Vec<BlockId> = list
            .iter()
            .copied()
            .filter(|&id| {
                let b = &self.blocks[id as usize];
                b.valid && b.covers(eip)
            })
            .collect();
        if let Some(list) = self.page_blocks.get_mut(&page) {
            list.retain(|id| !hit.contains(id));
        }
        hit.into_iter().filter(|&id| self.drop_block(id, page, hot)).count()
    }

    /// Make block `id` (listed under `page`, whose list the caller updates)
    /// invalid: out of the block map and the jump cache, chains into it
    /// unlinked, off its other page's list. False if it already was.
    fn drop_block(&mut self, id: BlockId, page: u32, hot: &mut HotState) -> bool {
        let b = &mut self.blocks[id as usize];
        if !b.valid {
            return false;
        }
        b.valid = false;
        let (eip, mode, phys, host, pages) = (b.eip, b.mode, b.phys, b.entry(), b.pages);
        let incoming = std::mem::take(&mut b.incoming);
        if self.map.get(&(mode.key(eip), phys)) == Some(&id) {
            self.map.remove(&(mode.key(eip), phys));
        }
        let slot = jc_slot(mode, eip);
        if hot.jc_targets[slot] == host as u64 {
            hot.jc_keys[slot] = JC_EMPTY_KEY;
        }
        self.forget_entries_in_jump_cache(id, hot);
        for &(lin, off) in &self.blocks[id as usize].entries {
            if self.entry_map.get(&(mode.key(lin), phys)) == Some(&(id, off)) {
                self.entry_map.remove(&(mode.key(lin), phys));
            }
        }
        for ex in incoming {
            let e = self.exits[ex as usize];
            if e.linked == Some(id) {
                self.patch(e.rel32, e.tail);
                self.exits[ex as usize].linked = None;
            }
        }
        let other = if pages.0 == page { pages.1 } else { pages.0 };
        if other != page
            && let Some(v) = self.page_blocks.get_mut(&other)
        {
            v.retain(|&x| x != id);
        }
        true
    }

    /// Does any valid block hold code from `page`?
    pub fn page_has_code(&self, page: u32) -> bool {
        self.page_blocks.get(&page).is_some_and(|v| !v.is_empty())
    }

    /// Drop every block (the trampolines stay).
    pub fn flush(&mut self, hot: &mut HotState) {
        self.used = self.base_used;
        self.blocks.clear();
        self.map.clear();
        self.exits.clear();
        self.page_blocks.clear();
        self.lin_blocks.clear();
        self.entry_map.clear();
        self.sources.clear();
        self.unverified.clear();
        hot.jc_keys.fill(JC_EMPTY_KEY);
        self.flushes += 1;
    }

    /// The block containing RX address `addr` (async-signal-safe: no allocation).
    pub fn block_at(&self, addr: usize) -> Option<&Block> {
        let idx = self.blocks.partition_point(|b| b.host <= addr);
        let b = self.blocks.get(idx.checked_sub(1)?)?;
        (addr < b.host + b.host_len).then_some(b)
    }
}

/// The jump-cache slot of a guest EIP in the table of `mode`.
pub fn jc_slot(mode: Mode, eip: u32) -> usize {
    mode.jc_table() * JUMP_CACHE_ENTRIES + ((eip as usize) & (JUMP_CACHE_ENTRIES - 1))
}

/// Insert `eip -> host` into the jump cache of `mode` (modes that use it
/// only); returns the slot written.
pub fn jc_insert(hot: &mut HotState, mode: Mode, eip: u32, host: usize) -> Option<usize> {
    if !mode.uses_jump_cache() {
        return None;
    }
    let s = jc_slot(mode, eip);
    hot.jc_keys[s] = crate::cpu::jc_key(eip);
    hot.jc_targets[s] = host as u64;
    Some(s)
}

fn align(x: usize) -> usize {
    (x + BLOCK_ALIGN - 1) & !(BLOCK_ALIGN - 1)
}

/// Do `src` and `dst` start on the same linear and physical page, with
/// `dst` wholly on it, in one mode? A chain between them survives any
/// remapping of the page (`CodeCache::unlink_linear_page`).
fn same_page(src: &Block, dst: &Block) -> bool {
    dst.pages.0 == dst.pages.1
        && src.pages.0 == dst.pages.0
        && page_of(src.eip) == page_of(dst.eip)
        && src.mode == dst.mode
}

/// Guest page of an address.
pub fn page_of(addr: u32) -> u32 {
    addr & !(PAGE_SIZE as u32 - 1)
}

impl CodeCache {
    /// The process exits next: leave both mappings to the exit
    /// (`GuestMemory::leave_mapped_at_exit`).
    pub fn leave_mapped_at_exit(&mut self) {
        self.exiting = true;
    }
}

impl Drop for CodeCache {
    fn drop(&mut self) {
        if self.exiting {
            return;
        }
        // SAFETY: unmapping the two mappings created in new().
        unsafe {
            libc::munmap(self.rw.as_ptr() as *mut libc::c_void, self.size);
            libc::munmap(self.rx.as_ptr() as *mut libc::c_void, self.size);
            libc::close(self.memfd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of 16 bytes of `ret` at linear `lin` (physical `phys`), with
    /// one direct exit to `target`; returns its id and its exit's id.
    fn block(c: &mut CodeCache, lin: u32, phys: u32, target: u32) -> (BlockId, u32) {
        probed_block(c, lin, phys, target, (0, 0))
    }

    /// `block` with its entry and the end of its code-page probe at
    /// `entry` (offsets; (0, 0): no probe).
    fn probed_block(c: &mut CodeCache, lin: u32, phys: u32, target: u32, entry: (u32, u32)) -> (BlockId, u32) {
        let t = Translation {
            code: vec![0xC3; 16],
            insn_map: Vec::new(),
            exits: vec![ExitSite { rel32_off: 4, tail_off: 8, target }],
            uses_fpu: false,
            entry_off: entry.0,
            entry_skip: entry.1,
            entries: Vec::new(),
        };
        let exit = c.next_exit_id();
        let id = c.install(lin, 0, Mode::default(), phys, lin + 16, (phys, phys), None, t, true).expect("room");
        c.index_linear(id, page_of(lin), page_of(lin));
        (id, exit)
    }

    /// Pages of `len` bytes at `at` present in this process's page tables
    /// (`/proc/self/pagemap`, bit 63 of each page's entry).
    fn present(at: *mut u8, len: usize) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        f.seek(SeekFrom::Start(at as u64 / 4096 * 8)).expect("seek");
        let mut v = vec![0u8; len.div_ceil(4096) * 8];
        f.read_exact(&mut v).expect("read");
        v.chunks(8).filter(|e| e[7] & 0x80 != 0).count()
    }

    #[test]
    fn the_cache_is_backed_a_chunk_ahead_in_both_mappings() {
        let size = 4 * POPULATE_CHUNK;
        let mut c = CodeCache::new(size).expect("cache");
        assert_eq!(present(c.rx.as_ptr(), size), 0);
        c.put_raw(&[0xC3; 100]).expect("room");
        if c.populated == usize::MAX {
            return; // a kernel without MADV_POPULATE_*: pages come by faults
        }
        let chunk_pages = POPULATE_CHUNK / 4096;
        assert_eq!(c.populated, POPULATE_CHUNK);
        assert_eq!(present(c.rw.as_ptr(), size), chunk_pages);
        assert_eq!(present(c.rx.as_ptr(), size), chunk_pages);
        // Code reaching past the chunk brings the next one.
        c.put_raw(&vec![0x90; POPULATE_CHUNK]).expect("room");
        assert_eq!(c.populated, 2 * POPULATE_CHUNK);
        assert_eq!(present(c.rx.as_ptr(), size), 2 * chunk_pages);
    }

    #[test]
    fn unlinking_a_page_keeps_chains_within_it() {
        let mut c = CodeCache::new(MIN_CACHE_SIZE).expect("cache");
        let mut hot = crate::cpu::Cpu::new().hot;
        let (a, a_exit) = block(&mut c, 0x0804_8000, 0x10_0000, 0x0804_8100);
        let (b, b_exit) = block(&mut c, 0x0804_8100, 0x10_0000, 0x0804_9000);
        let (other, _) = block(&mut c, 0x0804_9000, 0x20_0000, 0x0804_8100);
        assert!(c.link(a_exit, b));
        assert!(c.link(b_exit, other));
        // Page 0x08049000 may map other code now: B's chain into it goes.
        c.unlink_linear(0x0804_9000, 0x0804_9000, &mut hot);
        assert_eq!(c.exits[b_exit as usize].linked, None);
        // Page 0x08048000 too: A -> B stays (both run only while that page
        // maps physical 0x100000).
        c.unlink_linear(0x0804_8000, 0x0804_8000, &mut hot);
        assert_eq!(c.exits[a_exit as usize].linked, Some(b));
        assert!(!c.blocks[a as usize].indexed && !c.blocks[b as usize].indexed);
    }

    /// The target of exit `e`'s rel32 as patched.
    fn linked_to(c: &CodeCache, e: u32) -> usize {
        let at = c.exits[e as usize].rel32;
        // SAFETY: `at` is an exit's rel32 field inside the cache.
        let v =
            unsafe { std::ptr::read_unaligned((c.rw.as_ptr() as usize + (at - c.rx.as_ptr() as usize)) as *const i32) };
        (at as i64 + 4 + v as i64) as usize
    }

    #[test]
    fn probing_blocks_keep_their_chains_while_their_page_is_suspended() {
        let mut c = CodeCache::new(MIN_CACHE_SIZE).expect("cache");
        let mut hot = crate::cpu::Cpu::new().hot;
        // P probes page 0x08049000; Q, on the same page, does not.
        let (p, p_exit) = probed_block(&mut c, 0x0804_9000, 0x20_0000, 0x0804_9100, (8, 12));
        let (q, _) = block(&mut c, 0x0804_9100, 0x20_0000, 0x0804_8000);
        let (_, a_exit) = block(&mut c, 0x0804_8000, 0x10_0000, 0x0804_9000);
        let (_, a2_exit) = block(&mut c, 0x0804_8100, 0x10_0000, 0x0804_9100);
        // From another page a chain enters at the probe; from the same page
        // past it.
        assert!(c.link(a_exit, p));
        assert_eq!(linked_to(&c, a_exit), c.blocks[p as usize].host + 8);
        let (_, p2_exit) = probed_block(&mut c, 0x0804_9200, 0x20_0000, 0x0804_9000, (8, 12));
        assert!(c.link(p2_exit, p));
        assert_eq!(linked_to(&c, p2_exit), c.blocks[p as usize].host + 12);
        assert!(c.link(a2_exit, q));
        assert!(c.link(p_exit, q));
        jc_insert(&mut hot, Mode::default(), 0x0804_9000, c.blocks[p as usize].entry());
        c.suspend_linear_page(0x0804_9000, &mut hot);
        // P keeps its chains and its jump-cache entry; Q, which cannot
        // confirm the page, loses the chain from the other page.
        assert_eq!(c.exits[a_exit as usize].linked, Some(p));
        assert_eq!(c.exits[p2_exit as usize].linked, Some(p));
        assert_ne!(hot.jc_keys[jc_slot(Mode::default(), 0x0804_9000)], JC_EMPTY_KEY);
        assert_eq!(c.exits[a2_exit as usize].linked, None);
        assert_eq!(c.exits[p_exit as usize].linked, Some(q), "same page");
        assert!(c.has_linear(0x0804_9000));
        // If the page maps other code, everything goes.
        c.unlink_linear(0x0804_9000, 0x0804_9000, &mut hot);
        assert_eq!(c.exits[a_exit as usize].linked, None);
        assert_eq!(hot.jc_keys[jc_slot(Mode::default(), 0x0804_9000)], JC_EMPTY_KEY);
    }

    #[test]
    fn a_written_page_keeps_the_blocks_whose_bytes_did_not_change() {
        let mut c = CodeCache::new(MIN_CACHE_SIZE).expect("cache");
        let mut hot = crate::cpu::Cpu::new().hot;
        // A and B on physical page 0x100000 (A -> B chained), C on another
        // page chained to B; A and B keep their bytes, C does not.
        let (a, a_exit) = block(&mut c, 0x1000, 0x10_0000, 0x1100);
        let (b, _) = block(&mut c, 0x1100, 0x10_0000, 0x3000);
        let (_, c_exit) = block(&mut c, 0x2000, 0x20_0000, 0x1100);
        let mut page = vec![0u8; PAGE_SIZE];
        page[0..16].fill(0xAA);
        page[0x100..0x110].fill(0xBB);
        c.record_source(a, &page[0..16]);
        c.record_source(b, &page[0x100..0x110]);
        assert!(c.link(a_exit, b) && c.link(c_exit, b));
        jc_insert(&mut hot, Mode::default(), 0x1100, c.blocks[b as usize].entry());
        assert_eq!(c.suspect_page(0x10_0000, &mut hot), 0);
        assert!(c.is_unverified(0x10_0000));
        // Ways in from elsewhere are cut; the chain within the page stays.
        assert_eq!(c.exits[c_exit as usize].linked, None);
        assert_eq!(c.exits[a_exit as usize].linked, Some(b));
        assert_eq!(hot.jc_keys[jc_slot(Mode::default(), 0x1100)], JC_EMPTY_KEY);
        assert_eq!(c.lookup(0x1000, 0, Mode::default(), 0x10_0000), Some(a));
        // B's last byte changes: B goes, A stays.
        page[0x10F] = 0xCC;
        assert_eq!(c.verify_page(0x10_0000, &page, &mut hot), 1);
        assert!(!c.is_unverified(0x10_0000));
        assert!(c.blocks[a as usize].valid && !c.blocks[b as usize].valid);
        assert_eq!(c.exits[a_exit as usize].linked, None);
        assert_eq!(c.lookup(0x1100, 0, Mode::default(), 0x10_0000), None);
        // A block that kept no bytes is dropped by the write itself.
        let (d, _) = block(&mut c, 0x1200, 0x10_0000, 0x3000);
        assert_eq!(c.suspect_page(0x10_0000, &mut hot), 1);
        assert!(!c.blocks[d as usize].valid && c.blocks[a as usize].valid);
    }

    #[test]
    fn invalidating_an_eip_finds_it_under_a_cs_base() {
        let mut c = CodeCache::new(MIN_CACHE_SIZE).expect("cache");
        let mut hot = crate::cpu::Cpu::new().hot;
        let t = |n| Translation {
            code: vec![0xC3; n],
            insn_map: Vec::new(),
            exits: Vec::new(),
            uses_fpu: false,
            entry_off: 0,
            entry_skip: 0,
            entries: Vec::new(),
        };
        // Real-mode code at CS 0x1000 (base 0x10000): EIPs 0x50..0x60 and 0x70..0x80.
        let a = c.install(0x1_0050, 0x1_0000, Mode::default(), 0x1_0000, 0x60, (0x1_0000, 0x1_0000), None, t(16), true);
        let b = c.install(0x1_0070, 0x1_0000, Mode::default(), 0x1_0000, 0x80, (0x1_0000, 0x1_0000), None, t(16), true);
        let (a, b) = (a.expect("room"), b.expect("room"));
        assert_eq!(c.invalidate_at(0x1_0000, 0x40, &mut hot), 0);
        assert_eq!(c.invalidate_at(0x1_0000, 0x55, &mut hot), 1);
        assert!(!c.blocks[a as usize].valid && c.blocks[b as usize].valid);
    }
}
