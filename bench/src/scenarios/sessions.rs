//! `me-scale` (issue 16, item 7): `me` with few users and sessions, then with `--users-large` users
//! and as many sessions (one per user, each with its refresh token, as a login leaves them), same
//! server, same database, same run; only asked for by name (`--scenarios me-scale`), not by `all`.
//!
//! `me` reads PostgreSQL once per request (the session's liveness joined to its user, by primary
//! keys), so what grows is the two primary-key indexes and how much of them stays in shared buffers.
//! The access tokens come from real logins of `--me-tokens` seeded users spread over the table, and
//! each client rotates through its share of them, so the rows read are not one hot row per client.
//!
//! Also measured on this run's own data and noted: bytes per row of users, sessions, refresh tokens and
//! audit events (`pg_total_relation_size` / rows, indexes and TOAST included), and bytes per Redis key
//! of each kind after `generateCode` for fresh phones (`MEMORY USAGE ... SAMPLES 0`, summed by
//! `Keys::kind`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use phone_auth::services::Keys;
use serde_json::Value;

use crate::bodies::{PhoneGen, gen_body, me_body, seeded_phones, share};
use crate::checks::ttl_check;
use crate::client;
use crate::procs::redis_conn;
use crate::run::{Bench, measured};
use crate::scenarios::accounts::tokens_for;
use crate::scenarios::users::users_label;
use crate::seed;
use crate::servers::{Server, start_server, stop_server};

pub async fn me_scale_phase(bench: &mut Bench) -> anyhow::Result<()> {
    {
        let mut db = seed::connect(&bench.db_url()).await?;
        phone_auth::app::MIGRATOR.run(&mut db).await?;
        sqlx::query("truncate users cascade").execute(&mut db).await?;
    }
    let server = start_server(bench, "me-scale", &[]).await?;
    let result = me_scale(bench, &server).await;
    let ttl = ttl_check(bench, &server.prefix).await;
    stop_server(bench, server).await;
    result?;
    ttl
}

async fn me_scale(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    let (small, large) = (bench.args.users_small, bench.args.users_large);
    let n = bench.args.me_tokens;
    for (count, sample, rng) in [(small, 0, 1), (large, n, 42)] {
        bench.check_time()?;
        println!("seeding {count} users and as many sessions");
        let users = seed::seed(&bench.db_url(), count).await?;
        let (inserted, sessions, took) = seed::seed_sessions(&bench.db_url()).await?;
        bench.note(
            "seed",
            format!(
                "me-scale: {} users ({} inserted in {:.1} s), {sessions} sessions ({inserted} inserted with their refresh tokens in {:.1} s)",
                users.total_users,
                users.inserted,
                users.elapsed.as_secs_f64(),
                took.as_secs_f64()
            ),
        );
        checkpoint(bench).await;
        let phones: Vec<String> = seeded_phones(count, sample, rng).into_iter().take(n).collect();
        let started = Instant::now();
        let tokens = Arc::new(tokens_for(server, &phones, phones.len()).await?);
        bench.note(
            "seed",
            format!(
                "me-scale: {} logins for access tokens in {:.1} s",
                tokens.len(),
                started.elapsed().as_secs_f64()
            ),
        );
        let label = format!(
            "me-{}-users-{}-sessions",
            users_label(count),
            users_label(u64::try_from(sessions).unwrap_or(0))
        );
        me_rotating(bench, server, &label, tokens).await?;
        table_sizes(bench, &label).await?;
    }
    redis_sizes(bench, server).await
}

/// Flushes dirty buffers now, so that the checkpoint a large insert provokes does not land inside the
/// next measurement. Best effort.
async fn checkpoint(bench: &mut Bench) {
    let result = async {
        let mut db = seed::connect(&bench.db_url()).await?;
        sqlx::query("checkpoint").execute(&mut db).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        bench.note("seed", format!("checkpoint after seeding failed: {e:#}"));
    }
}

