//! The guest MMU: two-level IA-32 paging (4 KiB pages, 4 MiB pages with
//! CR4.PSE, global pages with CR4.PGE), walked in software over guest RAM.
//! It sets accessed and dirty bits in the guest's tables as hardware does
//! and reports page faults with the architectural error code.

/// CR0.PG
pub const CR0_PG: u32 = 1 << 31;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u32 = 1 << 16;
/// CR4.PSE: 4 MiB pages.
pub const CR4_PSE: u32 = 1 << 4;
/// CR4.PGE: global pages.
pub const CR4_PGE: u32 = 1 << 7;

/// Page-table entry bits.
pub mod pte {
    pub const P: u32 = 1 << 0;
    pub const RW: u32 = 1 << 1;
    pub const US: u32 = 1 << 2;
    pub const A: u32 = 1 << 5;
    pub const D: u32 = 1 << 6;
    pub const PS: u32 = 1 << 7;
    pub const G: u32 = 1 << 8;
}

/// Page-fault error code bits.
pub mod pf {
    /// The page was present (a protection violation).
    pub const P: u32 = 1 << 0;
    pub const W: u32 = 1 << 1;
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
}

/// Bits 13..21 of a 4 MiB PDE must be zero without PSE-36 (the virtual CPU
/// has no PSE-36).
const PDE4M_RESERVED: u32 = 0x003F_E000;

/// The kind of access being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    /// CPL 3.
    pub user: bool,
}

/// A successful translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the 4 KiB page holding the linear address.
    pub phys_page: u32,
    /// Writes are allowed at this privilege (and with CR0.WP).
    pub writable: bool,
    /// The entry is global (survives CR3 reloads with CR4.PGE).
    pub global: bool,
    /// The dirty bit is set (a write needs no further table update).
    pub dirty: bool,
}

/// The paging registers a walk depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PagingRegs {
    pub cr0: u32,
    pub cr3: u32,
    pub cr4: u32,
}

impl PagingRegs {
    pub fn enabled(&self) -> bool {
        self.cr0 & CR0_PG != 0
    }
}

fn read32(ram: &[u8], a: u32) -> u32 {
    let a = a as usize;
    match ram.get(a..a + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        // Tables outside RAM read as not present.
        None => 0,
    }
}

/// Set the accessed and dirty bits of `v` in the entry at `a` with one
/// atomic OR, as the processor does: with several vCPUs another may be
/// rewriting the entry, and a plain store of the value read would undo its
/// change (resurrect a mapping it had just cleared).
pub(crate) fn set_entry_bits(ram: &[u8], a: u32, v: u32) {
    let a = a as usize;
    if a + 4 > ram.len() {
        return;
    }
    if !(ram.as_ptr() as usize + a).is_multiple_of(4) {
        // Only a test's byte vector: guest RAM is page aligned.
        let old = read32(ram, a as u32);
        // SAFETY: as below; unaligned, so plainly.
        unsafe { std::ptr::write_unaligned(ram.as_ptr().add(a) as *mut u32, old | (v & (pte::A | pte::D))) };
        return;
    }
    // SAFETY: the 4 aligned bytes lie inside `ram`, guest RAM shared with
    // translated code and other vCPUs, which only ever access it through
    // raw pointers or atomics, never Rust references held across this.
    let cell = unsafe { std::sync::atomic::AtomicU32::from_ptr(ram.as_ptr().add(a) as *mut u32) };
    cell.fetch_or(v.to_le() & (pte::A | pte::D), std::sync::atomic::Ordering::SeqCst);
}

/// The raw page-directory and page-table entries `linear` is translated
/// through (the PDE twice for a 4 MiB page): two translations made from
/// equal entries are equal, which is how cached shadow mappings are
/// revalidated after a CR3 load.
pub fn entries(ram: &[u8], regs: PagingRegs, linear: u32) -> (u32, u32) {
    let pde = read32(ram, (regs.cr3 & !0xFFF) + ((linear >> 22) << 2));
    if pde & pte::P == 0 || (regs.cr4 & CR4_PSE != 0 && pde & pte::PS != 0) {
        return (pde, pde);
    }
    (pde, read32(ram, (pde & !0xFFF) + (((linear >> 12) & 0x3FF) << 2)))
}

/// Translate `linear` for `access`, updating A/D bits in `ram` on success.
/// On failure returns the page-fault error code (CR2 is `linear`).
pub fn walk(ram: &mut [u8], regs: PagingRegs, linear: u32, access: Access) -> Result<Translation, u32> {
    let (t, updates) = lookup(ram, regs, linear, access)?;
    for (addr, v) in updates.into_iter().flatten() {
        set_entry_bits(ram, addr, v);
    }
    Ok(t)
}

/// The accessed/dirty updates a walk makes: (entry address, new value)
/// for the PDE and the PTE.
pub type EntryUpdates = [Option<(u32, u32)>; 2];

