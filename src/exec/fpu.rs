//! The guest's x87/SSE state seen from the VMM: stores of it the guest asks
//! for (FNSTENV, FNSAVE, FXSAVE run in the VMM) and the debugger's view.
//!
//! While the guest runs, its x87/MMX registers live in this thread's FPU
//! (the VMM's Rust code never uses x87), its XMM registers and MXCSR in
//! `HotState` outside translated code. The live FPU's last-instruction
//! pointer (FIP) is a host address in the code cache: images the guest or
//! the debugger sees get the guest EIP of that instruction instead.

use super::*;

/// Bytes of its 512-byte area FXSAVE stores outside 64-bit mode: the x87,
/// MXCSR and XMM0-7 images. Bytes 288-463 are reserved and 464-511 belong
/// to software; the processor leaves both alone.
pub(super) const FXSAVE_STORED: usize = 288;

/// Byte offsets in a 32-bit-format FXSAVE image (the VMM's stores and the
/// debugger's register view share them).
pub mod fxsave {
    use std::ops::Range;
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    /// The abridged tag byte (one bit per physical register: non-empty).
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FCS: usize = 12;
    pub const FDP: usize = 16;
    pub const FDS: usize = 20;
    pub const MXCSR: usize = 24;
    /// ST0-7 (MM0-7), 16 bytes each, 10 of them the register.
    pub const ST0: usize = 32;
    pub const XMM0: usize = 160;
    /// The x87 control/status/tag/opcode words.
    pub const X87_HEAD: Range<usize> = FCW..FIP;
    pub const ST: Range<usize> = ST0..XMM0;
    pub const XMM: Range<usize> = XMM0..XMM0 + 128;
}
use fxsave::{
    FCS as FX_FCS, FDS as FX_FDS, FIP as FX_FIP, MXCSR as FX_MXCSR, ST as FX_ST, X87_HEAD as FX_X87_HEAD, XMM as FX_XMM,
};

#[repr(C, align(16))]
struct Area([u8; 512]);

/// The live FPU's FXSAVE image with the guest's MXCSR and XMM registers,
/// and the host address of the last x87 instruction.
pub(super) fn live_image(hot: &HotState) -> ([u8; 512], usize) {
    let mut fx64 = Area([0; 512]);
    // SAFETY: FXSAVE64 writes 512 bytes to a 16-byte aligned buffer.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) fx64.0.as_mut_ptr(), options(nostack)) };
    let host_fip = u64::from_le_bytes(fx64.0[8..16].try_into().unwrap_or([0; 8])) as usize;
    let mut img = Area([0; 512]);
    // SAFETY: FXSAVE stores 512 bytes (32-bit format) into the aligned buffer.
    unsafe { core::arch::asm!("fxsave [{}]", in(reg) img.0.as_mut_ptr(), options(nostack)) };
    // The live XMM registers and MXCSR are the VMM's here.
    img.0[FX_MXCSR..FX_MXCSR + 4].copy_from_slice(&hot.mxcsr.to_le_bytes());
    img.0[FX_XMM].copy_from_slice(&hot.xmm);
    (img.0, host_fip)
}

/// Load the x87 part of FXSAVE image `img` (control, status, tag and
/// opcode words, ST0-7) into the live FPU, keeping the VMM's MXCSR and XMM.
pub(super) fn load_x87(img: &[u8; 512]) {
    let mut cur = Area([0; 512]);
    // SAFETY: FXSAVE64 writes 512 bytes to a 16-byte aligned buffer.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) cur.0.as_mut_ptr(), options(nostack)) };
    cur.0[FX_X87_HEAD].copy_from_slice(&img[FX_X87_HEAD]);
    cur.0[FX_ST].copy_from_slice(&img[FX_ST]);
    // SAFETY: FXRSTOR64 reads the 512-byte aligned image just taken, whose
    // MXCSR is the live (valid) one; the x87 words come from the debugger
    // and any value of them is accepted by FXRSTOR.
    unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) cur.0.as_ptr(), options(nostack)) };
}

impl Engine {
    /// The guest EIP of the instruction translated at host address `host`
    /// (the host address itself if it is not in a block).
    pub(super) fn guest_fip(&self, host: usize) -> u32 {
        self.cache
            .block_at(host)
            .and_then(|b| {
                let off = (host - b.host) as u32;
                let k = b.insn_map.partition_point(|e| e.host_off <= off);
                k.checked_sub(1).and_then(|k| b.insn_map.get(k)).map(|e| e.eip)
            })
            .unwrap_or(host as u32)
    }

