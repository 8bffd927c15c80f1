//! Random guest programs: a Multiboot ELF kernel whose stub sets up a GDT,
//! an IDT whose handlers resume, a TSS, the 8259s, the PIT and (by choice)
//! paging, then enters random bytes at ring 0 or 3, in a 32- or 16-bit code
//! segment, with flat or odd data segments and registers pointing into
//! RAM, the code itself, the page tables and the VGA window.
//!
//! Physical layout (identity-mapped when paging is on):
//!
//! ```text
//! 0x100000  stub, GDT, IDT, TSS, vector stubs, handler, event counter
//! 0x105000  page directory, then page tables 0 and 1 (0-8 MiB)
//! 0x170000  ring-0 stack (grows down from 0x180000)
//! 0x180000  ring-3 stack (grows down from 0x190000)
//! 0x200000  random code (CODE_SIZE bytes)
//! 0x300000  random data (DATA_SIZE bytes)
//! ```
//!
//! Every vector's handler counts the event, acknowledges the 8259s, steps
//! the interrupted EIP one byte on and returns; after `EVENT_LIMIT` events
//! it leaves through isa-debug-exit with value `DONE_VALUE`. The PIT (1 kHz)
//! bounds a program that never faults, unless it disables interrupts.

use super::rng::Rng;

/// Where the ELF's first segment (stub and tables) is loaded.
pub const LOAD: u32 = 0x10_0000;
const ENTRY: u32 = LOAD + 0x100;
const GDT: u32 = LOAD + 0x1000;
const IDT: u32 = LOAD + 0x2000;
const TSS: u32 = LOAD + 0x2800;
const GDTR: u32 = LOAD + 0x2900;
const IDTR: u32 = LOAD + 0x2908;
/// The handler's event counter.
const COUNTER: u32 = LOAD + 0x2A00;
/// 16-byte stubs, one per vector.
const STUBS: u32 = LOAD + 0x3000;
const HANDLER: u32 = LOAD + 0x4000;
const PD: u32 = LOAD + 0x5000;
const PT0: u32 = LOAD + 0x6000;
const PT1: u32 = LOAD + 0x7000;
/// Bytes of the first segment.
const STUB_AREA: u32 = 0x8000;
const STACK0_TOP: u32 = 0x18_0000;
const STACK3_TOP: u32 = 0x19_0000;
pub const CODE: u32 = 0x20_0000;
pub const CODE_SIZE: u32 = 0x2000;
pub const DATA: u32 = 0x30_0000;
pub const DATA_SIZE: u32 = 0x4000;
/// Events (exceptions and interrupts) before the program ends.
pub const EVENT_LIMIT: u32 = 48;
/// The isa-debug-exit value the handler writes at the limit: status 0x21.
pub const DONE_VALUE: u8 = 0x10;
/// PIT channel 0 divisor for about 1 kHz.
const PIT_DIVISOR: u16 = 1193;
const VGA_TEXT: u32 = 0xB8000;

/// Selectors of the GDT the stub loads.
mod sel {
    pub const CODE0: u16 = 0x08;
    pub const DATA0: u16 = 0x10;
    pub const CODE3: u16 = 0x18 | 3;
    pub const DATA3: u16 = 0x20 | 3;
    pub const CODE16_0: u16 = 0x28;
    pub const CODE16_3: u16 = 0x30 | 3;
    /// Expand-up data, random base and byte-granular limit.
    pub const ODD_BASE: u16 = 0x38 | 3;
    /// Expand-down data over the data area.
    pub const EXPAND_DOWN: u16 = 0x40 | 3;
    /// 16-bit (B = 0) data based at the data area.
    pub const DATA16: u16 = 0x48 | 3;
    pub const TSS: u16 = 0x50;
    /// Read-only data, flat.
    pub const READ_ONLY: u16 = 0x58 | 3;
}

