//! paymux: a payment routing proxy. See ARCHITECTURE.md for the module map and the path of
//! one payment through it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod config;
pub mod connector;
pub mod crypto;
pub mod domain;
pub mod engine;
pub mod http_service;
pub mod log_limit;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod sandbox;
pub mod server;
pub mod sniff;
pub mod store;
