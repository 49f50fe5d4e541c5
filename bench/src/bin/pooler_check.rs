//! Runs the service's session queries through a connection pooler (PgBouncer) with each way sqlx can
//! be set up, and counts what fails: whether the service may sit behind PgBouncer in transaction mode,
//! and with which sqlx setting (README "Scaling out").
//!
//! ```sh
//! cargo run -p phone-auth-bench --bin pooler_check -- \
//!   --direct-url postgres://postgres@127.0.0.1:5432/phone_auth_scale_pgb \
//!   --pooled-url postgres://postgres@127.0.0.1:16432/phone_auth_scale_pgb
//! ```
//!
//! The database is migrated and seeded over the direct URL. Then, for each variant, `--tasks` tasks
//! share one sqlx pool of `--tasks` connections to the pooler and run `--rounds` requests each; a
//! request is what the service does for `me` (one read), `logout` (one write) and `refreshToken` (a
//! transaction of three statements), with the SQL of `src/services/sessions.rs` (copied: the store
//! layer is being refactored; compare with it before trusting a result). The pooler should hold fewer
//! server connections than there are tasks (PgBouncer `default_pool_size`), so that server connections
//! change hands between statements, as they do under load.
//!
//! Last, sqlx's migrator is run over the pooled URL and the advisory locks left on the server are
//! counted: the migrator takes a session-level `pg_advisory_lock`, which a transaction pooler can leave
//! held on a server connection another client gets next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Executor as _, PgPool};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(
    name = "pooler_check",
    about = "The service's queries through PgBouncer, per sqlx setting"
)]
struct Cli {
    /// PostgreSQL itself: migrations and seed data (name must contain "pgb" or "bench").
    #[arg(long)]
    direct_url: String,
    /// The same database through the pooler.
    #[arg(long)]
    pooled_url: String,
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Variants to run (comma-separated): default, no-cache, unnamed, in-tx, in-tx-unnamed; or all.
    #[arg(long, default_value = "all")]
    variants: String,
    /// Also run sqlx's migrator through the pooler and count advisory locks left behind.
    #[arg(long)]
    migrate_through_pooler: bool,
}

// From src/services/sessions.rs (live_user, revoke's update, refresh's statements).
const LIVE_USER: &str = "select u.id, u.phone, u.first_name, u.last_name, u.created_at
     from sessions s join users u on u.id = s.user_id
     where s.id = $1 and s.user_id = $2 and s.revoked_at is null and s.expires_at > now()";
const TOUCH: &str = "update sessions set last_used_at = now()
     where id = $1 and revoked_at is null and expires_at > now() returning user_id";
const USED: &str = "update refresh_tokens set used_at = now() where token_hash = $1 and used_at is null returning session_id";
const LIVE_SESSIONS: &str =
    "select id, created_at, last_used_at, user_agent, ip, auth_time, amr from sessions
     where user_id = $1 and revoked_at is null and expires_at > now() order by created_at desc, id";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// `PgPoolOptions::new().connect(url)`, as src/app.rs does: named statements, cached per connection.
    Default,
    /// `PgConnectOptions::statement_cache_capacity(0)`.
    NoCache,
    /// Every query `.persistent(false)`: sqlx's unnamed statement.
    Unnamed,
    /// Default options, every request inside `begin` .. `commit`.
    InTx,
    /// Every request inside `begin` .. `commit`, and every query `.persistent(false)`.
    InTxUnnamed,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::NoCache => "no-cache",
            Variant::Unnamed => "unnamed",
            Variant::InTx => "in-tx",
            Variant::InTxUnnamed => "in-tx-unnamed",
        }
    }
}

struct Seeded {
    user: uuid::Uuid,
    sessions: Vec<uuid::Uuid>,
}

async fn seed(url: &str) -> anyhow::Result<Seeded> {
    let options: PgConnectOptions = url.parse()?;
    let name = options.get_database().unwrap_or("").to_owned();
    anyhow::ensure!(
        name.contains("pgb") || name.contains("bench"),
        "refusing database {name:?}: use one made for this check"
    );
    let mut conn = options.connect().await?;
    phone_auth::app::MIGRATOR.run(&mut conn).await?;
    let user = uuid::Uuid::new_v4();
    sqlx::query("insert into users (id, phone, password_hash) values ($1, $2, 'x')")
        .bind(user)
        .bind(format!("+1650{}", 7_000_000 + (user.as_u128() % 999_999) as u64))
        .execute(&mut conn)
        .await?;
    let mut sessions = Vec::new();
    for _ in 0..64 {
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "insert into sessions (id, user_id, expires_at) values ($1, $2, now() + interval '1 day')",
        )
        .bind(id)
        .bind(user)
        .execute(&mut conn)
        .await?;
        sessions.push(id);
    }
    Ok(Seeded { user, sessions })
}

