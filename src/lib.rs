//! paymux: a payment routing proxy. See ARCHITECTURE.md for the module map and the path of
//! one payment through it.
#![forbid(unsafe_code)]

pub mod config;
pub mod connector;
pub mod crypto;
pub mod domain;
pub mod policy;
