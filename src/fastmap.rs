//! `FastMap`: a `HashMap` with a cheap multiplicative hasher, for the
//! VMM's maps keyed by small integers (addresses, page numbers, block ids).
//! A leaf module: the cache, memory, translate and exec modules all use it.

use std::collections::HashMap;

/// A multiplicative hasher for the block map: its keys are small integers
/// the guest does not choose adversarially per lookup, and SipHash's cost
/// shows on every dispatch.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // A product's well-mixed bits are its high ones, while the table
        // indexes buckets by the low bits: rotate the high bits down. Left
        // as it was, every key with k trailing zero bits (page addresses
        // have twelve) landed in one of 1/2^k of the buckets.
        self.0.rotate_left(FINISH_ROTATE)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }

    fn write_u64(&mut self, v: u64) {
        /// An odd constant with well-mixed bits (2^64 / golden ratio).
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
    }
}

/// How far `finish` rotates the product: its top 26 bits become the bucket
/// index bits, and bits 31-37 (also mixed for page-aligned keys) become the
/// 7-bit tag the table keeps per bucket.
const FINISH_ROTATE: u32 = 26;

pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn page_aligned_keys_spread_over_the_low_bits() {
        let build = std::hash::BuildHasherDefault::<FastHasher>::default();
        // A linear page (a u32 key) and a window-tagged page (a u64 key).
        let keys: [fn(&std::hash::BuildHasherDefault<FastHasher>, u32) -> u64; 2] =
            [|b, p| b.hash_one(p << 12), |b, p| b.hash_one((1u64 << 32) | u64::from(p << 12))];
        for key in keys {
            let buckets: std::collections::HashSet<u64> = (0..4096).map(|p| key(&build, p) & 0xFFF).collect();
            // Random placement of 4096 keys into 4096 buckets fills ~63%.
            assert!(buckets.len() > 2400, "only {} of 4096 buckets used", buckets.len());
        }
    }
}
