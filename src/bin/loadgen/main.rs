//! Load generator and benchmark for phone-auth (issue 6).
//!
//! ```sh
//! cargo build --release --bins && target/release/loadgen            # or: scripts/bench
//! cargo run --release --bin loadgen -- --duration 5 --scenarios generate-code,login
//! ```
//!
//! It starts everything it measures as child processes on 127.0.0.1 and stops them at the end: a
//! private redis-server (unless --redis-url), the release server `target/release/phone-auth` on a free
//! port with its own database (`phone_auth_bench`, dropped and recreated) and its own Redis key prefix,
//! and a baseline server (`loadgen baseline-server`: a bare axum handler doing one EVALSHA over a
//! ConnectionManager). Each scenario runs `--clients` virtual clients, one HTTP/1.1 keep-alive
//! connection each, for `--warmup` + `--duration` seconds or `--max-requests`, whichever ends first,
//! and reports requests/s, p50/p90/p99/max latency, errors by `extensions.code`, the server's peak RSS
//! (VmHWM, reset before each scenario) and its CPU time per request. The whole run is bounded by
//! `--max-total-seconds`. Only loopback addresses are ever targeted.

mod client;
mod procs;
mod seed;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use phone_auth::domain::{PhoneNumber, PhonePolicy};
use serde_json::{Value, json};
use sqlx::ConnectOptions as _;

use client::{Client, Recorded, Rng, drive, percentile};
use procs::ChildGuard;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator and benchmark for phone-auth (127.0.0.1 only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Phone parsing on one core: the server's `PhoneNumber::parse` against the `phonenumber` crate's
    /// own `parse` + `is_valid` + `number_type` + E.164 formatting (what the server did before), over
    /// the same fresh valid numbers. No server is started.
    PhoneParse {
        /// Distinct numbers parsed per round (two rounds each).
        #[arg(long, default_value_t = 200_000)]
        count: u64,
    },
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
struct RunArgs {
    /// The server under test (a release build).
    #[arg(long, default_value = "target/release/phone-auth")]
    server_bin: PathBuf,
    /// Virtual clients (one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds before each scenario's measurement starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// At most this many measured requests (or flows) per scenario.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Comma-separated: baseline, argon2, verify-wrong, graphql-floor, generate-code, sign-up, login,
    /// me, me-under-login, login-500, mixed, users; or "all".
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Clients of the login-500 scenario.
    #[arg(long, default_value_t = 500)]
    burst_clients: usize,
    /// The `me` latency probe next to a login load: clients, and requests per second per client.
    #[arg(long, default_value_t = 8)]
    probe_clients: usize,
    #[arg(long, default_value_t = 25.0)]
    probe_rate: f64,
    /// Phones given a pending code before verify-wrong (each gets 4 wrong tries); Redis memory per
    /// pending code is measured over these.
    #[arg(long, default_value_t = 120_000)]
    pending_codes: u64,
    /// Users for the main scenarios and the "small" side of the users comparison.
    #[arg(long, default_value_t = 1_000)]
    users_small: u64,
    /// Users for the "large" side of the users comparison.
    #[arg(long, default_value_t = 1_000_000)]
    users_large: u64,
    /// PostgreSQL server (loopback only); the benchmark database is created on it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg_server: String,
    /// Benchmark database: dropped and recreated at start. Its name must contain "bench".
    #[arg(long, default_value = "phone_auth_bench")]
    database: String,
    /// Use this Redis (loopback only) instead of starting a private redis-server. Memory figures are
    /// then disturbed by whatever else uses it.
    #[arg(long)]
    redis_url: Option<String>,
    /// Extra server environment, KEY=VALUE (repeatable), e.g. HASH_CONCURRENCY=1.
    #[arg(long = "server-env")]
    server_env: Vec<String>,
    /// Logs and the report go here.
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Run the servers under this command prefix, e.g. "valgrind --tool=callgrind --instr-atstart=no".
    /// With callgrind (and --instr-atstart=no), instrumentation is switched on for each measured window
    /// only and dumped per scenario (callgrind_control), so profiles hold no start-up work.
    #[arg(long, default_value = "")]
    server_wrapper: String,
    /// The whole run stops (children included) after this many seconds.
    #[arg(long, default_value_t = 900)]
    max_total_seconds: u64,
}

const GENERATE: &str =
    "mutation($p: String!) { generateCode(phone: $p) { phone expiresInSeconds resendInSeconds } }";
const VERIFY: &str = "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { phone registered registrationToken auth { accessToken user { id } } } }";
const REGISTER: &str =
    "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken user { id } } }";
const LOGIN: &str = "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { accessToken refreshToken user { id } } }";
const ME: &str = "{ me { id phone firstName lastName createdAt } }";

/// The fixed code of every test number (SMS_TEST_NUMBERS), and a code that is never it.
const TEST_CODE: &str = "123456";
const WRONG_CODE: &str = "000000";
const SIGNUP_PASSWORD: &str = "loadgen-Password-1987!";
/// Test-number ranges (fixed code, no SMS): seeded users, sign-ups, mixed sign-ups, verify-wrong,
/// mixed codes. generate-code uses +1415 numbers, which are not test numbers (the real path).
const SMS_TEST_NUMBERS: &str = "+16502*:123456,+16507*:123456,+16508*:123456,+1408*:123456,+1212*:123456";
const HASH_QUEUE_TIMEOUT_MS: u64 = 2000;

fn gen_body(phone: &str) -> String {
    json!({ "query": GENERATE, "variables": { "p": phone } }).to_string()
}
fn verify_body(phone: &str, code: &str) -> String {
    json!({ "query": VERIFY, "variables": { "p": phone, "c": code } }).to_string()
}
fn register_body(token: &str) -> String {
    json!({ "query": REGISTER, "variables": { "i": {
        "registrationToken": token, "password": SIGNUP_PASSWORD, "firstName": "Load", "lastName": "Gen" } } })
    .to_string()
}
fn login_body(phone: &str, password: &str) -> String {
    json!({ "query": LOGIN, "variables": { "p": phone, "w": password } }).to_string()
}
fn me_body() -> String {
    json!({ "query": ME }).to_string()
}

/// Fresh valid US phone numbers: `prefix` (+1 and 3 or 4 more digits) followed by the digits that make
/// 11 in all, counting up (from exchange 200 when the prefix is an area code alone), skipping those
/// the server's own parser refuses, so that no request fails on BAD_USER_INPUT.
struct PhoneGen {
    prefix: &'static str,
    width: usize,
    next: AtomicU64,
    end: u64,
    policy: PhonePolicy,
}

impl PhoneGen {
    fn new(prefix: &'static str) -> Arc<PhoneGen> {
        let digits = prefix.chars().filter(char::is_ascii_digit).count();
        let width = 11usize.saturating_sub(digits);
        let start = if width == 7 { 2_000_000 } else { 0 };
        Arc::new(PhoneGen {
            prefix,
            width,
            next: AtomicU64::new(start),
            end: 10u64.pow(width as u32),
            policy: PhonePolicy::default(),
        })
    }

    fn next(&self) -> Option<String> {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.end {
                return None;
            }
            let phone = format!("{}{:0width$}", self.prefix, i, width = self.width);
            if PhoneNumber::parse(&phone, &self.policy).is_ok() {
                return Some(phone);
            }
        }
    }
}

fn valid(phone: &str) -> bool {
    PhoneNumber::parse(phone, &PhonePolicy::default()).is_ok()
}

