//! generateCode and a wrong verifyUser each do their Redis work in ONE round trip: one script (one
//! EVALSHA). Proved by counting commands around a single request, two ways:
//! - `INFO commandstats` (after `CONFIG RESETSTAT`): exactly one `evalsha`. Redis 7 also counts the
//!   commands a script runs inside (`incr`, `hset`, ...) there, so it cannot tell a second round trip
//!   of a command a script also uses; hence
//! - `MONITOR` (through `redis-cli monitor`): between two markers, exactly one command from a client
//!   connection, the `evalsha`; the script's own commands show as `[0 lua]` and are not round trips.
//!
//! INFO and MONITOR are server-global and the other tests run in parallel against the shared Redis, so
//! this test starts its own `redis-server` on a free 127.0.0.1 port, points the app at it, and stops it
//! (and `redis-cli`) at the end, by Drop guards: also when an assertion fails.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::json;

use crate::helpers::*;
use crate::private_redis::{DEBUGGABLE, PrivateRedis};

/// `redis-cli monitor` on the private server: every command it executes, one line each, killed when
/// dropped. Lines look like `1700000000.000000 [0 127.0.0.1:50000] "evalsha" "..."`, or `[0 lua]` for
/// a command run by a script.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    async fn start(server: &PrivateRedis, conn: &mut redis::aio::MultiplexedConnection) -> Monitor {
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli is on PATH");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let monitor = Monitor { child, lines };
        // MONITOR is live once it reports a marker sent after it started.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "redis-cli monitor did not start");
            echo(conn, "monitor-ready").await;
            if let Ok(line) = monitor.lines.recv_timeout(Duration::from_millis(200))
                && line.contains("monitor-ready")
            {
                while monitor.lines.try_recv().is_ok() {}
                return monitor;
            }
        }
    }

    /// The commands sent by clients (not by scripts) between the `start` and `end` markers, by name.
    fn client_commands_between(&self, start: &str, end: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut inside = false;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("MONITOR did not show the marker {end:?}"));
            if line.contains(&format!("\"{start}\"")) {
                inside = true;
                continue;
            }
            if line.contains(&format!("\"{end}\"")) {
                return out;
            }
            if !inside || line.contains("[0 lua]") {
                continue;
            }
            // The command name: the first quoted word after the `]`.
            let name = line
                .split_once("] \"")
                .and_then(|(_, rest)| rest.split('"').next())
                .unwrap_or("?")
                .to_ascii_lowercase();
            out.push(name);
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn echo(conn: &mut redis::aio::MultiplexedConnection, text: &str) {
    let _: String = redis::cmd("ECHO")
        .arg(text)
        .query_async(conn)
        .await
        .expect("ECHO");
}

/// Commands executed since the last `CONFIG RESETSTAT`, by name, less the test's own INFO, RESETSTAT
/// and ECHO markers. Commands run inside a script are counted too (Redis 7).
async fn commands_since_reset(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let mut out = BTreeMap::new();
    for line in info.lines() {
        // cmdstat_evalsha:calls=1,usec=20,usec_per_call=20.00,rejected_calls=0,failed_calls=0
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        if matches!(name, "info" | "config|resetstat" | "echo") {
            continue;
        }
        let calls = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if calls > 0 {
            out.insert(name.to_owned(), calls);
        }
    }
    out
}

async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

/// Runs `request` between markers and checks it made exactly one round trip, an EVALSHA.
async fn assert_one_evalsha<F: std::future::Future<Output = serde_json::Value>>(
    what: &str,
    n: u32,
    stats: &mut redis::aio::MultiplexedConnection,
    monitor: &Monitor,
    request: F,
) -> serde_json::Value {
    let (start, end) = (format!("start-{n}"), format!("end-{n}"));
    reset_stats(stats).await;
    echo(stats, &start).await;
    let answer = request.await;
    echo(stats, &end).await;
    let counted = commands_since_reset(stats).await;
    assert_eq!(
        counted.get("evalsha"),
        Some(&1),
        "{what}: INFO commandstats after it (script-run commands included): {counted:?}"
    );
    for top_level_only in ["eval", "script|load", "multi", "exec", "evalsha_ro", "eval_ro"] {
        assert!(
            !counted.contains_key(top_level_only),
            "{what}: ran {top_level_only}: {counted:?}"
        );
    }
    let round_trips = monitor.client_commands_between(&start, &end);
    assert_eq!(
        round_trips,
        vec!["evalsha".to_owned()],
        "{what}: the commands it sent to Redis (MONITOR, script-run commands left out)"
    );
    answer
}

