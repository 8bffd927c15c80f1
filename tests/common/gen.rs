//! Random generator of 32-bit x86 user-level ALU/shift/bit instruction
//! sequences, hand-encoded to raw machine code.
//!
//! Conventions shared with the differential tests:
//! - ESI holds the base of a 256-byte data area; every memory operand is
//!   `[esi + ...]` and stays inside it.
//! - ESP and ESI are never written, and never read other than as the base of a
//!   memory operand (they hold addresses that differ between the two worlds).
//! - No instruction can fault (divisors are forced non-zero and small enough).
//!
//! The generator also tracks which arithmetic flags are architecturally
//! *undefined* at the end of the sequence (`Seq::undef_flags`), and never lets
//! an instruction consume an undefined flag (it inserts a flag-defining
//! `CMP r32, r32` first).

pub const CF: u32 = 0x001;
pub const PF: u32 = 0x004;
pub const AF: u32 = 0x010;
pub const ZF: u32 = 0x040;
pub const SF: u32 = 0x080;
pub const OF: u32 = 0x800;
/// CF PF AF ZF SF OF.
pub const ARITH: u32 = CF | PF | AF | ZF | SF | OF;

/// 16/32-bit registers the generated code may use: EAX ECX EDX EBX EBP EDI.
pub const GPRS: [u8; 6] = [0, 1, 2, 3, 5, 7];
const ESI: u8 = 6;

/// Small xorshift64* PRNG (deterministic, seedable).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed so that nearby seeds give unrelated streams
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x1234_5678 } else { z })
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u32) -> u32 {
        ((self.next_u32() as u64 * n as u64) >> 32) as u32
    }
    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u32) -> bool {
        self.below(n) == 0
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u32) as usize]
    }
    /// A 32-bit value biased towards edge cases.
    pub fn edge_u32(&mut self) -> u32 {
        const EDGES: [u32; 24] = [
            0,
            1,
            2,
            3,
            7,
            8,
            9,
            15,
            16,
            17,
            31,
            32,
            33,
            0x7F,
            0x80,
            0xFF,
            0x100,
            0x7FFF,
            0x8000,
            0xFFFF,
            0x7FFF_FFFF,
            0x8000_0000,
            0xFFFF_FFFF,
            0xFFFF_FFFE,
        ];
        match self.below(4) {
            0 => self.next_u32(),
            1 => self.pick(&EDGES),
            2 => {
                // byte-wise edge values (useful for 8/16-bit operations and AH..BH)
                let mut v = 0u32;
                for i in 0..4 {
                    let b = self.pick(&[0x00u32, 0x01, 0x7F, 0x80, 0xFF, 0x09, 0x99, 0x0F, 0xF0]);
                    v |= b << (8 * i);
                }
                v
            }
            _ => self.pick(&EDGES) ^ (self.next_u32() & self.pick(&[0, 0xFF, 0xFF00, 0xFFFF_0000])),
        }
    }
}

/// Instruction families, used to build targeted sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// ADD/ADC/SUB/SBB/AND/OR/XOR/CMP/TEST
    Alu,
    IncDec,
    NegNot,
    /// SHL/SHR/SAR/ROL/ROR/RCL/RCR by 1, CL and imm8
    Shift,
    /// SHLD/SHRD
    ShiftDouble,
    /// MUL and all IMUL forms
    Mul,
    /// DIV/IDIV with non-faulting operands
    Div,
    /// BT/BTS/BTR/BTC
    BitTest,
    /// BSF/BSR
    BitScan,
    SetCc,
    CMovCc,
    Bswap,
    Xchg,
    Xadd,
    Cmpxchg,
    /// MOVZX/MOVSX
    MovExt,
    Lea,
    /// CBW/CWDE/CWD/CDQ
    Convert,
    LahfSahf,
    /// DAA/DAS/AAA/AAS/AAM/AAD
    Bcd,
    /// CLC/STC/CMC
    CarryFlag,
    /// MOV r/m, r/imm (to shuffle values around)
    Mov,
}

impl Family {
    pub const ALL: [Family; 22] = [
        Family::Alu,
        Family::IncDec,
        Family::NegNot,
        Family::Shift,
        Family::ShiftDouble,
        Family::Mul,
        Family::Div,
        Family::BitTest,
        Family::BitScan,
        Family::SetCc,
        Family::CMovCc,
        Family::Bswap,
        Family::Xchg,
        Family::Xadd,
        Family::Cmpxchg,
        Family::MovExt,
        Family::Lea,
        Family::Convert,
        Family::LahfSahf,
        Family::Bcd,
        Family::CarryFlag,
        Family::Mov,
    ];
}

