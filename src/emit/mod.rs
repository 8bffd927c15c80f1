//! A small hand-written x86-64 byte emitter.
//!
//! Translation cost is paid on the first execution of every guest block, so
//! the emitter appends bytes to a `Vec` directly instead of going through a
//! general assembler (see ARCHITECTURE.md, "Emission speed"). It knows just
//! the encodings the translator and the trampolines need. iced-x86's decoder
//! checks every template in the tests below.

pub mod mem;

pub use mem::{GuestMem, encode_guest_mem};

/// Host register numbers (the ModRM/REX numbering).
pub mod reg {
    pub const RAX: u8 = 0;
    pub const RCX: u8 = 1;
    pub const RDX: u8 = 2;
    pub const RBX: u8 = 3;
    pub const RSP: u8 = 4;
    pub const RBP: u8 = 5;
    pub const RSI: u8 = 6;
    pub const RDI: u8 = 7;
    pub const R8: u8 = 8;
    pub const R9: u8 = 9;
    pub const R10: u8 = 10;
    pub const R11: u8 = 11;
    pub const R12: u8 = 12;
    pub const R13: u8 = 13;
    pub const R14: u8 = 14;
    pub const R15: u8 = 15;

    /// Host register holding guest ESP while translated code runs. R12 has
    /// the same low three bits as ESP (4), so a guest ModRM/SIB naming ESP
    /// needs only an added REX bit.
    pub const GUEST_ESP: u8 = R12;
    /// Scratch register of translated sequences (indirect targets, memory-to-memory moves).
    pub const SCRATCH: u8 = R13;
    /// Pointer to the vCPU's `HotState`.
    pub const VCPU: u8 = R14;
    /// Host address of guest linear address 0 (the GS base, 4 GiB aligned).
    pub const WINDOW: u8 = R15;
}

/// Prefix bytes.
pub const PREFIX_GS: u8 = 0x65;
pub const PREFIX_ADDR32: u8 = 0x67;
pub const PREFIX_OPSIZE: u8 = 0x66;
/// JRCXZ rel8: the flag-free test of the lookups (RCX in 64-bit mode).
pub const JRCXZ: u8 = 0xE3;

/// Growable machine-code buffer.
#[derive(Default, Clone)]
pub struct Asm {
    pub buf: Vec<u8>,
}

/// x86 condition-code numbers (low nibble of Jcc/SETcc/CMOVcc).
pub type Cond = u8;

impl Asm {
    pub fn new() -> Self {
        Asm { buf: Vec::with_capacity(4096) }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    pub fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }

    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Overwrite a little-endian u32 at `at`.
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// REX prefix with the given W/R/X/B bits, emitted only if needed
    /// (`force` emits 0x40 even with no bits set).
    #[inline]
    pub fn rex(&mut self, w: bool, r: u8, x: u8, b: u8, force: bool) {
        let v = 0x40 | ((w as u8) << 3) | ((r >> 3) << 2) | ((x >> 3) << 1) | (b >> 3);
        if v != 0x40 || force {
            self.byte(v);
        }
    }

    /// ModRM + displacement for `[base + disp32]` with a 64-bit host base
    /// register (no segment, no address-size override): used for vCPU fields.
    fn modrm_base_disp(&mut self, regf: u8, base: u8, disp: i32) {
        let r = regf & 7;
        let b = base & 7;
        let small = (-128..=127).contains(&disp);
        let mode = if disp == 0 && b != 5 {
            0
        } else if small {
            1
        } else {
            2
        };
        self.byte((mode << 6) | (r << 3) | b);
        if b == 4 {
            self.byte(0x24);
        }
        match mode {
            1 => self.byte(disp as i8 as u8),
            2 => self.u32(disp as u32),
            _ => {}
        }
    }

    /// `mov r32, [base64 + disp]`
    pub fn mov_r32_mbase(&mut self, dst: u8, base: u8, disp: i32) {
        self.rex(false, dst, 0, base, false);
        self.byte(0x8B);
        self.modrm_base_disp(dst, base, disp);
    }

