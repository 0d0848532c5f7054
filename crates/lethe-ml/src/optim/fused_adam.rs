//! One-pass Adam for contiguous float32 CPU tensors.
//!
//! The op-by-op update streams the parameter, gradient and both moments through memory seven
//! times; this kernel does it once, on two threads, which is most of the difference between a
//! memory-bound and a compute-bound CPU ensemble. It computes exactly what
//! [`super::adam_update`] computes (the second moment kept as v' = v / (1−β2)); a test holds
//! the two to each other.
#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

/// Below this many elements a second thread costs more than it saves.
const PARALLEL_THRESHOLD: usize = 1 << 16;

#[derive(Debug, Clone, Copy)]
pub(super) struct AdamCoefficients {
    pub(super) beta1: f32,
    pub(super) beta2: f32,
    pub(super) weight_decay: f32,
    /// a and c of the update p ← p + m / (a·sqrt(v') + c).
    pub(super) denominator_scale: f32,
    pub(super) denominator_offset: f32,
    pub(super) update_parameter: bool,
}

fn eligible(tensor: &Tensor) -> bool {
    tensor.device() == Device::Cpu && tensor.kind() == Kind::Float && tensor.is_contiguous()
}

/// Applies one Adam step in place; returns false (and touches nothing) when the tensors are not
/// all distinct, contiguous float32 CPU tensors of one size.
pub(super) fn adam_step(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq_scaled: &Tensor,
    coefficients: AdamCoefficients,
) -> bool {
    let tensors = [param, grad, exp_avg, exp_avg_sq_scaled];
    let numel = param.numel();
    if !tensors
        .iter()
        .all(|tensor| eligible(tensor) && tensor.numel() == numel)
    {
        return false;
    }
    let pointers: Vec<usize> = tensors
        .iter()
        .map(|tensor| tensor.data_ptr() as usize)
        .collect();
    let distinct = (0..4).all(|a| (a + 1..4).all(|b| pointers[a] != pointers[b]));
    if !distinct || numel == 0 {
        return distinct;
    }
    // SAFETY: the four tensors are contiguous float32 CPU tensors of `numel` elements with
    // distinct data pointers; they are separate allocations (a parameter, its gradient and two
    // optimizer buffers created by `zeros_like`), so the slices do not overlap, and nothing else
    // reads or writes them while the optimizer step runs (it holds them exclusively).
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(pointers[0] as *mut f32, numel),
            std::slice::from_raw_parts(pointers[1] as *const f32, numel),
            std::slice::from_raw_parts_mut(pointers[2] as *mut f32, numel),
            std::slice::from_raw_parts_mut(pointers[3] as *mut f32, numel),
        )
    };
    // One thread when libtorch runs single-threaded: then every core already runs its own group.
    if numel < PARALLEL_THRESHOLD || tch::get_num_threads() <= 1 {
        adam_kernel(p, g, m, v, coefficients);
        return true;
    }
    let half = numel / 2;
    let (p_low, p_high) = p.split_at_mut(half);
    let (g_low, g_high) = g.split_at(half);
    let (m_low, m_high) = m.split_at_mut(half);
    let (v_low, v_high) = v.split_at_mut(half);
    std::thread::scope(|scope| {
        scope.spawn(|| adam_kernel(p_high, g_high, m_high, v_high, coefficients));
        adam_kernel(p_low, g_low, m_low, v_low, coefficients);
    });
    true
}

fn adam_kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamCoefficients) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { adam_kernel_avx512(p, g, m, v, c) };
    }
    adam_elements(p, g, m, v, c);
}

/// The same loop compiled for 16-wide vectors: the default x86-64 target stops at SSE2, which
/// leaves the square roots and divisions four lanes wide. Without fused multiply-adds (Rust never
/// contracts), every lane rounds as the portable loop does, so results are bit-identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn adam_kernel_avx512(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamCoefficients) {
    adam_elements(p, g, m, v, c);
}

#[inline(always)]
fn adam_elements(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamCoefficients) {
    // Zipped iterators carry no bounds checks, so the loop vectorises.
    let elements = p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut());
    for (((param, grad), exp_avg), exp_avg_sq) in elements {
        let grad = *grad + c.weight_decay * *param;
        *exp_avg += (1.0 - c.beta1) * (grad - *exp_avg);
        *exp_avg_sq = c.beta2 * *exp_avg_sq + grad * grad;
        if c.update_parameter {
            *param += *exp_avg / (c.denominator_scale * exp_avg_sq.sqrt() + c.denominator_offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever vector width the CPU picks, the update is the portable loop's, bit for bit: a
    /// member trained on one machine is the member trained on another.
    #[test]
    fn the_dispatched_kernel_matches_the_portable_loop_bit_for_bit() {
        let numel = 1000 + 13;
        let values = |seed: i64| {
            Vec::<f32>::try_from(
                Tensor::randn([numel as i64], (Kind::Float, Device::Cpu)) * (seed as f64),
            )
            .unwrap()
        };
        tch::manual_seed(7);
        let (p, g, m) = (values(1), values(2), values(3));
        let v: Vec<f32> = values(1).iter().map(|x| x * x).collect();
        let coefficients = AdamCoefficients {
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 1e-4,
            denominator_scale: -31.6,
            denominator_offset: -1e-5,
            update_parameter: true,
        };
        let (mut p1, mut m1, mut v1) = (p.clone(), m.clone(), v.clone());
        adam_kernel(&mut p1, &g, &mut m1, &mut v1, coefficients);
        let (mut p2, mut m2, mut v2) = (p, m, v);
        adam_elements(&mut p2, &g, &mut m2, &mut v2, coefficients);
        let bits = |x: &[f32]| x.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p1), bits(&p2));
        assert_eq!(bits(&m1), bits(&m2));
        assert_eq!(bits(&v1), bits(&v2));
    }
}
