//! `loadgen`: the load generator and benchmark (see the crate's documentation, and docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use clap::Parser as _;
use phone_auth::domain::{PhoneNumber, PhonePolicy};
use phone_auth_bench::baseline::baseline_server;
use phone_auth_bench::cli::{Cli, Cmd};
use phone_auth_bench::run::run;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::PhoneParse { count }) = cli.command {
        phone_parse_bench(count);
        return Ok(());
    }
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

fn phone_parse_bench(count: u64) {
    use phonenumber::metadata::DATABASE;
    let policy = PhonePolicy::default();
    let inputs: Vec<String> = (0..count).map(|i| format!("+1415{:07}", 2_000_000 + i)).collect();
    let time = |name: &str, f: &dyn Fn(&str) -> bool| {
        for round in 1..=2 {
            let start = Instant::now();
            let accepted = inputs.iter().filter(|s| f(s)).count();
            let us = start.elapsed().as_secs_f64() * 1e6 / count as f64;
            println!("{name}, round {round}: {us:.2} us per number ({accepted} of {count} accepted)");
        }
    };
    time(
        "phonenumber crate: parse + is_valid + number_type + country + E.164",
        &|s| {
            phonenumber::parse(None, s).is_ok_and(|n| {
                n.is_valid()
                    && n.number_type(&DATABASE) != phonenumber::Type::TollFree
                    && n.country().id().is_some()
                    && !n.format().mode(phonenumber::Mode::E164).to_string().is_empty()
            })
        },
    );
    time("server: PhoneNumber::parse", &|s| {
        PhoneNumber::parse(s, &policy).is_ok()
    });
}
