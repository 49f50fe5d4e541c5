//! The users comparison: login and verifyUser (right code, registered phone) with `--users-small`
//! seeded users, then with `--users-large`, on a server of their own (no resend cooldown, so a seeded
//! phone can be asked a code again at once), same database.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::bodies::{TEST_CODE, gen_body, seeded_phones, share, verify_body};
use crate::checks::ttl_check;
use crate::run::{Bench, measured};
use crate::scenarios::accounts::login_scenario;
use crate::seed;
use crate::servers::{Server, start_server, stop_server};

/// 1000 -> "1k", 1000000 -> "1M".
pub fn users_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

pub async fn users_phase(bench: &mut Bench) -> anyhow::Result<()> {
    {
        let mut db = seed::connect(&bench.db_url()).await?;
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
    let (small, large) = (bench.args.users_small, bench.args.users_large);
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
    login_and_verify(bench, server, &users_label(small), phones).await?;

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
    login_and_verify(bench, server, &users_label(large), phones).await
}

/// `login-<label>-users`, then `verify-<label>-users`.
async fn login_and_verify(
    bench: &mut Bench,
    server: &Server,
    label: &str,
    phones: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let scenario = format!("login-{label}-users");
    login_scenario(bench, server, &scenario, phones.clone(), clients, &[]).await?;
    verify_registered(bench, server, &format!("verify-{label}-users"), phones).await
}

/// Flushes dirty buffers now (as the superuser the benchmark connects as), so that the checkpoint a
/// large insert provokes does not land inside the next measurement. Best effort.
async fn checkpoint(bench: &mut Bench) {
    let start = Instant::now();
    let result = async {
        let mut db = seed::connect(&bench.db_url()).await?;
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

/// Blocks of the users table and its indexes found in PostgreSQL's shared buffers (hit) or read from
/// the OS (read), since the statistics were last reset.
async fn pg_blocks(bench: &Bench) -> Option<(i64, i64)> {
    let mut db = seed::connect(&bench.db_url()).await.ok()?;
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
/// (recorded apart as setup); the server runs with no resend cooldown for this. PostgreSQL's block
/// counts per verifyUser are noted.
async fn verify_registered(
    bench: &mut Bench,
    server: &Server,
    scenario: &str,
    phones: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let blocks_before = pg_blocks(bench).await;
    measured(bench, server, scenario, clients, move |mut c| {
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

#[cfg(test)]
mod tests {
    use super::users_label;

    #[test]
    fn user_counts_are_labelled_as_in_scenario_names() {
        assert_eq!(users_label(1_000), "1k");
        assert_eq!(users_label(1_000_000), "1M");
        assert_eq!(users_label(250_000), "250k");
        assert_eq!(users_label(1_500), "1500");
    }
}