/// Phones of seeded users 0..count that the server accepts: all of them when few, else a random sample.
fn seeded_phones(count: u64, sample: usize, seed: u64) -> Vec<String> {
    if count <= 20_000 {
        return (0..count).map(seed::seed_phone).filter(|p| valid(p)).collect();
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(sample);
    let mut seen = std::collections::HashSet::new();
    while out.len() < sample {
        let i = rng.below(count);
        let p = seed::seed_phone(i);
        if seen.insert(i) && valid(&p) {
            out.push(p);
        }
    }
    out
}

/// One line of the results table.
#[derive(Clone, Debug)]
struct Row {
    scenario: String,
    op: String,
    clients: usize,
    requests: u64,
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    expected: String,
    errors: String,
    unexpected: u64,
    /// Max latency of each error code, ms.
    error_max_ms: BTreeMap<String, f64>,
    samples: Vec<String>,
    peak_rss_mib: Option<f64>,
    server_cpu_us_per_req: Option<f64>,
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Server {
    guard: ChildGuard,
    addr: SocketAddr,
    name: String,
    prefix: String,
}

struct Bench {
    args: RunArgs,
    selected: Vec<String>,
    redis_url: String,
    redis_pid: Option<u32>,
    work_dir: PathBuf,
    rows: Vec<Row>,
    /// Free-form findings for the report, by section.
    notes: BTreeMap<String, Vec<String>>,
    run_id: String,
    hard_deadline: Instant,
    argon2_single: Option<f64>,
    argon2_parallel: Option<f64>,
    hash_slots: usize,
    /// loadgen's own CPU per request, by scenario (microseconds).
    client_cpu: BTreeMap<String, f64>,
    /// redis-server's CPU per request of a scenario (us), measured window only.
    redis_cpu: BTreeMap<String, f64>,
    /// The server's minor page faults per request, by scenario.
    faults: BTreeMap<String, f64>,
}

impl Bench {
    fn wants(&self, name: &str) -> bool {
        self.selected.iter().any(|s| s == "all" || s == name)
    }

    fn note(&mut self, section: &str, text: impl Into<String>) {
        let text = text.into();
        println!("  [{section}] {text}");
        self.notes.entry(section.to_owned()).or_default().push(text);
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.args.warmup)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.args.duration)
    }

    fn check_time(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            Instant::now() < self.hard_deadline,
            "--max-total-seconds ({}) reached: stopping",
            self.args.max_total_seconds
        );
        Ok(())
    }

    fn db_url(&self) -> String {
        format!(
            "{}/{}",
            self.args.pg_server.trim_end_matches('/'),
            self.args.database
        )
    }

    /// Turns what a scenario recorded into rows, with the server's peak RSS and CPU over the run.
    fn push_rows(
        &mut self,
        scenario: &str,
        clients: usize,
        recorded: Recorded,
        rss_kib: Option<u64>,
        cpu_ms: Option<u64>,
        cpu_requests: u64,
    ) {
        let cpu_per_req = cpu_ms
            .filter(|_| cpu_requests > 0)
            .map(|c| c as f64 * 1000.0 / cpu_requests as f64);
        for (op, mut stats) in recorded {
            stats.latencies_us.sort_unstable();
            let secs = match (stats.first_start, stats.last_end) {
                (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-9),
                _ => 1e-9,
            };
            let n = stats.count();
            let row = Row {
                scenario: scenario.to_owned(),
                op: op.clone(),
                clients,
                requests: n,
                rps: n as f64 / secs,
                p50: ms(percentile(&stats.latencies_us, 50.0)),
                p90: ms(percentile(&stats.latencies_us, 90.0)),
                p99: ms(percentile(&stats.latencies_us, 99.0)),
                max: ms(stats.latencies_us.last().copied().unwrap_or(0)),
                expected: counts(&stats.expected),
                errors: counts(&stats.errors),
                unexpected: stats.unexpected(),
                error_max_ms: stats
                    .error_latencies_us
                    .iter()
                    .map(|(k, v)| (k.clone(), ms(v.iter().copied().max().unwrap_or(0))))
                    .collect(),
                samples: stats.samples.clone(),
                peak_rss_mib: rss_kib.map(|k| k as f64 / 1024.0),
                server_cpu_us_per_req: if op.contains("(setup)") { None } else { cpu_per_req },
            };
            println!(
                "  {:<22} {:<28} {:>7} req {:>9.1} req/s  p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  max {:>8.2} ms  expected: {}  errors: {}{}",
                row.scenario,
                row.op,
                row.requests,
                row.rps,
                row.p50,
                row.p90,
                row.p99,
                row.max,
                row.expected,
                row.errors,
                row.peak_rss_mib
                    .map(|r| format!("  peak RSS {r:.1} MiB"))
                    .unwrap_or_default()
            );
            for s in &row.samples {
                println!("      sample: {s}");
            }
            self.rows.push(row);
        }
    }

    fn row(&self, scenario: &str, op: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.scenario == scenario && r.op == op)
    }
}

/// Measures a closure run by `drive` against the server: resets the peak RSS first, reads it and the
/// CPU time after.
async fn measured<F, Fut>(
    bench: &mut Bench,
    server: &Server,
    scenario: &str,
    clients: usize,
    max: u64,
    body: F,
) -> anyhow::Result<()>
where
    F: Fn(Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Client> + Send + 'static,
{
    bench.check_time()?;
    println!("scenario {scenario} ({clients} clients)");
    let pid = server.guard.pid();
    procs::reset_peak_rss(pid);
    let (warmup, duration) = (bench.warmup(), bench.duration());
    let me = std::process::id();
    let cpu_at = Arc::new(Mutex::new((None::<u64>, None::<u64>, None::<u64>)));
    let cpu_mark = cpu_at.clone();
    let redis_pid = bench.redis_pid;
    let redis_at = Arc::new(Mutex::new(None::<u64>));
    let redis_mark = redis_at.clone();
    // CPU (the server's and our own) and the server's page faults are read when the measured window
    // starts and when the run ends.
    let profiling = callgrind(&bench.args);
    let marker = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        if profiling {
            callgrind_control(&["-z"], pid);
            callgrind_control(&["-i", "on"], pid);
        }
        if let Ok(mut m) = cpu_mark.lock() {
            *m = (procs::cpu_ms(pid), procs::cpu_ms(me), procs::minor_faults(pid));
        }
        if let Ok(mut m) = redis_mark.lock() {
            *m = redis_pid.and_then(procs::cpu_ms);
        }
    });
    let recorded = drive(server.addr, clients, warmup, duration, max, body).await?;
    let _ = marker.await;
    if profiling {
        callgrind_control(&["-i", "off"], pid);
        callgrind_control(&["-d", scenario], pid);
    }
    let (cpu_end, own_end, faults_end) = (procs::cpu_ms(pid), procs::cpu_ms(me), procs::minor_faults(pid));
    let redis_end = redis_pid.and_then(procs::cpu_ms);
    let redis_start = redis_at.lock().ok().and_then(|m| *m);
    let (cpu_start, own_start, faults_start) = cpu_at.lock().map(|m| *m).unwrap_or((None, None, None));
    if let (Some(a), Some(b)) = (faults_start, faults_end)
        && requests_hint(&recorded) > 0
    {
        let per = b.saturating_sub(a) as f64 / requests_hint(&recorded) as f64;
        bench.faults.insert(scenario.to_owned(), per);
    }
    let cpu = cpu_start.zip(cpu_end).map(|(a, b)| b.saturating_sub(a));
    let own = own_start.zip(own_end).map(|(a, b)| b.saturating_sub(a));
    let requests = requests_hint(&recorded);
    let rss = procs::peak_rss_kib(pid);
    bench.push_rows(scenario, clients, recorded, rss, cpu, requests);
    if let Some(own) = own.filter(|_| requests > 0) {
        bench
            .client_cpu
            .insert(scenario.to_owned(), own as f64 * 1000.0 / requests as f64);
    }
    if let (Some(a), Some(b)) = (redis_start, redis_end)
        && requests > 0
    {
        bench.redis_cpu.insert(
            scenario.to_owned(),
            b.saturating_sub(a) as f64 * 1000.0 / requests as f64,
        );
    }
    Ok(())
}

/// `program`, or `wrapper... program` when a wrapper (valgrind, perf) is given.
fn wrapped(wrapper: &str, program: &std::ffi::OsStr) -> Command {
    let mut parts = wrapper.split_whitespace();
    match parts.next() {
        None => Command::new(program),
        Some(first) => {
            let mut c = Command::new(first);
            c.args(parts).arg(program);
            c
        }
    }
}

fn ready_within(args: &RunArgs) -> Duration {
    if args.server_wrapper.trim().is_empty() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    }
}

fn callgrind(args: &RunArgs) -> bool {
    args.server_wrapper.contains("callgrind")
}

/// `callgrind_control ARGS PID` (quietly).
fn callgrind_control(args: &[&str], pid: u32) {
    let _ = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// HTTP requests recorded (flows and totals left out).
fn requests_hint(recorded: &Recorded) -> u64 {
    recorded
        .iter()
        .filter(|(op, _)| {
            !op.contains("(flow)")
                && !op.contains("(all)")
                && !op.contains("(not registered)")
                && !op.contains("(null)")
        })
        .map(|(_, s)| s.count())
        .sum()
}

// ---------------------------------------------------------------------------------------------------
// Processes

fn ensure_loopback(url: &str, what: &str) -> anyhow::Result<()> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let ok = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        ok,
        "{what} must be on this machine's loopback (127.0.0.1), not {host:?}"
    );
    Ok(())
}

