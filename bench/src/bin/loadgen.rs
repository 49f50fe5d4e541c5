//! `loadgen`: the load generator and benchmark (see the crate's documentation, and docs/BENCHMARKS.md).

use std::time::Duration;

use clap::Parser as _;
use phone_auth_bench::baseline::baseline_server;
use phone_auth_bench::cli::{Cli, Cmd};
use phone_auth_bench::run::run;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::BaselineServer {
        listen,
        redis_url,
        prefix,
    }) = cli.command
    {
        return baseline_server(listen, &redis_url, &prefix);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let limit = Duration::from_secs(cli.run.max_total_seconds + 60);
    runtime.block_on(async move {
        tokio::select! {
            r = run(cli.run) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            () = tokio::time::sleep(limit) => anyhow::bail!("hard time limit reached"),
        }
    })
    // Children are stopped by their guards as the run's future is dropped.
}