async fn pool(url: &str, variant: Variant, size: usize) -> anyhow::Result<PgPool> {
    let mut options: PgConnectOptions = url.parse()?;
    if variant == Variant::NoCache {
        options = options.statement_cache_capacity(0);
    }
    Ok(PgPoolOptions::new()
        .max_connections(u32::try_from(size)?)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await?)
}

/// One `me` + one `refreshToken`-like transaction + one `mySessions`: the service's statements.
async fn request(
    pool: &PgPool,
    variant: Variant,
    user: uuid::Uuid,
    session: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    let persistent = !matches!(variant, Variant::Unnamed | Variant::InTxUnnamed);
    let in_tx = matches!(variant, Variant::InTx | Variant::InTxUnnamed);
    if in_tx {
        let mut tx = pool.begin().await?;
        sqlx::query(LIVE_USER)
            .bind(session)
            .bind(user)
            .persistent(persistent)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
    } else {
        sqlx::query(LIVE_USER)
            .bind(session)
            .bind(user)
            .persistent(persistent)
            .fetch_optional(pool)
            .await?;
    }
    // refreshToken: a transaction (the server connection is held from begin to commit).
    let mut tx = pool.begin().await?;
    sqlx::query(USED)
        .bind(session.as_bytes().to_vec())
        .persistent(persistent)
        .fetch_optional(&mut *tx)
        .await?;
    sqlx::query(TOUCH)
        .bind(session)
        .persistent(persistent)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    if in_tx {
        let mut tx = pool.begin().await?;
        sqlx::query(LIVE_SESSIONS)
            .bind(user)
            .persistent(persistent)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
    } else {
        sqlx::query(LIVE_SESSIONS)
            .bind(user)
            .persistent(persistent)
            .fetch_all(pool)
            .await?;
    }
    Ok(())
}

async fn run_variant(cli: &Cli, seeded: &Arc<Seeded>, variant: Variant) -> anyhow::Result<()> {
    let pool = pool(&cli.pooled_url, variant, cli.tasks).await?;
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..cli.tasks {
        let (pool, seeded, errors, rounds) = (pool.clone(), seeded.clone(), errors.clone(), cli.rounds);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for r in 0..rounds {
                let session = seeded.sessions[(t * rounds + r) % seeded.sessions.len()];
                match request(&pool, variant, seeded.user, session).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        // Statement names differ (sqlx_s_1, sqlx_s_2...): one line per kind of failure.
                        let text = e.to_string();
                        let kind: String = text
                            .split('"')
                            .enumerate()
                            .map(|(i, p)| if i % 2 == 1 { "\"..\"" } else { p })
                            .collect();
                        *errors.lock().await.entry(kind).or_default() += 1;
                    }
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await?;
    }
    pool.close().await;
    let total = (cli.tasks * cli.rounds) as u64;
    println!(
        "{:<9} {ok}/{total} requests ok in {:.1} s",
        variant.name(),
        started.elapsed().as_secs_f64()
    );
    for (kind, n) in errors.lock().await.iter() {
        println!("          {n:>6} x {kind}");
    }
    Ok(())
}

async fn advisory_locks(direct_url: &str) -> anyhow::Result<i64> {
    let mut conn = direct_url.parse::<PgConnectOptions>()?.connect().await?;
    let (n,): (i64,) =
        sqlx::query_as("select count(*) from pg_locks where locktype = 'advisory' and granted")
            .fetch_one(&mut conn)
            .await?;
    Ok(n)
}

async fn migrate_through_pooler(cli: &Cli) -> anyhow::Result<()> {
    for i in 1..=3 {
        let pool = pool(&cli.pooled_url, Variant::Default, 4).await?;
        // Other traffic between the lock and the unlock, as at a real start-up with other instances.
        let noise = {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let _ = pool.execute("select pg_sleep(0.001)").await;
                }
            })
        };
        let result =
            tokio::time::timeout(Duration::from_secs(10), phone_auth::app::MIGRATOR.run(&pool)).await;
        let _ = noise.await;
        pool.close().await;
        let outcome = match result {
            Ok(Ok(())) => "ok".to_string(),
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "still waiting after 10 s (blocked on pg_advisory_lock)".to_string(),
        };
        println!(
            "migrator through the pooler, run {i}: {outcome}; advisory locks held on the server afterwards: {}",
            advisory_locks(&cli.direct_url).await?
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let seeded = Arc::new(seed(&cli.direct_url).await?);
    let all = [
        Variant::Default,
        Variant::NoCache,
        Variant::Unnamed,
        Variant::InTx,
        Variant::InTxUnnamed,
    ];
    for variant in all {
        if cli.variants == "all" || cli.variants.split(',').any(|v| v == variant.name()) {
            run_variant(&cli, &seeded, variant).await?;
        }
    }
    if cli.migrate_through_pooler {
        migrate_through_pooler(&cli).await?;
    }
    Ok(())
}