    /// `mov [base64 + disp], r32`
    pub fn mov_mbase_r32(&mut self, base: u8, disp: i32, src: u8) {
        self.rex(false, src, 0, base, false);
        self.byte(0x89);
        self.modrm_base_disp(src, base, disp);
    }

    /// `mov r64, [base64 + disp]`
    pub fn mov_r64_mbase(&mut self, dst: u8, base: u8, disp: i32) {
        self.rex(true, dst, 0, base, false);
        self.byte(0x8B);
        self.modrm_base_disp(dst, base, disp);
    }

    /// `mov [base64 + disp], r64`
    pub fn mov_mbase_r64(&mut self, base: u8, disp: i32, src: u8) {
        self.rex(true, src, 0, base, false);
        self.byte(0x89);
        self.modrm_base_disp(src, base, disp);
    }

    /// `mov dword [base64 + disp], imm32`
    pub fn mov_mbase_imm32(&mut self, base: u8, disp: i32, imm: u32) {
        self.rex(false, 0, 0, base, false);
        self.byte(0xC7);
        self.modrm_base_disp(0, base, disp);
        self.u32(imm);
    }

    /// `mov r32, r32` (zero-extends into the 64-bit register).
    pub fn mov_r32_r32(&mut self, dst: u8, src: u8) {
        self.rex(false, src, 0, dst, false);
        self.byte(0x89);
        self.byte(0xC0 | ((src & 7) << 3) | (dst & 7));
    }

    /// `mov r64, r64`
    pub fn mov_r64_r64(&mut self, dst: u8, src: u8) {
        self.rex(true, src, 0, dst, false);
        self.byte(0x89);
        self.byte(0xC0 | ((src & 7) << 3) | (dst & 7));
    }

    /// `mov r32, imm32`
    pub fn mov_r32_imm(&mut self, dst: u8, imm: u32) {
        self.rex(false, 0, 0, dst, false);
        self.byte(0xB8 + (dst & 7));
        self.u32(imm);
    }

    /// `mov r64, imm64`
    pub fn mov_r64_imm64(&mut self, dst: u8, imm: u64) {
        self.rex(true, 0, 0, dst, false);
        self.byte(0xB8 + (dst & 7));
        self.u64(imm);
    }

    /// `lea r32, [base64 + disp]` — a flag-preserving 32-bit add.
    pub fn lea_r32(&mut self, dst: u8, base: u8, disp: i32) {
        self.rex(false, dst, 0, base, false);
        self.byte(0x8D);
        self.modrm_base_disp(dst, base, disp);
    }

    /// `lea r32, [base64 + index64 + disp32]` — flag-preserving 32-bit add.
    pub fn lea_r32_bi(&mut self, dst: u8, base: u8, index: u8, disp: i32) {
        self.lea_bi_d32(false, dst, base, index, disp);
    }

    /// `lea r32/r64, [base64 + index64 + disp32]`.
    fn lea_bi_d32(&mut self, wide: bool, dst: u8, base: u8, index: u8, disp: i32) {
        self.rex(wide, dst, index, base, false);
        self.byte(0x8D);
        self.byte(0x84 | ((dst & 7) << 3));
        self.byte(((index & 7) << 3) | (base & 7));
        self.u32(disp as u32);
    }

    /// `cmp r32, [base64 + disp]`
    pub fn cmp_r32_mbase(&mut self, r: u8, base: u8, disp: i32) {
        self.rex(false, r, 0, base, false);
        self.byte(0x3B);
        self.modrm_base_disp(r, base, disp);
    }

    /// `add r32, [base64 + disp]`
    pub fn add_r32_mbase(&mut self, r: u8, base: u8, disp: i32) {
        self.rex(false, r, 0, base, false);
        self.byte(0x03);
        self.modrm_base_disp(r, base, disp);
    }

