//! The account scenarios: sign-up (the three-step flow), login (and its 500-client burst), me (alone,
//! and as a paced probe next to a saturating login load).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::bodies::{PhoneGen, TEST_CODE, gen_body, login_body, me_body, register_body, share, verify_body};
use crate::client::{self, Client, drive};
use crate::procs;
use crate::run::{Bench, measured};
use crate::scenarios::note_threads;
use crate::seed::SEED_PASSWORD;
use crate::servers::Server;

/// generateCode -> verifyUser (the test code) -> register, each step recorded as `label:step` and the
/// whole as `label(flow)`. Whether the flow succeeded.
pub async fn sign_up_flow(c: &mut Client, phone: &str, label: &str) -> bool {
    let start = Instant::now();
    let ok = async {
        if !c
            .gql(&format!("{label}:generateCode"), gen_body(phone), None, &[])
            .await
            .ok()
        {
            return false;
        }
        let v = c
            .gql(
                &format!("{label}:verifyUser"),
                verify_body(phone, TEST_CODE),
                None,
                &[],
            )
            .await;
        let Some(token) = v.json["data"]["verifyUser"]["registrationToken"].as_str() else {
            return false;
        };
        let token = token.to_owned();
        c.gql(&format!("{label}:register"), register_body(&token), None, &[])
            .await
            .ok()
    }
    .await;
    c.record_flow(&format!("{label}(flow)"), start, ok);
    ok
}

pub async fn sign_up(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let numbers = PhoneGen::new("+16507");
    measured(bench, server, "sign-up", clients, move |mut c| {
        let numbers = numbers.clone();
        async move {
            while c.limits.next() {
                let Some(p) = numbers.next() else { break };
                sign_up_flow(&mut c, &p, "signUp").await;
            }
            c
        }
    })
    .await
}

/// One client's login loop over its own share of the seeded phones (right password).
async fn login_loop(mut c: Client, phones: Arc<Vec<String>>, clients: usize, expected: &[&str]) -> Client {
    let mine = share(&phones, c.id, clients);
    let mut i = 0usize;
    while !mine.is_empty() && c.limits.next() {
        let phone = &mine[i % mine.len()];
        i += 1;
        c.gql("login", login_body(phone, SEED_PASSWORD), None, expected)
            .await;
    }
    c
}

/// login with the right password from `clients` clients, each with its own phones.
pub async fn login_scenario(
    bench: &mut Bench,
    server: &Server,
    scenario: &str,
    phones: Arc<Vec<String>>,
    clients: usize,
    expected: &'static [&'static str],
) -> anyhow::Result<()> {
    measured(bench, server, scenario, clients, move |c| {
        login_loop(c, phones.clone(), clients, expected)
    })
    .await
}

/// login, with the server's per-thread CPU and run-queue waits noted.
pub async fn login(bench: &mut Bench, server: &Server, users: Arc<Vec<String>>) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let before = procs::thread_times(server.guard.pid());
    login_scenario(bench, server, "login", users, clients, &[]).await?;
    let after = procs::thread_times(server.guard.pid());
    note_threads(bench, "login", &before, &after);
    Ok(())
}

/// login from `--burst-clients` clients at once: fast refusals (SERVICE_UNAVAILABLE) are expected.
pub async fn login_500(bench: &mut Bench, server: &Server, users: Arc<Vec<String>>) -> anyhow::Result<()> {
    let burst = bench.args.burst_clients;
    login_scenario(bench, server, "login-500", users, burst, &["SERVICE_UNAVAILABLE"]).await
}

/// Logs `phones[i]` in, one per client; returns the access tokens.
pub async fn tokens_for(server: &Server, phones: &[String], n: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    let mut conn = client::Conn::new(server.addr);
    for phone in phones.iter().cycle().take(n) {
        let (_, json) = conn
            .post_json("/graphql", login_body(phone, SEED_PASSWORD), None)
            .await
            .map_err(|e| anyhow::anyhow!("login for a token: {e}"))?;
        let token = json["data"]["login"]["accessToken"]
            .as_str()
            .with_context(|| format!("login for a token failed: {json}"))?;
        out.push(token.to_owned());
    }
    Ok(out)
}

/// One client's `me` loop: as fast as it can, or `rate` requests per second (staggered by client).
pub async fn me_loop(mut c: Client, token: String, rate: Option<f64>) -> Client {
    let body = me_body();
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.1)));
    let mut next = tokio::time::Instant::now()
        + interval.map_or(Duration::ZERO, |i| i.mul_f64((c.id % 97) as f64 / 97.0));
    while c.limits.next() {
        if let Some(i) = interval {
            tokio::time::sleep_until(next).await;
            next += i;
            let now = tokio::time::Instant::now();
            if next < now {
                next = now;
            }
        }
        let start = Instant::now();
        let a = c.gql("me", body.clone(), Some(&token), &[]).await;
        if a.ok() && a.json["data"]["me"]["id"].is_null() {
            // A null `me` with a valid token is a failure that has no GraphQL error.
            c.record("me(null)", start, Instant::now(), Some("ME_NULL"), &[]);
        }
    }
    c
}

pub async fn me(bench: &mut Bench, server: &Server, tokens: Arc<Vec<String>>) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    measured(bench, server, "me", clients, move |c| {
        let token = tokens[c.id % tokens.len()].clone();
        me_loop(c, token, None)
    })
    .await
}

/// The paced `me` probe alone, then the same probe and a login load at once, measured over the same
/// window (rows `me-probe-under-login`, with the server's per-thread times noted).
pub async fn me_under_login(
    bench: &mut Bench,
    server: &Server,
    tokens: Arc<Vec<String>>,
    users: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let (clients, probe, rate) = (
        bench.args.clients,
        bench.args.probe_clients,
        bench.args.probe_rate,
    );
    let t = tokens.clone();
    measured(bench, server, "me-probe-alone", probe, move |c| {
        let token = t[c.id % t.len()].clone();
        me_loop(c, token, Some(rate))
    })
    .await?;
    bench.check_time()?;
    println!("scenario me-probe-under-login ({probe} me clients + {clients} login clients)");
    let pid = server.guard.pid();
    procs::reset_peak_rss(pid);
    let before = procs::thread_times(pid);
    let (warmup, duration, max) = (bench.warmup(), bench.duration(), bench.args.max_requests);
    let me_run = drive(server.addr, probe, warmup, duration, max, move |c| {
        let token = tokens[c.id % tokens.len()].clone();
        me_loop(c, token, Some(rate))
    });
    let login_run = drive(server.addr, clients, warmup, duration, max, move |c| {
        login_loop(c, users.clone(), clients, &[])
    });
    let (me_rec, login_rec) = tokio::join!(me_run, login_run);
    let after = procs::thread_times(pid);
    let rss = procs::peak_rss_kib(pid);
    bench.push_rows("me-probe-under-login", probe, me_rec?, rss, None, 0);
    bench.push_rows("me-probe-under-login", clients, login_rec?, rss, None, 0);
    note_threads(bench, "me-probe-under-login", &before, &after);
    Ok(())
}
