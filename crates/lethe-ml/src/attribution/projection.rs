//! A seeded Johnson–Lindenstrauss projection of a model's parameter space, R^p → R^k, built
//! from per-parameter blocks that are generated from the seed and never assembled into the
//! `p × k` matrix (for the fmnist-bench MLP and k = 2,048 that matrix would be 0.8 GB).
//!
//! A weight matrix of `a × b` entries whose per-example gradients are outer products u vᵀ gets a
//! Kronecker block R1 ⊗ R2 (R1: `a × k1`, R2: `b × k2`, k1·k2 = k), so its projection is
//! (R1ᵀu) ⊗ (R2ᵀv): a few thousand multiply-adds instead of a·b·k. Smaller parameters get dense
//! Gaussian blocks. Every entry of the implied matrix has mean 0 and variance 1, blocks are
//! independent, and the result is scaled by 1/√k, so inner products are preserved in
//! expectation.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::error::{MlError, Result};
use crate::seed;

/// One parameter's block of the projection.
pub enum Block {
    /// For an `a × b` matrix: R1 (`a × k1`) and R2 (`b × k2`).
    Kronecker { left: Tensor, right: Tensor },
    /// For a parameter of `len` entries: a `len × k` Gaussian matrix.
    Dense { matrix: Tensor },
}

/// The projection: one block per parameter, in a fixed order.
pub struct Projection {
    pub dim: i64,
    pub blocks: Vec<Block>,
}

/// How a parameter is projected: as an `a × b` matrix (Kronecker) or as a flat vector.
#[derive(Debug, Clone, Copy)]
pub enum ParameterShape {
    Matrix { rows: i64, cols: i64 },
    Vector { len: i64 },
}

fn gaussian(rng: &mut ChaCha8Rng, rows: i64, cols: i64) -> Tensor {
    let count = (rows * cols) as usize;
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        // Box–Muller: two independent standard normals from two uniforms.
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(count);
    Tensor::from_slice(&values).view([rows, cols])
}

/// Splits k into k1·k2 with k1 as close to √k as possible.
fn kronecker_split(dim: i64) -> (i64, i64) {
    let mut left = (dim as f64).sqrt() as i64;
    while left > 1 && dim % left != 0 {
        left -= 1;
    }
    (left.max(1), dim / left.max(1))
}

impl Projection {
    /// The projection with seed `seed` for parameters of the given shapes; the same seed and
    /// shapes always give the same projection.
    pub fn new(seed: u64, dim: i64, shapes: &[ParameterShape]) -> Result<Self> {
        if dim < 1 {
            return Err(MlError::spec(
                "projection",
                format!("dimension {dim} must be at least 1"),
            ));
        }
        let (k1, k2) = kronecker_split(dim);
        let blocks = shapes
            .iter()
            .enumerate()
            .map(|(index, shape)| {
                let mut rng =
                    seed::rng(seed::mix_seed(seed, index as u64), seed::Stream::Projection);
                match *shape {
                    ParameterShape::Matrix { rows, cols } => Block::Kronecker {
                        left: gaussian(&mut rng, rows, k1),
                        right: gaussian(&mut rng, cols, k2),
                    },
                    ParameterShape::Vector { len } => Block::Dense {
                        matrix: gaussian(&mut rng, len, dim),
                    },
                }
            })
            .collect();
        Ok(Projection { dim, blocks })
    }

    /// Projects a batch of per-example gradients of block `index`, given as outer products
    /// u vᵀ (`u`: `B × a`, `v`: `B × b`): returns `B × k`, unscaled.
    pub(crate) fn project_outer(&self, index: usize, u: &Tensor, v: &Tensor) -> Tensor {
        match &self.blocks[index] {
            Block::Kronecker { left, right } => {
                let batch = u.size()[0];
                (u.matmul(left).unsqueeze(2) * v.matmul(right).unsqueeze(1)).view([batch, self.dim])
            }
            Block::Dense { matrix } => {
                let batch = u.size()[0];
                (u.unsqueeze(2) * v.unsqueeze(1))
                    .view([batch, -1])
                    .matmul(matrix)
            }
        }
    }

    /// Projects a batch of flat per-example gradients of block `index` (`B × len`), unscaled.
    pub(crate) fn project_flat(&self, index: usize, g: &Tensor) -> Tensor {
        match &self.blocks[index] {
            Block::Dense { matrix } => g.matmul(matrix),
            Block::Kronecker { left, right } => {
                let (rows, cols) = (left.size()[0], right.size()[0]);
                let batch = g.size()[0];
                left.transpose(0, 1)
                    .matmul(&g.view([batch, rows, cols]))
                    .matmul(right)
                    .view([batch, self.dim])
            }
        }
    }

    /// Projects whole vectors, one per row, split into the blocks' parameters in order
    /// (`B × p`); scaled by 1/√k.
    pub fn project(&self, vectors: &Tensor) -> Result<Tensor> {
        let mut offset = 0;
        let batch = vectors.size()[0];
        let mut total = Tensor::zeros([batch, self.dim], (Kind::Float, vectors.device()));
        for (index, block) in self.blocks.iter().enumerate() {
            let len = match block {
                Block::Kronecker { left, right } => left.size()[0] * right.size()[0],
                Block::Dense { matrix } => matrix.size()[0],
            };
            if offset + len > vectors.size()[1] {
                return Err(MlError::Shape(format!(
                    "vectors have {} entries, the projection covers more",
                    vectors.size()[1]
                )));
            }
            total += self.project_flat(index, &vectors.narrow(1, offset, len).to_kind(Kind::Float));
            offset += len;
        }
        if offset != vectors.size()[1] {
            return Err(MlError::Shape(format!(
                "vectors have {} entries, the projection covers {offset}",
                vectors.size()[1]
            )));
        }
        Ok(total / (self.dim as f64).sqrt())
    }
}