/// What a program's stub sets up (chosen from the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub ring3: bool,
    pub paging: bool,
    /// The second 4 MiB mapped by one large page (CR4.PSE).
    pub large_page: bool,
    pub code16: bool,
    pub odd_segments: bool,
    pub iopl3: bool,
    pub timer: bool,
    /// CR0.WP (supervisor writes honour read-only pages).
    pub write_protect: bool,
    /// CR0.AM and EFLAGS.AC: alignment checks at ring 3.
    pub align_check: bool,
    /// CR4.OSFXSR: SSE instructions run instead of raising #UD.
    pub sse: bool,
    /// The machine has the local and I/O APICs (`-M pc`); registers also
    /// point into their register pages.
    pub apic: bool,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flags = [
            (self.ring3, "ring3"),
            (!self.ring3, "ring0"),
            (self.paging, "paging"),
            (self.large_page, "pse"),
            (self.code16, "code16"),
            (self.odd_segments, "odd-segments"),
            (self.iopl3, "iopl3"),
            (self.timer, "timer"),
            (self.write_protect, "wp"),
            (self.align_check, "ac"),
            (self.sse, "sse"),
            (self.apic, "apic"),
        ];
        let names: Vec<&str> = flags.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        write!(f, "{}", names.join(","))
    }
}

impl Shape {
    fn random(rng: &mut Rng) -> Shape {
        let paging = rng.chance(50);
        Shape {
            ring3: rng.chance(50),
            paging,
            large_page: paging && rng.chance(50),
            code16: rng.chance(15),
            odd_segments: rng.chance(35),
            iopl3: rng.chance(30),
            timer: rng.chance(80),
            write_protect: paging && rng.chance(50),
            align_check: rng.chance(20),
            sse: rng.chance(70),
            apic: rng.chance(40),
        }
    }
}

/// A generated program: its Multiboot ELF image and what it sets up.
pub struct Program {
    pub seed: u64,
    pub shape: Shape,
    pub elf: Vec<u8>,
}

/// The program of `seed` (the same seed always gives the same bytes).
pub fn generate(seed: u64) -> Program {
    let mut rng = Rng::new(seed);
    let shape = Shape::random(&mut rng);
    let mut stub = vec![0u8; STUB_AREA as usize];
    write_gdt(&mut stub, &mut rng);
    write_idt(&mut stub, &mut rng);
    write_tss(&mut stub);
    write_vector_stubs(&mut stub);
    write_handler(&mut stub);
    if shape.paging {
        write_page_tables(&mut stub, &shape, &mut rng);
    }
    write_entry(&mut stub, &shape, &mut rng);
    let code = random_code(&mut rng);
    let data: Vec<u8> = (0..DATA_SIZE).map(|_| rng.byte()).collect();
    let elf = elf_image(&[(LOAD, &stub), (CODE, &code), (DATA, &data)], ENTRY);
    Program { seed, shape, elf }
}

/// Random code: mostly uniform bytes, with runs biased towards prefixes and
/// two-byte opcodes (SSE, 16-bit addressing, string forms), which uniform
/// bytes rarely combine.
fn random_code(rng: &mut Rng) -> Vec<u8> {
    const BIASED: &[u8] = &[0x0F, 0x66, 0x67, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0];
    let biased = rng.chance(50);
    (0..CODE_SIZE)
        .map(|_| if biased && rng.chance(15) { BIASED[rng.below(BIASED.len() as u32) as usize] } else { rng.byte() })
        .collect()
}

