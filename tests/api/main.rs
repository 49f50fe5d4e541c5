#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.
//! Integration tests: one binary (one link), many modules. Each test spawns the service over HTTP on
//! the real PostgreSQL and Redis with its own database and key prefix, so they run in parallel.

mod account;
mod browser_apps;
mod cluster;
mod cluster_failover;
mod durability;
mod embedded_binary;
mod faults;
mod federation;
mod flow;
mod graphiql;
mod helpers;
mod hostile;
mod instances;
mod lockout;
mod ops;
mod otp;
mod outbox;
mod private_cluster;
mod private_pg;
mod private_redis;
mod process;
mod redis_roundtrips;
mod register;
mod schema;
mod sessions;
mod shutdown;
mod store_conformance;
mod stub;
mod transport;
