//! What hub and agent share as processes, beside the protocol: the admin HTTP server, logging and
//! shutdown, duration flags, and how they retry against a Kubernetes API server. Behind the
//! `runtime` feature, so the protocol half (and its fuzz tests) builds without axum, clap,
//! tracing-subscriber or backoff.

pub mod admin;
pub mod cli;
pub mod proxy;
pub mod retry;