    /// `cmp r32, r32`
    pub fn cmp_r32_r32(&mut self, a: u8, b: u8) {
        self.rex(false, b, 0, a, false);
        self.byte(0x39);
        self.byte(0xC0 | ((b & 7) << 3) | (a & 7));
    }

    /// `test r32, imm32`
    pub fn test_r32_imm(&mut self, r: u8, imm: u32) {
        self.rex(false, 0, 0, r, false);
        self.byte(0xF7);
        self.byte(0xC0 | (r & 7));
        self.u32(imm);
    }

    /// `and r32, imm32`
    pub fn and_r32_imm(&mut self, r: u8, imm: u32) {
        self.rex(false, 0, 0, r, false);
        self.byte(0x81);
        self.byte(0xE0 | (r & 7));
        self.u32(imm);
    }

    /// `lea r64, [base64 + index64 + disp8]` — flag-preserving 64-bit add.
    pub fn lea_r64_bi_d8(&mut self, dst: u8, base: u8, index: u8, disp: i8) {
        self.rex(true, dst, index, base, false);
        self.byte(0x8D);
        self.byte(0x44 | ((dst & 7) << 3));
        self.byte(((index & 7) << 3) | (base & 7));
        self.byte(disp as u8);
    }

    /// `lea r64, [base64 + index64 + disp32]` — flag-preserving 64-bit add.
    pub fn lea_r64_bi_d32(&mut self, dst: u8, base: u8, index: u8, disp: i32) {
        self.lea_bi_d32(true, dst, base, index, disp);
    }

    /// `lea r64, [base64 + index64]` — flag-preserving 64-bit add.
    pub fn lea_r64_bi(&mut self, dst: u8, base: u8, index: u8) {
        self.rex(true, dst, index, base, false);
        self.byte(0x8D);
        if base & 7 == 5 {
            // [rbp/r13 + index] needs an explicit zero disp8.
            self.byte(0x44 | ((dst & 7) << 3));
            self.byte(((index & 7) << 3) | (base & 7));
            self.byte(0);
        } else {
            self.byte(0x04 | ((dst & 7) << 3));
            self.byte(((index & 7) << 3) | (base & 7));
        }
    }

    /// `movzx r32, r16` (low word of src).
    pub fn movzx_r32_r16(&mut self, dst: u8, src: u8) {
        self.rex(false, dst, 0, src, false);
        self.bytes(&[0x0F, 0xB7]);
        self.byte(0xC0 | ((dst & 7) << 3) | (src & 7));
    }

    /// `shrx dst32, src32, count32` (BMI2): a shift that leaves flags alone.
    pub fn shrx_r32(&mut self, dst: u8, src: u8, count: u8) {
        self.byte(0xC4);
        self.byte(((!dst >> 3) & 1) << 7 | 0x40 | ((!src >> 3) & 1) << 5 | 0x02);
        self.byte(((!count & 0xF) << 3) | 0x03);
        self.byte(0xF7);
        self.byte(0xC0 | ((dst & 7) << 3) | (src & 7));
    }

    /// `bswap r32`: reverses the bytes, leaving flags alone.
    pub fn bswap_r32(&mut self, r: u8) {
        self.rex(false, 0, 0, r, false);
        self.byte(0x0F);
        self.byte(0xC8 | (r & 7));
    }

    /// `movzx r32, byte [base64 + disp]`
    pub fn movzx_r32_m8base(&mut self, dst: u8, base: u8, disp: i32) {
        self.rex(false, dst, 0, base, false);
        self.bytes(&[0x0F, 0xB6]);
        self.modrm_base_disp(dst, base, disp);
    }

    /// `movzx dst32, src8` (low byte of any register).
    pub fn movzx_r32_r8(&mut self, dst: u8, src: u8) {
        self.rex(false, dst, 0, src, src >= 4);
        self.bytes(&[0x0F, 0xB6]);
        self.byte(0xC0 | ((dst & 7) << 3) | (src & 7));
    }

