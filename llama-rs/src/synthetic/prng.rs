//! The deterministic weights: a splitmix64 stream per row, seeded from the
//! model's seed, the tensor's index and the row's index.

use super::layout::{Role, TensorPlan};

/// Half-width of the uniform distribution of the random weights.
const WEIGHT_RANGE: f32 = 0.05;

/// The generator's seed of the `index`-th tensor of a model seeded `seed`.
pub(super) fn tensor_seed(seed: u64, index: u64) -> u64 {
    mix64(seed ^ mix64(index.wrapping_add(0x5EED)))
}

/// Rows `first_row..first_row + rows` of tensor `t`, in f32: ones for norms,
/// uniform noise for the rest.
pub(super) fn generate_rows(t: &TensorPlan, tensor_seed: u64, first_row: usize, rows: usize) -> Vec<f32> {
    let ne0 = t.ne0 as usize;
    let mut src = vec![0f32; rows * ne0];
    for (r, row) in src.chunks_mut(ne0).enumerate() {
        if t.role == Role::Norm {
            row.fill(1.0);
        } else {
            fill_random(row, mix64(tensor_seed ^ ((first_row + r) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
    }
    src
}

/// Uniform values in ±WEIGHT_RANGE from a splitmix64 stream.
fn fill_random(row: &mut [f32], mut state: u64) {
    const SCALE: f32 = 2.0 * WEIGHT_RANGE / (1u32 << 24) as f32;
    let mut pairs = row.chunks_exact_mut(2);
    for pair in &mut pairs {
        let x = splitmix64(&mut state);
        pair[0] = (x >> 40) as f32 * SCALE - WEIGHT_RANGE;
        pair[1] = ((x >> 8) & 0xFF_FFFF) as f32 * SCALE - WEIGHT_RANGE;
    }
    for v in pairs.into_remainder() {
        *v = (splitmix64(&mut state) >> 40) as f32 * SCALE - WEIGHT_RANGE;
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