async fn start_server(bench: &mut Bench, name: &str, extra_env: &[(&str, String)]) -> anyhow::Result<Server> {
    let port = procs::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let prefix = format!("bench:{}:{name}:", bench.run_id);
    let mut command = wrapped(&bench.args.server_wrapper, bench.args.server_bin.as_os_str());
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    let mut env: Vec<(String, String)> = vec![
        ("APP_ENV".into(), "development".into()),
        ("LISTEN_ADDR".into(), addr.to_string()),
        ("DATABASE_URL".into(), bench.db_url()),
        ("REDIS_URL".into(), bench.redis_url.clone()),
        ("REDIS_KEY_PREFIX".into(), prefix.clone()),
        ("RUST_LOG".into(), "warn,phone_auth::dev_sms=off".into()),
        ("NO_COLOR".into(), "1".into()),
        (
            "OTP_HMAC_SECRET".into(),
            "loadgen-benchmark-secret-0123456789abcdef".into(),
        ),
        ("IP_MAX_CODE_REQUESTS".into(), "1000000000".into()),
        ("IP_MAX_CODE_CHECKS".into(), "1000000000".into()),
        ("IP_MAX_PASSWORD_ATTEMPTS".into(), "1000000000".into()),
        ("SMS_MAX_PER_HOUR".into(), "1000000000".into()),
        ("SMS_TEST_NUMBERS".into(), SMS_TEST_NUMBERS.into()),
        ("HASH_QUEUE_TIMEOUT_MS".into(), HASH_QUEUE_TIMEOUT_MS.to_string()),
        // The SMS outbox (where the server has one) refuses new codes when full (default 10,000 jobs);
        // generate-code issues codes faster than the workers deliver them, so it is raised here like
        // the other budgets, and the backlog and the drain rate are reported instead.
        ("SMS_OUTBOX_MAX_LEN".into(), "10000000".into()),
    ];
    for (k, v) in extra_env {
        env.push(((*k).to_owned(), v.clone()));
    }
    for kv in &bench.args.server_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--server-env {kv:?} is not KEY=VALUE"))?;
        env.push((k.to_owned(), v.to_owned()));
    }
    for (k, v) in &env {
        command.env(k, v);
    }
    let log = bench.work_dir.join(format!("server-{name}.log"));
    let mut guard = ChildGuard::spawn(&format!("phone-auth ({name})"), command, &log)?;
    procs::wait_http_ok(&mut guard, addr, "/readyz", ready_within(&bench.args))
        .await
        .with_context(|| format!("see {}", log.display()))?;
    let shown: Vec<String> = env
        .iter()
        .filter(|(k, _)| k != "OTP_HMAC_SECRET" && k != "DATABASE_URL" && k != "REDIS_URL")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    bench.note(
        "servers",
        format!(
            "{name}: {} on {addr}, pid {}; env: {}",
            bench.args.server_bin.display(),
            guard.pid(),
            shown.join(" ")
        ),
    );
    Ok(Server {
        guard,
        addr,
        name: name.to_owned(),
        prefix,
    })
}

async fn stop_server(bench: &mut Bench, mut server: Server) {
    if let Some(status) = server.guard.exited() {
        bench.note(
            "servers",
            format!("{} had exited by itself: {status}", server.name),
        );
    }
    server.guard.stop(Duration::from_secs(35));
    let log = bench.work_dir.join(format!("server-{}.log", server.name));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors = text.lines().filter(|l| l.contains("ERROR")).count();
    let warns = text.lines().filter(|l| l.contains("WARN")).count();
    bench.note(
        "servers",
        format!(
            "{}: stopped; its log ({}) has {errors} ERROR and {warns} WARN lines",
            server.name,
            log.display()
        ),
    );
    for line in text.lines().filter(|l| l.contains("ERROR")).take(3) {
        let mut l = line.to_owned();
        l.truncate(300);
        bench.note("servers", format!("  {l}"));
    }
}

async fn pg_admin(bench: &Bench) -> anyhow::Result<sqlx::PgConnection> {
    let url = format!("{}/postgres", bench.args.pg_server.trim_end_matches('/'));
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(options.connect().await?)
}

async fn recreate_database(bench: &Bench) -> anyhow::Result<()> {
    let name = &bench.args.database;
    seed::check_database_name(&bench.db_url(), false)?;
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "the benchmark database name may have only [A-Za-z0-9_]"
    );
    let mut admin = pg_admin(bench).await?;
    let sql = format!("drop database if exists \"{name}\" with (force)");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
    let sql = format!("create database \"{name}\"");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
    Ok(())
}

async fn bench_db(bench: &Bench) -> anyhow::Result<sqlx::PgConnection> {
    let options: sqlx::postgres::PgConnectOptions = bench.db_url().parse()?;
    Ok(options.connect().await?)
}

async fn redis_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO")?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(conn).await?;
    Ok((used, keys))
}

/// Normalizes a key to its kind: the phone hash tag, addresses and token hashes become placeholders.
fn key_kind(prefix: &str, key: &str) -> String {
    let k = key.strip_prefix(prefix).unwrap_or(key);
    if let Some(rest) = k.strip_prefix('{')
        && let Some((_, what)) = rest.split_once('}')
    {
        return format!("{{phone}}{what}");
    }
    if let Some(rest) = k.strip_prefix("ip:")
        && let Some((_, what)) = rest.rsplit_once(':')
    {
        return format!("ip:<addr>:{what}");
    }
    if k.starts_with("reg:") {
        return "reg:<sha256>".into();
    }
    k.to_owned()
}

/// Scans every key of `prefix`: how many of each kind, and how many have no TTL.
async fn ttl_check(bench: &mut Bench, prefix: &str) -> anyhow::Result<()> {
    let mut conn = redis_conn(&bench.redis_url).await?;
    let mut cursor: u64 = 0;
    let mut kinds: BTreeMap<String, (u64, i64, i64)> = BTreeMap::new();
    let mut without_ttl = 0u64;
    let mut no_ttl_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(2000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("TTL").arg(k);
            }
            let ttls: Vec<i64> = pipe.query_async(&mut conn).await?;
            for (k, ttl) in keys.iter().zip(ttls) {
                total += 1;
                if ttl == -1 {
                    without_ttl += 1;
                    *no_ttl_kinds.entry(key_kind(prefix, k)).or_default() += 1;
                }
                let e = kinds
                    .entry(key_kind(prefix, k))
                    .or_insert((0, i64::MAX, i64::MIN));
                e.0 += 1;
                e.1 = e.1.min(ttl);
                e.2 = e.2.max(ttl);
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let detail: Vec<String> = kinds
        .iter()
        .map(|(k, (n, lo, hi))| format!("`{k}` {n} (TTL {lo}..{hi} s)"))
        .collect();
    bench.note(
        "ttl",
        format!(
            "prefix {prefix}: {total} keys, {without_ttl} without a TTL; kinds: {}",
            detail.join(", ")
        ),
    );
    if without_ttl > 0 {
        let which: Vec<String> = no_ttl_kinds.iter().map(|(k, n)| format!("`{k}` {n}")).collect();
        bench.note(
            "ttl",
            format!("MISSED: {without_ttl} keys have no TTL: {}", which.join(", ")),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Baselines

fn argon2_rates(bench: &mut Bench) -> anyhow::Result<()> {
    // The server's own hashing code (one reused memory block per thread), so the bound is what the
    // server could reach if hashing were all it did.
    use phone_auth::services::password::{HashMemory, hash_with, verify_with};
    println!("baseline argon2: measuring one core's argon2id verifications/s (m=19456 t=2 p=1)");
    let phc = hash_with(&mut HashMemory::new(), b"loadgen argon2 probe password")?;
    let measure = |secs: f64| -> anyhow::Result<f64> {
        let mut memory = HashMemory::new();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            anyhow::ensure!(verify_with(&mut memory, b"loadgen argon2 probe password", &phc));
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let single = measure(3.0)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parallel: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| measure(3.0))).collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().and_then(Result::ok).unwrap_or(0.0))
            .sum()
    });
    bench.argon2_single = Some(single);
    bench.argon2_parallel = Some(parallel);
    bench.note(
        "argon2",
        format!(
            "one core: {single:.1} verifications/s ({:.2} ms each); {threads} threads at once: {parallel:.1}/s in total",
            1000.0 / single
        ),
    );
    Ok(())
}