/// A generated sequence.
#[derive(Clone, Debug)]
pub struct Seq {
    pub code: Vec<u8>,
    /// Arithmetic flags whose value is architecturally undefined after the
    /// sequence (they are excluded from the comparison).
    pub undef_flags: u32,
    /// Number of "main" instructions requested (helpers not counted).
    pub insns: usize,
    /// After each main instruction (with its helpers): (code length, undefined
    /// flags at that point).  Every prefix `code[..len]` is itself a valid
    /// sequence, which the tests use to find the first diverging instruction.
    pub marks: Vec<(usize, u32)>,
}

/// Operand size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B,
    W,
    D,
}

impl Size {
    pub fn bytes(self) -> u32 {
        match self {
            Size::B => 1,
            Size::W => 2,
            Size::D => 4,
        }
    }
    pub fn bits(self) -> u32 {
        self.bytes() * 8
    }
}

/// A ModRM r/m operand.
#[derive(Clone, Debug)]
pub enum Rm {
    Reg(u8),
    Mem { md: u8, rm: u8, sib: Option<u8>, disp: Vec<u8> },
}

impl Rm {
    pub fn is_mem(&self) -> bool {
        matches!(self, Rm::Mem { .. })
    }
}

/// Flags read by condition code `cc` (0..16).
pub fn cc_reads(cc: u8) -> u32 {
    match cc >> 1 {
        0 => OF,
        1 => CF,
        2 => ZF,
        3 => CF | ZF,
        4 => SF,
        5 => PF,
        6 => SF | OF,
        _ => ZF | SF | OF,
    }
}