fn put32(buf: &mut [u8], addr: u32, v: u32) {
    let o = (addr - LOAD) as usize;
    buf[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// A segment descriptor: base, limit (20 bits), access byte, flags nibble
/// (G, D/B, L, AVL).
pub(crate) fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let mut d = (limit & 0xFFFF) as u64;
    d |= ((base & 0xFF_FFFF) as u64) << 16;
    d |= (access as u64) << 40;
    d |= (((limit >> 16) & 0xF) as u64) << 48;
    d |= ((flags & 0xF) as u64) << 52;
    d |= ((base >> 24) as u64) << 56;
    d
}

/// Present, DPL, code/data type bits of an access byte.
pub(crate) const fn access(dpl: u8, code: bool, writable_or_readable: bool, expand_down: bool) -> u8 {
    0x90 | (dpl << 5)
        | if code { 0x08 } else { 0 }
        | if writable_or_readable { 0x02 } else { 0 }
        | if expand_down { 0x04 } else { 0 }
}
/// Flags nibble: 4 KiB granularity, 32-bit.
pub(crate) const G32: u8 = 0xC;

fn write_gdt(buf: &mut [u8], rng: &mut Rng) {
    let odd_base = rng.below(0x40_0000);
    let odd_limit = rng.below(0x1_0000);
    let down_limit = rng.below(DATA_SIZE);
    let entries = [
        0,
        descriptor(0, 0xF_FFFF, access(0, true, true, false), G32),
        descriptor(0, 0xF_FFFF, access(0, false, true, false), G32),
        descriptor(0, 0xF_FFFF, access(3, true, true, false), G32),
        descriptor(0, 0xF_FFFF, access(3, false, true, false), G32),
        descriptor(CODE, 0xFFFF, access(0, true, true, false), 0),
        descriptor(CODE, 0xFFFF, access(3, true, true, false), 0),
        descriptor(odd_base, odd_limit, access(3, false, true, false), 0x4),
        descriptor(DATA, down_limit, access(3, false, true, true), 0x4),
        descriptor(DATA, 0xFFFF, access(3, false, true, false), 0),
        descriptor(TSS, 0x67, 0x89, 0),
        descriptor(0, 0xF_FFFF, access(3, false, false, false), G32),
    ];
    for (i, d) in entries.iter().enumerate() {
        let a = GDT + 8 * i as u32;
        put32(buf, a, *d as u32);
        put32(buf, a + 4, (*d >> 32) as u32);
    }
    let limit = (8 * entries.len() - 1) as u32;
    put32(buf, GDTR, limit | (GDT << 16));
    put32(buf, GDTR + 4, GDT >> 16);
}

/// Vectors for which the processor pushes an error code.
fn has_error_code(v: u32) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

fn write_idt(buf: &mut [u8], rng: &mut Rng) {
    for v in 0..256u32 {
        let off = STUBS + 16 * v;
        // 32-bit interrupt gate, mostly DPL 3 so INT n from ring 3 reaches it.
        let dpl: u32 = if rng.chance(85) { 3 } else { 0 };
        let lo = (off & 0xFFFF) | ((sel::CODE0 as u32) << 16);
        let hi = (off & 0xFFFF_0000) | 0x8E00 | (dpl << 13);
        put32(buf, IDT + 8 * v, lo);
        put32(buf, IDT + 8 * v + 4, hi);
    }
    put32(buf, IDTR, (256 * 8 - 1) | (IDT << 16));
    put32(buf, IDTR + 4, IDT >> 16);
}

fn write_tss(buf: &mut [u8]) {
    put32(buf, TSS + 4, STACK0_TOP);
    put32(buf, TSS + 8, sel::DATA0 as u32);
    // I/O map base past the limit: no permission bitmap.
    put32(buf, TSS + 100, 104 << 16);
}

/// A tiny 32-bit emitter at a fixed address.
struct Asm<'a> {
    buf: &'a mut [u8],
    at: u32,
}

impl Asm<'_> {
    fn b(&mut self, bytes: &[u8]) {
        let o = (self.at - LOAD) as usize;
        self.buf[o..o + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len() as u32;
    }
    fn d(&mut self, v: u32) {
        self.b(&v.to_le_bytes());
    }
    /// `mov r32, imm32` (r: 0 = EAX ... 7 = EDI).
    fn mov_r(&mut self, r: u8, v: u32) {
        self.b(&[0xB8 + r]);
        self.d(v);
    }
    /// `mov ax, sel ; mov sreg, ax` (sreg: 0 ES, 2 SS, 3 DS, 4 FS, 5 GS).
    fn load_sreg(&mut self, sreg: u8, sel: u16) {
        self.b(&[0x66, 0xB8]);
        self.b(&sel.to_le_bytes());
        self.b(&[0x8E, 0xC0 | (sreg << 3)]);
    }
    /// `mov al, v ; out port, al`
    fn out(&mut self, port: u8, v: u8) {
        self.b(&[0xB0, v, 0xE6, port]);
    }
    fn push(&mut self, v: u32) {
        self.b(&[0x68]);
        self.d(v);
    }
    /// `jmp rel32` to `target`.
    fn jmp(&mut self, target: u32) {
        self.b(&[0xE9]);
        let rel = target.wrapping_sub(self.at + 4);
        self.d(rel);
    }
}

