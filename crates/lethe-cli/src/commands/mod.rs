//! One module per group of verbs. Each connects, calls, and hands what comes back to
//! [`crate::render`].

pub(crate) mod download;
pub(crate) mod operations;
pub(crate) mod registry;
pub(crate) mod smoke;
pub(crate) mod submit;
