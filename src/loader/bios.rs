//! The machine state a PC BIOS leaves for the kernel it boots.
//!
//! QEMU boots every `-kernel` through SeaBIOS, so a kernel written for QEMU
//! (kvm-unit-tests' real-mode test, DOS-era code, a Multiboot kernel that
//! enables interrupts before it programs the 8259) finds the chipset as the
//! BIOS's power-on self test left it. btvisor has no BIOS; this module puts
//! the same observable state in place before the kernel's first instruction:
//!
//! - the 8259 pair initialised with vector bases 0x08 and 0x70 (ICW1 edge,
//!   cascade on IRQ 2, 8086 mode) and every IRQ masked but the timer (0),
//!   the cascade (2) and the RTC (8), the lines SeaBIOS enables on a machine
//!   without a keyboard controller, floppy or IDE disk;
//! - PIT channel 0 in mode 2 with the count 0 (65536): IRQ 0 at 18.2 Hz;
//! - the real-mode interrupt vector table: every vector points at an IRET;
//!   the hardware IRQ vectors at handlers in the BIOS area (F000:E000) that
//!   acknowledge the 8259, the timer's also counting BIOS ticks in the BIOS
//!   data area and chaining to INT 1Ch, the RTC's also reading register C;
//! - the BIOS data area words a kernel may read: COM1's port, the equipment
//!   word, the EBDA segment, the base memory size and the tick count.
//!
//! The handlers are hand-assembled 16-bit code; each is listed with its
//! assembly beside the bytes, and a unit test decodes them back.

use crate::devices::PortBus;
use crate::devices::pic::{MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA};
use crate::devices::pit::PIT_BASE;

/// The BIOS's code segment.
const BIOS_SEGMENT: u16 = 0xF000;
/// Where the hardware-interrupt handlers go (offset in [`BIOS_SEGMENT`]).
const HANDLERS_OFFSET: u16 = 0xE000;
/// The conventional offset of the BIOS's lone IRET (F000:FF53).
const IRET_OFFSET: u16 = 0xFF53;
/// Vector base of IRQs 0-7 and of IRQs 8-15.
pub const IRQ0_VECTOR: u8 = 0x08;
pub const IRQ8_VECTOR: u8 = 0x70;
/// The 8259 masks the BIOS leaves: IRQ 0 and the cascade (IRQ 2) on the
/// master, IRQ 8 (RTC) on the slave.
pub const MASTER_MASK: u8 = !((1 << 0) | (1 << 2));
pub const SLAVE_MASK: u8 = !(1 << 0);
/// BIOS data area fields (absolute addresses).
const BDA_COM1: usize = 0x400;
const BDA_EQUIPMENT: usize = 0x410;
const BDA_EBDA_SEGMENT: usize = 0x40E;
const BDA_BASE_MEMORY_KB: usize = 0x413;
const BDA_TICKS: usize = 0x46C;
/// The EBDA's segment (it starts at 0x9FC00, where conventional RAM ends).
const EBDA_SEGMENT: u16 = 0x9FC0;
const BASE_MEMORY_KB: u16 = (0x9FC00 / 1024) as u16;
/// Equipment word: one serial port (bits 9-11), 80x25 colour video (bits 4-5).
const EQUIPMENT: u16 = (1 << 9) | (2 << 4);
/// PIT input ticks per BIOS tick, and BIOS ticks per day (0x1800B0).
const PIT_HZ: u64 = 1_193_180;
const TICK_COUNT: u64 = 65_536;
const TICKS_PER_DAY: u64 = 86_400 * PIT_HZ / TICK_COUNT;

/// IRQ 0 (vector 0x08): count a BIOS tick, chain to INT 1Ch, EOI.
/// ```text
///  0 push ds                     ; 1E
///  1 push ax                     ; 50
///  2 xor ax, ax                  ; 31 C0
///  4 mov ds, ax                  ; 8E D8
///  6 add word [0x46C], 1         ; 83 06 6C 04 01
/// 11 adc word [0x46E], 0         ; 83 16 6E 04 00
/// 16 cmp word [0x46E], 0x18      ; 83 3E 6E 04 18   midnight is 0x1800B0
/// 21 jb 48                       ; 72 19
/// 23 cmp word [0x46C], 0xB0      ; 81 3E 6C 04 B0 00
/// 29 jb 48                       ; 72 11
/// 31 mov word [0x46C], 0         ; C7 06 6C 04 00 00
/// 37 mov word [0x46E], 0         ; C7 06 6E 04 00 00
/// 43 mov byte [0x470], 1         ; C6 06 70 04 01   the day rolled over
/// 48 int 0x1C                    ; CD 1C
/// 50 mov al, 0x20                ; B0 20
/// 52 out 0x20, al                ; E6 20            non-specific EOI
/// 54 pop ax                      ; 58
/// 55 pop ds                      ; 1F
/// 56 iret                        ; CF
/// ```
const TIMER_HANDLER: [u8; 57] = [
    0x1E, 0x50, 0x31, 0xC0, 0x8E, 0xD8, 0x83, 0x06, 0x6C, 0x04, 0x01, 0x83, 0x16, 0x6E, 0x04, 0x00, 0x83, 0x3E, 0x6E,
    0x04, 0x18, 0x72, 0x19, 0x81, 0x3E, 0x6C, 0x04, 0xB0, 0x00, 0x72, 0x11, 0xC7, 0x06, 0x6C, 0x04, 0x00, 0x00, 0xC7,
    0x06, 0x6E, 0x04, 0x00, 0x00, 0xC6, 0x06, 0x70, 0x04, 0x01, 0xCD, 0x1C, 0xB0, 0x20, 0xE6, 0x20, 0x58, 0x1F, 0xCF,
];

