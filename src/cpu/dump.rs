//! The CPU state as text in QEMU's `log_cpu_state` form (`-d cpu`, `-d int`,
//! `monitor info registers`, the state printed when a run ends badly), so
//! btvisor's logs diff against QEMU's.
//!
//! Two lines differ by nature: QEMU's `CCS/CCD/CCO` line shows its lazy
//! condition codes, which btvisor does not have; it is printed as QEMU
//! prints computed flags (`CCO=EFLAGS`, CCS = the arithmetic flags).

use super::{Cpu, EAX, EBP, EBX, ECX, EDI, EDX, ESI, ESP, Segment, flags};

/// Descriptor attribute bits as `Segment::attr` holds them.
mod attr {
    pub const ACCESSED: u16 = 1 << 0;
    /// Readable (code) / writable (data).
    pub const RW: u16 = 1 << 1;
    /// Conforming (code) / expand-down (data).
    pub const CE: u16 = 1 << 2;
    pub const CODE: u16 = 1 << 3;
    pub const S: u16 = 1 << 4;
    pub const P: u16 = 1 << 7;
    pub const DB: u16 = 1 << 14;
    pub const G: u16 = 1 << 15;
}

/// System descriptor type names (QEMU's, legacy mode).
const SYSTEM_TYPES: [&str; 16] = [
    "Reserved",
    "TSS16-avl",
    "LDT",
    "TSS16-busy",
    "CallGate16",
    "TaskGate",
    "IntGate16",
    "TrapGate16",
    "Reserved",
    "TSS32-avl",
    "Reserved",
    "TSS32-busy",
    "CallGate32",
    "Reserved",
    "IntGate32",
    "TrapGate32",
];

/// One segment register's line.
pub fn segment_line(name: &str, s: &Segment, protected: bool) -> String {
    let raw_limit = if s.attr & attr::G != 0 { s.limit >> 12 } else { s.limit };
    let high = ((s.attr as u32) << 8) | (((raw_limit >> 16) & 0xF) << 16);
    let mut l = format!("{name:<3}={:04x} {:08x} {:08x} {high:08x}", s.selector, s.base, s.limit);
    if protected && s.attr & attr::P != 0 {
        l += &format!(" DPL={} ", (s.attr >> 5) & 3);
        let bit = |m: u16, c: char| if s.attr & m != 0 { c } else { '-' };
        if s.attr & attr::S == 0 {
            l += SYSTEM_TYPES[(s.attr & 0xF) as usize];
        } else if s.attr & attr::CODE != 0 {
            l += if s.attr & attr::DB != 0 { "CS32" } else { "CS16" };
            l += &format!(" [{}{}{}]", bit(attr::CE, 'C'), bit(attr::RW, 'R'), bit(attr::ACCESSED, 'A'));
        } else {
            l += if s.attr & attr::DB != 0 { "DS  " } else { "DS16" };
            l += &format!(" [{}{}{}]", bit(attr::CE, 'E'), bit(attr::RW, 'W'), bit(attr::ACCESSED, 'A'));
        }
    }
    l.push('\n');
    l
}

impl Cpu {
    /// The state in QEMU's `-d cpu` form.
    pub fn dump(&self) -> String {
        let g = &self.hot.gpr;
        let ef = self.eflags();
        let bit = |m: u32, c: char| if ef & m != 0 { c } else { '-' };
        let protected = self.cr[0] & 1 != 0;
        let mut s = format!(
            "EAX={:08x} EBX={:08x} ECX={:08x} EDX={:08x}\nESI={:08x} EDI={:08x} EBP={:08x} ESP={:08x}\n",
            g[EAX], g[EBX], g[ECX], g[EDX], g[ESI], g[EDI], g[EBP], g[ESP]
        );
        s += &format!(
            "EIP={:08x} EFL={ef:08x} [{}{}{}{}{}{}{}] CPL={} II=0 A20=1 SMM=0 HLT=0\n",
            self.hot.eip,
            bit(flags::DF, 'D'),
            bit(flags::OF, 'O'),
            bit(flags::SF, 'S'),
            bit(flags::ZF, 'Z'),
            bit(flags::AF, 'A'),
            bit(flags::PF, 'P'),
            bit(flags::CF, 'C'),
            self.cpl
        );
        for (name, i) in ["ES", "CS", "SS", "DS", "FS", "GS"].iter().zip(0..) {
            s += &segment_line(name, &self.seg[i], protected);
        }
        s += &segment_line("LDT", &self.ldtr, protected);
        s += &segment_line("TR", &self.tr, protected);
        s += &format!("GDT=     {:08x} {:08x}\n", self.gdtr.base, self.gdtr.limit);
        s += &format!("IDT=     {:08x} {:08x}\n", self.idtr.base, self.idtr.limit);
        s += &format!("CR0={:08x} CR2={:08x} CR3={:08x} CR4={:08x}\n", self.cr[0], self.cr[2], self.cr[3], self.cr[4]);
        for n in 0..4 {
            s += &format!("DR{n}={:08x} ", self.dr[n]);
        }
        s += &format!("\nDR6={:08x} DR7={:08x}\n", self.dr[6], self.dr[7]);
        s += &format!("CCS={:08x} CCD=00000000 CCO=EFLAGS\n", ef & flags::ARITH);
        s += "EFER=0000000000000000";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_lines_as_qemu_prints_them() {
        let cs = Segment::from_descriptor(0x08, 0x00CF_9A00_0000_FFFF);
        assert_eq!(segment_line("CS", &cs, true), "CS =0008 00000000 ffffffff 00cf9a00 DPL=0 CS32 [-R-]\n");
        let ds = Segment::from_descriptor(0x23, 0x00CF_F300_0000_FFFF);
        assert_eq!(segment_line("SS", &ds, true), "SS =0023 00000000 ffffffff 00cff300 DPL=3 DS   [-WA]\n");
        let tr = Segment::from_descriptor(0x28, 0x0000_8B10_F000_0067);
        assert_eq!(segment_line("TR", &tr, true), "TR =0028 0010f000 00000067 00008b00 DPL=0 TSS32-busy\n");
        assert_eq!(segment_line("ES", &Segment::default(), true), "ES =0000 00000000 00000000 00000000\n");
    }
}