const BASELINE_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
";

#[derive(Clone)]
struct BaselineState {
    redis: redis::aio::ConnectionManager,
    script: Arc<redis::Script>,
    prefix: Arc<str>,
    counter: Arc<AtomicU64>,
    /// Baseline (1b): the service's own `generateCode` script, through `OtpService::issue`.
    otp: Arc<phone_auth::services::otp::OtpService>,
    policy: Arc<PhonePolicy>,
}

/// Baseline (1b), `POST /issue`: the body's `variables.p` parsed as JSON and as a phone number, then
/// `OtpService::issue` (the same one-script Redis work as `generateCode`: HMAC, budgets, code, SMS
/// job). No GraphQL, no HTTP guards, no SMS workers: the floor of `generateCode` over HTTP.
async fn issue_handler(
    axum::extract::State(s): axum::extract::State<BaselineState>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let error =
        |code: &str| axum::Json(json!({ "errors": [{ "message": code, "extensions": { "code": code } }] }));
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error("BAD_REQUEST").into_response();
    };
    let Some(Ok(phone)) = request["variables"]["p"]
        .as_str()
        .map(|p| PhoneNumber::parse(p, &s.policy))
    else {
        return error("BAD_USER_INPUT").into_response();
    };
    match s.otp.issue(&phone, "127.0.0.1").await {
        Ok(issued) => axum::Json(json!({ "data": { "generateCode": {
            "phone": phone.e164(),
            "expiresInSeconds": issued.expires_in_seconds,
            "resendInSeconds": issued.resend_in_seconds,
        } } }))
        .into_response(),
        Err(_) => error("ISSUE_FAILED").into_response(),
    }
}

/// The service's `generateCode` settings under the benchmark (loadgen's server environment: per-IP
/// and service-wide budgets raised, the rest the defaults).
fn bench_otp_settings() -> phone_auth::services::otp::OtpSettings {
    phone_auth::services::otp::OtpSettings {
        ttl_seconds: 300,
        max_attempts: 5,
        resend_cooldown_seconds: 60,
        max_sends_per_window: 5,
        window_seconds: 3600,
        max_failures_per_window: 10,
        ip_window_seconds: 300,
        ip_max_code_requests: 1_000_000_000,
        ip_max_code_checks: 1_000_000_000,
        sms_max_per_hour: 1_000_000_000,
    }
}

async fn baseline_handler(
    axum::extract::State(s): axum::extract::State<BaselineState>,
    _body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let n = s.counter.fetch_add(1, Ordering::Relaxed) % 10_000;
    let result: redis::RedisResult<i64> = s
        .script
        .key(format!("{}baseline:{n}", s.prefix))
        .arg(60)
        .invoke_async(&mut s.redis.clone())
        .await;
    match result {
        Ok(v) => axum::Json(json!({ "data": { "n": v } })).into_response(),
        Err(_) => (
            axum::http::StatusCode::OK,
            axum::Json(json!({ "errors": [{ "message": "redis", "extensions": { "code": "SERVICE_UNAVAILABLE" } }] })),
        )
            .into_response(),
    }
}

/// `loadgen baseline-server`: the same runtime (tokio multi-thread, default workers), the same Redis
/// client (one ConnectionManager, same timeouts) as the service, and nothing else.
fn baseline_server(listen: SocketAddr, redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    ensure_loopback(redis_url, "--redis-url")?;
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the baseline server listens on loopback only"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let redis =
            redis::aio::ConnectionManager::new_with_config(redis::Client::open(redis_url)?, config).await?;
        let mut secret = vec![0u8; 32];
        rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, &mut secret)
            .map_err(|e| anyhow::anyhow!("os rng: {e}"))?;
        let cipher = phone_auth::services::outbox::CodeCipher::from_secret(&secret);
        let otp = phone_auth::services::otp::OtpService::new(
            redis.clone(),
            phone_auth::services::Keys::new(prefix),
            secrecy::SecretSlice::from(secret),
            bench_otp_settings(),
            phone_auth::services::otp::TestNumbers::default(),
            phone_auth::services::outbox::Appender {
                stream_key: phone_auth::services::outbox::Outbox::stream_key(
                    &phone_auth::services::Keys::new(prefix),
                ),
                max_len: 10_000_000,
                ttl_seconds: phone_auth::services::outbox::outbox_ttl_seconds(300),
                cipher,
            },
        );
        let state = BaselineState {
            redis,
            script: Arc::new(redis::Script::new(BASELINE_LUA)),
            prefix: prefix.into(),
            counter: Arc::new(AtomicU64::new(0)),
            otp: Arc::new(otp),
            policy: Arc::new(PhonePolicy::default()),
        };
        let router = axum::Router::new()
            .route("/graphql", axum::routing::post(baseline_handler))
            .route("/issue", axum::routing::post(issue_handler))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router).await?;
        anyhow::Ok(())
    })
}

async fn run_baseline(bench: &mut Bench) -> anyhow::Result<()> {
    let port = procs::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let exe = std::env::current_exe()?;
    let mut command = wrapped(&bench.args.server_wrapper, exe.as_os_str());
    command
        .arg("baseline-server")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--redis-url")
        .arg(&bench.redis_url)
        .arg("--prefix")
        .arg(format!("bench:{}:baseline:", bench.run_id));
    let log = bench.work_dir.join("baseline-server.log");
    let mut guard = ChildGuard::spawn("baseline-server", command, &log)?;
    procs::wait_http_ok(&mut guard, addr, "/healthz", ready_within(&bench.args)).await?;
    let server = Server {
        guard,
        addr,
        name: "baseline".into(),
        prefix: format!("bench:{}:baseline:", bench.run_id),
    };
    let clients = bench.args.clients;
    let max = bench.args.max_requests;
    let redis_cpu0 = bench.redis_pid.and_then(procs::cpu_ms);
    measured(
        bench,
        &server,
        "baseline-redis",
        clients,
        max,
        |mut c| async move {
            let body = gen_body("+14155550100");
            while c.limits.next() {
                c.gql("evalsha", body.clone(), None, &[]).await;
            }
            c
        },
    )
    .await?;
    note_redis_cpu(bench, "baseline-redis", "evalsha", redis_cpu0);
    if bench.wants("generate-code") {
        let redis_cpu0 = bench.redis_pid.and_then(procs::cpu_ms);
        let numbers = PhoneGen::new("+1415");
        measured(bench, &server, "baseline-issue", clients, max, move |mut c| {
            let numbers = numbers.clone();
            async move {
                while c.limits.next() {
                    let Some(p) = numbers.next() else { break };
                    c.post_to("/issue", "generateCode-script", gen_body(&p), None, &[])
                        .await;
                }
                c
            }
        })
        .await?;
        note_redis_cpu(bench, "baseline-issue", "generateCode-script", redis_cpu0);
    }
    let mut server = server;
    server.guard.stop(Duration::from_secs(5));
    Ok(())
}

