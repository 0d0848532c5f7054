//! What the service tests of this crate share beyond `lethe-testkit` (which starts their
//! stacks): the worker binary they serve with, a browser for the dashboard, and the stack
//! the Python suites run against.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod python;

/// `lethe-worker`, for `Stack::serve`: the kit cannot name it (it does not link libtorch).
pub(crate) const WORKER: &str = env!("CARGO_BIN_EXE_lethe-worker");
