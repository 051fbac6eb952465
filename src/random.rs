//! Non-cryptographic randomness for SIP tags and branches (RFC 3261 §19.3: unique, with at
//! least 32 random bits), Call-IDs, backoff jitter and SRV weights: SplitMix64 over an atomic
//! counter, seeded from std's per-process random hash keys and the clock. Sans-IO code takes
//! the seed from its caller, so tests can fix it.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// 64 random bits: std's randomly keyed hasher (seeded from the OS) over the clock. The one
/// entropy source; only I/O code calls it (directly or through [`SplitMix::seeded`]).
#[allow(clippy::disallowed_methods)]
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    std::hash::RandomState::new().hash_one(nanos)
}

/// SplitMix64; `&self` methods, so one generator can be shared.
#[derive(Debug)]
pub struct SplitMix(AtomicU64);

impl SplitMix {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub fn new(seed: u64) -> SplitMix {
        SplitMix(AtomicU64::new(seed))
    }

    /// A generator with a fresh [`seed`].
    pub fn seeded() -> SplitMix {
        SplitMix::new(seed())
    }

    pub fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(Self::GAMMA, Ordering::Relaxed)
            .wrapping_add(Self::GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=n` (the modulo bias is below 2^-31 for any `u32` bound).
    pub fn up_to(&self, n: u32) -> u32 {
        let draw = self.next() % (u64::from(n) + 1);
        u32::try_from(draw).unwrap_or(n)
    }

    /// Uniform in `0.0..1.0` (for jitter).
    pub fn unit(&self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// 16 hex digits (64 bits): a tag, branch suffix or Call-ID part.
    pub fn token(&self) -> String {
        format!("{:016x}", self.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_range_and_spread() {
        let rng = SplitMix::seeded();
        assert!((0..1000).all(|_| rng.up_to(0) == 0));
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            let draw = rng.up_to(3);
            assert!(draw <= 3);
            seen[draw as usize] += 1;
        }
        // Each of the four values about 1000 times; these bounds fail with negligible odds.
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
        // The widest bound: no overflow, and the upper half is reached.
        assert!((0..100).any(|_| rng.up_to(u32::MAX) > u32::MAX / 2));
        assert!((0..1000).all(|_| (0.0..1.0).contains(&rng.unit())));
    }

    #[test]
    fn two_generators_differ_and_a_seed_repeats() {
        let (a, b) = (SplitMix::seeded(), SplitMix::seeded());
        let xs: Vec<u64> = (0..4).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next()).collect();
        assert_ne!(xs, ys);
        let (c, d) = (SplitMix::new(7), SplitMix::new(7));
        assert_eq!(c.token(), d.token());
        assert_eq!(c.token().len(), 16);
    }
}