fn note_redis_cpu(bench: &mut Bench, scenario: &str, op: &str, before: Option<u64>) {
    let after = bench.redis_pid.and_then(procs::cpu_ms);
    let Some(requests) = bench.row(scenario, op).map(|r| r.requests) else {
        return;
    };
    if let (Some(a), Some(b)) = (before, after)
        && requests > 0
    {
        let per = (b.saturating_sub(a)) as f64 * 1000.0 / requests as f64;
        bench.note(
            "redis-cpu",
            format!("{scenario}/{op}: redis-server CPU {per:.1} us per request (warm-up included)"),
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Scenarios against the service

/// Logs `phones[i]` in, one per client; returns the access tokens.
async fn tokens_for(server: &Server, phones: &[String], n: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    let mut conn = client::Conn::new(server.addr);
    for phone in phones.iter().cycle().take(n) {
        let (_, json) = conn
            .post_json("/graphql", login_body(phone, seed::SEED_PASSWORD), None)
            .await
            .map_err(|e| anyhow::anyhow!("login for a token: {e}"))?;
        let token = json["data"]["login"]["accessToken"]
            .as_str()
            .with_context(|| format!("login for a token failed: {json}"))?;
        out.push(token.to_owned());
    }
    Ok(out)
}

/// Phones of `list` that client `id` of `clients` uses: disjoint between clients, so that no two
/// clients have attempts in flight for one phone (the lockout reserves at most 3 at once per phone).
fn share(list: &[String], id: usize, clients: usize) -> Vec<String> {
    list.iter().skip(id).step_by(clients.max(1)).cloned().collect()
}

async fn login_scenario(
    bench: &mut Bench,
    server: &Server,
    scenario: &str,
    phones: Arc<Vec<String>>,
    clients: usize,
    expected: &'static [&'static str],
) -> anyhow::Result<()> {
    let max = bench.args.max_requests;
    measured(bench, server, scenario, clients, max, move |mut c| {
        let mine = share(&phones, c.id, clients);
        async move {
            let mut i = 0usize;
            while !mine.is_empty() && c.limits.next() {
                let phone = &mine[i % mine.len()];
                i += 1;
                c.gql("login", login_body(phone, seed::SEED_PASSWORD), None, expected)
                    .await;
            }
            c
        }
    })
    .await
}

async fn me_loop(mut c: Client, token: String, rate: Option<f64>) -> Client {
    let body = me_body();
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.1)));
    let mut next = tokio::time::Instant::now()
        + interval.map_or(Duration::ZERO, |i| i.mul_f64((c.id % 97) as f64 / 97.0));
    while c.limits.next() {
        if let Some(i) = interval {
            tokio::time::sleep_until(next).await;
            next += i;
            let now = tokio::time::Instant::now();
            if next < now {
                next = now;
            }
        }
        let start = Instant::now();
        let a = c.gql("me", body.clone(), Some(&token), &[]).await;
        if a.ok() && a.json["data"]["me"]["id"].is_null() {
            // A null `me` with a valid token is a failure that has no GraphQL error.
            c.record("me(null)", start, Instant::now(), Some("ME_NULL"), &[]);
        }
    }
    c
}

/// Blocks of the users table and its indexes found in PostgreSQL's shared buffers (hit) or read from
/// the OS (read), since the statistics were last reset.
async fn pg_blocks(bench: &Bench) -> Option<(i64, i64)> {
    let mut db = bench_db(bench).await.ok()?;
    let row: (Option<i64>, Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "select heap_blks_hit, heap_blks_read, idx_blks_hit, idx_blks_read
         from pg_statio_user_tables where relname = 'users'",
    )
    .fetch_one(&mut db)
    .await
    .ok()?;
    Some((
        row.0.unwrap_or(0) + row.2.unwrap_or(0),
        row.1.unwrap_or(0) + row.3.unwrap_or(0),
    ))
}

/// verifyUser with the right code for registered (seeded) users. Each iteration asks a code first
/// (recorded apart as setup); the server runs with no resend cooldown for this.
async fn verify_registered_scenario(
    bench: &mut Bench,
    server: &Server,
    scenario: &str,
    phones: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let max = bench.args.max_requests;
    let blocks_before = pg_blocks(bench).await;
    measured(bench, server, scenario, clients, max, move |mut c| {
        let mine = share(&phones, c.id, clients);
        async move {
            let mut i = 0usize;
            while !mine.is_empty() && c.limits.next() {
                let phone = &mine[i % mine.len()];
                i += 1;
                if !c
                    .gql("generateCode(setup)", gen_body(phone), None, &[])
                    .await
                    .ok()
                {
                    continue;
                }
                let start = Instant::now();
                let a = c
                    .gql("verifyUser(registered)", verify_body(phone, TEST_CODE), None, &[])
                    .await;
                if a.ok() && a.json["data"]["verifyUser"]["registered"] != Value::Bool(true) {
                    c.record(
                        "verifyUser(not registered)",
                        start,
                        Instant::now(),
                        Some("NOT_REGISTERED"),
                        &[],
                    );
                }
            }
            c
        }
    })
    .await?;
    let verified = bench
        .row(scenario, "verifyUser(registered)")
        .map_or(0, |r| r.requests);
    if let (Some((h0, r0)), Some((h1, r1))) = (blocks_before, pg_blocks(bench).await)
        && verified > 0
    {
        bench.note(
            "postgres",
            format!(
                "{scenario}: users table and indexes, per verifyUser (warm-up included): {:.1} blocks from shared buffers, {:.2} read from the OS",
                (h1 - h0) as f64 / verified as f64,
                (r1 - r0) as f64 / verified as f64
            ),
        );
    }
    Ok(())
}

async fn sign_up_flow(c: &mut Client, phone: &str, label: &str) -> bool {
    let start = Instant::now();
    let ok = async {
        if !c
            .gql(&format!("{label}:generateCode"), gen_body(phone), None, &[])
            .await
            .ok()
        {
            return false;
        }
        let v = c
            .gql(
                &format!("{label}:verifyUser"),
                verify_body(phone, TEST_CODE),
                None,
                &[],
            )
            .await;
        let Some(token) = v.json["data"]["verifyUser"]["registrationToken"].as_str() else {
            return false;
        };
        let token = token.to_owned();
        c.gql(&format!("{label}:register"), register_body(&token), None, &[])
            .await
            .ok()
    }
    .await;
    c.record_flow(&format!("{label}(flow)"), start, ok);
    ok
}

async fn main_server_phase(bench: &mut Bench) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let max = bench.args.max_requests;
    let server = start_server(bench, "main", &[]).await?;
    let result = main_server_scenarios(bench, &server, clients, max).await;
    let ttl = ttl_check(bench, &server.prefix).await;
    stop_server(bench, server).await;
    result?;
    ttl
}