    /// `mov r64, [base64 + index64*8 + disp32]`
    pub fn mov_r64_mbi8(&mut self, dst: u8, base: u8, index: u8, disp: i32) {
        self.rex(true, dst, index, base, false);
        self.byte(0x8B);
        self.byte(0x84 | ((dst & 7) << 3));
        self.byte(0xC0 | ((index & 7) << 3) | (base & 7));
        self.u32(disp as u32);
    }

    /// `jmp qword [base64 + index64*8 + disp32]`
    pub fn jmp_mbi8(&mut self, base: u8, index: u8, disp: i32) {
        self.ff_mbi8(4, base, index, disp);
    }

    /// `call qword [base64 + index64*8 + disp32]`
    pub fn call_mbi8(&mut self, base: u8, index: u8, disp: i32) {
        self.ff_mbi8(2, base, index, disp);
    }

    /// Opcode FF with ModRM extension `ext` (2 CALL, 4 JMP) on
    /// `qword [base64 + index64*8 + disp32]`.
    fn ff_mbi8(&mut self, ext: u8, base: u8, index: u8, disp: i32) {
        self.rex(false, 0, index, base, false);
        self.byte(0xFF);
        self.byte(0x84 | (ext << 3));
        self.byte(0xC0 | ((index & 7) << 3) | (base & 7));
        self.u32(disp as u32);
    }

    /// `call rel32`; returns the offset of the rel32 field.
    pub fn call_rel32(&mut self) -> usize {
        self.byte(0xE8);
        let at = self.len();
        self.u32(0);
        at
    }

    /// `push qword [base64 + disp32]`
    pub fn push_mbase(&mut self, base: u8, disp: i32) {
        self.rex(false, 0, 0, base, false);
        self.byte(0xFF);
        self.modrm_base_disp(6, base, disp);
    }

    /// `jmp r64`
    pub fn jmp_r64(&mut self, r: u8) {
        self.rex(false, 0, 0, r, false);
        self.byte(0xFF);
        self.byte(0xE0 | (r & 7));
    }

    /// `jmp rel32` to a target offset in this buffer (or 0 to patch later);
    /// returns the offset of the rel32 field.
    pub fn jmp_rel32(&mut self) -> usize {
        self.byte(0xE9);
        let at = self.len();
        self.u32(0);
        at
    }

    /// `jcc rel32`; returns the offset of the rel32 field.
    pub fn jcc_rel32(&mut self, cc: Cond) -> usize {
        self.bytes(&[0x0F, 0x80 | (cc & 15)]);
        let at = self.len();
        self.u32(0);
        at
    }

    /// Point the rel32 field at `at` to buffer offset `target`.
    pub fn bind_rel32(&mut self, at: usize, target: usize) {
        let rel = target as i64 - (at as i64 + 4);
        self.patch_u32(at, rel as i32 as u32);
    }

    pub fn pushfq(&mut self) {
        self.byte(0x9C);
    }

    pub fn popfq(&mut self) {
        self.byte(0x9D);
    }

    pub fn push_r64(&mut self, r: u8) {
        self.rex(false, 0, 0, r, false);
        self.byte(0x50 + (r & 7));
    }

    pub fn pop_r64(&mut self, r: u8) {
        self.rex(false, 0, 0, r, false);
        self.byte(0x58 + (r & 7));
    }

    pub fn ret(&mut self) {
        self.byte(0xC3);
    }

    pub fn cld(&mut self) {
        self.byte(0xFC);
    }
}

/// Relative displacement from the end of a rel32 field at host address
/// `field` to host address `target`. Code cache and targets are within 2 GiB.
pub fn rel32(field: usize, target: usize) -> u32 {
    (target as i64 - (field as i64 + 4)) as i32 as u32
}

