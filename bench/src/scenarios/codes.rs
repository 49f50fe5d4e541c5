//! The one-time-code scenarios: verify-wrong (after giving many phones a pending code, with Redis
//! memory measured around it), graphql-floor (diagnostic), generate-code, and what generate-code left in
//! the SMS outbox.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use phone_auth::domain::{PhoneNumber, PhonePolicy};
use phone_auth::services::Keys;
use phone_auth::services::outbox::Outbox;
use redis::aio::MultiplexedConnection;

use crate::bodies::{PhoneGen, WRONG_CODE, gen_body, share, typename_body, verify_body};
use crate::client::{self, drive};
use crate::procs::redis_conn;
use crate::run::{Bench, measured};
use crate::servers::Server;

async fn used_memory(conn: &mut MultiplexedConnection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO")?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(conn).await?;
    Ok((used, keys))
}

/// `MEMORY USAGE` of one key, bytes (None if it is not there).
async fn memory_usage(conn: &mut MultiplexedConnection, key: &str, samples: Option<u32>) -> Option<u64> {
    let mut cmd = redis::cmd("MEMORY");
    cmd.arg("USAGE").arg(key);
    if let Some(n) = samples {
        cmd.arg("SAMPLES").arg(n);
    }
    cmd.query_async(conn).await.unwrap_or(None)
}

/// verify-wrong: pending codes for `--pending-codes` test numbers first (code known, so a wrong one is
/// surely wrong), then wrong codes for them.
pub async fn verify_wrong(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    verify_wrong_as(bench, server, "verify-wrong").await
}

/// verify-wrong under another scenario name (the cluster run's). Redis memory is measured on the
/// single Redis only (`Server::cluster` false).
pub async fn verify_wrong_as(bench: &mut Bench, server: &Server, scenario: &str) -> anyhow::Result<()> {
    let phones = Arc::new(pending_codes(bench, server).await?);
    let clients = bench.args.clients;
    measured(bench, server, scenario, clients, move |mut c| {
        let mine = share(&phones, c.id, clients);
        async move {
            // Four wrong tries per phone: the fifth would burn the code (TOO_MANY_ATTEMPTS), and
            // four stay under the phone's budget of 10 failed checks per hour.
            'phones: for phone in &mine {
                for _ in 0..4 {
                    if !c.limits.next() {
                        break 'phones;
                    }
                    wrong_code(&mut c, phone).await;
                }
            }
            c
        }
    })
    .await
}

/// One wrong code for `phone` (a pending code's phone): INVALID_CODE expected. Four per phone at
/// most: the fifth would burn the code (TOO_MANY_ATTEMPTS).
pub(crate) async fn wrong_code(c: &mut crate::client::Client, phone: &str) {
    c.gql(
        "verifyUser(wrong)",
        verify_body(phone, WRONG_CODE),
        None,
        &["INVALID_CODE"],
    )
    .await;
}

/// Setup of verify-wrong: a pending code for each of `--pending-codes` fresh test numbers, with Redis
/// memory measured around it (noted under "redis-memory"). Returns the phones that got one.
pub(crate) async fn pending_codes(bench: &mut Bench, server: &Server) -> anyhow::Result<Vec<String>> {
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
    let (mem0, keys0) = if server.cluster {
        (0, 0)
    } else {
        used_memory(&mut conn).await?
    };
    let pending: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let recorded = {
        let pending = pending.clone();
        let (clients, n) = (bench.args.clients, bench.args.pending_codes);
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
    let (mem1, keys1) = if server.cluster {
        (0, 0)
    } else {
        used_memory(&mut conn).await?
    };
    let phones: Vec<String> = pending.lock().map(|p| p.clone()).unwrap_or_default();
    let codes = phones.len() as u64;
    let setup_errors: u64 = recorded.values().map(client::OpStats::unexpected).sum();
    let mut per_key = Vec::new();
    if let Some(p) = phones.first() {
        let keys = Keys::new(server.prefix.as_str());
        let phone =
            PhoneNumber::parse(p, &PhonePolicy::default()).map_err(|e| anyhow::anyhow!("{p}: {e:?}"))?;
        for what in ["otp", "otp_sends"] {
            let bytes = memory_usage(&mut conn, &keys.phone(&phone, what), Some(0)).await;
            per_key.push(format!(
                "{what} {} B",
                bytes.map_or("-".into(), |b| b.to_string())
            ));
        }
    }
    if codes > 0 && !server.cluster {
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
    Ok(phones)
}

/// Diagnostic: the cheapest GraphQL request (no store, no resolver of ours) through the same HTTP edge,
/// document guard and schema: the floor under every operation.
pub async fn graphql_floor(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    measured(bench, server, "graphql-floor", clients, |mut c| async move {
        let body = typename_body();
        while c.limits.next() {
            c.gql("{ __typename }", body.clone(), None, &[]).await;
        }
        c
    })
    .await
}

/// generateCode for fresh non-test numbers (the real path: code stored, SMS job queued).
pub async fn generate_code(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    generate_code_as(bench, server, "generate-code").await
}

/// generate-code under the scenario name `scenario`.
pub async fn generate_code_as(bench: &mut Bench, server: &Server, scenario: &str) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let numbers = PhoneGen::new("+1415");
    measured(bench, server, scenario, clients, move |mut c| {
        let numbers = numbers.clone();
        async move {
            while c.limits.next() {
                let Some(p) = numbers.next() else { break };
                c.gql("generateCode", gen_body(&p), None, &[]).await;
            }
            c
        }
    })
    .await
}

/// The SMS outbox stream (where the server has one) after generate-code: its length and memory, then
/// how fast the server's delivery workers drain it with no load (at most 60 s).
pub async fn outbox_drain(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    let mut conn = redis_conn(&bench.redis_url).await?;
    let key = Outbox::stream_key(&Keys::new(server.prefix.as_str()));
    let len: redis::RedisResult<u64> = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await;
    let bytes = memory_usage(&mut conn, &key, None).await;
    let Ok(len) = len else {
        return Ok(());
    };
    bench.note(
        "redis-memory",
        format!(
            "after generate-code: the SMS outbox stream holds {len} jobs, {} bytes (MEMORY USAGE)",
            bytes.map_or("-".into(), |b| b.to_string())
        ),
    );
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
    Ok(())
}
