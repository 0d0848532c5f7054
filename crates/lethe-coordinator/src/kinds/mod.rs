//! One module per operation kind, each owning what a request of its kind may ask for (the
//! validation), what it becomes in the store (the plan), and what it answers once done (the
//! result message): [`noop`], [`index_build`], [`deletion`] and the [`deletion_run`] that
//! serves deletion requests. [`fields`] checks what every Create call shares; [`stored`] reads
//! what a kind stored back.

pub(crate) mod deletion;
pub(crate) mod deletion_run;
pub(crate) mod fields;
pub(crate) mod index_build;
pub(crate) mod noop;
pub(crate) mod stored;