async fn main_server_scenarios(
    bench: &mut Bench,
    server: &Server,
    clients: usize,
    max: u64,
) -> anyhow::Result<()> {
    let seeded = seed::seed(&bench.db_url(), bench.args.users_small).await?;
    bench.note(
        "seed",
        format!(
            "main server: seeded {} users in {:.2} s",
            seeded.inserted,
            seeded.elapsed.as_secs_f64()
        ),
    );
    let users = Arc::new(seeded_phones(bench.args.users_small, 0, 1));

    if bench.wants("verify-wrong") {
        // Setup: pending codes for test numbers (known code, so a wrong one is surely wrong), with
        // Redis memory measured around it.
        let mut conn = redis_conn(&bench.redis_url).await?;
        let numbers = PhoneGen::new("+1408");
        // One request first, so that the scripts are loaded and the per-IP and service keys exist.
        {
            let mut warm = client::Conn::new(server.addr);
            let p = numbers.next().context("phones")?;
            warm.post_json("/graphql", gen_body(&p), None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let (mem0, keys0) = used_memory(&mut conn).await?;
        let pending: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let n = bench.args.pending_codes;
        let started = Instant::now();
        let recorded = {
            let pending = pending.clone();
            let numbers = numbers.clone();
            drive(
                server.addr,
                clients,
                Duration::ZERO,
                Duration::from_secs(120),
                n,
                move |mut c| {
                    let pending = pending.clone();
                    let numbers = numbers.clone();
                    async move {
                        let mut mine = Vec::new();
                        while c.limits.next() {
                            let Some(p) = numbers.next() else { break };
                            if c.gql("generateCode(setup)", gen_body(&p), None, &[]).await.ok() {
                                mine.push(p);
                            }
                        }
                        if let Ok(mut all) = pending.lock() {
                            all.extend(mine);
                        }
                        c
                    }
                },
            )
            .await?
        };
        let (mem1, keys1) = used_memory(&mut conn).await?;
        let phones: Vec<String> = pending.lock().map(|p| p.clone()).unwrap_or_default();
        let codes = phones.len() as u64;
        let setup_errors: u64 = recorded.values().map(client::OpStats::unexpected).sum();
        let mut per_key = Vec::new();
        if let Some(p) = phones.first() {
            for what in ["otp", "otp_sends"] {
                let key = format!("{}{{{p}}}:{what}", server.prefix);
                let bytes: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                per_key.push(format!(
                    "{what} {} B",
                    bytes.map_or("-".into(), |b| b.to_string())
                ));
            }
        }
        if codes > 0 {
            let per = (mem1.saturating_sub(mem0)) as f64 / codes as f64;
            bench.note(
                "redis-memory",
                format!(
                    "{codes} pending codes (generateCode for fresh phones, {:.1} s, {setup_errors} errors): used_memory {mem0} -> {mem1} B, \
                     {per:.0} B per pending code; keys {keys0} -> {keys1} ({:.2} keys per code); MEMORY USAGE of one phone's keys: {}",
                    started.elapsed().as_secs_f64(),
                    (keys1.saturating_sub(keys0)) as f64 / codes as f64,
                    per_key.join(", ")
                ),
            );
        }
        let phones = Arc::new(phones);
        measured(bench, server, "verify-wrong", clients, max, move |mut c| {
            let mine = share(&phones, c.id, clients);
            async move {
                // Four wrong tries per phone: the fifth would burn the code (TOO_MANY_ATTEMPTS), and
                // four stay under the phone's budget of 10 failed checks per hour.
                'phones: for phone in &mine {
                    for _ in 0..4 {
                        if !c.limits.next() {
                            break 'phones;
                        }
                        c.gql(
                            "verifyUser(wrong)",
                            verify_body(phone, WRONG_CODE),
                            None,
                            &["INVALID_CODE"],
                        )
                        .await;
                    }
                }
                c
            }
        })
        .await?;
    }

    if bench.wants("graphql-floor") {
        // Diagnostic: the cheapest GraphQL request (no store, no resolver of ours) through the same
        // HTTP edge, document guard and schema: the floor under every operation.
        measured(bench, server, "graphql-floor", clients, max, |mut c| async move {
            let body = json!({ "query": "{ __typename }" }).to_string();
            while c.limits.next() {
                c.gql("{ __typename }", body.clone(), None, &[]).await;
            }
            c
        })
        .await?;
    }

    if bench.wants("generate-code") {
        let numbers = PhoneGen::new("+1415");
        measured(bench, server, "generate-code", clients, max, move |mut c| {
            let numbers = numbers.clone();
            async move {
                while c.limits.next() {
                    let Some(p) = numbers.next() else { break };
                    c.gql("generateCode", gen_body(&p), None, &[]).await;
                }
                c
            }
        })
        .await?;
    }

    // The SMS outbox (a stream, where the server has one): what generate-code left in it.
    {
        let mut conn = redis_conn(&bench.redis_url).await?;
        let key = format!("{}sms:outbox", server.prefix);
        let len: redis::RedisResult<u64> = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await;
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if let Ok(len) = len
            && bench.wants("generate-code")
        {
            bench.note(
                "redis-memory",
                format!(
                    "after generate-code: the SMS outbox stream holds {len} jobs, {} bytes (MEMORY USAGE)",
                    bytes.map_or("-".into(), |b| b.to_string())
                ),
            );
            // How fast the server's delivery workers drain it with no load (at most 60 s).
            let start = Instant::now();
            let mut left = len;
            while left > 0 && start.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                left = redis::cmd("XLEN")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(0);
            }
            let secs = start.elapsed().as_secs_f64();
            if len > 0 {
                bench.note(
                    "sms-outbox",
                    format!(
                        "after generate-code: {len} jobs waiting; {} delivered by the server's workers in {secs:.1} s with no load = {:.0} jobs/s ({left} left)",
                        len - left,
                        (len - left) as f64 / secs
                    ),
                );
            }
        }
    }

    if bench.wants("sign-up") {
        let numbers = PhoneGen::new("+16507");
        measured(bench, server, "sign-up", clients, max, move |mut c| {
            let numbers = numbers.clone();
            async move {
                while c.limits.next() {
                    let Some(p) = numbers.next() else { break };
                    sign_up_flow(&mut c, &p, "signUp").await;
                }
                c
            }
        })
        .await?;
    }

    if bench.wants("login") {
        let before = procs::thread_times(server.guard.pid());
        login_scenario(bench, server, "login", users.clone(), clients, &[]).await?;
        let after = procs::thread_times(server.guard.pid());
        note_threads(bench, "login", &before, &after);
    }

    let needs_tokens = ["me", "me-under-login", "mixed"].iter().any(|s| bench.wants(s));
    let tokens = if needs_tokens {
        Arc::new(tokens_for(server, &users, clients.max(bench.args.probe_clients)).await?)
    } else {
        Arc::new(Vec::new())
    };
    if bench.wants("me") {
        let t = tokens.clone();
        measured(bench, server, "me", clients, max, move |c| {
            let token = t[c.id % t.len()].clone();
            me_loop(c, token, None)
        })
        .await?;
    }

    if bench.wants("me-under-login") {
        let probe = bench.args.probe_clients;
        let rate = bench.args.probe_rate;
        let t = tokens.clone();
        measured(bench, server, "me-probe-alone", probe, max, move |c| {
            let token = t[c.id % t.len()].clone();
            me_loop(c, token, Some(rate))
        })
        .await?;
        // Both loads at once, measured over the same window.
        bench.check_time()?;
        println!("scenario me-probe-under-login ({probe} me clients + {clients} login clients)");
        let pid = server.guard.pid();
        procs::reset_peak_rss(pid);
        let before = procs::thread_times(pid);
        let (warmup, duration) = (bench.warmup(), bench.duration());
        let t = tokens.clone();
        let phones = users.clone();
        let me_run = drive(server.addr, probe, warmup, duration, max, move |c| {
            let token = t[c.id % t.len()].clone();
            me_loop(c, token, Some(rate))
        });
        let login_run = drive(server.addr, clients, warmup, duration, max, move |mut c| {
            let mine = share(&phones, c.id, clients);
            async move {
                let mut i = 0usize;
                while !mine.is_empty() && c.limits.next() {
                    let phone = &mine[i % mine.len()];
                    i += 1;
                    c.gql("login", login_body(phone, seed::SEED_PASSWORD), None, &[])
                        .await;
                }
                c
            }
        });
        let (me_rec, login_rec) = tokio::join!(me_run, login_run);
        let after = procs::thread_times(pid);
        let rss = procs::peak_rss_kib(pid);
        bench.push_rows("me-probe-under-login", probe, me_rec?, rss, None, 0);
        bench.push_rows("me-probe-under-login", clients, login_rec?, rss, None, 0);
        note_threads(bench, "me-probe-under-login", &before, &after);
    }

    if bench.wants("login-500") {
        let burst = bench.args.burst_clients;
        login_scenario(
            bench,
            server,
            "login-500",
            users.clone(),
            burst,
            &["SERVICE_UNAVAILABLE"],
        )
        .await?;
    }

    if bench.wants("mixed") {
        let codes_gen = PhoneGen::new("+1212");
        let signup_gen = PhoneGen::new("+16508");
        let t = tokens.clone();
        let phones = users.clone();
        measured(bench, server, "mixed", clients, max, move |mut c| {
            let token = t[c.id % t.len()].clone();
            let mine = share(&phones, c.id, clients);
            let codes_gen = codes_gen.clone();
            let signup_gen = signup_gen.clone();
            async move {
                let mut rng = Rng::new(c.id as u64 + 7);
                let mut pending: std::collections::VecDeque<(String, u8)> = Default::default();
                let me = me_body();
                let mut li = 0usize;
                while c.limits.next() {
                    let start = Instant::now();
                    // me 35%, generateCode 25%, wrong verifyUser 20%, login 10%, sign-up flow 10%.
                    let roll = rng.below(100);
                    let ok = if roll < 35 {
                        c.gql("me", me.clone(), Some(&token), &[]).await.ok()
                    } else if roll < 80 && (roll < 60 || pending.is_empty()) {
                        let Some(p) = codes_gen.next() else { break };
                        let ok = c.gql("generateCode", gen_body(&p), None, &[]).await.ok();
                        if ok {
                            pending.push_back((p, 0));
                        }
                        ok
                    } else if roll < 80 {
                        let Some((p, tries)) = pending.pop_front() else {
                            continue;
                        };
                        let a = c
                            .gql(
                                "verifyUser(wrong)",
                                verify_body(&p, WRONG_CODE),
                                None,
                                &["INVALID_CODE"],
                            )
                            .await;
                        if tries + 1 < 4 {
                            pending.push_back((p, tries + 1));
                        }
                        a.code.as_deref() == Some("INVALID_CODE")
                    } else if roll < 90 && !mine.is_empty() {
                        let phone = &mine[li % mine.len()];
                        li += 1;
                        c.gql("login", login_body(phone, seed::SEED_PASSWORD), None, &[])
                            .await
                            .ok()
                    } else {
                        let Some(p) = signup_gen.next() else { break };
                        sign_up_flow(&mut c, &p, "signUp").await
                    };
                    c.record_flow("mixed(all)", start, ok);
                }
                c
            }
        })
        .await?;
    }
    Ok(())
}

