#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.
//! Integration tests: one binary (one link), many modules. Each test spawns the service over HTTP on
//! the real PostgreSQL and Redis with its own database and key prefix, so they run in parallel.

mod helpers;

mod account;
mod federation;
mod flow;
mod hostile;
mod lockout;
mod otp;
mod outbox;
mod redis_roundtrips;
mod register;
mod schema;
mod sessions;
mod stub;
mod transport;
