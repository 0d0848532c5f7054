//! The attribution index: β[i, x, c], the effect of training example i on logit c of target x.
//!
//! - [`beta_file`]: the on-disk layout (one safetensors tensor `beta`, `n × T × C` float16, rows
//!   of one source example contiguous), a resumable row-by-row writer and a reader that fetches
//!   the rows of a forget set without reading the rest;
//! - [`subsample`]: the default estimator, per-logit subsampled influence from the masks and
//!   logits of subset retrains;
//! - [`lds`]: the linear datamodeling score of an index on held-out subset retrains, and
//!   DM-direct predictions of the outputs after removing a forget set.

pub mod beta_file;
pub mod lds;
pub mod subsample;