/// Blocks of users and sessions (tables and indexes) found in shared buffers (hit) or read from the
/// OS (read), since the statistics were last reset.
async fn pg_blocks(bench: &Bench) -> Option<(i64, i64)> {
    let mut db = seed::connect(&bench.db_url()).await.ok()?;
    let row: (Option<i64>, Option<i64>) = sqlx::query_as(
        "select sum(heap_blks_hit + coalesce(idx_blks_hit, 0))::bigint,
                sum(heap_blks_read + coalesce(idx_blks_read, 0))::bigint
         from pg_statio_user_tables where relname in ('users', 'sessions')",
    )
    .fetch_one(&mut db)
    .await
    .ok()?;
    Some((row.0.unwrap_or(0), row.1.unwrap_or(0)))
}

/// `me` from `--clients` clients, each rotating through its share of `tokens`, one per request.
async fn me_rotating(
    bench: &mut Bench,
    server: &Server,
    scenario: &str,
    tokens: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    anyhow::ensure!(tokens.len() >= clients, "--me-tokens must be at least --clients");
    let before = pg_blocks(bench).await;
    measured(bench, server, scenario, clients, move |mut c| {
        let mine = share(&tokens, c.id, clients);
        async move {
            let body = me_body();
            let mut i = 0usize;
            while c.limits.next() {
                let token = &mine[i % mine.len()];
                i += 1;
                let start = Instant::now();
                let a = c.gql("me", body.clone(), Some(token), &[]).await;
                if a.ok() && a.json["data"]["me"]["id"] == Value::Null {
                    // A null `me` with a valid token is a failure that has no GraphQL error.
                    c.record("me(null)", start, Instant::now(), Some("ME_NULL"), &[]);
                }
            }
            c
        }
    })
    .await?;
    let done = bench.row(scenario, "me").map_or(0, |r| r.requests);
    if let (Some((h0, r0)), Some((h1, r1))) = (before, pg_blocks(bench).await)
        && done > 0
    {
        bench.note(
            "postgres",
            format!(
                "{scenario}: users and sessions, tables and indexes, per me (warm-up included): {:.2} blocks from shared buffers, {:.3} read from the OS",
                (h1 - h0) as f64 / done as f64,
                (r1 - r0) as f64 / done as f64
            ),
        );
    }
    Ok(())
}

/// Bytes per row of each table the service writes, indexes and TOAST included.
async fn table_sizes(bench: &mut Bench, label: &str) -> anyhow::Result<()> {
    let mut db = seed::connect(&bench.db_url()).await?;
    let mut parts = Vec::new();
    for table in ["users", "sessions", "refresh_tokens", "audit_events"] {
        let sql = format!(
            "select count(*), pg_total_relation_size('{table}'), pg_relation_size('{table}') from {table}"
        );
        let (rows, total, heap): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut db)
            .await?;
        let per = if rows > 0 {
            format!("{:.0} B/row", total as f64 / rows as f64)
        } else {
            "-".into()
        };
        parts.push(format!(
            "{table} {rows} rows, {total} B total ({heap} B heap), {per}"
        ));
    }
    bench.note("postgres-size", format!("{label}: {}", parts.join("; ")));
    Ok(())
}

/// generateCode for 2,000 fresh phones, then the bytes of every key of the server's prefix by kind.
async fn redis_sizes(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    let phones = PhoneGen::new("+1415");
    let mut conn = client::Conn::new(server.addr);
    let mut issued = 0;
    for _ in 0..2000 {
        let Some(p) = phones.next() else { break };
        let (_, json) = conn
            .post_json("/graphql", gen_body(&p), None)
            .await
            .map_err(|e| anyhow::anyhow!("generateCode: {e}"))?;
        if json["errors"].is_null() {
            issued += 1;
        }
    }
    let keys = Keys::new(server.prefix.as_str());
    let mut redis = redis_conn(&bench.redis_url).await?;
    let mut by_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, names): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}*", server.prefix))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await?;
        for k in names {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&k)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut redis)
                .await?;
            let e = by_kind.entry(keys.kind(&k).unwrap_or(k)).or_default();
            e.0 += 1;
            e.1 += bytes.unwrap_or(0);
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let parts: Vec<String> = by_kind
        .iter()
        .map(|(k, (n, b))| {
            format!(
                "`{k}` {n} keys, {b} B ({:.0} B/key)",
                *b as f64 / (*n).max(1) as f64
            )
        })
        .collect();
    bench.note(
        "redis-memory",
        format!(
            "me-scale, after generateCode for {issued} fresh phones (and the logins above): MEMORY USAGE by kind: {}",
            parts.join("; ")
        ),
    );
    Ok(())
}
