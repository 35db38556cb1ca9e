//! End-to-end tests of the `speculum` binary against real registries on
//! loopback: Debian's docker-registry and speculum-registry.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod auth;
mod bad_input;
mod common;
mod copy;
mod lazy;
mod mock;
mod tags;
mod zuul;