fn note_threads(bench: &mut Bench, scenario: &str, before: &procs::ThreadTimes, after: &procs::ThreadTimes) {
    let deltas = procs::thread_deltas(before, after);
    let lines: Vec<String> = deltas
        .iter()
        .take(8)
        .map(|(name, cpu, wait)| format!("{name}: cpu {cpu:.0} ms, runqueue wait {wait:.0} ms"))
        .collect();
    bench.note(
        "threads",
        format!("{scenario}: server threads {}", lines.join("; ")),
    );
}

/// A file under ./src or ./migrations newer than `binary`, if any (a stale build would be measured).
fn newest_source_after(binary: &std::path::Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let mut stack = vec![PathBuf::from("src"), PathBuf::from("migrations")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
                && !path.starts_with("src/bin")
            {
                return Some(path);
            }
        }
    }
    None
}

/// 1000 -> "1k", 1000000 -> "1M".
fn users_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Flushes dirty buffers now (as the superuser the benchmark connects as), so that the checkpoint a
/// large insert provokes does not land inside the next measurement. Best effort.
async fn checkpoint(bench: &mut Bench) {
    let start = Instant::now();
    let result = async {
        let mut db = bench_db(bench).await?;
        sqlx::query("checkpoint").execute(&mut db).await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => bench.note(
            "seed",
            format!("checkpoint after seeding: {:.1} s", start.elapsed().as_secs_f64()),
        ),
        Err(e) => bench.note("seed", format!("checkpoint after seeding failed: {e:#}")),
    }
}

/// login and verifyUser with 1,000 users, then with 1,000,000: a server with no resend cooldown (so a
/// seeded phone can be asked a code again at once), same database.
async fn users_phase(bench: &mut Bench) -> anyhow::Result<()> {
    {
        let mut db = bench_db(bench).await?;
        phone_auth::app::MIGRATOR.run(&mut db).await?;
        sqlx::query("truncate users cascade").execute(&mut db).await?;
    }
    let env = [
        ("OTP_RESEND_COOLDOWN_SECONDS", "0".to_owned()),
        ("OTP_MAX_SENDS_PER_WINDOW", "1000000".to_owned()),
    ];
    let server = start_server(bench, "users", &env).await?;
    let result = users_scenarios(bench, &server).await;
    let ttl = ttl_check(bench, &server.prefix).await;
    stop_server(bench, server).await;
    result?;
    ttl
}

async fn users_scenarios(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let small = bench.args.users_small;
    let large = bench.args.users_large;
    let seeded = seed::seed(&bench.db_url(), small).await?;
    checkpoint(bench).await;
    bench.note(
        "seed",
        format!(
            "users phase: {} users ({:.2} s)",
            seeded.total_users,
            seeded.elapsed.as_secs_f64()
        ),
    );
    let phones = Arc::new(seeded_phones(small, 0, 1));
    let (s_label, l_label) = (users_label(small), users_label(large));
    login_scenario(
        bench,
        server,
        &format!("login-{s_label}-users"),
        phones.clone(),
        clients,
        &[],
    )
    .await?;
    verify_registered_scenario(bench, server, &format!("verify-{s_label}-users"), phones).await?;

    bench.check_time()?;
    println!("seeding {large} users");
    let seeded = seed::seed(&bench.db_url(), large).await?;
    checkpoint(bench).await;
    bench.note(
        "seed",
        format!(
            "seed_users --count {large}: inserted {} rows in {:.1} s (insert ... generate_series, then vacuum analyze); {} users in the table",
            seeded.inserted,
            seeded.elapsed.as_secs_f64(),
            seeded.total_users
        ),
    );
    // Phones spread over the whole table, so that lookups are not confined to a cached corner.
    let phones = Arc::new(seeded_phones(large, 20_000, 42));
    login_scenario(
        bench,
        server,
        &format!("login-{l_label}-users"),
        phones.clone(),
        clients,
        &[],
    )
    .await?;
    verify_registered_scenario(bench, server, &format!("verify-{l_label}-users"), phones).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Report

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(String::new(), |k| {
            format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0)
        });
    format!("{cores} cores ({model}), {mem} RAM")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

fn report(bench: &Bench, started: &str, load_start: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# loadgen report\n");
    let _ = writeln!(s, "- date (UTC): {started}");
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(s, "- load average at start / end: {load_start} / {}", loadavg());
    let _ = writeln!(
        s,
        "- clients {}, warm-up {} s, measured {} s per scenario, at most {} requests per scenario",
        bench.args.clients, bench.args.warmup, bench.args.duration, bench.args.max_requests
    );
    let _ = writeln!(
        s,
        "- command: `{}`\n",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        s,
        "| scenario | operation | clients | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | expected errors | unexpected errors | server peak RSS MiB | server CPU us/req |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"
    );
    for r in &bench.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.scenario,
            r.op,
            r.clients,
            r.requests,
            r.rps,
            r.p50,
            r.p90,
            r.p99,
            r.max,
            r.expected,
            r.errors,
            r.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1}")),
            r.server_cpu_us_per_req.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    for (per_request, what) in [
        (
            &bench.client_cpu,
            "loadgen's own CPU per request (us), on the same cores",
        ),
        (
            &bench.redis_cpu,
            "redis-server's CPU per request (us), on the same cores",
        ),
        (&bench.faults, "server minor page faults per request"),
    ] {
        if !per_request.is_empty() {
            let per: Vec<String> = per_request.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
            let _ = writeln!(s, "\n{what}: {}", per.join(", "));
        }
    }
    let _ = writeln!(s, "\n## Targets\n");
    for line in targets(bench) {
        let _ = writeln!(s, "- {line}");
    }
    for (section, lines) in &bench.notes {
        let _ = writeln!(s, "\n## {section}\n");
        for l in lines {
            let _ = writeln!(s, "- {l}");
        }
    }
    let samples: Vec<String> = bench
        .rows
        .iter()
        .flat_map(|r| {
            r.samples
                .iter()
                .map(move |x| format!("{}/{}: {x}", r.scenario, r.op))
        })
        .collect();
    if !samples.is_empty() {
        let _ = writeln!(s, "\n## unexpected answers (samples)\n");
        for x in samples {
            let _ = writeln!(s, "- `{x}`");
        }
    }
    s
}

