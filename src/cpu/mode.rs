//! The translation mode: the part of the CPU state a block's translation
//! depends on. It is part of the block key, so a change of CPL, of code
//! segment size, of a segment's flatness or of the FPU trap bits makes the
//! dispatcher use (or build) other translations.

use super::{Cpu, flags};

/// Mode bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mode(pub u16);

impl Mode {
    const CPL_MASK: u16 = 3;
    /// CS.D = 0: 16-bit code segment.
    pub const CS16: u16 = 1 << 2;
    /// CR0.TS: FPU, MMX and SSE instructions raise #NM.
    pub const TS: u16 = 1 << 3;
    /// CR0.EM: x87 raises #NM, MMX and SSE raise #UD.
    pub const EM: u16 = 1 << 4;
    /// CR4.OSFXSR clear: SSE instructions raise #UD.
    pub const NO_OSFXSR: u16 = 1 << 5;
    /// CR0.MP: WAIT raises #NM when TS is set.
    pub const MP: u16 = 1 << 6;
    /// The bits that decide how FPU/MMX/SSE instructions trap.
    pub const FPU_BITS: u16 = Self::TS | Self::EM | Self::NO_OSFXSR | Self::MP;
    /// EFLAGS.TF: single-step, one instruction per block.
    pub const TF: u16 = 1 << 7;
    /// Bits 8..13: segment register n (ES, CS, SS, DS, FS, GS) is not flat.
    const NONFLAT_SHIFT: u16 = 8;
    /// FS, GS: not flat only by a base, with a 4 GiB expand-up limit no
    /// access can exceed (Linux's per-CPU FS, the TLS GS), or null (Linux's
    /// user FS, which its system calls toggle with the per-CPU one in
    /// place): translated as the offset plus the base after a flag-free
    /// test for null, without pushing flags for a limit check (set with
    /// the segment's NONFLAT bit).
    pub const FS_BASED: u16 = 1 << 14;
    pub const GS_BASED: u16 = 1 << 15;

    pub fn cpl(self) -> u8 {
        (self.0 & Self::CPL_MASK) as u8
    }

    pub fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Is segment register `seg` (ES..GS index) flat in this mode?
    pub fn seg_flat(self, seg: usize) -> bool {
        self.0 & (1 << (Self::NONFLAT_SHIFT + seg as u16)) == 0
    }

    /// Is segment register `seg` non-flat only by its base, or null
    /// (`FS_BASED`, `GS_BASED`)?
    pub fn seg_based(self, seg: usize) -> bool {
        match seg {
            super::SEG_FS => self.has(Self::FS_BASED),
            super::SEG_GS => self.has(Self::GS_BASED),
            _ => false,
        }
    }

    /// Every segment flat, 32-bit code, no single-stepping: the modes whose
    /// blocks use the inline jump cache.
    pub fn is_fast(self) -> bool {
        self.0 & (Self::CS16 | Self::TF | (0x3F << Self::NONFLAT_SHIFT)) == 0
    }

    /// 32-bit code in a flat CS without single-stepping: the modes whose
    /// blocks use the inline jump cache. Other segments may be non-flat
    /// (Linux's per-CPU FS in the kernel, TLS GS in user space): their
    /// translations read segment bases and limits at run time, and each
    /// table is tagged with the whole mode it holds blocks of (the
    /// dispatcher empties a table before code of another mode uses it).
    /// CS must be flat because the inline lookup keys on EIP, the
    /// dispatcher on the linear address.
    pub fn uses_jump_cache(self) -> bool {
        self.0 & (Self::CS16 | Self::TF | (1 << (Self::NONFLAT_SHIFT + super::SEG_CS as u16))) == 0
    }

    /// Which jump-cache table the mode uses (with `uses_jump_cache`).
    pub fn jc_table(self) -> usize {
        usize::from(self.cpl() == 3) | (usize::from(self.has(Self::TS) || self.has(Self::EM)) << 1)
    }

    /// The block-map key of a block at `eip` in this mode.
    pub fn key(self, eip: u32) -> u64 {
        eip as u64 | (self.0 as u64) << 32
    }
}