/// Instruction-sequence builder.
pub struct Gen {
    pub rng: Rng,
    pub code: Vec<u8>,
    /// Arithmetic flags currently undefined.
    pub undef: u32,
    /// Registers (bit mask) that must not be used as a bounded SIB index,
    /// because helper code emitted after the operand is chosen modifies them.
    pub avoid_idx: u8,
    pub marks: Vec<(usize, u32)>,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen { rng: Rng::new(seed), code: Vec::new(), undef: 0, avoid_idx: 0, marks: Vec::new() }
    }

    pub fn finish(self, insns: usize) -> Seq {
        let mut marks = self.marks;
        if marks.last().map(|m| m.0) != Some(self.code.len()) {
            marks.push((self.code.len(), self.undef));
        }
        Seq { code: self.code, undef_flags: self.undef, insns, marks }
    }

    // ---------------------------------------------------------------- basics

    /// Records a prefix boundary (see `Seq::marks`).
    pub fn mark(&mut self) {
        self.marks.push((self.code.len(), self.undef));
    }

    /// Appends raw bytes (for hand-built targeted cases; the caller accounts
    /// for flag effects with `effect`/`shift_effect`).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.code.extend_from_slice(bytes);
    }

    fn b(&mut self, bytes: &[u8]) {
        self.code.extend_from_slice(bytes);
    }

    fn opsize(&mut self, size: Size) {
        if size == Size::W {
            self.code.push(0x66);
        }
    }

    fn modrm(&mut self, reg: u8, rm: &Rm) {
        match rm {
            Rm::Reg(r) => self.code.push(0xC0 | (reg << 3) | r),
            Rm::Mem { md, rm, sib, disp } => {
                self.code.push((md << 6) | (reg << 3) | rm);
                if let Some(s) = sib {
                    self.code.push(*s);
                }
                self.code.extend_from_slice(disp);
            }
        }
    }

    fn imm(&mut self, size: Size, v: u32) {
        let n = size.bytes() as usize;
        self.code.extend_from_slice(&v.to_le_bytes()[..n]);
    }

    /// Makes sure the flags in `reads` are defined before an instruction that
    /// consumes them, emitting `CMP r32, r32` if needed.
    pub fn need(&mut self, reads: u32) {
        if reads & self.undef != 0 {
            let a = self.rng.pick(&GPRS);
            let b = self.rng.pick(&GPRS);
            self.b(&[0x39, 0xC0 | (b << 3) | a]);
            self.undef = 0;
        }
    }

    /// Records an instruction's flag effects.
    pub fn effect(&mut self, def: u32, undef: u32) {
        self.undef = (self.undef & !def) | undef;
    }

    pub fn size(&mut self) -> Size {
        self.rng.pick(&[Size::B, Size::W, Size::D])
    }

    pub fn size_wd(&mut self) -> Size {
        self.rng.pick(&[Size::W, Size::D])
    }

    /// A random register number usable at `size` (all 8 for bytes, incl. AH..BH).
    pub fn reg(&mut self, size: Size) -> u8 {
        if size == Size::B { self.rng.below(8) as u8 } else { self.rng.pick(&GPRS) }
    }

    /// An immediate biased towards edge values, truncated to `size`.
    pub fn imm_val(&mut self, size: Size) -> u32 {
        let v = self.rng.edge_u32();
        match size {
            Size::B => v & 0xFF,
            Size::W => v & 0xFFFF,
            Size::D => v,
        }
    }

    /// `AND r32, imm8` (83 /4 ib) used to bound an index register.
    fn bound_reg(&mut self, r: u8, mask: u8) {
        debug_assert!(mask < 0x80);
        self.b(&[0x83, 0xE0 | r, mask]);
        self.effect(ARITH, AF);
    }

    /// A memory operand `[esi + ...]` for an access of `size` bytes plus
    /// `reach` extra bytes, staying inside the 256-byte data area.  May emit an
    /// `AND` that bounds an index register first.
    pub fn mem(&mut self, size: u32, reach: u32) -> Rm {
        let span = size + reach;
        let max_disp = 256 - span;
        match self.rng.below(6) {
            0 => Rm::Mem { md: 0, rm: ESI, sib: None, disp: vec![] },
            1 | 2 => {
                let d = self.rng.range(0, max_disp.min(127));
                Rm::Mem { md: 1, rm: ESI, sib: None, disp: vec![d as u8] }
            }
            3 => {
                let d = self.rng.range(0, max_disp);
                Rm::Mem { md: 2, rm: ESI, sib: None, disp: d.to_le_bytes().to_vec() }
            }
            _ => {
                // SIB: [esi + idx*scale + disp8] or [idx + esi*1 + disp8],
                // idx bounded by an AND first.
                let mut idx = self.rng.pick(&GPRS);
                while self.avoid_idx & (1 << idx) != 0 {
                    idx = self.rng.pick(&GPRS);
                }
                let scale = self.rng.below(4) as u8;
                let mask = 63u8 >> scale;
                self.bound_reg(idx, mask);
                let max_off = (mask as u32) << scale;
                let d = self.rng.range(0, (max_disp - max_off).min(127));
                let sib = if scale == 0 && self.rng.one_in(2) {
                    // base = idx, index = esi
                    (ESI << 3) | idx
                } else {
                    (scale << 6) | (idx << 3) | ESI
                };
                if d == 0 && self.rng.one_in(2) && (sib & 7) != 5 {
                    Rm::Mem { md: 0, rm: 4, sib: Some(sib), disp: vec![] }
                } else {
                    Rm::Mem { md: 1, rm: 4, sib: Some(sib), disp: vec![d as u8] }
                }
            }
        }
    }

    /// A register (2/3 of the time) or memory operand of `size`.
    pub fn reg_or_mem(&mut self, size: Size) -> Rm {
        if self.rng.below(3) < 2 { Rm::Reg(self.reg(size)) } else { self.mem(size.bytes(), 0) }
    }

    // ---------------------------------------------------------- instructions

    /// Emits one random instruction of `fam` (plus any helpers it needs).
    pub fn emit(&mut self, fam: Family) {
        match fam {
            Family::Alu => self.alu(),
            Family::IncDec => self.incdec(),
            Family::NegNot => self.negnot(),
            Family::Shift => self.shift(),
            Family::ShiftDouble => self.shift_double(),
            Family::Mul => self.mul(),
            Family::Div => self.div(),
            Family::BitTest => self.bit_test(),
            Family::BitScan => self.bit_scan(),
            Family::SetCc => self.setcc(),
            Family::CMovCc => self.cmovcc(),
            Family::Bswap => self.bswap(),
            Family::Xchg => self.xchg(),
            Family::Xadd => self.xadd(),
            Family::Cmpxchg => self.cmpxchg(),
            Family::MovExt => self.movext(),
            Family::Lea => self.lea(),
            Family::Convert => self.convert(),
            Family::LahfSahf => self.lahf_sahf(),
            Family::Bcd => self.bcd(),
            Family::CarryFlag => self.carry_flag(),
            Family::Mov => self.mov(),
        }
        self.mark();
    }

    /// ALU op 0..=7 (ADD OR ADC SBB AND SUB XOR CMP) or 8 (TEST).
    pub fn alu(&mut self) {
        let op = self.rng.below(9) as u8;
        let size = self.size();
        let w = (size != Size::B) as u8;
        let reads = if op == 2 || op == 3 { CF } else { 0 };
        let logic = matches!(op, 1 | 4 | 6 | 8);
        if op == 8 {
            // TEST
            match self.rng.below(3) {
                0 => {
                    let rm = self.reg_or_mem(size);
                    let r = self.reg(size);
                    self.opsize(size);
                    self.b(&[0x84 | w]);
                    self.modrm(r, &rm);
                }
                1 => {
                    let v = self.imm_val(size);
                    self.opsize(size);
                    self.b(&[0xA8 | w]);
                    self.imm(size, v);
                }
                _ => {
                    let rm = self.reg_or_mem(size);
                    let v = self.imm_val(size);
                    self.opsize(size);
                    self.b(&[0xF6 | w]);
                    self.modrm(0, &rm);
                    self.imm(size, v);
                }
            }
        } else {
            match self.rng.below(5) {
                0 => {
                    // r/m, reg
                    let rm = self.reg_or_mem(size);
                    let r = self.reg(size);
                    self.need(reads);
                    self.opsize(size);
                    self.b(&[(op << 3) | w]);
                    self.modrm(r, &rm);
                }
                1 => {
                    // reg, r/m
                    let rm = self.reg_or_mem(size);
                    let r = self.reg(size);
                    self.need(reads);
                    self.opsize(size);
                    self.b(&[(op << 3) | 2 | w]);
                    self.modrm(r, &rm);
                }
                2 => {
                    // AL/AX/EAX, imm
                    let v = self.imm_val(size);
                    self.need(reads);
                    self.opsize(size);
                    self.b(&[(op << 3) | 4 | w]);
                    self.imm(size, v);
                }
                3 => {
                    // 80/81 /op imm (82 is the 32-bit-only alias of 80)
                    let rm = self.reg_or_mem(size);
                    let v = self.imm_val(size);
                    self.need(reads);
                    self.opsize(size);
                    let opc = if size == Size::B { if self.rng.one_in(4) { 0x82 } else { 0x80 } } else { 0x81 };
                    self.b(&[opc]);
                    self.modrm(op, &rm);
                    self.imm(size, v);
                }
                _ => {
                    // 83 /op imm8 (sign-extended); 80 for bytes
                    let size = if size == Size::B { Size::D } else { size };
                    let rm = self.reg_or_mem(size);
                    let v = self.imm_val(Size::B);
                    self.need(reads);
                    self.opsize(size);
                    self.b(&[0x83]);
                    self.modrm(op, &rm);
                    self.imm(Size::B, v);
                }
            }
        }
        if logic { self.effect(ARITH, AF) } else { self.effect(ARITH, 0) }
    }

    pub fn incdec(&mut self) {
        let dec = self.rng.below(2) as u8;
        let size = self.size();
        if size != Size::B && self.rng.one_in(2) {
            // one-byte 40+r / 48+r
            let r = self.reg(size);
            self.opsize(size);
            self.b(&[0x40 | (dec << 3) | r]);
        } else {
            let rm = self.reg_or_mem(size);
            self.opsize(size);
            self.b(&[if size == Size::B { 0xFE } else { 0xFF }]);
            self.modrm(dec, &rm);
        }
        self.effect(ARITH & !CF, 0);
    }

    pub fn negnot(&mut self) {
        let neg = self.rng.one_in(2);
        let size = self.size();
        let rm = self.reg_or_mem(size);
        self.opsize(size);
        self.b(&[0xF6 | (size != Size::B) as u8]);
        self.modrm(if neg { 3 } else { 2 }, &rm);
        if neg {
            self.effect(ARITH, 0);
        }
    }

    fn count_edge(&mut self, size: Size) -> u8 {
        let bits = size.bits() as u8;
        match self.rng.below(3) {
            0 => self.rng.next_u32() as u8,
            1 => self.rng.range(0, 33) as u8,
            _ => self.rng.pick(&[0, 1, 2, bits - 1, bits, bits + 1, 16, 17, 31, 32, 33, 63, 64, 65, 0xFF, 0x80]),
        }
    }

    /// Shift/rotate `op` (0 ROL,1 ROR,2 RCL,3 RCR,4 SHL,5 SHR,7 SAR) with a
    /// known masked count (`Some`) or an unknown CL count (`None`).
    pub fn shift_effect(&mut self, op: u8, size: Size, count: Option<u8>) {
        let rotate = op < 4;
        match count {
            Some(c) => {
                let m = (c & 31) as u32;
                if m == 0 {
                    return;
                }
                let of = if m == 1 { (OF, 0) } else { (0, OF) };
                if rotate {
                    self.effect(CF | of.0, of.1);
                } else {
                    let cf_undef = if m >= size.bits() { CF } else { 0 };
                    self.effect((SF | ZF | PF | CF | of.0) & !cf_undef, AF | of.1 | cf_undef);
                }
            }
            None => {
                let mut u = OF;
                if !rotate {
                    u |= AF;
                    if size != Size::D {
                        u |= CF;
                    }
                }
                self.effect(0, u);
            }
        }
    }

    pub fn shift(&mut self) {
        let op = self.rng.pick(&[0u8, 1, 2, 3, 4, 5, 7]);
        let size = self.size();
        let w = (size != Size::B) as u8;
        let reads = if op == 2 || op == 3 { CF } else { 0 };
        self.avoid_idx = 1 << 1; // ECX: may be loaded with a count below
        let rm = self.reg_or_mem(size);
        self.avoid_idx = 0;
        match self.rng.below(3) {
            0 => {
                self.need(reads);
                self.opsize(size);
                self.b(&[0xD0 | w]);
                self.modrm(op, &rm);
                self.shift_effect(op, size, Some(1));
            }
            1 => {
                let c = self.count_edge(size);
                self.need(reads);
                self.opsize(size);
                self.b(&[0xC0 | w]);
                self.modrm(op, &rm);
                self.b(&[c]);
                self.shift_effect(op, size, Some(c));
            }
            _ => {
                // by CL; sometimes load CL with an edge count first
                let known = if self.rng.one_in(2) {
                    let c = self.count_edge(size);
                    self.b(&[0xB1, c]); // mov cl, imm8
                    // the destination may be CL/CX/ECX itself: then the count is still c
                    Some(c)
                } else {
                    None
                };
                self.need(reads);
                self.opsize(size);
                self.b(&[0xD2 | w]);
                self.modrm(op, &rm);
                self.shift_effect(op, size, known);
            }
        }
    }

    pub fn shift_double_effect(&mut self, count: Option<u8>) {
        match count {
            Some(c) => {
                let m = c & 31;
                if m == 0 {
                    return;
                }
                let of = if m == 1 { (OF, 0) } else { (0, OF) };
                self.effect(SF | ZF | PF | CF | of.0, AF | of.1);
            }
            None => self.effect(0, OF | AF),
        }
    }

    pub fn shift_double(&mut self) {
        let right = self.rng.one_in(2) as u8;
        let size = self.size_wd();
        self.avoid_idx = 1 << 1; // ECX: may be loaded with a count below
        let rm = self.reg_or_mem(size);
        self.avoid_idx = 0;
        let src = self.reg(size);
        // 16-bit counts above 16 give undefined results: keep them <= 16.
        let pick_count = |g: &mut Gen| -> u8 {
            if size == Size::W {
                let c = g.rng.pick(&[0u8, 1, 2, 7, 8, 15, 16]);
                if g.rng.one_in(2) { c } else { c | 0x20 | (g.rng.below(4) as u8) << 6 }
            } else {
                g.count_edge(size)
            }
        };
        if self.rng.one_in(2) {
            let c = pick_count(self);
            self.opsize(size);
            self.b(&[0x0F, 0xA4 | (right << 3)]);
            self.modrm(src, &rm);
            self.b(&[c]);
            self.shift_double_effect(Some(c));
        } else {
            let known = if self.rng.one_in(2) || size == Size::W {
                let c = pick_count(self);
                self.b(&[0xB1, c]); // mov cl, imm8
                Some(c)
            } else {
                None
            };
            self.opsize(size);
            self.b(&[0x0F, 0xA5 | (right << 3)]);
            self.modrm(src, &rm);
            self.shift_double_effect(known);
        }
    }

    pub fn mul(&mut self) {
        match self.rng.below(4) {
            0 => {
                // MUL / IMUL r/m (one operand)
                let size = self.size();
                let rm = self.reg_or_mem(size);
                let op = if self.rng.one_in(2) { 4 } else { 5 };
                self.opsize(size);
                self.b(&[0xF6 | (size != Size::B) as u8]);
                self.modrm(op, &rm);
            }
            1 => {
                // IMUL r, r/m
                let size = self.size_wd();
                let rm = self.reg_or_mem(size);
                let r = self.reg(size);
                self.opsize(size);
                self.b(&[0x0F, 0xAF]);
                self.modrm(r, &rm);
            }
            2 => {
                // IMUL r, r/m, imm8
                let size = self.size_wd();
                let rm = self.reg_or_mem(size);
                let r = self.reg(size);
                let v = self.imm_val(Size::B);
                self.opsize(size);
                self.b(&[0x6B]);
                self.modrm(r, &rm);
                self.imm(Size::B, v);
            }
            _ => {
                // IMUL r, r/m, imm16/32
                let size = self.size_wd();
                let rm = self.reg_or_mem(size);
                let r = self.reg(size);
                let v = self.imm_val(size);
                self.opsize(size);
                self.b(&[0x69]);
                self.modrm(r, &rm);
                self.imm(size, v);
            }
        }
        self.effect(CF | OF, SF | ZF | AF | PF);
    }

    pub fn div(&mut self) {
        let signed = self.rng.one_in(2);
        let size = self.size();
        // Divisor: never AH for bytes (the dividend set-up overwrites it), never
        // DX/EDX for words/dwords, and for IDIV not the dividend registers either.
        let regs: &[u8] = match (size, signed) {
            (Size::B, false) => &[0, 1, 2, 3, 5, 6, 7],
            (Size::B, true) => &[1, 2, 3, 5, 6, 7],
            (_, false) => &[0, 1, 3, 5, 7],
            (_, true) => &[1, 3, 5, 7],
        };
        // EAX/EDX are modified by the dividend set-up: not usable as an index.
        self.avoid_idx = (1 << 0) | (1 << 2);
        let rm = if self.rng.one_in(3) { self.mem(size.bytes(), 0) } else { Rm::Reg(self.rng.pick(regs)) };
        self.avoid_idx = 0;
        let w = (size != Size::B) as u8;
        if signed {
            // divisor := (divisor & max_signed) | 2, i.e. in 2..=max; then
            // sign-extend the dividend: |quotient| <= 2^(n-1) / 2 fits.
            self.opsize(size);
            match size {
                Size::B => {
                    self.b(&[0x80]);
                    self.modrm(4, &rm);
                    self.b(&[0x7F]);
                }
                Size::W => {
                    self.b(&[0x81]);
                    self.modrm(4, &rm);
                    self.b(&[0xFF, 0x7F]);
                }
                Size::D => {
                    self.b(&[0x81]);
                    self.modrm(4, &rm);
                    self.b(&[0xFF, 0xFF, 0xFF, 0x7F]);
                }
            }
            self.opsize(size);
            self.b(&[if size == Size::B { 0x80 } else { 0x83 }]);
            self.modrm(1, &rm);
            self.b(&[0x02]);
            match size {
                Size::B => self.b(&[0x66, 0x98]), // cbw
                Size::W => self.b(&[0x66, 0x99]), // cwd
                Size::D => self.b(&[0x99]),       // cdq
            }
        } else {
            // divisor |= 1; high half of the dividend := 0.
            self.opsize(size);
            self.b(&[if size == Size::B { 0x80 } else { 0x83 }]);
            self.modrm(1, &rm);
            self.b(&[0x01]);
            match size {
                Size::B => self.b(&[0xB4, 0x00]), // mov ah, 0
                _ => self.b(&[0x31, 0xD2]),       // xor edx, edx
            }
        }
        self.opsize(size);
        self.b(&[0xF6 | w]);
        self.modrm(if signed { 7 } else { 6 }, &rm);
        self.effect(0, ARITH);
    }

    pub fn bit_test(&mut self) {
        let op = self.rng.below(4) as u8; // BT BTS BTR BTC
        let size = self.size_wd();
        if self.rng.one_in(2) {
            // r/m, reg: with a memory operand the bit offset addresses beyond
            // the operand, so bound it to 0..=127 (16 bytes of reach).
            let is_mem = self.rng.one_in(3);
            let rm = if is_mem { self.mem(size.bytes(), 16) } else { Rm::Reg(self.reg(size)) };
            let r = self.reg(size);
            if is_mem {
                self.bound_reg(r, 0x7F);
            }
            self.opsize(size);
            self.b(&[0x0F, 0xA3 | (op << 3)]);
            self.modrm(r, &rm);
        } else {
            let rm = self.reg_or_mem(size);
            let c = self.count_edge(size);
            self.opsize(size);
            self.b(&[0x0F, 0xBA]);
            self.modrm(4 | op, &rm);
            self.b(&[c]);
        }
        // CF = the bit; the others are undefined (ZF: Intel says unaffected,
        // AMD says undefined).
        self.effect(CF, OF | SF | ZF | AF | PF);
    }

    pub fn bit_scan(&mut self) {
        let size = self.size_wd();
        let rm = self.reg_or_mem(size);
        let r = self.reg(size);
        self.opsize(size);
        let opc = if self.rng.one_in(2) { 0xBC } else { 0xBD };
        self.b(&[0x0F, opc]);
        self.modrm(r, &rm);
        self.effect(ZF, CF | OF | SF | AF | PF);
    }

    pub fn setcc(&mut self) {
        let cc = self.rng.below(16) as u8;
        let rm = self.reg_or_mem(Size::B);
        self.need(cc_reads(cc));
        self.b(&[0x0F, 0x90 | cc]);
        self.modrm(0, &rm);
    }

    pub fn cmovcc(&mut self) {
        let cc = self.rng.below(16) as u8;
        let size = self.size_wd();
        let rm = self.reg_or_mem(size);
        let r = self.reg(size);
        self.need(cc_reads(cc));
        self.opsize(size);
        self.b(&[0x0F, 0x40 | cc]);
        self.modrm(r, &rm);
    }

    pub fn bswap(&mut self) {
        let r = self.reg(Size::D);
        self.b(&[0x0F, 0xC8 | r]);
    }

    pub fn xchg(&mut self) {
        let size = self.size();
        if size != Size::B && self.rng.one_in(3) {
            let r = self.reg(size);
            self.opsize(size);
            self.b(&[0x90 | r]);
        } else {
            let rm = self.reg_or_mem(size);
            let r = self.reg(size);
            self.opsize(size);
            self.b(&[0x86 | (size != Size::B) as u8]);
            self.modrm(r, &rm);
        }
    }

    pub fn xadd(&mut self) {
        let size = self.size();
        let rm = self.reg_or_mem(size);
        let r = self.reg(size);
        self.opsize(size);
        self.b(&[0x0F, 0xC0 | (size != Size::B) as u8]);
        self.modrm(r, &rm);
        self.effect(ARITH, 0);
    }

    pub fn cmpxchg(&mut self) {
        let size = self.size();
        let rm = self.reg_or_mem(size);
        let r = self.reg(size);
        if self.rng.one_in(2) {
            // make equality likely: copy the accumulator into the destination
            // (mov r/m, al/ax/eax)
            self.opsize(size);
            self.b(&[0x88 | (size != Size::B) as u8]);
            self.modrm(0, &rm);
        }
        self.opsize(size);
        self.b(&[0x0F, 0xB0 | (size != Size::B) as u8]);
        self.modrm(r, &rm);
        self.effect(ARITH, 0);
    }

    pub fn movext(&mut self) {
        let sign = (self.rng.one_in(2) as u8) << 3;
        if self.rng.one_in(2) {
            // r16/32, r/m8
            let size = self.size_wd();
            let rm = self.reg_or_mem(Size::B);
            let r = self.reg(size);
            self.opsize(size);
            self.b(&[0x0F, 0xB6 | sign]);
            self.modrm(r, &rm);
        } else {
            // r32, r/m16
            let rm = self.reg_or_mem(Size::W);
            let r = self.reg(Size::D);
            self.b(&[0x0F, 0xB7 | sign]);
            self.modrm(r, &rm);
        }
    }

    pub fn lea(&mut self) {
        let size = self.size_wd();
        let r = self.reg(size);
        let rnd = self.rng.next_u32();
        let disp32 = if rnd & 1 == 0 { rnd } else { self.rng.edge_u32() };
        if self.rng.one_in(5) {
            // 16-bit addressing (0x67): forms that do not involve SI
            self.b(&[0x67]);
            self.opsize(size);
            self.b(&[0x8D]);
            let d16 = (disp32 as u16).to_le_bytes();
            match self.rng.below(4) {
                0 => self.b(&[(r << 3) | 6, d16[0], d16[1]]), // [disp16]
                1 => {
                    let rm = self.rng.pick(&[1u8, 3, 5, 7]);
                    self.b(&[(r << 3) | rm]);
                }
                2 => {
                    let rm = self.rng.pick(&[1u8, 3, 5, 6, 7]);
                    self.b(&[0x40 | (r << 3) | rm, d16[0]]);
                }
                _ => {
                    let rm = self.rng.pick(&[1u8, 3, 5, 6, 7]);
                    self.b(&[0x80 | (r << 3) | rm, d16[0], d16[1]]);
                }
            }
            return;
        }
        self.opsize(size);
        self.b(&[0x8D]);
        let base = self.rng.pick(&GPRS);
        let index = self.rng.pick(&GPRS);
        let scale = self.rng.below(4) as u8;
        let d = disp32.to_le_bytes();
        match self.rng.below(6) {
            0 => {
                // [base] (EBP needs a displacement)
                if base == 5 {
                    self.b(&[0x40 | (r << 3) | 5, 0]);
                } else {
                    self.b(&[(r << 3) | base]);
                }
            }
            1 => self.b(&[0x40 | (r << 3) | base, d[0]]),
            2 => self.b(&[0x80 | (r << 3) | base, d[0], d[1], d[2], d[3]]),
            3 => self.b(&[(r << 3) | 5, d[0], d[1], d[2], d[3]]), // [disp32]
            4 => {
                // [index*scale + disp32]
                self.b(&[(r << 3) | 4, (scale << 6) | (index << 3) | 5, d[0], d[1], d[2], d[3]]);
            }
            _ => {
                // [base + index*scale + disp8/32]
                match self.rng.below(3) {
                    0 if base != 5 => self.b(&[(r << 3) | 4, (scale << 6) | (index << 3) | base]),
                    1 => self.b(&[0x40 | (r << 3) | 4, (scale << 6) | (index << 3) | base, d[0]]),
                    _ => self.b(&[0x80 | (r << 3) | 4, (scale << 6) | (index << 3) | base, d[0], d[1], d[2], d[3]]),
                }
            }
        }
    }

    pub fn convert(&mut self) {
        match self.rng.below(4) {
            0 => self.b(&[0x66, 0x98]), // cbw
            1 => self.b(&[0x98]),       // cwde
            2 => self.b(&[0x66, 0x99]), // cwd
            _ => self.b(&[0x99]),       // cdq
        }
    }

    pub fn lahf_sahf(&mut self) {
        if self.rng.one_in(2) {
            self.need(SF | ZF | AF | PF | CF);
            self.b(&[0x9F]);
        } else {
            self.b(&[0x9E]);
            self.effect(SF | ZF | AF | PF | CF, 0);
        }
    }

    pub fn bcd(&mut self) {
        match self.rng.below(6) {
            0 | 1 => {
                // DAA / DAS
                self.need(CF | AF);
                let opc = if self.rng.one_in(2) { 0x27 } else { 0x2F };
                self.b(&[opc]);
                self.effect(SF | ZF | PF | CF | AF, OF);
            }
            2 | 3 => {
                // AAA / AAS
                self.need(AF);
                let opc = if self.rng.one_in(2) { 0x37 } else { 0x3F };
                self.b(&[opc]);
                self.effect(AF | CF, OF | SF | ZF | PF);
            }
            4 => {
                // AAM imm8 (imm8 != 0)
                let v = self.rng.pick(&[10u8, 1, 2, 16, 0xFF, 7]).max(1);
                let v = if self.rng.one_in(2) { v } else { (self.rng.below(255) + 1) as u8 };
                self.b(&[0xD4, v]);
                self.effect(SF | ZF | PF, OF | AF | CF);
            }
            _ => {
                // AAD imm8
                let v = if self.rng.one_in(2) { 10 } else { self.rng.next_u32() as u8 };
                self.b(&[0xD5, v]);
                self.effect(SF | ZF | PF, OF | AF | CF);
            }
        }
    }

    pub fn carry_flag(&mut self) {
        match self.rng.below(3) {
            0 => self.b(&[0xF8]), // clc
            1 => self.b(&[0xF9]), // stc
            _ => {
                self.need(CF);
                self.b(&[0xF5]); // cmc
            }
        }
        self.effect(CF, 0);
    }

    pub fn mov(&mut self) {
        let size = self.size();
        let w = (size != Size::B) as u8;
        match self.rng.below(4) {
            0 => {
                let r = self.reg(size);
                let v = self.imm_val(size);
                self.opsize(size);
                self.b(&[0xB0 | (w << 3) | r]);
                self.imm(size, v);
            }
            1 => {
                let rm = self.reg_or_mem(size);
                let v = self.imm_val(size);
                self.opsize(size);
                self.b(&[0xC6 | w]);
                self.modrm(0, &rm);
                self.imm(size, v);
            }
            2 => {
                let rm = self.reg_or_mem(size);
                let r = self.reg(size);
                self.opsize(size);
                self.b(&[0x88 | w]);
                self.modrm(r, &rm);
            }
            _ => {
                let rm = self.reg_or_mem(size);
                let r = self.reg(size);
                self.opsize(size);
                self.b(&[0x8A | w]);
                self.modrm(r, &rm);
            }
        }
    }
}

/// Random family, weighted towards the flag-heavy ones.
fn random_family(rng: &mut Rng) -> Family {
    const WEIGHTED: [Family; 8] = [
        Family::Alu,
        Family::Alu,
        Family::Alu,
        Family::Shift,
        Family::Shift,
        Family::Mul,
        Family::SetCc,
        Family::IncDec,
    ];
    if rng.one_in(3) { rng.pick(&WEIGHTED) } else { rng.pick(&Family::ALL) }
}

/// A random sequence of 1..=20 instructions from all families.
pub fn random_seq(seed: u64) -> Seq {
    let mut g = Gen::new(seed);
    let n = g.rng.range(1, 20) as usize;
    for _ in 0..n {
        let f = random_family(&mut g.rng);
        g.emit(f);
    }
    g.finish(n)
}

/// A random sequence of 1..=`max_len` instructions drawn from `families`.
pub fn family_seq(seed: u64, families: &[Family], max_len: u32) -> Seq {
    let mut g = Gen::new(seed ^ 0xFA41_11E5_0000_0000);
    let n = g.rng.range(1, max_len) as usize;
    for _ in 0..n {
        let f = g.rng.pick(families);
        g.emit(f);
    }
    g.finish(n)
}
