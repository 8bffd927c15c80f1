//! Guest memory: RAM in one memfd, mapped into a 4 GiB-aligned host window
//! (the GS base of translated code) and once more as a host alias for the
//! VMM's own accesses.
//!
//! Layout of the reservation (all PROT_NONE unless said otherwise):
//!
//! ```text
//!  window - 2 pages   poll page (PROT_READ; PROT_NONE when an exit is requested)
//!  window - 1 page    guard (catches downward string instructions below 0)
//!  window + 0         guest RAM (memfd, shared), code pages write-protected
//!  window + ram_size  holes up to 4 GiB (faults are emulated)
//!  window + 4 GiB     guard (catches accesses that straddle the top of the window)
//! ```
//!
//! The window is 4 GiB aligned so that `mov esi, esi` turns a host pointer
//! `window + esi` back into the guest address (string instructions).

pub mod mmu;
pub mod shadow;

pub use shadow::ShadowFault;

use std::ptr::NonNull;

use thiserror::Error;

/// Size of one guest (and host) page.
pub const PAGE_SIZE: usize = 4096;
/// Size of the guest linear/physical address space.
pub const WINDOW_SIZE: usize = 1 << 32;
/// Offset of the poll page below the window base.
pub const POLL_PAGE_OFFSET: i32 = -(2 * PAGE_SIZE as i32);
/// Offset of the user window (the CPL 3 view when paging is on) from the
/// supervisor window; the 4 GiB between them is a guard.
pub const USER_WINDOW_OFFSET: usize = 2 * WINDOW_SIZE;
/// Reserved address space: room to align the two windows plus guards.
const RESERVE_SIZE: usize = 5 * WINDOW_SIZE;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("guest RAM size {0:#x} is not a non-zero multiple of 4 KiB below 4 GiB")]
    BadSize(u64),
    #[error("{what} failed: {source}")]
    Os { what: &'static str, source: std::io::Error },
}

fn os(what: &'static str) -> MemoryError {
    MemoryError::Os { what, source: std::io::Error::last_os_error() }
}