#[cfg(test)]
pub(crate) fn disasm64(code: &[u8]) -> Vec<String> {
    use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
    let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        let mut s = String::new();
        f.format(&i, &mut s);
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::reg::*;
    use super::*;

    fn one(f: impl FnOnce(&mut Asm)) -> (Vec<u8>, Vec<String>) {
        let mut a = Asm::new();
        f(&mut a);
        let d = disasm64(&a.buf);
        (a.buf, d)
    }

    #[test]
    fn vcpu_field_moves_golden() {
        let (b, d) = one(|a| a.mov_mbase_r32(R14, 0x10, R12));
        assert_eq!(b, [0x45, 0x89, 0x66, 0x10]);
        assert_eq!(d, ["mov [r14+10h],r12d"]);
        let (b, d) = one(|a| a.mov_r32_mbase(RAX, R14, 0));
        assert_eq!(b, [0x41, 0x8B, 0x06]);
        assert_eq!(d, ["mov eax,[r14]"]);
        let (_, d) = one(|a| a.mov_mbase_imm32(R14, 0x2C, 7));
        assert_eq!(d, ["mov dword ptr [r14+2Ch],7"]);
        let (_, d) = one(|a| a.mov_r64_mbase(RSP, R14, 0x30));
        assert_eq!(d, ["mov rsp,[r14+30h]"]);
        let (_, d) = one(|a| a.mov_r32_mbase(R13, R15, -0x2000));
        assert_eq!(d, ["mov r13d,[r15-2000h]"]);
    }

    #[test]
    fn lookup_templates_decode() {
        let (_, d) = one(|a| a.movzx_r32_r16(R10, R13));
        assert_eq!(d, ["movzx r10d,r13w"]);
        let (_, d) = one(|a| a.mov_r64_mbi8(RCX, R14, R10, 0x480));
        assert_eq!(d, ["mov rcx,[r14+r10*8+480h]"]);
        let (_, d) = one(|a| a.jmp_mbi8(R14, R10, 0x80480));
        assert_eq!(d, ["jmp qword ptr [r14+r10*8+80480h]"]);
        let (_, d) = one(|a| a.lea_r64_bi(RCX, RCX, R13));
        assert_eq!(d, ["lea rcx,[rcx+r13]"]);
        let (_, d) = one(|a| a.lea_r64_bi_d8(RCX, RCX, R13, 1));
        assert_eq!(d, ["lea rcx,[rcx+r13+1]"]);
        let (_, d) = one(|a| a.lea_r64_bi_d8(RCX, R13, R11, -1));
        assert_eq!(d, ["lea rcx,[r13+r11-1]"]);
        let (_, d) = one(|a| a.lea_r64_bi(RSI, R15, RSI));
        assert_eq!(d, ["lea rsi,[r15+rsi]"]);
        let (_, d) = one(|a| a.lea_r64_bi(RDI, R13, RDI));
        assert_eq!(d, ["lea rdi,[r13+rdi]"]);
        let (_, d) = one(|a| a.lea_r32(R12, R12, -4));
        assert_eq!(d, ["lea r12d,[r12-4]"]);
        let (_, d) = one(|a| a.mov_r32_r32(R12, RBP));
        assert_eq!(d, ["mov r12d,ebp"]);
        let (_, d) = one(|a| a.mov_r64_r64(R13, RSI));
        assert_eq!(d, ["mov r13,rsi"]);
        let (_, d) = one(|a| a.lea_r32_bi(R13, R13, R10, -0x200));
        assert_eq!(d, ["lea r13d,[r13+r10-200h]"]);
        let (_, d) = one(|a| a.test_r32_imm(R13, 0x100));
        assert_eq!(d, ["test r13d,100h"]);
        let (_, d) = one(|a| a.and_r32_imm(R10, 0x200));
        assert_eq!(d, ["and r10d,200h"]);
    }

    #[test]
    fn branches_bind() {
        let mut a = Asm::new();
        let j = a.jmp_rel32();
        let c = a.jcc_rel32(4);
        a.bind_rel32(j, 0);
        a.bind_rel32(c, 0);
        assert_eq!(disasm64(&a.buf), ["jmp 0", "je 0"]);
    }
}
