//! The benchmark database: dropped and created again by `loadgen` at start, and seeded with users:
//! `count` rows in one `insert ... select ... generate_series` (then `vacuum (analyze)`), all with ONE
//! argon2id hash computed here (the server's parameters), so a million rows take seconds, not hours.
//! Shared by `seed_users` (the command) and `loadgen` (which seeds 1,000 then 1,000,000 users).
//!
//! Phones: `+1650` followed by 2000000 + i for i in 0..count, that is +16502000000 ... +16502999999
//! (one million US numbers of area code 650; those libphonenumber refuses are never used by loadgen).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
use phone_auth::services::password::{M_COST_KIB, P_COST, T_COST};
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Every seeded user's password.
pub const SEED_PASSWORD: &str = "loadgen-seed-password-1987";
/// At most this many seeded users (the 650-2xx-xxxx block).
pub const MAX_SEED_USERS: u64 = 1_000_000;

/// The phone of seeded user `i` (0-based), E.164.
pub fn seed_phone(i: u64) -> String {
    format!("+1650{}", 2_000_000 + i)
}

pub fn argon2id() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub struct Seeded {
    pub inserted: u64,
    pub total_users: i64,
    pub elapsed: Duration,
}

/// Refuses databases whose name does not say they are for benchmarks, unless `any_database`.
pub fn check_database_name(url: &str, any_database: bool) -> anyhow::Result<()> {
    let options: PgConnectOptions = url.parse().context("not a PostgreSQL URL")?;
    let name = options.get_database().unwrap_or("postgres");
    anyhow::ensure!(
        any_database || name.contains("bench"),
        "refusing to seed database {name:?}: its name does not contain \"bench\" (pass --any-database to insist)"
    );
    Ok(())
}

/// The URL of `database` on the PostgreSQL server `pg_server` (`postgres://user@host:port`).
pub fn database_url(pg_server: &str, database: &str) -> String {
    format!("{}/{database}", pg_server.trim_end_matches('/'))
}

pub async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options.connect().await?)
}

/// Drops the benchmark database `database` (its name must contain "bench") and creates it empty.
pub async fn recreate_database(pg_server: &str, database: &str) -> anyhow::Result<()> {
    check_database_name(&database_url(pg_server, database), false)?;
    anyhow::ensure!(
        database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "the benchmark database name may have only [A-Za-z0-9_]"
    );
    let mut admin = connect(&database_url(pg_server, "postgres")).await?;
    let sql = format!("drop database if exists \"{database}\" with (force)");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
    let sql = format!("create database \"{database}\"");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
    Ok(())
}

/// Creates the database if needed, runs the migrations, inserts users 0..count that are not there yet.
pub async fn seed(url: &str, count: u64) -> anyhow::Result<Seeded> {
    anyhow::ensure!(
        count <= MAX_SEED_USERS,
        "at most {MAX_SEED_USERS} seeded users (phones +16502000000..+16502999999)"
    );
    phone_auth::app::ensure_database(url).await?;
    let options: PgConnectOptions = url.parse().context("not a PostgreSQL URL")?;
    let mut conn = options.connect().await.context("cannot connect to PostgreSQL")?;
    phone_auth::app::MIGRATOR
        .run(&mut conn)
        .await
        .context("migrations failed")?;

    let hash = argon2id()?
        .hash_password(SEED_PASSWORD.as_bytes())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
        .to_string();

    let start = Instant::now();
    // One statement; asynchronous commit is fine for test data and saves the WAL flush wait.
    sqlx::query("set synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    let inserted = sqlx::query(
        "insert into users (id, phone, password_hash, first_name, last_name)
         select gen_random_uuid(), '+1650' || (2000000 + g)::text, $1, 'Seed', 'User'
         from generate_series(0, $2::bigint - 1) as g
         on conflict (phone) do nothing",
    )
    .bind(&hash)
    .bind(i64::try_from(count)?)
    .execute(&mut conn)
    .await
    .context("insert users")?
    .rows_affected();
    // Vacuum as well as analyze: a million fresh rows would otherwise get an insert-triggered
    // autovacuum (and its I/O) some seconds later, in the middle of whatever runs next.
    sqlx::query("vacuum (analyze) users").execute(&mut conn).await?;
    let elapsed = start.elapsed();
    let (total_users,): (i64,) = sqlx::query_as("select count(*) from users")
        .fetch_one(&mut conn)
        .await?;
    Ok(Seeded {
        inserted,
        total_users,
        elapsed,
    })
}

/// A browser's user agent, the length of most real ones: a seeded session's row is as long as a real one.
const SEED_USER_AGENT: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// Gives every user that has none one live session (30 days, signed in by password, a browser's user
/// agent and an address) and that session one refresh token, as a login leaves them; then `vacuum
/// (analyze)` both tables. Returns (sessions inserted, sessions in the table, elapsed).
pub async fn seed_sessions(url: &str) -> anyhow::Result<(u64, i64, Duration)> {
    let options: PgConnectOptions = url.parse().context("not a PostgreSQL URL")?;
    let mut conn = options.connect().await.context("cannot connect to PostgreSQL")?;
    let start = Instant::now();
    sqlx::query("set synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    let inserted = sqlx::query(
        "insert into sessions (id, user_id, expires_at, auth_time, amr, user_agent, ip, last_used_at)
         select gen_random_uuid(), u.id, now() + interval '30 days', now(), '{pwd}', $1, '203.0.113.7', now()
         from users u where not exists (select 1 from sessions s where s.user_id = u.id)",
    )
    .bind(SEED_USER_AGENT)
    .execute(&mut conn)
    .await
    .context("insert sessions")?
    .rows_affected();
    // The service stores SHA-256 of the refresh token (32 bytes); any 32 distinct bytes do here.
    sqlx::query(
        "insert into refresh_tokens (token_hash, session_id)
         select sha256(s.id::text::bytea), s.id from sessions s
         where not exists (select 1 from refresh_tokens t where t.session_id = s.id)",
    )
    .execute(&mut conn)
    .await
    .context("insert refresh tokens")?;
    sqlx::query("vacuum (analyze) sessions, refresh_tokens")
        .execute(&mut conn)
        .await?;
    let elapsed = start.elapsed();
    let (total,): (i64,) = sqlx::query_as("select count(*) from sessions")
        .fetch_one(&mut conn)
        .await?;
    Ok((inserted, total, elapsed))
}
