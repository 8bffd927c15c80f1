//! CPUID of the virtual CPU: a fixed model that advertises only what btvisor
//! virtualizes, never the host's values (a guest that saw host features
//! would use instructions the translator does not handle).

/// Vendor string "BtvisorBTCPU" split over EBX, EDX, ECX.
const VENDOR: &[u8; 12] = b"BtvisorBTCPU";
/// Highest standard leaf.
const MAX_LEAF: u32 = 1;
/// Highest extended leaf (brand string).
const MAX_EXT_LEAF: u32 = 0x8000_0004;
/// Family 6, model 2, stepping 1 (a generic P6-class part).
const SIGNATURE: u32 = (6 << 8) | (2 << 4) | 1;

/// Leaf 1 EDX feature bits.
pub mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const TSC: u32 = 1 << 4;
    pub const CX8: u32 = 1 << 8;
    pub const SEP: u32 = 1 << 11;
    pub const CMOV: u32 = 1 << 15;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
}

/// Features advertised in leaf 1 EDX.
pub const FEATURES_EDX: u32 =
    edx1::FPU | edx1::TSC | edx1::CX8 | edx1::CMOV | edx1::MMX | edx1::FXSR | edx1::SSE | edx1::SSE2;

const BRAND: &[u8; 48] = b"btvisor virtual CPU (binary translation)        ";

fn dw(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Returns (EAX, EBX, ECX, EDX) for the leaf in EAX (ECX subleaf unused).
pub fn cpuid(leaf: u32, _subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => [MAX_LEAF, dw(VENDOR, 0), dw(VENDOR, 8), dw(VENDOR, 4)],
        1 => [SIGNATURE, 0, 0, FEATURES_EDX],
        0x8000_0000 => [MAX_EXT_LEAF, 0, 0, 0],
        0x8000_0001 => [0, 0, 0, 0],
        0x8000_0002..=0x8000_0004 => {
            let o = (leaf - 0x8000_0002) as usize * 16;
            [dw(BRAND, o), dw(BRAND, o + 4), dw(BRAND, o + 8), dw(BRAND, o + 12)]
        }
        // Intel: leaves above the maximum return the highest basic leaf's data.
        l if l < 0x8000_0000 => cpuid(MAX_LEAF, 0),
        _ => [0, 0, 0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_and_features() {
        let r = cpuid(0, 0);
        let mut v = Vec::new();
        for x in [r[1], r[3], r[2]] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(&v, VENDOR);
        let f = cpuid(1, 0);
        assert_eq!(f[3] & edx1::SSE2, edx1::SSE2);
        assert_eq!(f[2], 0, "no SSE3+ features advertised");
    }
}