/// Per vector: `[push 0 ;] push v ; jmp handler` (the dummy error code
/// where the processor pushes none).
fn write_vector_stubs(buf: &mut [u8]) {
    for v in 0..256u32 {
        let mut a = Asm { buf, at: STUBS + 16 * v };
        if !has_error_code(v) {
            a.b(&[0x6A, 0x00]);
        }
        a.push(v);
        a.jmp(HANDLER);
    }
}

/// The common handler:
///
/// ```text
///     mov ax, 0x10 ; mov ds, ax
///     mov al, 0x20 ; out 0xA0, al ; out 0x20, al   ; EOI to both 8259s
///     inc dword [counter]
///     cmp dword [counter], EVENT_LIMIT ; jae done
///     add dword [esp+8], 1                         ; EIP + 1
///     add esp, 8 ; iret                            ; drop vector, error code
/// done:
///     mov al, DONE_VALUE ; out 0xF4, al ; hlt
/// ```
fn write_handler(buf: &mut [u8]) {
    let mut a = Asm { buf, at: HANDLER };
    a.load_sreg(3, sel::DATA0);
    a.b(&[0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20]);
    a.b(&[0xFF, 0x05]);
    a.d(COUNTER);
    a.b(&[0x81, 0x3D]);
    a.d(COUNTER);
    a.d(EVENT_LIMIT);
    a.b(&[0x73, 11]); // jae done (over the next 11 bytes)
    a.b(&[0x83, 0x44, 0x24, 0x08, 0x01]);
    a.b(&[0x83, 0xC4, 0x08]);
    a.b(&[0xCF]);
    a.b(&[0xEB, 0x00]); // (padding the jump distance to 11)
    a.out(0xF4, DONE_VALUE);
    a.b(&[0xF4, 0xEB, 0xFD]); // hlt ; jmp back to hlt
}

/// Page tables for 0-8 MiB (identity), the second 4 MiB possibly one large
/// page; data-area pages randomly not present, read-only or supervisor.
fn write_page_tables(buf: &mut [u8], shape: &Shape, rng: &mut Rng) {
    const P: u32 = 1;
    const RW: u32 = 2;
    const US: u32 = 4;
    const PS: u32 = 0x80;
    for (t, table) in [PT0, PT1].into_iter().enumerate() {
        for i in 0..1024u32 {
            let addr = (t as u32) << 22 | i << 12;
            let mut flags = P | RW | US;
            if (LOAD..LOAD + STUB_AREA).contains(&addr) || (STACK0_TOP - 0x1_0000..STACK0_TOP).contains(&addr) {
                flags = P | RW; // the monitor's own structures: supervisor
            } else if (DATA..DATA + DATA_SIZE).contains(&addr) || rng.chance(2) {
                match rng.below(10) {
                    0 => flags &= !P,
                    1 | 2 => flags &= !RW,
                    3 => flags &= !US,
                    _ => {}
                }
            }
            put32(buf, table + 4 * i, addr | flags);
        }
    }
    put32(buf, PD, PT0 | P | RW | US);
    let second = if shape.large_page { 0x40_0000 | PS | P | RW | US } else { PT1 | P | RW | US };
    put32(buf, PD + 4, second);
    // An alias of the low 4 MiB at 8 MiB, sometimes.
    if rng.chance(50) {
        put32(buf, PD + 8, PT0 | P | RW | US);
    }
}