    /// FNSTENV/FNSAVE/FXSAVE: the live x87 state holds the *host* address of
    /// the last x87 instruction (FIP); the image the guest stores gets the
    /// guest EIP and CS instead, and FXSAVE gets the guest's XMM/MXCSR.
    pub(super) fn fpu_store(&mut self, i: &Instruction) -> Step {
        use iced_x86::Mnemonic as M;
        if let Some(v) = crate::translate::fpu_fault(i, self.mode) {
            return self.exception(Exception::new(v));
        }
        let (fx, host_fip) = live_image(&self.cpu.hot);
        let guest_fip = self.guest_fip(host_fip);
        let cs = self.cpu.seg[SEG_CS].selector;
        let ds = self.cpu.seg[crate::cpu::SEG_DS].selector;
        let mut img = Area([0; 512]);
        let len = match i.mnemonic() {
            M::Fnstenv | M::Fstenv => {
                // SAFETY: FNSTENV stores 28 bytes (32-bit format) into the buffer.
                unsafe { core::arch::asm!("fnstenv [{}]", in(reg) img.0.as_mut_ptr(), options(nostack)) };
                28
            }
            M::Fnsave | M::Fsave => {
                // SAFETY: FNSAVE stores 108 bytes and reinitializes the FPU, as the guest asked.
                unsafe { core::arch::asm!("fnsave [{}]", in(reg) img.0.as_mut_ptr(), options(nostack)) };
                108
            }
            _ => {
                img.0 = fx;
                FXSAVE_STORED
            }
        };
        // FIP and its selector; the data pointer's selector is the guest's DS.
        let fxsave = len == FXSAVE_STORED;
        let (fip_at, fcs_at, fds_at) = if fxsave { (FX_FIP, FX_FCS, FX_FDS) } else { (12, 16, 24) };
        img.0[fip_at..fip_at + 4].copy_from_slice(&guest_fip.to_le_bytes());
        img.0[fcs_at..fcs_at + 2].copy_from_slice(&cs.to_le_bytes());
        img.0[fds_at..fds_at + 2].copy_from_slice(&ds.to_le_bytes());
        let mut written = Vec::new();
        let r = {
            let mut env = Env::new(&mut self.cpu, &mut self.mem, &mut self.io, &mut written);
            match env.ea(i) {
                // FXSAVE's area must be 16-byte aligned (#GP(0) otherwise).
                Ok(a) if fxsave && a % 16 != 0 => Err(Exception::with_code(vector::GP, 0)),
                Ok(a) => {
                    for (k, chunk) in img.0[..len].chunks(4).enumerate() {
                        let mut w = [0u8; 4];
                        w[..chunk.len()].copy_from_slice(chunk);
                        env.write(a.wrapping_add(4 * k as u32), chunk.len(), u32::from_le_bytes(w));
                    }
                    env.take_page_fault().map_or(Ok(()), Err)
                }
                Err(e) => Err(e),
            }
        };
        for p in written {
            self.code_written(p);
        }
        match r {
            Ok(()) => {
                self.cpu.hot.eip = i.next_ip32();
                Step::Continue
            }
            Err(e) => self.exception(e),
        }
    }

    /// The FXSAVE image of the guest's x87, MXCSR and XMM state for the
    /// debugger, with the guest's FIP and CS.
    pub fn fpu_image(&self) -> [u8; 512] {
        let (mut img, host_fip) = live_image(&self.cpu.hot);
        let fip = self.guest_fip(host_fip);
        img[FX_FIP..FX_FIP + 4].copy_from_slice(&fip.to_le_bytes());
        img[FX_FCS..FX_FCS + 2].copy_from_slice(&self.cpu.seg[SEG_CS].selector.to_le_bytes());
        img
    }

    /// Load the x87 part of an FXSAVE image into the live FPU, and its MXCSR
    /// and XMM0-7 into the guest state (the debugger's register writes).
    pub fn set_fpu_image(&mut self, img: &[u8; 512]) {
        load_x87(img);
        self.cpu.hot.mxcsr =
            u32::from_le_bytes([img[FX_MXCSR], img[FX_MXCSR + 1], img[FX_MXCSR + 2], img[FX_MXCSR + 3]]);
        self.cpu.hot.xmm.copy_from_slice(&img[FX_XMM]);
        self.cpu.hot.fpu_active = 1;
    }
}