/// Reserve `RESERVE_SIZE` bytes of inaccessible host address space holding
/// a 4 GiB-aligned window pair with its poll pages; returns (reservation,
/// supervisor window).
fn reserve_window() -> Result<(usize, usize), MemoryError> {
    // SAFETY: fresh anonymous mappings; the reservation is owned by the
    // caller, the poll pages lie inside it.
    unsafe {
        let res = libc::mmap(
            std::ptr::null_mut(),
            RESERVE_SIZE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if res == libc::MAP_FAILED {
            return Err(os("reserving a 4 GiB guest window"));
        }
        // First 4 GiB boundary with room for the poll and guard pages below.
        let window = ((res as usize) + 2 * PAGE_SIZE + WINDOW_SIZE - 1) & !(WINDOW_SIZE - 1);
        for w in [window, window + USER_WINDOW_OFFSET] {
            let poll = libc::mmap(
                (w as isize + POLL_PAGE_OFFSET as isize) as *mut libc::c_void,
                PAGE_SIZE,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if poll == libc::MAP_FAILED {
                let e = os("mapping the poll page");
                libc::munmap(res, RESERVE_SIZE);
                return Err(e);
            }
        }
        Ok((res as usize, window))
    }
}

/// A device at guest physical addresses. Accesses from translated code fault
/// (device pages are never mapped in a window) and reach it through the VMM.
pub trait MmioDevice: Send {
    /// Read `size` (1, 2 or 4) bytes at `offset` into the region, little-endian.
    fn read(&mut self, offset: u32, size: u8) -> u32;
    fn write(&mut self, offset: u32, size: u8, value: u32);
}

/// A device's physical range. Devices are shared by every vCPU's view of
/// memory (`GuestMemory::new_view`), except those a view replaces with its
/// own (the local APIC's page).
#[derive(Clone)]
struct MmioRegion {
    base: u32,
    len: u32,
    dev: std::sync::Arc<std::sync::Mutex<Box<dyn MmioDevice>>>,
}

/// Guest RAM plus its host window.
pub struct GuestMemory {
    reservation: NonNull<u8>,
    window: usize,
    alias: NonNull<u8>,
    ram_size: usize,
    memfd: libc::c_int,
    /// The process is about to exit (`leave_mapped_at_exit`): Drop leaves
    /// the mappings to the exit.
    exiting: bool,
    /// Host memory areas this view's shadows may hold (the process limit
    /// is shared by every vCPU's view).
    area_budget: usize,
    /// Per guest physical page: write-protected in the windows because it
    /// holds translated code.
    protected: Vec<bool>,
    /// Shadow page tables (paging on).
    shadow: shadow::Shadow,
    /// One bit per linear page that translated code was fetched through
    /// since the bit was last cleared (INVLPG of such a page must unchain
    /// blocks, which only the engine can do).
    code_lin: Vec<u64>,
    /// Memory-mapped devices (they shadow RAM where they overlap it).
    mmio: Vec<MmioRegion>,
    /// (base, length) of each device, outside the RefCell: the test every
    /// VMM access makes. (One span over all of them would cover all of RAM
    /// once the VGA window and the APICs at the top are both there.)
    mmio_ranges: Vec<(u32, u32)>,
    /// From here to the end of RAM no device lies (the end of the highest
    /// device range inside RAM, usually the VGA window's): the quick answer
    /// for the VMM's accesses to kernel data above 1 MiB.
    plain_from: u64,
}

// SAFETY: the raw pointers are owned mappings; GuestMemory is moved between
// threads as a whole, never shared (each vCPU thread has its own view).
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    pub fn new(ram_size: u64) -> Result<Self, MemoryError> {
        if ram_size == 0 || !ram_size.is_multiple_of(PAGE_SIZE as u64) || ram_size >= WINDOW_SIZE as u64 {
            return Err(MemoryError::BadSize(ram_size));
        }
        let ram = ram_size as usize;
        // SAFETY: plain syscalls; every returned resource is checked and
        // owned by the returned value (released in Drop).
        unsafe {
            let fd = libc::memfd_create(c"btvisor-ram".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(os("memfd_create"));
            }
            if libc::ftruncate(fd, ram as libc::off_t) != 0 {
                libc::close(fd);
                return Err(os("ftruncate"));
            }
            Self::over_memfd(fd, ram, shadow::MAX_TOTAL_AREAS, Vec::new(), Vec::new())
        }
    }

    /// A GuestMemory over memfd `fd` (which it then owns) of `ram` bytes:
    /// a fresh window pair mapping it, an alias, `mmio`'s devices.
    fn over_memfd(
        fd: libc::c_int,
        ram: usize,
        area_budget: usize,
        mmio: Vec<MmioRegion>,
        mmio_ranges: Vec<(u32, u32)>,
    ) -> Result<Self, MemoryError> {
        // SAFETY: plain syscalls; every returned resource is checked and
        // owned by the returned value (released in Drop).
        unsafe {
            let (res, window) = match reserve_window() {
                Ok(r) => r,
                Err(e) => {
                    libc::close(fd);
                    return Err(e);
                }
            };
            let mut m = GuestMemory {
                reservation: NonNull::new_unchecked(res as *mut u8),
                window,
                alias: NonNull::dangling(),
                ram_size: ram,
                memfd: fd,
                exiting: false,
                area_budget,
                protected: vec![false; ram / PAGE_SIZE],
                shadow: shadow::Shadow::default(),
                code_lin: vec![0; (WINDOW_SIZE / PAGE_SIZE) / 64],
                mmio,
                mmio_ranges,
                plain_from: 0,
            };
            m.note_mmio_ranges();
            let alias =
                libc::mmap(std::ptr::null_mut(), ram, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            if alias == libc::MAP_FAILED {
                return Err(os("mapping guest RAM alias"));
            }
            m.alias = NonNull::new_unchecked(alias as *mut u8);
            let w = libc::mmap(
                window as *mut libc::c_void,
                ram,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                0,
            );
            if w == libc::MAP_FAILED {
                return Err(os("mapping guest RAM into the window"));
            }
            m.shadow.contexts.push(shadow::Context::new(window, None));
            Ok(m)
        }
    }

    /// Another view of the same guest RAM for another vCPU: its own window
    /// pair, alias, code-page protections and shadow state (its own TLB),
    /// the same devices. `views` is how many views the machine will have:
    /// they share the process's limit on host memory areas.
    pub fn new_view(&self, views: usize) -> Result<Self, MemoryError> {
        // SAFETY: dup of our own memfd; the result is checked and then
        // owned by the new view.
        let fd = unsafe { libc::dup(self.memfd) };
        if fd < 0 {
            return Err(os("dup of the guest RAM memfd"));
        }
        let budget = shadow::MAX_TOTAL_AREAS / views.max(1);
        let mut m = Self::over_memfd(fd, self.ram_size, budget, self.mmio.clone(), self.mmio_ranges.clone())?;
        m.unmap_mmio_identity();
        Ok(m)
    }

    /// Share the process's host-memory-area limit among `views` views.
    pub fn set_views(&mut self, views: usize) {
        self.area_budget = shadow::MAX_TOTAL_AREAS / views.max(1);
    }

    /// Put `dev` in place of the device at `base` in this view only (each
    /// vCPU's local APIC answers at the same address).
    pub fn replace_mmio(&mut self, base: u32, dev: Box<dyn MmioDevice>) {
        if let Some(r) = self.mmio.iter_mut().find(|r| r.base == base) {
            r.dev = std::sync::Arc::new(std::sync::Mutex::new(dev));
        }
    }

    /// Host address of guest address 0 with paging off (the GS base).
    pub fn window_base(&self) -> usize {
        self.window
    }

    /// Supervisor window of the current shadow context (the identity
    /// window with paging off).
    fn cur_window(&self) -> usize {
        self.shadow.window()
    }

    pub fn ram_size(&self) -> usize {
        self.ram_size
    }

    /// The poll pages below the supervisor and user windows.
    pub fn poll_pages(&self) -> [usize; 2] {
        let p = (self.cur_window() as isize + POLL_PAGE_OFFSET as isize) as usize;
        [p, p + USER_WINDOW_OFFSET]
    }

    /// The user window (CPL 3 view with paging on).
    pub fn user_window(&self) -> usize {
        self.cur_window() + USER_WINDOW_OFFSET
    }

    /// The window translated code of privilege `cpl` uses.
    pub fn window_for(&self, cpl: u8) -> usize {
        if self.shadow.enabled() && cpl == 3 { self.user_window() } else { self.cur_window() }
    }

    /// Which window and guest linear address a host address falls in.
    pub fn window_hit(&self, host: usize) -> Option<(u8, u32)> {
        let w = self.cur_window();
        if host >= w && host < w + WINDOW_SIZE {
            Some((0, (host - w) as u32))
        } else {
            let u = self.user_window();
            (host >= u && host < u + WINDOW_SIZE).then(|| (1, (host - u) as u32))
        }
    }

    /// Guest RAM as a host slice (the alias mapping, never write-protected).
    #[inline]
    pub fn ram(&self) -> &[u8] {
        // SAFETY: alias maps ram_size bytes for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.alias.as_ptr(), self.ram_size) }
    }

    pub fn ram_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in ram(); &mut self gives exclusive access on the host side.
        unsafe { std::slice::from_raw_parts_mut(self.alias.as_ptr(), self.ram_size) }
    }

    /// Raw host pointer to the alias (for the engine, which also lets guest code write RAM).
    pub fn alias_ptr(&self) -> *mut u8 {
        self.alias.as_ptr()
    }

    /// Record that code was fetched through the linear page of `lin`.
    pub fn mark_code_lin(&mut self, lin: u32) {
        let p = (lin >> 12) as usize;
        self.code_lin[p / 64] |= 1 << (p % 64);
    }

    /// Forget that mark for linear pages `[lo, hi]` (page addresses).
    pub fn clear_code_lin(&mut self, lo: u32, hi: u32) {
        for p in (lo >> 12)..=(hi >> 12) {
            let p = p as usize;
            self.code_lin[p / 64] &= !(1 << (p % 64));
        }
    }

    /// Forget every mark.
    pub fn clear_all_code_lin(&mut self) {
        self.code_lin.fill(0);
    }

    /// Was code fetched through the linear page of `lin`?
    pub fn has_code_lin(&self, lin: u32) -> bool {
        let p = (lin >> 12) as usize;
        self.code_lin[p / 64] & (1 << (p % 64)) != 0
    }

    /// Whether guest physical address `addr` is RAM (not a device).
    pub fn is_ram(&self, addr: u32) -> bool {
        (addr as usize) < self.ram_size && !self.is_mmio(addr)
    }

    /// Could `[addr, addr + len)` touch a device? (A range test per
    /// device, a handful at most: the fast path of every VMM access.)
    #[inline]
    fn near_mmio(&self, addr: u32, len: usize) -> bool {
        let (a, end) = (addr as u64, addr as u64 + len as u64);
        if a >= self.plain_from && end <= self.ram_size as u64 {
            return false;
        }
        self.mmio_ranges.iter().any(|&(b, n)| end > b as u64 && a < b as u64 + n as u64)
    }

    /// Recompute `plain_from` after a device range was added or moved.
    fn note_mmio_ranges(&mut self) {
        let ram = self.ram_size as u64;
        self.plain_from = self
            .mmio_ranges
            .iter()
            .map(|&(b, n)| (b as u64, b as u64 + n as u64))
            .filter(|&(b, _)| b < ram)
            .map(|(_, e)| e)
            .max()
            .unwrap_or(0);
    }

    /// Is `[addr, addr + len)` plain RAM (no device, inside RAM)?
    #[inline]
    pub fn is_plain_ram(&self, addr: u32, len: usize) -> bool {
        addr as usize + len <= self.ram_size && !self.near_mmio(addr, len)
    }

    /// Whether a device claims guest physical address `addr`.
    pub fn is_mmio(&self, addr: u32) -> bool {
        self.mmio_ranges.iter().any(|&(b, n)| addr.wrapping_sub(b) < n)
    }

    /// Attach a device at physical `[base, base + len)` (page-aligned). Its
    /// pages are never mapped in a window, so every access reaches it.
    pub fn add_mmio(&mut self, base: u32, len: u32, dev: Box<dyn MmioDevice>) {
        self.mmio.push(MmioRegion { base, len, dev: std::sync::Arc::new(std::sync::Mutex::new(dev)) });
        self.mmio_ranges.push((base, len));
        self.note_mmio_ranges();
        if !self.shadow.enabled() {
            self.unmap_mmio_identity();
        }
    }

    /// Make the device pages of the identity window inaccessible.
    fn unmap_mmio_identity(&mut self) {
        for r in self.mmio.iter() {
            // SAFETY: the range lies inside our own window reservation.
            unsafe {
                libc::mmap(
                    (self.window + r.base as usize) as *mut libc::c_void,
                    r.len as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
            }
        }
    }

    /// A device access of `size` bytes at `addr` if one device claims all of
    /// them: `Some(value read)` (for a write, the value written).
    fn mmio_access(&self, addr: u32, size: usize, write: Option<u32>) -> Option<u32> {
        let r = self.mmio.iter().find(|r| {
            let off = addr.wrapping_sub(r.base);
            off < r.len && off as u64 + size as u64 <= r.len as u64
        })?;
        let off = addr - r.base;
        let mut dev = crate::devices::chipset::lock(&r.dev);
        match write {
            Some(v) => {
                dev.write(off, size as u8, v);
                Some(v)
            }
            None => Some(dev.read(off, size as u8)),
        }
    }

    /// Is the page containing `addr` write-protected for translated code?
    #[inline]
    pub fn is_protected(&self, addr: u32) -> bool {
        self.protected.get(addr as usize / PAGE_SIZE).copied().unwrap_or(false)
    }

    /// Write-protect (or unprotect) one RAM page in the window.
    pub fn set_code_protect(&mut self, page: u32, on: bool) {
        let idx = page as usize / PAGE_SIZE;
        if idx >= self.protected.len() || self.protected[idx] == on {
            return;
        }
        self.protected[idx] = on;
        if self.shadow.enabled() {
            self.shadow.protect_aliases(page, on);
            return;
        }
        let prot = if on { libc::PROT_READ } else { libc::PROT_READ | libc::PROT_WRITE };
        // SAFETY: the page lies inside the RAM part of our own window mapping.
        let rc = unsafe { libc::mprotect((self.window + idx * PAGE_SIZE) as *mut libc::c_void, PAGE_SIZE, prot) };
        if rc != 0 {
            log::error!("mprotect of guest page {page:#x} failed: {}", std::io::Error::last_os_error());
        }
    }

    /// Data-breakpoint watch on one RAM page of the identity window (paging
    /// off): `Some(write_only)` makes writes (or every access) fault; `None`
    /// restores the page's normal protection.
    pub fn set_watch_protect(&mut self, page: u32, watch: Option<bool>) {
        let idx = page as usize / PAGE_SIZE;
        if idx >= self.protected.len() || self.shadow.enabled() {
            return;
        }
        let prot = match watch {
            Some(true) => libc::PROT_READ,
            Some(false) => libc::PROT_NONE,
            None if self.protected[idx] => libc::PROT_READ,
            None => libc::PROT_READ | libc::PROT_WRITE,
        };
        // SAFETY: a RAM page of our own window mapping.
        unsafe { libc::mprotect((self.window + idx * PAGE_SIZE) as *mut libc::c_void, PAGE_SIZE, prot) };
    }

    /// Drop every code-page protection (code cache flush).
    pub fn unprotect_all(&mut self) {
        for idx in 0..self.protected.len() {
            if self.protected[idx] {
                self.set_code_protect((idx * PAGE_SIZE) as u32, false);
            }
        }
    }

    /// Read guest physical memory; devices answer for their ranges, other
    /// bytes outside RAM read as all ones.
    pub fn read(&self, addr: u32, buf: &mut [u8]) {
        if self.near_mmio(addr, buf.len()) {
            if buf.len() <= 4
                && let Some(v) = self.mmio_access(addr, buf.len(), None)
            {
                buf.copy_from_slice(&v.to_le_bytes()[..buf.len()]);
                return;
            }
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr.wrapping_add(i as u32);
                *b = match self.mmio_access(a, 1, None) {
                    Some(v) => v as u8,
                    None => self.ram().get(a as usize).copied().unwrap_or(0xFF),
                };
            }
            return;
        }
        let ram = self.ram();
        if let Some(src) = ram.get(addr as usize..addr as usize + buf.len()) {
            buf.copy_from_slice(src);
            return;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr.wrapping_add(i as u32) as usize;
            *b = if a < ram.len() { ram[a] } else { 0xFF };
        }
    }

    /// Write guest physical memory; devices take their ranges, other bytes
    /// outside RAM are dropped.
    pub fn write(&mut self, addr: u32, data: &[u8]) {
        if self.near_mmio(addr, data.len()) {
            if data.len() <= 4 {
                let mut v = [0u8; 4];
                v[..data.len()].copy_from_slice(data);
                if self.mmio_access(addr, data.len(), Some(u32::from_le_bytes(v))).is_some() {
                    return;
                }
            }
            for (i, &b) in data.iter().enumerate() {
                let a = addr.wrapping_add(i as u32);
                if self.mmio_access(a, 1, Some(b as u32)).is_none()
                    && let Some(r) = self.ram_mut().get_mut(a as usize)
                {
                    *r = b;
                }
            }
            return;
        }
        let ram = self.ram_mut();
        if let Some(dst) = ram.get_mut(addr as usize..addr as usize + data.len()) {
            dst.copy_from_slice(data);
            return;
        }
        for (i, b) in data.iter().enumerate() {
            let a = addr.wrapping_add(i as u32) as usize;
            if a < ram.len() {
                ram[a] = *b;
            }
        }
    }

    /// Store a page-table entry update (accessed/dirty bits) through a
    /// shared reference, as a walk for a read does; outside RAM it is
    /// dropped. Atomic, as the processor's: another vCPU may be changing
    /// the entry (`mmu::set_entry_bits`).
    pub(crate) fn write_u32_shared(&self, addr: u32, v: u32) {
        if (addr as usize).checked_add(4).is_some_and(|end| end <= self.ram_size) {
            mmu::set_entry_bits(self.ram(), addr, v);
        }
    }

    /// Set and clear bits of the byte at physical `addr` in one atomic
    /// read-modify-write, as the processor's locked updates of descriptor
    /// bits (accessed, TSS busy) are: another vCPU's store to the same
    /// descriptor is never lost. Device memory gets a plain read and write.
    pub fn update_u8(&mut self, addr: u32, set: u8, clear: u8) {
        if !self.is_plain_ram(addr, 1) {
            let b = (self.read_u8(addr) | set) & !clear;
            self.write(addr, &[b]);
            return;
        }
        let ram = self.ram();
        // SAFETY: the byte lies inside guest RAM (is_plain_ram), which
        // translated code and other vCPUs only access through raw pointers
        // or atomics, never through Rust references held across this.
        let cell = unsafe { std::sync::atomic::AtomicU8::from_ptr(ram.as_ptr().add(addr as usize) as *mut u8) };
        let _ = cell.fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |b| {
            Some((b | set) & !clear)
        });
    }

    pub fn read_u8(&self, addr: u32) -> u8 {
        let mut b = [0u8; 1];
        self.read(addr, &mut b);
        b[0]
    }

    pub fn read_u16(&self, addr: u32) -> u16 {
        let mut b = [0u8; 2];
        self.read(addr, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn read_u32(&self, addr: u32) -> u32 {
        let mut b = [0u8; 4];
        self.read(addr, &mut b);
        u32::from_le_bytes(b)
    }
}

/// Replace the page at host address `addr` (inside a window) with a
/// read-only page of 0xFF bytes: what reads of unbacked guest memory see.
pub fn map_ones_page(addr: usize) {
    // SAFETY: callers pass a page of a window reservation owned by a
    // GuestMemory; anonymous memory mapped there touches nothing else.
    unsafe {
        let p = libc::mmap(
            addr as *mut libc::c_void,
            PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        if p != libc::MAP_FAILED {
            std::ptr::write_bytes(p as *mut u8, 0xFF, PAGE_SIZE);
            libc::mprotect(p, PAGE_SIZE, libc::PROT_READ);
        }
    }
}

/// Map a zeroed, writable scratch page at `addr` (a page of a window that
/// maps device memory, so never mapped otherwise): the bounce page on which
/// the engine runs one instruction that touches the device. True on success.
pub fn map_bounce_page(addr: usize) -> bool {
    // SAFETY: callers pass a page of a window reservation owned by a
    // GuestMemory that maps no guest RAM; anonymous memory mapped there
    // touches nothing else.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    p != libc::MAP_FAILED
}

/// Make the bounce page at `addr` inaccessible again (as device pages are).
pub fn unmap_bounce_page(addr: usize) {
    make_inaccessible(addr, PAGE_SIZE);
}

/// Replace `len` bytes at `addr`, inside a window reservation owned by a
/// GuestMemory, with one inaccessible anonymous area.
pub(crate) fn make_inaccessible(addr: usize, len: usize) {
    // SAFETY: callers pass a range of a window reservation owned by a
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

/// Async-signal-safe form of `set_poll` (used from the timer signal handler).
pub fn set_poll_page(page: usize, request_exit: bool) {
    let prot = if request_exit { libc::PROT_NONE } else { libc::PROT_READ };
    // SAFETY: `page` is the poll page of a live GuestMemory; mprotect is a
    // plain syscall and safe to call from a signal handler.
    unsafe {
        libc::mprotect(page as *mut libc::c_void, PAGE_SIZE, prot);
    }
}

impl GuestMemory {
    /// The process exits next: leave the window reservations, the alias
    /// and the memfd to the exit, which tears the whole address space down
    /// at once (after a Linux boot, its last console line to the exit took
    /// 24 ms this way against 29 ms unmapping them one by one).
    pub fn leave_mapped_at_exit(&mut self) {
        self.exiting = true;
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        if self.exiting {
            return;
        }
        shadow::release(&mut self.shadow);
        // SAFETY: unmapping exactly the regions created in new().
        unsafe {
            libc::munmap(self.reservation.as_ptr() as *mut libc::c_void, RESERVE_SIZE);
            if self.alias != NonNull::dangling() {
                libc::munmap(self.alias.as_ptr() as *mut libc::c_void, self.ram_size);
            }
            libc::close(self.memfd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_alias_share_ram() {
        let mut m = GuestMemory::new(1 << 20).expect("guest memory");
        assert_eq!(m.window_base() % WINDOW_SIZE, 0);
        m.write(0x1000, &[1, 2, 3, 4]);
        // SAFETY: the window maps RAM at offset 0x1000.
        let v = unsafe { std::ptr::read_volatile((m.window_base() + 0x1000) as *const u32) };
        assert_eq!(v, 0x0403_0201);
        assert_eq!(m.read_u32(0x1000), 0x0403_0201);
        // Outside RAM reads as all ones.
        assert_eq!(m.read_u32(0x20_0000), 0xFFFF_FFFF);
        m.set_code_protect(0x1000, true);
        assert!(m.is_protected(0x1234));
        m.write(0x1000, &[9]); // alias stays writable
        assert_eq!(m.read_u8(0x1000), 9);
        m.unprotect_all();
        assert!(!m.is_protected(0x1000));
    }

    #[test]
    fn byte_updates_are_atomic_against_another_thread() {
        // Two threads flip disjoint bits of one byte 20,000 times each
        // (as two vCPUs setting a descriptor's accessed bit while another
        // toggles its busy bit): no update is lost.
        let mut m = GuestMemory::new(1 << 20).expect("guest memory");
        m.write(0x2005, &[0]);
        let base = m.window_base() + 0x2005;
        let other = std::thread::spawn(move || {
            for _ in 0..20_000 {
                // SAFETY: the window byte is guest RAM mapped for the test's life.
                let cell = unsafe { std::sync::atomic::AtomicU8::from_ptr(base as *mut u8) };
                cell.fetch_xor(0x80, std::sync::atomic::Ordering::SeqCst);
            }
        });
        for k in 0..20_000 {
            if k % 2 == 0 {
                m.update_u8(0x2005, 1, 0);
            } else {
                m.update_u8(0x2005, 0, 1);
            }
        }
        other.join().expect("thread");
        assert_eq!(m.read_u8(0x2005), 0, "20,000 toggles of each bit leave it clear");
        m.update_u8(0x2005, 3, 0);
        m.update_u8(0x2005, 0, 2);
        assert_eq!(m.read_u8(0x2005), 1);
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(GuestMemory::new(0).is_err());
        assert!(GuestMemory::new(4095).is_err());
        assert!(GuestMemory::new(1 << 32).is_err());
    }
}