/// A register's initial value: mostly pointers to places worth touching
/// (with `apic`, also the local and I/O APICs' registers).
fn register_value(rng: &mut Rng, apic: bool) -> u32 {
    match rng.below(100) {
        0..40 => DATA + rng.below(DATA_SIZE),
        40..52 => CODE + rng.below(CODE_SIZE),
        52..60 => rng.below(256),
        60..66 => VGA_TEXT + rng.below(4000),
        66..70 => LOAD + rng.below(STUB_AREA),
        70..76 if apic => crate::devices::lapic::APIC_DEFAULT_BASE + rng.below(0x400),
        76..79 if apic => crate::devices::ioapic::IOAPIC_BASE + rng.below(0x48),
        _ => rng.u32(),
    }
}

/// The entry stub (the Multiboot entry point, flat segments, paging off).
fn write_entry(buf: &mut [u8], shape: &Shape, rng: &mut Rng) {
    let mut a = Asm { buf, at: ENTRY };
    a.b(&[0xFA]); // cli
    a.b(&[0x0F, 0x01, 0x15]); // lgdt [GDTR]
    a.d(GDTR);
    let reload = a.at + 7;
    a.b(&[0xEA]); // jmp far CODE0:reload
    a.d(reload);
    a.b(&sel::CODE0.to_le_bytes());
    for s in [3, 0, 2, 4, 5] {
        a.load_sreg(s, sel::DATA0);
    }
    a.mov_r(4, STACK0_TOP); // mov esp, STACK0_TOP
    a.b(&[0x0F, 0x01, 0x1D]); // lidt [IDTR]
    a.d(IDTR);
    a.b(&[0x66, 0xB8]); // mov ax, TSS ; ltr ax
    a.b(&sel::TSS.to_le_bytes());
    a.b(&[0x0F, 0x00, 0xD8]);
    // 8259s: vectors 0x20/0x28, cascade on IRQ 2, 8086 mode.
    for (port, v) in
        [(0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28), (0x21, 4), (0xA1, 2), (0x21, 1), (0xA1, 1)]
    {
        a.out(port, v);
    }
    a.out(0x21, if shape.timer { 0xFE } else { 0xFF });
    a.out(0xA1, 0xFF);
    if shape.timer {
        a.out(0x43, 0x34);
        let [lo, hi] = PIT_DIVISOR.to_le_bytes();
        a.out(0x40, lo);
        a.out(0x40, hi);
    }
    let mut cr4 = 0;
    if shape.large_page {
        cr4 |= 0x10; // PSE
    }
    if shape.sse {
        cr4 |= 0x600; // OSFXSR | OSXMMEXCPT
    }
    if cr4 != 0 {
        a.mov_r(0, cr4);
        a.b(&[0x0F, 0x22, 0xE0]); // mov cr4, eax
    }
    if shape.paging {
        a.mov_r(0, PD);
        a.b(&[0x0F, 0x22, 0xD8]); // mov cr3, eax
    }
    let mut cr0_bits = 0;
    if shape.paging {
        cr0_bits |= 0x8000_0000;
    }
    if shape.write_protect {
        cr0_bits |= 0x1_0000;
    }
    if shape.align_check {
        cr0_bits |= 0x4_0000;
    }
    if cr0_bits != 0 {
        a.b(&[0x0F, 0x20, 0xC0, 0x0D]); // mov eax, cr0 ; or eax, imm32
        a.d(cr0_bits);
        a.b(&[0x0F, 0x22, 0xC0]); // mov cr0, eax
    }
    // The IRET frame into the random code.
    let (cs, eip) = match (shape.ring3, shape.code16) {
        (false, false) => (sel::CODE0, CODE),
        (true, false) => (sel::CODE3, CODE),
        (false, true) => (sel::CODE16_0, 0),
        (true, true) => (sel::CODE16_3, 0),
    };
    if shape.ring3 {
        a.push(sel::DATA3 as u32);
        a.push(STACK3_TOP - 4 * rng.below(64));
    }
    let mut eflags = 0x2 | if shape.timer { 0x200 } else { 0 };
    if shape.iopl3 {
        eflags |= 0x3000;
    }
    if shape.align_check {
        eflags |= 0x4_0000;
    }
    a.push(eflags);
    a.push(cs as u32);
    a.push(eip);
    let flat = if shape.ring3 { sel::DATA3 } else { sel::DATA0 };
    const ODD: [u16; 6] = [sel::ODD_BASE, sel::EXPAND_DOWN, sel::DATA16, sel::READ_ONLY, 0, sel::DATA3];
    for s in [3, 0, 4, 5] {
        let v = if shape.odd_segments { ODD[rng.below(ODD.len() as u32) as usize] } else { flat };
        a.load_sreg(s, v);
    }
    for r in [0, 1, 2, 3, 5, 6, 7] {
        a.mov_r(r, register_value(rng, shape.apic));
    }
    a.b(&[0xCF]); // iret
}

