//! CPUID of the virtual CPU: a real processor, an Intel Pentium M "Banias"
//! (family 6, model 9), with exactly the features btvisor virtualizes. It
//! is the one real IA-32 part with SSE2 but neither SSE3 nor PAE, the two
//! things btvisor lacks, so kernels take the paths they take on that
//! hardware. Its local APIC reads as disabled by firmware (CPUID.1:EDX.APIC
//! clear, as on hardware whose APIC_BASE global enable is off), and the
//! features whose machinery btvisor does not model (VME, DE, MCE, MTRR,
//! MCA, PAT, CLFLUSH, DS, ACPI, TM, PBE) are masked, as a hypervisor masks
//! them. Never the host's values: a guest that saw host features would use
//! instructions the translator does not handle.

/// "GenuineIntel" split over EBX, EDX, ECX.
const VENDOR: &[u8; 12] = b"GenuineIntel";
/// Highest standard leaf: the Pentium M's leaves 0-2, then 3-6 empty and
/// leaf 7 for SERIALIZE alone (`SERIALIZE_EDX7`).
const MAX_LEAF: u32 = 7;
/// Highest standard leaf while IA32_MISC_ENABLE's "limit CPUID maxval"
/// bit is set (the Pentium M's own maximum).
const LIMITED_MAX_LEAF: u32 = 2;
/// CPUID.(EAX=7,ECX=0):EDX bit 14, SERIALIZE: the one addition to the
/// Banias. btvisor runs it as a host MFENCE (translated code keeps no
/// stale instructions to discard: written code pages are caught as they
/// are written), so it costs nothing, where the serializing instruction
/// Linux uses without it — an IRET to the next instruction, in
/// `sync_core()`, after every piece of kernel text it patches — leaves
/// translated code each time (38.5k times in a boot).
pub const SERIALIZE_EDX7: u32 = 1 << 14;
/// Highest extended leaf (brand string).
const MAX_EXT_LEAF: u32 = 0x8000_0004;
/// Family 6, model 9, stepping 5: Pentium M (Banias).
pub const FAMILY: u32 = 6;
pub const MODEL: u32 = 9;
pub const STEPPING: u32 = 5;
const SIGNATURE: u32 = (FAMILY << 8) | (MODEL << 4) | STEPPING;
/// Leaf 2 cache and TLB descriptors of the Banias: 0xB0/0xB3 4 KiB I/D
/// TLBs, 0x02/0x04 4 MiB I/D TLBs, 0x30/0x2C 32 KiB L1 I/D, 0x7C 1 MiB L2,
/// 0xF0 64-byte prefetching; AL = 1 (one CPUID 2 call).
const LEAF2: [u32; 4] = [0x02B3_B001, 0x0000_00F0, 0, 0x2C04_307C];

/// Leaf 1 EDX feature bits.
pub mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const CX8: u32 = 1 << 8;
    pub const APIC: u32 = 1 << 9;
    pub const SEP: u32 = 1 << 11;
    pub const PGE: u32 = 1 << 13;
    pub const CMOV: u32 = 1 << 15;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
}

/// Features advertised in leaf 1 EDX.
pub const FEATURES_EDX: u32 = edx1::FPU
    | edx1::PSE
    | edx1::TSC
    | edx1::MSR
    | edx1::CX8
    | edx1::SEP
    | edx1::PGE
    | edx1::CMOV
    | edx1::MMX
    | edx1::FXSR
    | edx1::SSE
    | edx1::SSE2;

/// The Pentium M's brand string (right-justified, as Intel's are).
const BRAND: &[u8; 48] = b"        Intel(R) Pentium(R) M processor 1600MHz\0";

fn dw(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Returns (EAX, EBX, ECX, EDX) for the leaf in EAX and subleaf in ECX;
/// `limited`: IA32_MISC_ENABLE limits the standard leaves to 0-2.
pub fn cpuid(leaf: u32, subleaf: u32, limited: bool) -> [u32; 4] {
    let max = if limited { LIMITED_MAX_LEAF } else { MAX_LEAF };
    match leaf {
        0 => [max, dw(VENDOR, 0), dw(VENDOR, 8), dw(VENDOR, 4)],
        1 => [SIGNATURE, 0, 0, FEATURES_EDX],
        2 => LEAF2,
        3..=6 if !limited => [0; 4],
        // Subleaf 0 only (EAX = 0: no further subleaves).
        7 if !limited => [0, 0, 0, if subleaf == 0 { SERIALIZE_EDX7 } else { 0 }],
        0x8000_0000 => [MAX_EXT_LEAF, 0, 0, 0],
        0x8000_0001 => [0, 0, 0, 0],
        0x8000_0002..=0x8000_0004 => {
            let o = (leaf - 0x8000_0002) as usize * 16;
            [dw(BRAND, o), dw(BRAND, o + 4), dw(BRAND, o + 8), dw(BRAND, o + 12)]
        }
        // Intel: leaves above the maximum return the highest basic leaf's data.
        _ => cpuid(max, 0, limited),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_and_features() {
        let r = cpuid(0, 0, false);
        let mut v = Vec::new();
        for x in [r[1], r[3], r[2]] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(&v, VENDOR);
        let f = cpuid(1, 0, false);
        assert_eq!(f[0], 0x695);
        assert_eq!(f[3] & edx1::SSE2, edx1::SSE2);
        for implemented in [edx1::PSE, edx1::PGE, edx1::MSR, edx1::SEP] {
            assert_ne!(f[3] & implemented, 0);
        }
        assert_eq!(f[3] & edx1::APIC, 0, "no local APIC yet");
        assert_eq!(f[3] & (1 << 6), 0, "no PAE");
        assert_eq!(f[2], 0, "no SSE3+ features advertised");
    }

    #[test]
    fn leaf_7_has_serialize_alone_unless_limited() {
        assert_eq!(cpuid(0, 0, false)[0], 7);
        assert_eq!(cpuid(7, 0, false), [0, 0, 0, SERIALIZE_EDX7]);
        assert_eq!(cpuid(7, 1, false), [0; 4]);
        assert_eq!(cpuid(4, 0, false), [0; 4], "no deterministic cache leaf: leaf 2 describes them");
        // Above the maximum, Intel returns the highest leaf's data.
        assert_eq!(cpuid(0x20, 0, false), cpuid(7, 0, false));
        // MISC_ENABLE's limit: the Banias's own leaves 0-2.
        assert_eq!(cpuid(0, 0, true)[0], 2);
        assert_eq!(cpuid(7, 0, true), cpuid(2, 0, true));
    }
}
