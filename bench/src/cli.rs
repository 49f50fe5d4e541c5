//! loadgen's command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and benchmark for phone-auth (127.0.0.1 only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Internal: the baseline server (a bare axum handler doing one EVALSHA per request).
    BaselineServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        redis_url: String,
        #[arg(long)]
        prefix: String,
    },
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The server under test (a release build).
    #[arg(long, default_value = "target/release/phone-auth")]
    pub server_bin: PathBuf,
    /// Virtual clients (one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds before each scenario's measurement starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// At most this many measured requests (or flows) per scenario.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_requests: u64,
    /// Comma-separated: baseline, argon2, verify-wrong, graphql-floor, generate-code, sign-up, login,
    /// me, me-under-login, login-500, mixed, users; or "all". Also me-scale (`me` with --users-small
    /// users and sessions, then --users-large of each), which "all" does not include.
    #[arg(long, default_value = "all")]
    pub scenarios: String,
    /// Clients of the login-500 scenario.
    #[arg(long, default_value_t = 500)]
    pub burst_clients: usize,
    /// The `me` latency probe next to a login load: clients, and requests per second per client.
    #[arg(long, default_value_t = 8)]
    pub probe_clients: usize,
    #[arg(long, default_value_t = 25.0)]
    pub probe_rate: f64,
    /// Phones given a pending code before verify-wrong (each gets 4 wrong tries); Redis memory per
    /// pending code is measured over these.
    #[arg(long, default_value_t = 120_000)]
    pub pending_codes: u64,
    /// Users for the main scenarios and the "small" side of the users comparison.
    #[arg(long, default_value_t = 1_000)]
    pub users_small: u64,
    /// Users for the "large" side of the users comparison.
    #[arg(long, default_value_t = 1_000_000)]
    pub users_large: u64,
    /// Access tokens (logins of distinct seeded users) that the me-scale clients rotate through.
    #[arg(long, default_value_t = 1024)]
    pub me_tokens: usize,
    /// PostgreSQL server (loopback only); the benchmark database is created on it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub pg_server: String,
    /// Benchmark database: dropped and recreated at start. Its name must contain "bench".
    #[arg(long, default_value = "phone_auth_bench")]
    pub database: String,
    /// Use this Redis (loopback only) instead of starting a private redis-server. Memory figures are
    /// then disturbed by whatever else uses it.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The stores of the service under test: `real` (PostgreSQL and Redis), `embedded` (no store URL:
    /// generate-code and login against the in-process backend, needing neither server), or `both`
    /// (the real run, then generate-code and login on the embedded backend, in the same report).
    #[arg(long, value_enum, default_value = "real")]
    pub backend: BackendChoice,
    /// After the single-Redis scenarios: verify-wrong, generate-code and login against the service on
    /// a local 3-master Redis Cluster (scripts/redis-cluster, started and stopped here; run from the
    /// repository root), and the SMS outbox drain rate with 1 vs 4 shards.
    #[arg(long)]
    pub redis_cluster: bool,
    /// Extra server environment, KEY=VALUE (repeatable), e.g. HASH_CONCURRENCY=1.
    #[arg(long = "server-env")]
    pub server_env: Vec<String>,
    /// Interleaved A/B: a second server "b" with these settings after `--server-env`'s (KEY=VALUE,
    /// repeatable). With it, only generate-code and verify-wrong run (those selected), in alternating
    /// slices against "a" and "b" (see `--ab-slices`).
    #[arg(long = "b-env")]
    pub b_env: Vec<String>,
    /// Slices per scenario of the interleaved A/B (half on each side, order A B B A ...).
    #[arg(long, default_value_t = 24)]
    pub ab_slices: usize,
    /// Measured seconds per slice of the interleaved A/B (each after 0.2 s of warm-up).
    #[arg(long, default_value_t = 1.0)]
    pub ab_slice_seconds: f64,
    /// Logs and the report go here.
    #[arg(long, default_value = "target/bench")]
    pub work_dir: PathBuf,
    /// Run the servers under this command prefix, e.g. "valgrind --tool=callgrind --instr-atstart=no".
    /// With callgrind (and --instr-atstart=no), instrumentation is switched on for each measured window
    /// only and dumped per scenario (callgrind_control), so profiles hold no start-up work.
    #[arg(long, default_value = "")]
    pub server_wrapper: String,
    /// The whole run stops (children included) after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub max_total_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    Real,
    Embedded,
    Both,
}
