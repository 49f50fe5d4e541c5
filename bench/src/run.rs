//! One benchmark run: its state (`Bench`: the flags, the rows and notes of the report, the argon2
//! rates), the measurement around each scenario (`measured`), and the order of the phases (`run`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::BackendChoice;
use crate::cli::RunArgs;
use crate::client::{Client, Recorded, drive};
use crate::procs::{self, ChildGuard};
use crate::report::{Row, loadavg, report};
use crate::servers::Server;
use crate::{baseline, scenarios, seed};

pub struct Bench {
    pub args: RunArgs,
    pub selected: Vec<String>,
    pub redis_url: String,
    pub redis_pid: Option<u32>,
    pub work_dir: PathBuf,
    pub rows: Vec<Row>,
    /// Free-form findings for the report, by section.
    pub notes: BTreeMap<String, Vec<String>>,
    pub run_id: String,
    pub hard_deadline: Instant,
    pub argon2_single: Option<f64>,
    pub argon2_parallel: Option<f64>,
    pub hash_slots: usize,
    /// loadgen's own CPU per request, by scenario (microseconds).
    pub client_cpu: BTreeMap<String, f64>,
    /// redis-server's CPU per request of a scenario (us), measured window only.
    pub redis_cpu: BTreeMap<String, f64>,
    /// PostgreSQL's CPU per request of a scenario (us), measured window only.
    pub postgres_cpu: BTreeMap<String, f64>,
    /// The whole machine's busy CPU per request of a scenario (us), measured window only.
    pub machine_cpu: BTreeMap<String, f64>,
    /// The server's minor page faults per request, by scenario.
    pub faults: BTreeMap<String, f64>,
}

impl Bench {
    pub fn wants(&self, name: &str) -> bool {
        self.selected.iter().any(|s| s == "all" || s == name)
    }

    pub fn note(&mut self, section: &str, text: impl Into<String>) {
        let text = text.into();
        println!("  [{section}] {text}");
        self.notes.entry(section.to_owned()).or_default().push(text);
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.args.warmup)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.args.duration)
    }

    pub fn check_time(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            Instant::now() < self.hard_deadline,
            "--max-total-seconds ({}) reached: stopping",
            self.args.max_total_seconds
        );
        Ok(())
    }

    pub fn db_url(&self) -> String {
        seed::database_url(&self.args.pg_server, &self.args.database)
    }

    pub fn row(&self, scenario: &str, op: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.scenario == scenario && r.op == op)
    }
}

/// CPU times (ms) and the server's minor page faults at one instant.
#[derive(Clone, Copy, Default)]
pub(crate) struct Counters {
    pub(crate) server_cpu: Option<u64>,
    pub(crate) own_cpu: Option<u64>,
    pub(crate) server_faults: Option<u64>,
    pub(crate) redis_cpu: Option<u64>,
    pub(crate) postgres_cpu: Option<u64>,
    pub(crate) machine_busy: Option<u64>,
}

impl Counters {
    pub(crate) fn read(server: u32, redis: Option<u32>) -> Counters {
        Counters {
            server_cpu: procs::cpu_ms(server),
            own_cpu: procs::cpu_ms(std::process::id()),
            server_faults: procs::minor_faults(server),
            redis_cpu: redis.and_then(procs::cpu_ms),
            postgres_cpu: procs::postgres_cpu_ms(),
            machine_busy: procs::machine_busy_ms(),
        }
    }
}

/// Per request, from two readings of a counter.
fn per_request(start: Option<u64>, end: Option<u64>, requests: u64, scale: f64) -> Option<f64> {
    let (a, b) = start.zip(end)?;
    (requests > 0).then(|| b.saturating_sub(a) as f64 * scale / requests as f64)
}

/// Runs `body` on `clients` clients against the server (see `client::drive`) and adds the rows: resets
/// the server's peak RSS first; reads the CPU times (the server's, loadgen's, redis-server's) and the
/// server's page faults when the measured window starts and when the run ends.
pub async fn measured<F, Fut>(
    bench: &mut Bench,
    server: &Server,
    scenario: &str,
    clients: usize,
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
    let (warmup, duration, max) = (bench.warmup(), bench.duration(), bench.args.max_requests);
    let redis_pid = bench.redis_pid;
    let at_start = Arc::new(Mutex::new(Counters::default()));
    let mark = at_start.clone();
    let profiling = procs::callgrind(&bench.args.server_wrapper);
    let marker = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        if profiling {
            procs::callgrind_control(&["-z"], pid);
            procs::callgrind_control(&["-i", "on"], pid);
        }
        if let Ok(mut m) = mark.lock() {
            *m = Counters::read(pid, redis_pid);
        }
    });
    let recorded = drive(server.addr, clients, warmup, duration, max, body).await?;
    let _ = marker.await;
    if profiling {
        procs::callgrind_control(&["-i", "off"], pid);
        procs::callgrind_control(&["-d", scenario], pid);
    }
    let end = Counters::read(pid, redis_pid);
    let start = at_start.lock().map(|m| *m).unwrap_or_default();
    let requests = requests_hint(&recorded);
    if let Some(per) = per_request(start.server_faults, end.server_faults, requests, 1.0) {
        bench.faults.insert(scenario.to_owned(), per);
    }
    let cpu = start
        .server_cpu
        .zip(end.server_cpu)
        .map(|(a, b)| b.saturating_sub(a));
    let rss = procs::peak_rss_kib(pid);
    bench.push_rows(scenario, clients, recorded, rss, cpu, requests);
    if let Some(per) = per_request(start.own_cpu, end.own_cpu, requests, 1000.0) {
        bench.client_cpu.insert(scenario.to_owned(), per);
    }
    if let Some(per) = per_request(start.redis_cpu, end.redis_cpu, requests, 1000.0) {
        bench.redis_cpu.insert(scenario.to_owned(), per);
    }
    if let Some(per) = per_request(start.postgres_cpu, end.postgres_cpu, requests, 1000.0) {
        bench.postgres_cpu.insert(scenario.to_owned(), per);
    }
    if let Some(per) = per_request(start.machine_busy, end.machine_busy, requests, 1000.0) {
        bench.machine_cpu.insert(scenario.to_owned(), per);
    }
    Ok(())
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

