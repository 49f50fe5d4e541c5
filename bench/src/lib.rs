//! Load generator and benchmark for phone-auth (issue 6): `loadgen`, `seed_users`, and the criterion
//! benchmark `phone_parse`. A crate of its own (issue 12), so that building or testing the service never
//! compiles it.
//!
//! ```sh
//! scripts/bench                                    # build release + the whole benchmark
//! cargo build --release --locked --workspace --bins
//! target/release/loadgen --duration 5 --scenarios generate-code,login
//! target/release/seed_users --count 1000000
//! cargo bench -p phone-auth-bench --bench phone_parse
//! ```
//!
//! `loadgen` starts everything it measures as child processes on 127.0.0.1 and stops them at the end: a
//! private redis-server (unless --redis-url), the release server `target/release/phone-auth` on a free
//! port with its own database (`phone_auth_bench`, dropped and recreated) and its own Redis key prefix,
//! and a baseline server (`loadgen baseline-server`: a bare axum handler doing one EVALSHA over a
//! ConnectionManager, or the service's own generateCode script). Each scenario runs `--clients` virtual
//! clients, one HTTP/1.1 keep-alive connection each, for `--warmup` + `--duration` seconds or
//! `--max-requests`, whichever ends first, and reports requests/s, p50/p90/p99/max latency, errors by
//! `extensions.code`, the server's peak RSS (VmHWM, reset before each scenario) and its CPU time per
//! request. The whole run is bounded by `--max-total-seconds`. Only loopback addresses are ever
//! targeted.
//!
//! Key names and settings come from the service's own API (`Keys`, `Config::defaults()`,
//! `Outbox::stream_key`), never rebuilt here.

pub mod baseline;
pub mod bodies;
pub mod checks;
pub mod cli;
pub mod client;
pub mod procs;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod seed;
pub mod servers;
