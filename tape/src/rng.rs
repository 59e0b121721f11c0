//! Counter-based random numbers: a value depends only on (seed, counter, index), never on call
//! order, so a recomputed dropout replays exactly the mask of the first pass.

/// SplitMix64 finaliser: a strong 64-bit mixing function.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) for element `index` of stream (`seed`, `counter`).
pub fn uniform(seed: u64, counter: u64, index: u64) -> f64 {
    let key = mix64(seed ^ mix64(counter.wrapping_add(0x632B_E59B_D9B4_E019)));
    let bits = mix64(key ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal number for element `index` of stream (`seed`, `counter`) (Box-Muller).
pub fn normal(seed: u64, counter: u64, index: u64) -> f64 {
    let u1 = uniform(seed, counter, 2 * index);
    let u2 = uniform(seed, counter, 2 * index + 1);
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    r * (std::f64::consts::TAU * u2).cos()
}