/// A file under ./src or ./migrations newer than `binary`, if any (a stale build would be measured).
fn newest_source_after(binary: &Path) -> Option<PathBuf> {
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
            {
                return Some(path);
            }
        }
    }
    None
}

/// "YYYY-MM-DD hh:mm:ss", UTC.
fn now_utc_text() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Hash slots of the server: HASH_CONCURRENCY if given (at most the cores), else the cores.
fn hash_slots(args: &RunArgs) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    args.server_env
        .iter()
        .find_map(|kv| kv.strip_prefix("HASH_CONCURRENCY="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(cores)
        .min(cores)
        .max(1)
}

/// The whole run: checks the flags, starts redis-server (unless --redis-url), runs the selected
/// phases, writes the report (also when a phase failed).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let real = args.backend != BackendChoice::Embedded;
    procs::ensure_loopback(&args.pg_server, "--pg-server")?;
    if let Some(url) = &args.redis_url {
        procs::ensure_loopback(url, "--redis-url")?;
    }
    anyhow::ensure!(
        args.clients > 0 && args.duration > 0.0,
        "--clients and --duration must be positive"
    );
    anyhow::ensure!(
        args.server_bin.exists(),
        "{} not found: build it first (cargo build --release --workspace --bins)",
        args.server_bin.display()
    );
    std::fs::create_dir_all(&args.work_dir)?;
    let stale = newest_source_after(&args.server_bin);
    let started_text = now_utc_text();
    let load_start = loadavg();

    let (redis_guard, redis_url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        // The embedded backend alone needs no Redis.
        None if !real => (None, String::new()),
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
        hash_slots: hash_slots(&args),
        args,
        redis_pid: redis_guard.as_ref().map(ChildGuard::pid),
        redis_url,
        rows: Vec::new(),
        notes: BTreeMap::new(),
        run_id: format!("{}", std::process::id()),
        argon2_single: None,
        argon2_parallel: None,
        client_cpu: BTreeMap::new(),
        redis_cpu: BTreeMap::new(),
        postgres_cpu: BTreeMap::new(),
        machine_cpu: BTreeMap::new(),
        faults: BTreeMap::new(),
    };
    if let Some(path) = stale {
        bench.note(
            "servers",
            format!(
                "WARNING: {} is older than {} (rebuild: cargo build --release --workspace --bins)",
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

    let outcome = phases(&mut bench).await;
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

/// The selected phases, in order: a fresh database, argon2, the baselines, the main server, the users
/// comparison.
async fn phases(bench: &mut Bench) -> anyhow::Result<()> {
    if bench.args.backend != BackendChoice::Real {
        // First, so that a run with both backends measures the embedded one on a quiet machine too
        // (the real phases leave a large database and Redis behind).
        scenarios::embedded::embedded_phase(bench).await?;
    }
    if bench.args.backend == BackendChoice::Embedded {
        return Ok(());
    }
    seed::recreate_database(&bench.args.pg_server, &bench.args.database).await?;
    if !bench.args.b_env.is_empty() {
        return scenarios::interleaved::interleaved_phase(bench).await;
    }
    if bench.wants("argon2") || bench.wants("login") {
        baseline::argon2_rates(bench)?;
    }
    if bench.wants("baseline") {
        baseline::run_baseline(bench).await?;
    }
    if scenarios::MAIN.iter().any(|s| bench.wants(s)) {
        scenarios::main_server_phase(bench).await?;
    }
    if bench.args.redis_cluster {
        scenarios::cluster::cluster_phase(bench).await?;
    }
    if bench.wants("users") {
        scenarios::users::users_phase(bench).await?;
    }
    // Seeds a million sessions: only when named, never as part of "all".
    if bench.selected.iter().any(|s| s == "me-scale") {
        scenarios::sessions::me_scale_phase(bench).await?;
    }
    Ok(())
}
