//! Seed derivation. Every random stream of a member (initialisation, subset, shuffles) is a
//! function of that member's seed alone, so a member trained inside an ensemble and the same
//! member trained alone see exactly the same random numbers.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The purposes a member draws random numbers for; each gets an independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Init = 1,
    Shuffle = 2,
    Subset = 3,
    Projection = 4,
}

/// splitmix64: a bijective mixer, so distinct inputs give distinct, well-spread seeds.
pub fn mix_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of member `index` of an ensemble whose base seed is `base_seed`.
pub fn member_seed(base_seed: u64, index: u64) -> u64 {
    mix_seed(base_seed, index.wrapping_add(1))
}

pub(crate) fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}

pub(crate) fn rng_for_epoch(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, epoch as u64));
    rng.set_stream(Stream::Shuffle as u64);
    rng
}
