//! Integration tests of the ML engine: one binary (faster to link), one module per area.

mod attribution;
mod data;
mod ensemble;
mod forget_sets;
mod interop;
mod model;
mod support;
mod training;
mod unlearning;
