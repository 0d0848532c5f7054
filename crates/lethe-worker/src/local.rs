//! Jobs run in this process, with progress bars on stderr and a summary on stdout.

pub(crate) mod audit;
pub(crate) mod ensemble;
pub(crate) mod evaluate;
pub(crate) mod forget_sets;
pub(crate) mod index;
pub(crate) mod options;
mod progress;
pub(crate) mod train;
pub(crate) mod unlearn;