/// IRQ 8 (vector 0x70): read RTC register C (which acknowledges the RTC),
/// EOI to both 8259s.
/// ```text
/// push ax ; mov al, 0x0C ; out 0x70, al ; in al, 0x71
/// mov al, 0x20 ; out 0xA0, al ; out 0x20, al ; pop ax ; iret
/// ```
const RTC_HANDLER: [u8; 15] =
    [0x50, 0xB0, 0x0C, 0xE6, 0x70, 0xE4, 0x71, 0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20, 0x58, 0xCF];

/// Any other IRQ 1-7: EOI to the master.
/// ```text
/// push ax ; mov al, 0x20 ; out 0x20, al ; pop ax ; iret
/// ```
const MASTER_HANDLER: [u8; 7] = [0x50, 0xB0, 0x20, 0xE6, 0x20, 0x58, 0xCF];

/// Any other IRQ 9-15: EOI to the slave, then the master.
/// ```text
/// push ax ; mov al, 0x20 ; out 0xA0, al ; out 0x20, al ; pop ax ; iret
/// ```
const SLAVE_HANDLER: [u8; 9] = [0x50, 0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20, 0x58, 0xCF];

/// The linear address of `F000:offset`.
fn linear(offset: u16) -> usize {
    ((BIOS_SEGMENT as usize) << 4) + offset as usize
}