/// CR0 and CR4 bits the mode depends on.
const CR0_MP: u32 = 1 << 1;
const CR0_EM: u32 = 1 << 2;
const CR0_TS: u32 = 1 << 3;
const CR4_OSFXSR: u32 = 1 << 9;
/// Descriptor attribute bit D/B.
const ATTR_DB: u16 = 1 << 14;

impl Cpu {
    /// The current translation mode.
    pub fn mode(&self) -> Mode {
        let mut m = self.cpl as u16;
        // Real mode is 16-bit code too: its CS keeps D clear.
        if self.seg[super::SEG_CS].attr & ATTR_DB == 0 {
            m |= Mode::CS16;
        }
        for (bit, on) in [
            (Mode::TS, self.cr[0] & CR0_TS != 0),
            (Mode::EM, self.cr[0] & CR0_EM != 0),
            (Mode::MP, self.cr[0] & CR0_MP != 0),
            (Mode::NO_OSFXSR, self.cr[4] & CR4_OSFXSR == 0),
            (Mode::TF, self.hot.sys_flags & flags::TF != 0),
        ] {
            if on {
                m |= bit;
            }
        }
        for (k, s) in self.seg.iter().enumerate() {
            if self.seg_nonflat(k, s) {
                m |= 1 << (Mode::NONFLAT_SHIFT + k as u16);
            }
        }
        for (k, bit) in [(super::SEG_FS, Mode::FS_BASED), (super::SEG_GS, Mode::GS_BASED)] {
            if self.seg_based_or_null(k, &self.seg[k]) {
                m |= bit;
            }
        }
        Mode(m)
    }

    /// Is segment register `k` holding `s` non-flat only by a non-zero
    /// base, with a 4 GiB expand-up limit (no access can exceed it), or
    /// null in protected mode (every access faults)?
    pub fn seg_based_or_null(&self, k: usize, s: &super::Segment) -> bool {
        self.seg_nonflat(k, s) && (self.seg_null(k, s) || (s.limit == u32::MAX && !s.is_expand_down()))
    }

    /// Is segment register `k` holding `s` null in protected mode (every
    /// access through it faults)? CS is never null.
    pub fn seg_null(&self, k: usize, s: &super::Segment) -> bool {
        k != super::SEG_CS && s.selector & 0xFFFC == 0 && self.cr[0] & 1 != 0
    }

    /// Would segment register `k` holding `s` make the mode non-flat for
    /// it (accesses checked and based at run time)?
    pub fn seg_nonflat(&self, k: usize, s: &super::Segment) -> bool {
        !s.is_flat() || self.seg_null(k, s) || s.is_expand_down()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_mode_is_fast_cpl0() {
        let c = Cpu::new();
        let m = c.mode();
        assert!(m.is_fast());
        assert_eq!(m.cpl(), 0);
        assert!(m.has(Mode::NO_OSFXSR));
        assert_eq!(m.jc_table(), 0);
    }

    #[test]
    fn mode_tracks_cpl_ts_and_segments() {
        let mut c = Cpu::new();
        c.cpl = 3;
        c.cr[0] |= CR0_TS;
        c.seg[super::super::SEG_FS].base = 0x1000;
        let m = c.mode();
        assert_eq!(m.cpl(), 3);
        assert!(m.has(Mode::TS));
        assert!(!m.seg_flat(super::super::SEG_FS));
        assert!(m.seg_flat(super::super::SEG_DS));
        assert!(!m.is_fast());
        assert!(m.uses_jump_cache(), "a per-CPU or TLS segment keeps the jump cache");
        assert_ne!(m.key(0x100), Cpu::new().mode().key(0x100));
    }

    #[test]
    fn jump_cache_needs_flat_32bit_cs_and_no_tf() {
        let mut c = Cpu::new();
        c.seg[super::super::SEG_CS].base = 0x1000;
        assert!(!c.mode().uses_jump_cache(), "the inline lookup keys on EIP");
        let mut c = Cpu::new();
        c.hot.sys_flags |= flags::TF;
        assert!(!c.mode().uses_jump_cache());
    }
}
