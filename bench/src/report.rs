//! The results: one `Row` per scenario and operation (printed as it is measured), and the Markdown
//! report (`target/bench/report.md`): the table, the per-request CPU figures, the targets, the notes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::checks::targets;
use crate::client::{Recorded, percentile};
use crate::run::Bench;

/// One line of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub op: String,
    pub clients: usize,
    pub requests: u64,
    /// Requests that succeeded.
    pub ok: u64,
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub expected: String,
    pub errors: String,
    pub unexpected: u64,
    /// Max latency of each error code, ms.
    pub error_max_ms: BTreeMap<String, f64>,
    pub samples: Vec<String>,
    pub peak_rss_mib: Option<f64>,
    pub server_cpu_us_per_req: Option<f64>,
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

impl Bench {
    /// Turns what a scenario recorded into rows, with the server's peak RSS and CPU over the run.
    pub fn push_rows(
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
                ok: stats.ok,
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
            print_row(&row);
            self.rows.push(row);
        }
    }
}

fn print_row(row: &Row) {
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
}

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

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn report(bench: &Bench, started: &str, load_start: &str) -> String {
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
    table(&mut s, &bench.rows);
    for (per_request, what) in [
        (
            &bench.client_cpu,
            "loadgen's own CPU per request (us), on the same cores",
        ),
        (
            &bench.redis_cpu,
            "redis-server's CPU per request (us), on the same cores",
        ),
        (
            &bench.postgres_cpu,
            "PostgreSQL's CPU per request (us, all its processes), on the same cores",
        ),
        (
            &bench.machine_cpu,
            "the whole machine's busy CPU per request (us, every process: the cost that sets the rate here)",
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

fn table(s: &mut String, rows: &[Row]) {
    let _ = writeln!(
        s,
        "| scenario | operation | clients | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | expected errors | unexpected errors | server peak RSS MiB | server CPU us/req |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"
    );
    for r in rows {
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
}
