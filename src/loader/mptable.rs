//! Intel MultiProcessor Specification 1.4 tables, written into guest RAM
//! when btvisor boots a kernel on a machine with APICs (`-M pc`), as a BIOS
//! would: the floating pointer and the configuration table in the BIOS
//! area (0xF0000-0xFFFFF, reserved in the e820 map and the Multiboot map),
//! where Linux and other kernels search for them.
//!
//! The configuration table lists each processor (APIC ID n, the BSP first),
//! the ISA bus, the I/O APIC (ID = the CPU count, as SeaBIOS numbers it,
//! enabled, at 0xFEC00000), the ISA interrupts as wired on a PC (IRQ 0 on
//! INTIN 2, IRQ n on INTIN n, ExtINT on INTIN 0) and the local interrupts
//! (ExtINT on LINT0, NMI on LINT1).

use crate::cpu::cpuid;
use crate::devices::ioapic::IOAPIC_BASE;
use crate::devices::lapic::APIC_DEFAULT_BASE;

/// Where the floating pointer goes (16-byte aligned, in the BIOS area).
pub const MP_FLOATING_ADDR: u32 = 0xF_5A00;
/// Where the configuration table goes: right after the pointer.
pub const MP_CONFIG_ADDR: u32 = MP_FLOATING_ADDR + 16;
/// Version 1.4 of the specification.
const SPEC_REV: u8 = 4;
/// The local APIC version the processor entries give.
const LAPIC_VERSION: u8 = 0x14;
/// The I/O APIC version.
const IOAPIC_VERSION: u8 = 0x20;
/// Entry types.
const PROCESSOR: u8 = 0;
const BUS: u8 = 1;
const IOAPIC: u8 = 2;
const IO_INTERRUPT: u8 = 3;
const LOCAL_INTERRUPT: u8 = 4;
/// Interrupt types of the assignment entries.
const INT: u8 = 0;
const NMI: u8 = 1;
const EXTINT: u8 = 3;
/// ISA IRQs 0-15 (IRQ 2 is the cascade and has no entry).
const ISA_IRQS: u8 = 16;

/// The two's complement of the byte sum (makes the sum zero).
fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, &x| a.wrapping_add(x)))
}

/// The configuration table of a machine with `cpus` processors.
pub fn config_table(cpus: u8) -> Vec<u8> {
    let mut e: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let signature = cpuid::cpuid(1, 0, false);
    for id in 0..cpus {
        e.push(PROCESSOR);
        e.push(id);
        e.push(LAPIC_VERSION);
        e.push(1 | if id == 0 { 2 } else { 0 }); // enabled, BSP
        e.extend_from_slice(&signature[0].to_le_bytes());
        e.extend_from_slice(&(signature[3] | cpuid::edx1::APIC).to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        count += 1;
    }
    e.extend_from_slice(&[BUS, 0]);
    e.extend_from_slice(b"ISA   ");
    count += 1;
    let ioapic_id = cpus;
    e.extend_from_slice(&[IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    e.extend_from_slice(&IOAPIC_BASE.to_le_bytes());
    count += 1;
    // ExtINT on INTIN 0, then the ISA IRQs (flags 0: conforming to the bus).
    let mut io = vec![(EXTINT, 0u8, 0u8)];
    io.extend((0..ISA_IRQS).filter(|&irq| irq != 2).map(|irq| (INT, irq, if irq == 0 { 2 } else { irq })));
    for (kind, irq, pin) in io {
        e.extend_from_slice(&[IO_INTERRUPT, kind, 0, 0, 0, irq, ioapic_id, pin]);
        count += 1;
    }
    // ExtINT on LINT0 and NMI on LINT1 of every local APIC (ID 0xFF).
    for (kind, lint) in [(EXTINT, 0u8), (NMI, 1u8)] {
        e.extend_from_slice(&[LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xFF, lint]);
        count += 1;
    }
    let mut t = Vec::with_capacity(44 + e.len());
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&((44 + e.len()) as u16).to_le_bytes());
    t.push(SPEC_REV);
    t.push(0); // checksum, below
    t.extend_from_slice(b"BTVISOR ");
    t.extend_from_slice(b"PC          ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    t.extend_from_slice(&e);
    t[7] = checksum(&t);
    t
}

/// The floating pointer to a configuration table at `config`.
pub fn floating_pointer(config: u32) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&config.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = SPEC_REV;
    // Feature bytes 0: the configuration table exists; no IMCR (virtual
    // wire mode).
    f[10] = checksum(&f);
    f
}

/// Write both into `ram` (which must reach the BIOS area).
pub fn write(ram: &mut [u8], cpus: u8) {
    let table = config_table(cpus);
    let f = floating_pointer(MP_CONFIG_ADDR);
    let (fa, ca) = (MP_FLOATING_ADDR as usize, MP_CONFIG_ADDR as usize);
    if let Some(dst) = ram.get_mut(fa..fa + 16) {
        dst.copy_from_slice(&f);
    }
    if let Some(dst) = ram.get_mut(ca..ca + table.len()) {
        dst.copy_from_slice(&table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_entries() {
        let f = floating_pointer(MP_CONFIG_ADDR);
        assert_eq!(f.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        let t = config_table(2);
        assert_eq!(t.iter().fold(0u8, |a, &x| a.wrapping_add(x)), 0);
        assert_eq!(u16::from_le_bytes([t[4], t[5]]) as usize, t.len());
        // 2 processors, a bus, an I/O APIC, 16 I/O and 2 local interrupt entries.
        assert_eq!(u16::from_le_bytes([t[34], t[35]]), 2 + 1 + 1 + 16 + 2);
        assert_eq!(t[44], PROCESSOR);
        assert_eq!(t[47], 3, "the first processor is the enabled BSP");
        assert_eq!(t[64 + 3], 1, "the second is enabled, not the BSP");
        // IRQ 0 goes to INTIN 2.
        let irq0 = t.windows(8).position(|w| w[0] == IO_INTERRUPT && w[1] == INT && w[5] == 0);
        assert_eq!(irq0.map(|k| t[k + 7]), Some(2));
    }
}
