//! Interleaved A/B (`--b-env`): two servers of the same binary, "a" with `--server-env` and "b" with
//! `--server-env` then `--b-env`, loaded in turn, one slice at a time (`--ab-slice-seconds`), in the
//! order A B B A A B B A ... On a shared or virtual machine the cores' speed drifts by tens of percent
//! within minutes; slices a second long, alternated, see the same drift, so b/a is the cost of the
//! settings and not of the minute each ran in. Only one server is loaded at a time (the other idles).
//! generate-code and verify-wrong (each slice takes the next phones, four wrong codes each).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::bodies::{PhoneGen, gen_body};
use crate::client::{Client, drive};
use crate::run::{Bench, Counters};
use crate::scenarios::codes::{pending_codes, wrong_code};
use crate::servers::{Server, start_server, start_server_overriding, stop_server};

pub async fn interleaved_phase(bench: &mut Bench) -> anyhow::Result<()> {
    let overrides: Vec<(String, String)> = bench
        .args
        .b_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--b-env {kv:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let a = start_server(bench, "a", &[]).await?;
    let b = start_server_overriding(bench, "b", &overrides).await?;
    let result = scenarios(bench, &a, &b).await;
    stop_server(bench, a).await;
    stop_server(bench, b).await;
    result
}

async fn scenarios(bench: &mut Bench, a: &Server, b: &Server) -> anyhow::Result<()> {
    if bench.wants("verify-wrong") {
        let phones_a = Arc::new(pending_codes(bench, a).await?);
        let phones_b = Arc::new(pending_codes(bench, b).await?);
        let cursors = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        let phones = [phones_a, phones_b];
        interleave(
            bench,
            [a, b],
            "verify-wrong",
            "verifyUser(wrong)",
            move |side, mut c: Client| {
                let (phones, cursor) = (phones[side].clone(), cursors[side].clone());
                async move {
                    while c.limits.next() {
                        // Four wrong tries per phone: the fifth would burn the code.
                        let Some(phone) = phones.get(cursor.fetch_add(1, Ordering::Relaxed) / 4) else {
                            break;
                        };
                        wrong_code(&mut c, phone).await;
                    }
                    c
                }
            },
        )
        .await?;
    }
    if bench.wants("generate-code") {
        let numbers = PhoneGen::new("+1415");
        interleave(
            bench,
            [a, b],
            "generate-code",
            "generateCode",
            move |_, mut c: Client| {
                let numbers = numbers.clone();
                async move {
                    while c.limits.next() {
                        let Some(p) = numbers.next() else { break };
                        c.gql("generateCode", gen_body(&p), None, &[]).await;
                    }
                    c
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Runs `--ab-slices` slices of `body` (given 0 for "a", 1 for "b"), alternating A B B A ..., and
/// notes each side's rate and b/a (of the summed rates, and the median of the pairs' ratios).
async fn interleave<F, Fut>(
    bench: &mut Bench,
    servers: [&Server; 2],
    scenario: &str,
    op: &str,
    body: F,
) -> anyhow::Result<()>
where
    F: Fn(usize, Client) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Client> + Send + 'static,
{
    bench.check_time()?;
    let slices = bench.args.ab_slices.max(2) / 2 * 2;
    let seconds = Duration::from_secs_f64(bench.args.ab_slice_seconds);
    let warmup = Duration::from_millis(200);
    let clients = bench.args.clients;
    println!("scenario {scenario} interleaved: {slices} slices of {seconds:?}");
    let mut rates = [Vec::new(), Vec::new()];
    // CPU (ms) of the measured windows, per side: server, PostgreSQL, redis-server, loadgen, machine.
    let mut cpu = [[0u64; 5]; 2];
    let mut requests = [0u64; 2];
    let redis_pid = bench.redis_pid;
    for i in 0..slices {
        // A B, then B A: a drift within a pair weighs on both sides alike.
        let side = if (i / 2) % 2 == 0 { i % 2 } else { 1 - i % 2 };
        let body = body.clone();
        let pid = servers[side].guard.pid();
        // CPU times are read when the measured window starts (after the warm-up) and when it ends.
        let marker = tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            Counters::read(pid, redis_pid)
        });
        let recorded = drive(servers[side].addr, clients, warmup, seconds, u64::MAX, move |c| {
            body(side, c)
        })
        .await?;
        let end = Counters::read(pid, redis_pid);
        let start = marker.await.unwrap_or_default();
        let readings = |c: &Counters| {
            [
                c.server_cpu,
                c.postgres_cpu,
                c.redis_cpu,
                c.own_cpu,
                c.machine_busy,
            ]
        };
        for (k, (s, e)) in readings(&start).into_iter().zip(readings(&end)).enumerate() {
            cpu[side][k] += e.zip(s).map_or(0, |(e, s)| e.saturating_sub(s));
        }
        let count = recorded.get(op).map_or(0, |s| s.count());
        requests[side] += count;
        let unexpected: u64 = recorded.values().map(|s| s.unexpected()).sum();
        anyhow::ensure!(
            unexpected == 0,
            "{scenario} on {}: {unexpected} unexpected answers",
            servers[side].name
        );
        anyhow::ensure!(
            count > 0,
            "{scenario} on {}: no request in slice {i} (verify-wrong: raise --pending-codes; a slice \
             uses about its rate x (slice + 0.2 s) / 4 phones of its side)",
            servers[side].name
        );
        rates[side].push(count as f64 / seconds.as_secs_f64());
    }
    let (sum_a, sum_b): (f64, f64) = (rates[0].iter().sum(), rates[1].iter().sum());
    let mut ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| b / a).collect();
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let median = if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    };
    bench.note(
        "interleaved",
        format!(
            "{scenario}: a {:.0} req/s, b {:.0} req/s (means of {} slices of {:.1} s each); b/a of the \
             summed rates {:.3}, median of the {n} pairs' ratios {median:.3} (lowest {:.3}, highest {:.3})",
            sum_a / rates[0].len() as f64,
            sum_b / rates[1].len() as f64,
            rates[0].len(),
            seconds.as_secs_f64(),
            sum_b / sum_a,
            ratios[0],
            ratios[n - 1],
        ),
    );
    // Where b's extra cost goes: CPU per request of each process (10 ms clock ticks, summed over
    // each side's slices; the tail of a slice's requests can end in the next window).
    let per = |side: usize, k: usize| cpu[side][k] as f64 * 1000.0 / requests[side].max(1) as f64;
    let names = [
        "server",
        "PostgreSQL",
        "redis-server",
        "loadgen",
        "machine (busy)",
    ];
    let parts: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            format!(
                "{name} {:.1} -> {:.1} ({:+.1})",
                per(0, k),
                per(1, k),
                per(1, k) - per(0, k)
            )
        })
        .collect();
    bench.note(
        "interleaved",
        format!(
            "{scenario}: CPU us per request, a -> b (b - a): {}",
            parts.join("; ")
        ),
    );
    Ok(())
}