/// A 32-bit ELF executable with one PT_LOAD segment per `(address, bytes)`
/// and a Multiboot header (flags 0) in its first 8 KiB.
fn elf_image(segments: &[(u32, &[u8])], entry: u32) -> Vec<u8> {
    const EHDR: usize = 52;
    const PHDR: usize = 32;
    const MB_HEADER: usize = 0x100;
    const FIRST_DATA: usize = 0x1000;
    let mut out = vec![0u8; FIRST_DATA];
    let mut offsets = Vec::new();
    for (_, bytes) in segments {
        offsets.push(out.len());
        out.extend_from_slice(bytes);
        out.resize(out.len().next_multiple_of(0x1000), 0);
    }
    let put16 = |o: &mut Vec<u8>, at: usize, v: u16| o[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |o: &mut Vec<u8>, at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_le_bytes());
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 1; // ELFCLASS32
    out[5] = 1; // little-endian
    out[6] = 1; // EV_CURRENT
    put16(&mut out, 16, 2); // ET_EXEC
    put16(&mut out, 18, 3); // EM_386
    put32(&mut out, 20, 1);
    put32(&mut out, 24, entry);
    put32(&mut out, 28, EHDR as u32);
    put16(&mut out, 40, EHDR as u16);
    put16(&mut out, 42, PHDR as u16);
    put16(&mut out, 44, segments.len() as u16);
    for (i, ((addr, bytes), off)) in segments.iter().zip(&offsets).enumerate() {
        let ph = EHDR + PHDR * i;
        put32(&mut out, ph, 1); // PT_LOAD
        put32(&mut out, ph + 4, *off as u32);
        put32(&mut out, ph + 8, *addr);
        put32(&mut out, ph + 12, *addr);
        put32(&mut out, ph + 16, bytes.len() as u32);
        put32(&mut out, ph + 20, bytes.len() as u32);
        put32(&mut out, ph + 24, 7); // RWX
        put32(&mut out, ph + 28, 0x1000);
    }
    const MAGIC: u32 = 0x1BAD_B002;
    put32(&mut out, MB_HEADER, MAGIC);
    put32(&mut out, MB_HEADER + 4, 0);
    put32(&mut out, MB_HEADER + 8, 0u32.wrapping_sub(MAGIC));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_deterministic_and_differ_by_seed() {
        let (a, b, c) = (generate(7), generate(7), generate(8));
        assert_eq!(a.elf, b.elf);
        assert_ne!(a.elf, c.elf);
    }

    #[test]
    fn the_handler_jump_skips_to_done() {
        let mut buf = vec![0u8; STUB_AREA as usize];
        write_handler(&mut buf);
        let h = (HANDLER - LOAD) as usize;
        let code = &buf[h..h + 64];
        let jae = code.iter().position(|&b| b == 0x73).expect("jae");
        let done = jae + 2 + code[jae + 1] as usize;
        assert_eq!(&code[done..done + 4], &[0xB0, DONE_VALUE, 0xE6, 0xF4], "jae lands on the exit");
    }

    #[test]
    fn the_image_is_a_multiboot_elf_the_loader_accepts() {
        let p = generate(1);
        let mut ram = vec![0u8; 32 << 20];
        let info = crate::loader::load_multiboot(&p.elf, &mut ram, "", "fuzz").expect("loads");
        assert_eq!(info.entry, ENTRY);
        assert_eq!(ram[ENTRY as usize], 0xFA, "cli first");
    }
}