#[tokio::test]
async fn generate_code_and_wrong_verify_are_one_redis_round_trip_each() {
    crate::real_stores_only!("counts commands on a private redis-server");
    // Declared first, dropped last: the app and the monitor let go before the server goes.
    let redis_server = PrivateRedis::start(DEBUGGABLE);
    let url = redis_server.url.clone();
    let app = TestApp::spawn_with(|c| {
        c.stores.redis_url = Some(SecretString::from(url.clone()));
        c.otp.otp_resend_cooldown_seconds = 0;
        // Delivery workers use Redis on their own schedule: none here, so that only the request's own
        // commands are counted. Codes are read from the outbox stream instead.
        c.sms.sms_workers = 0;
    })
    .await;
    let mut stats = redis::Client::open(redis_server.url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("stats connection");
    let monitor = Monitor::start(&redis_server, &mut stats).await;

    const OTHER: &str = "+16502530001";
    // Warm up: the first call of each script may answer NOSCRIPT and be followed by SCRIPT LOAD and a
    // second EVALSHA. After this every script is cached on the server.
    let sent = generate(&app, OTHER).await;
    assert!(sent["errors"].is_null(), "{sent}");
    let code = queued_code(&app, OTHER).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    assert_code(&app.verify(OTHER, wrong).await, "INVALID_CODE");

    let sent = assert_one_evalsha("generateCode", 1, &mut stats, &monitor, generate(&app, PHONE)).await;
    assert!(sent["errors"].is_null(), "{sent}");

    // A wrong verifyUser against a pending code (the costliest wrong path: it counts a try and a
    // failure).
    let code = queued_code(&app, PHONE).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let answer = assert_one_evalsha(
        "verifyUser, wrong code",
        2,
        &mut stats,
        &monitor,
        app.verify(PHONE, wrong),
    )
    .await;
    assert_code(&answer, "INVALID_CODE");

    // A verifyUser when no code is pending.
    let answer = assert_one_evalsha(
        "verifyUser, no code pending",
        3,
        &mut stats,
        &monitor,
        app.gql(
            "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { phone } }",
            json!({ "p": "+16502530002", "c": "123456" }),
        ),
    )
    .await;
    assert_code(&answer, "INVALID_CODE");

    drop(monitor);
    drop(app);
    drop(redis_server);
}

async fn generate(app: &TestApp, phone: &str) -> serde_json::Value {
    app.gql(
        "mutation($p: String!) { generateCode(phone: $p) { phone } }",
        serde_json::json!({ "p": phone }),
    )
    .await
}

/// The code of the newest job queued for `phone` (no worker runs in this test), opened as a worker
/// would: the job holds it sealed under a key derived from the test's OTP_HMAC_SECRET.
async fn queued_code(app: &TestApp, phone: &str) -> String {
    let secret = test_config().otp.otp_hmac_secret.expect("the tests set a secret");
    let cipher = phone_auth::services::outbox::CodeCipher::from_secret(
        secrecy::ExposeSecret::expose_secret(&secret).as_bytes(),
    );
    let jobs: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(app.key("sms:outbox"))
        .arg("-")
        .arg("+")
        .query_async(&mut app.redis().clone())
        .await
        .expect("XRANGE");
    jobs.ids
        .iter()
        .rev()
        .find(|j| j.get::<String>("to").as_deref() == Some(phone))
        .and_then(|j| cipher.open(&j.get::<String>("id")?, phone, &j.get::<String>("sealed")?))
        .expect("a queued job")
}
