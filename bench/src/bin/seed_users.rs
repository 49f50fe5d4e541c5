//! Seeds benchmark users into a PostgreSQL database (created and migrated if needed):
//!
//! ```sh
//! cargo run --release -p phone-auth-bench --bin seed_users -- --count 1000000
//! ```
//!
//! Users 0..count get phones +16502000000 + i and the password in `seed::SEED_PASSWORD`, all sharing one
//! precomputed argon2id hash. Idempotent: phones already present are skipped.

use clap::Parser;
use phone_auth_bench::seed;

#[derive(Parser)]
#[command(
    name = "seed_users",
    about = "Insert benchmark users with one shared argon2id hash"
)]
struct Cli {
    /// How many users (at most 1,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// The benchmark database (its name must contain "bench", see --any-database).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/phone_auth_bench"
    )]
    database_url: String,
    /// Seed a database whose name does not contain "bench".
    #[arg(long)]
    any_database: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    seed::check_database_name(&cli.database_url, cli.any_database)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seeded = runtime.block_on(seed::seed(&cli.database_url, cli.count))?;
    println!(
        "seed_users: inserted {} users in {:.1} s ({} users in the table); phones {}..{}, password {:?}",
        seeded.inserted,
        seeded.elapsed.as_secs_f64(),
        seeded.total_users,
        seed::seed_phone(0),
        seed::seed_phone(cli.count.saturating_sub(1)),
        seed::SEED_PASSWORD,
    );
    Ok(())
}