/// Translate without touching the tables; also returns the accessed/dirty
/// updates a real access would make.
pub fn lookup(ram: &[u8], regs: PagingRegs, linear: u32, access: Access) -> Result<(Translation, EntryUpdates), u32> {
    let err_base = if access.write { pf::W } else { 0 } | if access.user { pf::U } else { 0 };
    let pde_addr = (regs.cr3 & !0xFFF) + ((linear >> 22) << 2);
    let pde = read32(ram, pde_addr);
    if pde & pte::P == 0 {
        return Err(err_base);
    }
    let pse = regs.cr4 & CR4_PSE != 0;
    let large = pse && pde & pte::PS != 0;
    if large && pde & PDE4M_RESERVED != 0 {
        return Err(err_base | pf::P | pf::RSVD);
    }
    let (entry, entry_addr, phys_page) = if large {
        (pde, pde_addr, (pde & 0xFFC0_0000) | (linear & 0x003F_F000))
    } else {
        let pte_addr = (pde & !0xFFF) + (((linear >> 12) & 0x3FF) << 2);
        let e = read32(ram, pte_addr);
        if e & pte::P == 0 {
            return Err(err_base);
        }
        (e, pte_addr, e & !0xFFF)
    };
    // Effective rights: both levels must allow.
    let user_ok = pde & pte::US != 0 && entry & pte::US != 0;
    let rw_ok = pde & pte::RW != 0 && entry & pte::RW != 0;
    let wp = regs.cr0 & CR0_WP != 0;
    if access.user && !user_ok {
        return Err(err_base | pf::P);
    }
    let writable = rw_ok || (!access.user && !wp);
    if access.write && !writable {
        return Err(err_base | pf::P);
    }
    // Accessed bits on both levels; dirty on the final entry for writes.
    let mut updates = [None, None];
    if !large && pde & pte::A == 0 {
        updates[0] = Some((pde_addr, pde | pte::A));
    }
    let mut new = entry | pte::A;
    if access.write {
        new |= pte::D;
    }
    if new != entry {
        updates[1] = Some((entry_addr, new));
    }
    let global = regs.cr4 & CR4_PGE != 0 && new & pte::G != 0;
    Ok((Translation { phys_page, writable, global, dirty: new & pte::D != 0 }, updates))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write32(ram: &mut [u8], a: u32, v: u32) {
        ram[a as usize..a as usize + 4].copy_from_slice(&v.to_le_bytes());
    }

    const PD: u32 = 0x1000;
    const PT: u32 = 0x2000;

    fn setup() -> (Vec<u8>, PagingRegs) {
        let mut ram = vec![0u8; 1 << 20];
        // PDE 0 -> PT (present, RW, user)
        write32(&mut ram, PD, PT | pte::P | pte::RW | pte::US);
        // linear 0x5000 -> phys 0x9000 user RW; 0x6000 -> 0xA000 supervisor RO
        write32(&mut ram, PT + 5 * 4, 0x9000 | pte::P | pte::RW | pte::US);
        write32(&mut ram, PT + 6 * 4, 0xA000 | pte::P);
        (ram, PagingRegs { cr0: CR0_PG | 1, cr3: PD, cr4: 0 })
    }

    const R0: Access = Access { write: false, user: false };
    const W0: Access = Access { write: true, user: false };
    const R3: Access = Access { write: false, user: true };
    const W3: Access = Access { write: true, user: true };

    #[test]
    fn translation_and_ad_bits() {
        let (mut ram, regs) = setup();
        let t = walk(&mut ram, regs, 0x5123, R0).expect("mapped");
        assert_eq!(t.phys_page, 0x9000);
        assert!(!t.dirty);
        assert_ne!(read32(&ram, PD) & pte::A, 0, "PDE accessed");
        assert_eq!(read32(&ram, PT + 20) & (pte::A | pte::D), pte::A);
        let t = walk(&mut ram, regs, 0x5123, W3).expect("user write ok");
        assert!(t.dirty);
        assert_eq!(read32(&ram, PT + 20) & pte::D, pte::D);
        assert_eq!(read32(&ram, PD) & pte::D, 0, "no D in a PDE of 4 KiB pages");
    }

    #[test]
    fn error_codes() {
        let (mut ram, mut regs) = setup();
        assert_eq!(walk(&mut ram, regs, 0x7000, R0), Err(0));
        assert_eq!(walk(&mut ram, regs, 0x7000, W0), Err(pf::W));
        assert_eq!(walk(&mut ram, regs, 0x7000, R3), Err(pf::U));
        assert_eq!(walk(&mut ram, regs, 0x6000, R3), Err(pf::U | pf::P));
        assert_eq!(walk(&mut ram, regs, 0x6000, W3), Err(pf::U | pf::W | pf::P));
        // Supervisor write to a read-only page: allowed without WP, a fault with it.
        assert!(walk(&mut ram, regs, 0x6000, W0).is_ok());
        regs.cr0 |= CR0_WP;
        assert_eq!(walk(&mut ram, regs, 0x6000, W0), Err(pf::W | pf::P));
        // A not-present page is not touched: no accessed bit.
        assert_eq!(read32(&ram, PT + 7 * 4), 0);
    }

    #[test]
    fn large_and_global_pages() {
        let (mut ram, mut regs) = setup();
        write32(&mut ram, PD + 0x200 * 4, 0x0040_0000 | pte::P | pte::RW | pte::PS | pte::G);
        // Without PSE the PS bit is ignored: the PDE points at a page table.
        regs.cr4 = CR4_PSE | CR4_PGE;
        let t = walk(&mut ram, regs, 0x8012_3456, W0).expect("4 MiB page");
        assert_eq!(t.phys_page, 0x0052_3000);
        assert!(t.global);
        assert_ne!(read32(&ram, PD + 0x800) & pte::D, 0, "D set in the 4 MiB PDE");
        write32(&mut ram, PD + 0x201 * 4, 0x0040_2000 | pte::P | pte::PS);
        assert_eq!(walk(&mut ram, regs, 0x8040_0000, R0), Err(pf::P | pf::RSVD));
    }
}
