//! The scenarios against the service. All but the users comparison run on one server, `main`, in the
//! order below, after 1,000 users (`--users-small`) are seeded; the users comparison (`users`) has a
//! server of its own. The Redis keys each server wrote are audited for TTLs after its scenarios.

pub mod accounts;
pub mod cluster;
pub mod codes;
pub mod embedded;
pub mod interleaved;
pub mod mixed;
pub mod sessions;
pub mod users;

use std::sync::Arc;

use crate::bodies::seeded_phones;
use crate::checks::ttl_check;
use crate::procs::{self, ThreadTimes};
use crate::run::Bench;
use crate::seed;
use crate::servers::{Server, start_server, stop_server};

/// The scenarios of the main server, in the order they run.
pub const MAIN: [&str; 9] = [
    "verify-wrong",
    "graphql-floor",
    "generate-code",
    "sign-up",
    "login",
    "me",
    "me-under-login",
    "login-500",
    "mixed",
];

pub async fn main_server_phase(bench: &mut Bench) -> anyhow::Result<()> {
    let server = start_server(bench, "main", &[]).await?;
    let result = main_server_scenarios(bench, &server).await;
    let ttl = ttl_check(bench, &server.prefix).await;
    stop_server(bench, server).await;
    result?;
    ttl
}

async fn main_server_scenarios(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    let seeded = seed::seed(&bench.db_url(), bench.args.users_small).await?;
    bench.note(
        "seed",
        format!(
            "main server: seeded {} users in {:.2} s",
            seeded.inserted,
            seeded.elapsed.as_secs_f64()
        ),
    );
    let users = Arc::new(seeded_phones(bench.args.users_small, 0, 1));

    if bench.wants("verify-wrong") {
        codes::verify_wrong(bench, server).await?;
    }
    if bench.wants("graphql-floor") {
        codes::graphql_floor(bench, server).await?;
    }
    if bench.wants("generate-code") {
        codes::generate_code(bench, server).await?;
        codes::outbox_drain(bench, server).await?;
    }
    if bench.wants("sign-up") {
        accounts::sign_up(bench, server).await?;
    }
    if bench.wants("login") {
        accounts::login(bench, server, users.clone()).await?;
    }

    let needs_tokens = ["me", "me-under-login", "mixed"].iter().any(|s| bench.wants(s));
    let tokens = if needs_tokens {
        let n = bench.args.clients.max(bench.args.probe_clients);
        Arc::new(accounts::tokens_for(server, &users, n).await?)
    } else {
        Arc::new(Vec::new())
    };
    if bench.wants("me") {
        accounts::me(bench, server, tokens.clone()).await?;
    }
    if bench.wants("me-under-login") {
        accounts::me_under_login(bench, server, tokens.clone(), users.clone()).await?;
    }
    if bench.wants("login-500") {
        accounts::login_500(bench, server, users.clone()).await?;
    }
    if bench.wants("mixed") {
        mixed::mixed(bench, server, tokens, users).await?;
    }
    Ok(())
}

/// The server's busiest threads during a scenario: CPU and run-queue wait (noted under "threads").
pub fn note_threads(bench: &mut Bench, scenario: &str, before: &ThreadTimes, after: &ThreadTimes) {
    let deltas = procs::thread_deltas(before, after);
    let lines: Vec<String> = deltas
        .iter()
        .take(8)
        .map(|(name, cpu, wait)| format!("{name}: cpu {cpu:.0} ms, runqueue wait {wait:.0} ms"))
        .collect();
    bench.note(
        "threads",
        format!("{scenario}: server threads {}", lines.join("; ")),
    );
}