fn put16(ram: &mut [u8], at: usize, v: u16) {
    if let Some(s) = ram.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put(ram: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(s) = ram.get_mut(at..at + bytes.len()) {
        s.copy_from_slice(bytes);
    }
}

/// Points interrupt vector `v` at `F000:offset`.
fn set_vector(ram: &mut [u8], v: u8, offset: u16) {
    let at = v as usize * 4;
    put16(ram, at, offset);
    put16(ram, at + 2, BIOS_SEGMENT);
}

/// BIOS ticks since midnight at `seconds` past the epoch (UTC, as the RTC
/// shows it).
pub fn ticks_at(seconds: u64) -> u32 {
    ((seconds % 86_400) * PIT_HZ / TICK_COUNT % TICKS_PER_DAY) as u32
}

/// Writes the interrupt vector table, the handlers and the BIOS data area
/// into low RAM. Call it before the kernel is loaded: a kernel's bytes win.
pub fn write_low_memory(ram: &mut [u8]) {
    let handlers: [(&[u8], u16); 4] = [
        (&TIMER_HANDLER, HANDLERS_OFFSET),
        (&RTC_HANDLER, HANDLERS_OFFSET + 0x40),
        (&MASTER_HANDLER, HANDLERS_OFFSET + 0x60),
        (&SLAVE_HANDLER, HANDLERS_OFFSET + 0x70),
    ];
    for (code, offset) in handlers {
        put(ram, linear(offset), code);
    }
    put(ram, linear(IRET_OFFSET), &[0xCF]);
    for v in 0..=255u8 {
        set_vector(ram, v, IRET_OFFSET);
    }
    for irq in 0..8u8 {
        let master = match irq {
            0 => handlers[0].1,
            _ => handlers[2].1,
        };
        let slave = match irq {
            0 => handlers[1].1,
            _ => handlers[3].1,
        };
        set_vector(ram, IRQ0_VECTOR + irq, master);
        set_vector(ram, IRQ8_VECTOR + irq, slave);
    }
    put16(ram, BDA_COM1, crate::devices::COM1_BASE);
    put16(ram, BDA_EQUIPMENT, EQUIPMENT);
    put16(ram, BDA_EBDA_SEGMENT, EBDA_SEGMENT);
    put16(ram, BDA_BASE_MEMORY_KB, BASE_MEMORY_KB);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ticks = ticks_at(now);
    put16(ram, BDA_TICKS, ticks as u16);
    put16(ram, BDA_TICKS + 2, (ticks >> 16) as u16);
}

/// Programs the 8259s and the PIT through their ports, as the BIOS does.
pub fn program_chipset(bus: &mut PortBus) {
    const ICW1_EDGE_ICW4: u32 = 0x11;
    const ICW3_MASTER: u32 = 1 << 2; // a slave on IRQ 2
    const ICW3_SLAVE: u32 = 2; // this slave's cascade identity
    const ICW4_8086: u32 = 0x01;
    /// Channel 0, lobyte then hibyte, mode 2, binary.
    const PIT_CH0_MODE2: u32 = 0x34;
    let (mdata, sdata) = (MASTER_DATA, SLAVE_DATA);
    for (port, value) in [
        (MASTER_CMD, ICW1_EDGE_ICW4),
        (SLAVE_CMD, ICW1_EDGE_ICW4),
        (mdata, IRQ0_VECTOR as u32),
        (sdata, IRQ8_VECTOR as u32),
        (mdata, ICW3_MASTER),
        (sdata, ICW3_SLAVE),
        (mdata, ICW4_8086),
        (sdata, ICW4_8086),
        (mdata, MASTER_MASK as u32),
        (sdata, SLAVE_MASK as u32),
        (PIT_BASE + 3, PIT_CH0_MODE2),
        (PIT_BASE, 0),
        (PIT_BASE, 0),
    ] {
        bus.write(port, 1, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn mnemonics(code: &[u8]) -> Vec<Mnemonic> {
        Decoder::with_ip(16, code, 0, DecoderOptions::NONE).into_iter().map(|i| i.mnemonic()).collect()
    }

    #[test]
    fn handlers_decode_as_listed() {
        use Mnemonic::*;
        assert_eq!(
            mnemonics(&TIMER_HANDLER),
            [Push, Push, Xor, Mov, Add, Adc, Cmp, Jb, Cmp, Jb, Mov, Mov, Mov, Int, Mov, Out, Pop, Pop, Iret]
        );
        let jumps: Vec<u64> = Decoder::with_ip(16, &TIMER_HANDLER, 0, DecoderOptions::NONE)
            .into_iter()
            .filter(|i| i.mnemonic() == Jb)
            .map(|i| i.near_branch_target())
            .collect();
        assert_eq!(jumps, [48, 48]);
        let cmp_low = Decoder::with_ip(16, &TIMER_HANDLER[23..], 0, DecoderOptions::NONE).decode();
        assert_eq!(cmp_low.immediate16(), 0xB0);
        assert_eq!(mnemonics(&RTC_HANDLER), [Push, Mov, Out, In, Mov, Out, Out, Pop, Iret]);
        assert_eq!(mnemonics(&MASTER_HANDLER), [Push, Mov, Out, Pop, Iret]);
        assert_eq!(mnemonics(&SLAVE_HANDLER), [Push, Mov, Out, Out, Pop, Iret]);
    }

    #[test]
    fn vectors_point_at_the_handlers() {
        let mut ram = vec![0u8; 0x10_0000];
        write_low_memory(&mut ram);
        let vec = |v: usize| {
            (u16::from_le_bytes([ram[v * 4], ram[v * 4 + 1]]), u16::from_le_bytes([ram[v * 4 + 2], ram[v * 4 + 3]]))
        };
        assert_eq!(vec(0x08), (0xE000, 0xF000));
        assert_eq!(vec(0x70), (0xE040, 0xF000));
        assert_eq!(vec(0x09), (0xE060, 0xF000));
        assert_eq!(vec(0x73), (0xE070, 0xF000));
        assert_eq!(vec(0x10), (0xFF53, 0xF000));
        assert_eq!(ram[0xFFF53], 0xCF);
        assert_eq!(&ram[0x400..0x402], &[0xF8, 0x03]);
        assert_eq!(&ram[0x40E..0x410], &[0xC0, 0x9F]);
        assert_eq!(u16::from_le_bytes([ram[0x413], ram[0x414]]), 639);
    }

    #[test]
    fn ticks_wrap_at_midnight() {
        assert_eq!(ticks_at(0), 0);
        assert_eq!(ticks_at(86_400), 0);
        assert_eq!(TICKS_PER_DAY, 0x1800B0);
        assert_eq!(ticks_at(3600), (3600 * PIT_HZ / TICK_COUNT) as u32);
    }

    #[test]
    fn chipset_is_programmed_as_the_bios_leaves_it() {
        use crate::devices::clock::VirtualClock;
        let (mut bus, chipset) =
            crate::devices::chipset::pc_machine(Box::new(std::io::sink()), 1 << 20, VirtualClock::host(), 1);
        program_chipset(&mut bus);
        let pic = chipset.pic.lock().map(|p| p.imr()).unwrap_or_default();
        assert_eq!(pic, u16::from_le_bytes([MASTER_MASK, SLAVE_MASK]));
    }
}
