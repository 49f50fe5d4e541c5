//! The service under test as a child process: the environment it runs with (the benchmark's raised
//! budgets; every other setting is the service's default), its start, and its stop.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use crate::procs::{self, ChildGuard};
use crate::run::Bench;

/// Test-number ranges (fixed code, no SMS): seeded users, sign-ups, mixed sign-ups, verify-wrong,
/// mixed codes. generate-code uses +1415 numbers, which are not test numbers (the real path).
const SMS_TEST_NUMBERS: &str = "+16502*:123456,+16507*:123456,+16508*:123456,+1408*:123456,+1212*:123456";
pub const HASH_QUEUE_TIMEOUT_MS: u64 = 2000;

/// The settings the benchmark changes, given to every server it starts (the baseline server reads them
/// through the service's own `Config`, like the service does): the per-IP and service-wide budgets
/// raised, the test numbers, the hash queue's wait.
pub fn bench_settings() -> Vec<(&'static str, String)> {
    vec![
        ("IP_MAX_CODE_REQUESTS", "1000000000".into()),
        ("IP_MAX_CODE_CHECKS", "1000000000".into()),
        ("IP_MAX_PASSWORD_ATTEMPTS", "1000000000".into()),
        ("SMS_MAX_PER_HOUR", "1000000000".into()),
        ("SMS_TEST_NUMBERS", SMS_TEST_NUMBERS.into()),
        ("HASH_QUEUE_TIMEOUT_MS", HASH_QUEUE_TIMEOUT_MS.to_string()),
        // The SMS outbox (where the server has one) refuses new codes when full (default 10,000 jobs);
        // generate-code issues codes faster than the workers deliver them, so it is raised here like
        // the other budgets, and the backlog and the drain rate are reported instead.
        ("SMS_OUTBOX_MAX_LEN", "10000000".into()),
    ]
}

/// A server under test (the service, or the baseline server).
pub struct Server {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub name: String,
    /// Its Redis key prefix.
    pub prefix: String,
    /// On a Redis Cluster (`REDIS_CLUSTER_URLS` in its environment), not the run's single Redis.
    pub cluster: bool,
}

/// Starts `--server-bin` on a free port with its own key prefix, the benchmark's settings, then
/// `extra_env`, then `--server-env`; waits for `/readyz`.
pub async fn start_server(
    bench: &mut Bench,
    name: &str,
    extra_env: &[(&str, String)],
) -> anyhow::Result<Server> {
    start_server_on(bench, name, extra_env, false).await
}

/// `start_server`; `embedded`: with no DATABASE_URL and no REDIS_URL, so the service runs on its
/// embedded backend.
pub async fn start_server_on(
    bench: &mut Bench,
    name: &str,
    extra_env: &[(&str, String)],
    embedded: bool,
) -> anyhow::Result<Server> {
    start_server_full(bench, name, extra_env, embedded, &[]).await
}

/// `start_server` with `overrides` applied after `--server-env` (the "b" side of an interleaved A/B).
pub async fn start_server_overriding(
    bench: &mut Bench,
    name: &str,
    overrides: &[(String, String)],
) -> anyhow::Result<Server> {
    start_server_full(bench, name, &[], false, overrides).await
}

async fn start_server_full(
    bench: &mut Bench,
    name: &str,
    extra_env: &[(&str, String)],
    embedded: bool,
    overrides: &[(String, String)],
) -> anyhow::Result<Server> {
    let port = procs::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let prefix = format!("bench:{}:{name}:", bench.run_id);
    let mut command = procs::wrapped(&bench.args.server_wrapper, bench.args.server_bin.as_os_str());
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    let mut env: Vec<(String, String)> = vec![
        ("APP_ENV".into(), "development".into()),
        ("LISTEN_ADDR".into(), addr.to_string()),
        ("REDIS_KEY_PREFIX".into(), prefix.clone()),
        ("RUST_LOG".into(), "warn,phone_auth::dev_sms=off".into()),
        ("NO_COLOR".into(), "1".into()),
        (
            "OTP_HMAC_SECRET".into(),
            "loadgen-benchmark-secret-0123456789abcdef".into(),
        ),
    ];
    let cluster = extra_env.iter().any(|(k, _)| *k == "REDIS_CLUSTER_URLS");
    if !embedded {
        env.push(("DATABASE_URL".into(), bench.db_url()));
        // On a cluster REDIS_CLUSTER_URLS comes in `extra_env` (both set are refused).
        if !cluster {
            env.push(("REDIS_URL".into(), bench.redis_url.clone()));
        }
    }
    let extra = bench_settings().into_iter().chain(extra_env.iter().cloned());
    env.extend(extra.map(|(k, v)| (k.to_owned(), v)));
    for kv in &bench.args.server_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--server-env {kv:?} is not KEY=VALUE"))?;
        env.push((k.to_owned(), v.to_owned()));
    }
    env.extend(overrides.iter().cloned());
    for (k, v) in &env {
        command.env(k, v);
    }
    let log = bench.work_dir.join(format!("server-{name}.log"));
    let mut guard = ChildGuard::spawn(&format!("phone-auth ({name})"), command, &log)?;
    procs::wait_http_ok(
        &mut guard,
        addr,
        "/readyz",
        procs::ready_within(&bench.args.server_wrapper),
    )
    .await
    .with_context(|| format!("see {}", log.display()))?;
    let shown: Vec<String> = env
        .iter()
        .filter(|(k, _)| {
            k != "OTP_HMAC_SECRET" && k != "DATABASE_URL" && k != "REDIS_URL" && k != "REDIS_CLUSTER_URLS"
        })
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
        cluster,
    })
}

/// Stops a server and notes what its log says (ERROR and WARN lines, the first errors).
pub async fn stop_server(bench: &mut Bench, mut server: Server) {
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