fn targets(bench: &Bench) -> Vec<String> {
    let mut out = Vec::new();
    let base = bench.row("baseline-redis", "evalsha");
    for (scenario, op) in [
        ("generate-code", "generateCode"),
        ("verify-wrong", "verifyUser(wrong)"),
    ] {
        if let (Some(b), Some(r)) = (base, bench.row(scenario, op)) {
            let ratio = r.rps / b.rps;
            out.push(format!(
                "{scenario}: {:.0} req/s = {:.0}% of the bare axum + EVALSHA baseline ({:.0} req/s), target >= 50%: {}; p99 {:.2} ms, target < 10 ms: {}",
                r.rps,
                ratio * 100.0,
                b.rps,
                verdict(ratio >= 0.5),
                r.p99,
                verdict(r.p99 < 10.0)
            ));
        }
    }
    if let (Some(b), Some(r)) = (
        bench.row("baseline-issue", "generateCode-script"),
        bench.row("generate-code", "generateCode"),
    ) {
        out.push(format!(
            "(diagnostic, no target) generate-code: {:.0} req/s = {:.0}% of baseline (1b), a bare axum handler running the same generateCode script ({:.0} req/s, no GraphQL, no SMS workers)",
            r.rps,
            r.rps / b.rps * 100.0,
            b.rps
        ));
    }
    if let (Some(single), Some(r)) = (bench.argon2_single, bench.row("login", "login")) {
        let bound = single * bench.hash_slots as f64;
        out.push(format!(
            "login: {:.1} req/s = {:.0}% of the argon2 bound ({single:.1}/s per core x {} hash slots = {bound:.1}/s), target >= 85%: {}{}",
            r.rps,
            r.rps / bound * 100.0,
            bench.hash_slots,
            verdict(r.rps >= 0.85 * bound),
            bench
                .argon2_parallel
                .map(|p| format!(" ({:.0}% of the {p:.1}/s measured with all cores hashing at once)", r.rps / p * 100.0))
                .unwrap_or_default()
        ));
    }
    if let (Some(alone), Some(under)) = (
        bench.row("me-probe-alone", "me"),
        bench.row("me-probe-under-login", "me"),
    ) {
        out.push(format!(
            "me p99 while login saturates the hash pool: {:.2} ms vs {:.2} ms alone = {:.1}x, target <= 2x: {}",
            under.p99,
            alone.p99,
            under.p99 / alone.p99.max(1e-9),
            verdict(under.p99 <= 2.0 * alone.p99)
        ));
    }
    if let Some(r) = bench.row("login-500", "login") {
        let unavailable_max = r.error_max_ms.get("SERVICE_UNAVAILABLE").copied();
        let fast = unavailable_max.is_none_or(|m| m <= HASH_QUEUE_TIMEOUT_MS as f64 + 500.0);
        let rss_ok = r.peak_rss_mib.is_some_and(|m| m < 150.0);
        out.push(format!(
            "login-500: unexpected errors {} ({}), refusals: {} (slowest {} ms; fast = within HASH_QUEUE_TIMEOUT_MS {} + 500 ms: {}), peak RSS {} MiB (< 150: {}): {}",
            r.unexpected,
            r.errors,
            r.expected,
            unavailable_max.map_or("-".into(), |m| format!("{m:.0}")),
            HASH_QUEUE_TIMEOUT_MS,
            verdict(fast),
            r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
            verdict(rss_ok),
            verdict(r.unexpected == 0 && fast && rss_ok)
        ));
    }
    let small = bench.args.users_small;
    let large = bench.args.users_large;
    for (kind, op) in [("login", "login"), ("verify", "verifyUser(registered)")] {
        let a = bench.row(&format!("{kind}-{}-users", users_label(small)), op);
        let b = bench.row(&format!("{kind}-{}-users", users_label(large)), op);
        if let (Some(a), Some(b)) = (a, b) {
            let r50 = b.p50 / a.p50.max(1e-9);
            let r99 = b.p99 / a.p99.max(1e-9);
            out.push(format!(
                "{op} with {} vs {} users: p50 {:.2} vs {:.2} ms ({r50:.2}x), p99 {:.2} vs {:.2} ms ({r99:.2}x), req/s {:.0} vs {:.0}; target <= 1.2x: {}",
                users_label(large),
                users_label(small),
                b.p50,
                a.p50,
                b.p99,
                a.p99,
                b.rps,
                a.rps,
                verdict(r50 <= 1.2 && r99 <= 1.2)
            ));
        }
    }
    let with_errors: Vec<String> = bench
        .rows
        .iter()
        .filter(|r| r.unexpected > 0 && !(r.scenario == "login-500" && r.op == "login"))
        .map(|r| format!("{}/{} ({})", r.scenario, r.op, r.errors))
        .collect();
    out.push(format!(
        "zero unexpected errors in every scenario: {}{}",
        verdict(with_errors.is_empty()),
        if with_errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", with_errors.join("; "))
        }
    ));
    if let Some(ttl) = bench.notes.get("ttl") {
        let missed = ttl.iter().any(|l| l.starts_with("MISSED"));
        out.push(format!("every key has a TTL: {}", verdict(!missed)));
    }
    out
}

// ---------------------------------------------------------------------------------------------------

async fn run(args: RunArgs) -> anyhow::Result<()> {
    ensure_loopback(&args.pg_server, "--pg-server")?;
    if let Some(url) = &args.redis_url {
        ensure_loopback(url, "--redis-url")?;
    }
    anyhow::ensure!(
        args.clients > 0 && args.duration > 0.0,
        "--clients and --duration must be positive"
    );
    anyhow::ensure!(
        args.server_bin.exists(),
        "{} not found: build it first (cargo build --release --bins)",
        args.server_bin.display()
    );
    std::fs::create_dir_all(&args.work_dir)?;
    let stale = newest_source_after(&args.server_bin);
    let started = time::OffsetDateTime::now_utc();
    let started_text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        started.year(),
        u8::from(started.month()),
        started.day(),
        started.hour(),
        started.minute(),
        started.second()
    );
    let load_start = loadavg();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hash_slots = args
        .server_env
        .iter()
        .find_map(|kv| kv.strip_prefix("HASH_CONCURRENCY="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(cores)
        .min(cores)
        .max(1);

    let (redis_guard, redis_url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let dir = args.work_dir.join("redis");
            std::fs::create_dir_all(&dir)?;
            let (guard, url) = procs::start_redis(&dir).await?;
            (Some(guard), url)
        }
    };
    let mut bench = Bench {
        selected: args.scenarios.split(',').map(|s| s.trim().to_owned()).collect(),
        work_dir: args.work_dir.clone(),
        hard_deadline: Instant::now() + Duration::from_secs(args.max_total_seconds),
        args,
        redis_pid: redis_guard.as_ref().map(ChildGuard::pid),
        redis_url,
        rows: Vec::new(),
        notes: BTreeMap::new(),
        run_id: format!("{}", std::process::id()),
        argon2_single: None,
        argon2_parallel: None,
        hash_slots,
        client_cpu: BTreeMap::new(),
        redis_cpu: BTreeMap::new(),
        faults: BTreeMap::new(),
    };
    if let Some(path) = stale {
        bench.note(
            "servers",
            format!(
                "WARNING: {} is older than {} (rebuild: cargo build --release --bins)",
                bench.args.server_bin.display(),
                path.display()
            ),
        );
    }
    if let Ok(out) = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        && out.status.success()
    {
        let rev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        bench.note("servers", format!("source: git {rev}"));
    }
    bench.note(
        "redis",
        match &redis_guard {
            Some(g) => format!("private redis-server, pid {} ({})", g.pid(), bench.redis_url),
            None => format!("external Redis {}", bench.redis_url),
        },
    );

    let outcome = async {
        recreate_database(&bench).await?;
        if bench.wants("argon2") || bench.wants("login") {
            argon2_rates(&mut bench)?;
        }
        if bench.wants("baseline") {
            run_baseline(&mut bench).await?;
        }
        let main = [
            "verify-wrong",
            "graphql-floor",
            "generate-code",
            "sign-up",
            "login",
            "me",
            "me-under-login",
            "login-500",
            "mixed",
        ];
        if main.iter().any(|s| bench.wants(s)) {
            main_server_phase(&mut bench).await?;
        }
        if bench.wants("users") {
            users_phase(&mut bench).await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &outcome {
        bench.note("run", format!("stopped early: {e:#}"));
    }
    let text = report(&bench, &started_text, &load_start);
    let path = bench.work_dir.join("report.md");
    std::fs::write(&path, &text)?;
    println!("\n{text}\nreport written to {}", path.display());
    drop(redis_guard);
    outcome
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::PhoneParse { count }) = cli.command {
        phone_parse_bench(count);
        return Ok(());
    }
    if let Some(Cmd::BaselineServer {
        listen,
        redis_url,
        prefix,
    }) = cli.command
    {
        return baseline_server(listen, &redis_url, &prefix);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let limit = Duration::from_secs(cli.run.max_total_seconds + 60);
    runtime.block_on(async move {
        tokio::select! {
            r = run(cli.run) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            () = tokio::time::sleep(limit) => anyhow::bail!("hard time limit reached"),
        }
    })
    // Children are stopped by their guards as the run's future is dropped.
}

fn phone_parse_bench(count: u64) {
    use phonenumber::metadata::DATABASE;
    let policy = PhonePolicy::default();
    let inputs: Vec<String> = (0..count).map(|i| format!("+1415{:07}", 2_000_000 + i)).collect();
    let time = |name: &str, f: &dyn Fn(&str) -> bool| {
        for round in 1..=2 {
            let start = Instant::now();
            let accepted = inputs.iter().filter(|s| f(s)).count();
            let us = start.elapsed().as_secs_f64() * 1e6 / count as f64;
            println!("{name}, round {round}: {us:.2} us per number ({accepted} of {count} accepted)");
        }
    };
    time(
        "phonenumber crate: parse + is_valid + number_type + country + E.164",
        &|s| {
            phonenumber::parse(None, s).is_ok_and(|n| {
                n.is_valid()
                    && n.number_type(&DATABASE) != phonenumber::Type::TollFree
                    && n.country().id().is_some()
                    && !n.format().mode(phonenumber::Mode::E164).to_string().is_empty()
            })
        },
    );
    time("server: PhoneNumber::parse", &|s| {
        PhoneNumber::parse(s, &policy).is_ok()
    });
}
