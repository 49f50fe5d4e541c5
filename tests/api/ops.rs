//! Running it: metrics, request ids and access logs (the real binary as a process, so its metrics
//! recorder and its log output are its own), the audit trail, and the admin commands (each driven
//! through the binary, as an operator would).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::process::{BIN, Process, sample};
use crate::stub::{Reply, Stub};

const GENERATE: &str = "mutation($p: String!) { generateCode(phone: $p) { phone } }";
const VERIFY: &str =
    "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { registered registrationToken } }";
const REGISTER: &str = "mutation($t: String!) { register(input: { registrationToken: $t, password: \"violet-anchor-1987\" }) { accessToken } }";
const LOGIN: &str = "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { accessToken } }";

#[tokio::test]
async fn metrics_count_a_flow_and_logs_carry_the_request_id() {
    let stub = Stub::start(std::iter::repeat_n(Reply::Status(400), 10)).await;
    let p = Process::start(&[
        ("SMS_PROVIDER", "webhook".into()),
        ("SMS_WEBHOOK_URL", stub.url("/sms")),
        (
            "SMS_WEBHOOK_SECRET",
            "whsec_c2VjcmV0LWtleS1mb3Itc21zLXdlYmhvb2stdGVzdHM=".into(),
        ),
        ("SMS_TEST_NUMBERS", "+16502530999:424242".into()),
    ])
    .await;
    let phone = "+16502530999";
    p.gql(GENERATE, json!({ "p": phone })).await;
    let again = p.gql(GENERATE, json!({ "p": phone })).await;
    assert_eq!(again["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    let wrong = p.gql(VERIFY, json!({ "p": phone, "c": "000000" })).await;
    assert_eq!(wrong["errors"][0]["extensions"]["code"], "INVALID_CODE");
    let verified = p.gql(VERIFY, json!({ "p": phone, "c": "424242" })).await;
    let token = verified["data"]["verifyUser"]["registrationToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let registered = p.gql(REGISTER, json!({ "t": token })).await;
    assert!(
        registered["data"]["register"]["accessToken"].is_string(),
        "{registered}"
    );
    for _ in 0..3 {
        p.gql(LOGIN, json!({ "p": phone, "w": "wrong-password-1" })).await;
    }
    let locked = p
        .gql(LOGIN, json!({ "p": phone, "w": "violet-anchor-1987" }))
        .await;
    assert_eq!(locked["errors"][0]["extensions"]["code"], "ACCOUNT_LOCKED");
    // A real number: its SMS is refused by the provider (400) and dead-lettered.
    p.gql(GENERATE, json!({ "p": "+16502530001" })).await;

    let start = Instant::now();
    let metrics = loop {
        let m = p.scrape().await;
        if sample(&m, "phone_auth_sms_jobs_total", &[("outcome", "dead_lettered")]) >= 1.0 {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no dead letter counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        assert_eq!(
            sample(&metrics, name, labels),
            want,
            "{name} {labels:?} in\n{metrics}"
        );
    };
    expect("phone_auth_codes_issued_total", &[], 2.0);
    expect("phone_auth_codes_verified_total", &[], 1.0);
    expect("phone_auth_code_checks_failed_total", &[], 1.0);
    expect(
        "phone_auth_budget_refusals_total",
        &[("budget", "phone_resend_cooldown")],
        1.0,
    );
    expect("phone_auth_lockouts_total", &[], 1.0);
    expect(
        "phone_auth_sms_jobs_total",
        &[
            ("provider", "webhook"),
            ("country_code", "1"),
            ("outcome", "dead_lettered"),
        ],
        1.0,
    );
    expect(
        "phone_auth_graphql_requests_total",
        &[("operation", "register"), ("code", "OK")],
        1.0,
    );
    expect(
        "phone_auth_graphql_requests_total",
        &[("operation", "login"), ("code", "ACCOUNT_LOCKED")],
        2.0, // the third wrong password locks, and the right one is then refused
    );
    expect(
        "phone_auth_graphql_requests_total",
        &[("operation", "login"), ("code", "INVALID_CREDENTIALS")],
        2.0,
    );
    assert!(sample(&metrics, "phone_auth_http_requests_total", &[("status", "200")]) >= 9.0);
    assert!(
        sample(&metrics, "phone_auth_hash_wait_seconds_count", &[]) >= 4.0,
        "{metrics}"
    );
    // Store latency, by store and operation: the code scripts on Redis, the sign-up's session insert
    // and the sign-in's credential lookup on PostgreSQL.
    assert!(
        sample(
            &metrics,
            "phone_auth_store_duration_seconds_count",
            &[("store", "redis"), ("operation", "script")]
        ) >= 6.0,
        "{metrics}"
    );
    for operation in ["insert", "find_credentials"] {
        assert!(
            sample(
                &metrics,
                "phone_auth_store_duration_seconds_count",
                &[("store", "postgres"), ("operation", operation)]
            ) >= 1.0,
            "{operation}: {metrics}"
        );
    }
    assert!(!metrics.contains("6502530"), "no phone in any label");
    assert!(!metrics.contains("127.0.0.1"), "no IP in any label");

    // Request id: a good one is kept and echoed, and every line of that request carries it.
    let response = p
        .client
        .post(format!("{}/graphql", p.addr))
        .header("x-request-id", "req-7f3a")
        .json(&json!({ "query": LOGIN, "variables": { "p": phone, "w": "wrong-password-1" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-7f3a");
    let forged = p
        .client
        .get(format!("{}/healthz", p.addr))
        .header("x-request-id", "a\"b")
        .send()
        .await
        .unwrap();
    let fresh = forged.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(fresh.len(), 36, "a refused id is replaced by a UUID: {fresh}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = p.lines();
    let access: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "phone_auth::access" && v["span"]["request_id"] == "req-7f3a")
        .collect();
    assert_eq!(access.len(), 1, "one access line for the request: {lines:#?}");
    let line = &access[0];
    assert_eq!(line["operation"], "login");
    assert_eq!(line["kind"], "mutation");
    assert_eq!(line["codes"], "ACCOUNT_LOCKED");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert!(line["latency_ms"].as_f64().is_some());
    for l in &lines {
        assert!(!l.contains("6502530999"), "a phone in clear in the log: {l}");
        assert!(
            !l.contains("violet-anchor") && !l.contains("424242"),
            "a secret in the log: {l}"
        );
        assert!(!l.contains('\u{1b}'), "colour escapes in a pipe: {l}");
    }
}

#[tokio::test]
async fn the_audit_trail_holds_a_whole_flow_in_order() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    let phone = "+16502530123";
    let auth = app.sign_up(phone, "violet-anchor-1987").await;
    let refresh = auth["refreshToken"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        app.gql(LOGIN, json!({ "p": phone, "w": "wrong-password-1" }))
            .await;
    }
    app.generate_code(phone).await;
    let code = app.last_code(phone);
    // Signs in by code and lifts the lock.
    let by_code = app.verify(phone, &code).await;
    let code_token = by_code["data"]["verifyUser"]["auth"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let refreshed = app
        .gql(
            "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken } }",
            json!({ "r": refresh }),
        )
        .await;
    assert!(refreshed["data"]["refreshToken"]["accessToken"].is_string());
    app.gql(
        "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken } }",
        json!({ "r": refresh }),
    )
    .await; // reuse: the session is revoked
    app.gql_with(
        Some(&code_token),
        "mutation { logout(allSessions: true) { revokedSessions } }",
        json!({}),
    )
    .await;

    // Code events are written off the request path: wait for the writer.
    let start = Instant::now();
    let events = loop {
        let events = app.audit_events(&[]).await;
        if events.iter().filter(|e| e.0.starts_with("code_")).count() >= 4 {
            break events;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    // Account events are in order; code events may be written a little later than the account
    // events around them, so they are checked apart.
    let account: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !n.starts_with("code_"))
        .collect();
    assert_eq!(
        account,
        [
            "signed_up",
            "signed_in",
            "sign_in_failed",
            "sign_in_failed",
            "sign_in_failed",
            "locked",
            "unlocked",
            "signed_in",
            "token_refreshed",
            "refresh_reuse_detected",
            "signed_out",
        ],
        "{names:?}"
    );
    let codes: Vec<&str> = names.iter().copied().filter(|n| n.starts_with("code_")).collect();
    assert_eq!(
        codes,
        ["code_sent", "code_verified", "code_sent", "code_verified"]
    );
    let user = events[account_index(&names, "signed_up")].1.unwrap();
    for (event, user_id, masked, _) in &events {
        assert_eq!(
            masked.as_deref(),
            Some("+1650***0123"),
            "{event}: the phone, masked"
        );
        if !event.starts_with("code_") && !["sign_in_failed", "locked"].contains(&event.as_str()) {
            assert_eq!(*user_id, Some(user), "{event} names the user");
        }
    }
    let detail = |name: &str, nth: usize| &events.iter().filter(|e| e.0 == name).nth(nth).unwrap().3;
    assert_eq!(detail("signed_in", 0)["method"], "registration");
    assert_eq!(detail("signed_in", 1)["method"], "code");
    assert_eq!(detail("unlocked", 0)["by"], "code");
    assert_eq!(detail("signed_out", 0)["allSessions"], true);
    if let Some((_, db)) = &app.embedded {
        let ips: Vec<Option<String>> = db
            .audit_events()
            .into_iter()
            .map(|r| r.client_ip.map(|ip| ip.to_string()))
            .collect();
        assert!(ips.iter().all(|ip| ip.as_deref() == Some("127.0.0.1")), "{ips:?}");
        return;
    }
    let raw: Vec<(Option<String>,)> = sqlx::query_as("select client_ip from audit_events")
        .fetch_all(app.pg())
        .await
        .unwrap();
    assert!(
        raw.iter().all(|(ip,)| ip.as_deref() == Some("127.0.0.1")),
        "{raw:?}"
    );
}

fn account_index(names: &[&str], name: &str) -> usize {
    names.iter().position(|n| *n == name).unwrap()
}

/// Runs `phone-auth admin ...` against the test app's stores.
fn admin(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("admin")
        .args(args)
        .env_clear()
        .env("APP_ENV", "test")
        .env("DATABASE_URL", app.database_url())
        .env(
            if crate::helpers::cluster() {
                "REDIS_CLUSTER_URLS"
            } else {
                "REDIS_URL"
            },
            if crate::helpers::cluster() {
                crate::helpers::cluster_urls()
            } else {
                redis_url()
            },
        )
        .env("REDIS_KEY_PREFIX", &app.prefix)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn admin_commands_through_the_binary() {
    crate::real_stores_only!("admin commands run in another process, against the real stores");
    let app = TestApp::spawn().await;
    let phone = "+16502530456";
    app.sign_up(phone, "violet-anchor-1987").await;
    for _ in 0..3 {
        app.gql(LOGIN, json!({ "p": phone, "w": "wrong-password-1" }))
            .await;
    }

    let (ok, out) = admin(&app, &["user", "show", phone]);
    assert!(ok, "{out}");
    assert!(
        out.contains("+1650***0456") && out.contains("1 live") && out.contains("locked for"),
        "{out}"
    );
    assert!(!out.contains(phone), "the phone is masked: {out}");

    let (ok, out) = admin(&app, &["unlock", phone]);
    assert!(ok && out.contains("lock lifted"), "{out}");
    let signed_in = app
        .gql(LOGIN, json!({ "p": phone, "w": "violet-anchor-1987" }))
        .await;
    assert!(
        signed_in["data"]["login"]["accessToken"].is_string(),
        "{signed_in}"
    );

    let (ok, out) = admin(&app, &["sessions", "list", "--phone", phone]);
    assert!(ok && out.contains("2 session(s)"), "{out}");
    let (ok, out) = admin(&app, &["sessions", "revoke", "--phone", phone]);
    assert!(ok && out.contains("revoked 2 live session(s)"), "{out}");
    let (live,): (i64,) = sqlx::query_as("select count(*) from sessions where revoked_at is null")
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(live, 0);

    let (ok, out) = admin(&app, &["audit", "--phone", phone]);
    assert!(
        ok && out.contains("unlocked") && out.contains("admin_sessions_revoked"),
        "{out}"
    );

    // Dead letters: one put there as a worker would.
    let _: String = redis::cmd("XADD")
        .arg(app.key("sms:dead"))
        .arg("*")
        .arg("id")
        .arg("m-1")
        .arg("to")
        .arg("+16502530777")
        .arg("reason")
        .arg("HTTP 400")
        .arg("failed_ms")
        .arg(0)
        .query_async(&mut app.redis().clone())
        .await
        .unwrap();
    let (ok, out) = admin(&app, &["sms", "dead-letters", "list"]);
    assert!(
        ok && out.contains("1 dead letter(s)") && out.contains("+1650***0777") && out.contains("HTTP 400"),
        "{out}"
    );
    assert!(!out.contains("+16502530777"), "{out}");
    let (ok, out) = admin(&app, &["sms", "dead-letters", "purge"]);
    assert!(ok && out.contains("purged 1"), "{out}");

    let (ok, key) = admin(&app, &["keys", "generate"]);
    assert!(ok && key.trim().contains(':'), "{key}");
    let (ok, out) = admin(&app, &["keys", "show"]);
    assert!(!ok && out.contains("JWT_SIGNING_KEYS is not set"), "{out}");

    let (ok, out) = admin(&app, &["user", "delete", phone]);
    assert!(ok && out.contains("deleted user"), "{out}");
    let (users,): (i64,) = sqlx::query_as("select count(*) from users")
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(users, 0);

    // Bad input: clear messages, non-zero exits, nothing changed.
    let (ok, out) = admin(&app, &["user", "show", phone]);
    assert!(!ok && out.contains("no account for +1650***0456"), "{out}");
    let (ok, out) = admin(&app, &["unlock", "not a phone"]);
    assert!(!ok && out.contains("not a valid phone number"), "{out}");
    let (ok, out) = admin(&app, &["sessions", "list", "--user", "nope"]);
    assert!(!ok && out.contains("is not a user id"), "{out}");
    let down = Command::new(BIN)
        .args(["admin", "unlock", phone])
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&down.stderr);
    assert!(
        !down.status.success() && text.contains("cannot connect to PostgreSQL"),
        "{text}"
    );
}

/// The writer's batches go in by binary COPY: every field as the type's binary representation, so a
/// client-chosen user agent with the characters text formats reserve (tab, newline, backslash, `\N`)
/// is stored exactly, in its own field, and the time is the event's (PostgreSQL's epoch, not Unix's).
#[tokio::test]
async fn audit_rows_keep_a_hostile_user_agent_exactly() {
    crate::real_stores_only!("the binary COPY of the PostgreSQL writer, and the admin binary");
    let app = TestApp::spawn().await;
    let phone = "+16502530456";
    let agent = "evil\\tagent\t(real tab) \\N\\\\x00 \"quoted\"";
    let response = app
        .client
        .post(format!("http://{}/graphql", app.addr))
        .header("user-agent", agent)
        .json(&json!({ "query": GENERATE, "variables": { "p": phone } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let start = Instant::now();
    let sent = time::OffsetDateTime::now_utc();
    type Row = (
        String,
        Option<String>,
        Vec<u8>,
        Option<String>,
        Value,
        time::OffsetDateTime,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
    );
    let row: Row = loop {
        let row = sqlx::query_as(
            "select event, user_agent, phone_digest, client_ip, detail, at, user_id, session_id \
             from audit_events where event = 'code_sent'",
        )
        .fetch_optional(app.pg())
        .await
        .unwrap();
        if let Some(row) = row {
            break row;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no code_sent row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row.1.as_deref(), Some(agent));
    assert_eq!(row.2, phone_auth::services::audit::phone_digest(phone));
    assert_eq!(row.3.as_deref(), Some("127.0.0.1"));
    assert_eq!(row.4, json!({ "testNumber": false }));
    let skew = (row.5 - sent).abs();
    assert!(
        skew < time::Duration::seconds(5),
        "event time {} vs sent {sent}",
        row.5
    );
    assert_eq!((row.6, row.7), (None, None));
    // Read back by the admin lookup (the digest index), as an operator would.
    let (ok, out) = admin(&app, &["audit", "--phone", phone]);
    assert!(ok, "{out}");
    assert!(out.contains("code_sent"), "{out}");
}

/// `AUDIT_RETENTION_DAYS`: the hourly purge deletes the events older than the retention and keeps
/// the others, on either backend. On PostgreSQL the table is first put in a logical-replication
/// publication, as a team replicating its database would: the table has no primary key (migrations),
/// and without its replica identity PostgreSQL refuses every DELETE from a published table.
#[tokio::test]
async fn the_retention_purge_deletes_only_the_old_events() {
    use phone_auth::services::audit::{AuditLog, AuditRow, AuditSink};
    let app = TestApp::spawn().await;
    let sink = || match &app.embedded {
        Some((_, db)) => AuditSink::Embedded(db.clone()),
        None => AuditSink::Postgres(app.pg().clone()),
    };
    if app.embedded.is_none() {
        sqlx::query("create publication audit_trail for table audit_events")
            .execute(app.pg())
            .await
            .unwrap();
    }
    // Written as the service writes them (the queue and the batch writer), with times in the past.
    let log = AuditLog::start(sink(), true);
    for (event, days_ago) in [
        ("signed_in", 400),
        ("signed_out", 366),
        ("signed_in", 364),
        ("signed_out", 1),
    ] {
        let mut row = AuditRow::new(event).phone_e164("+16502530777");
        row.at = time::OffsetDateTime::now_utc() - time::Duration::days(days_ago);
        log.record(row).await;
    }
    assert!(log.close(Duration::from_secs(5)).await, "the events were written");
    assert_eq!(app.audit_events(&[]).await.len(), 4);
    assert_eq!(sink().purge(365).await.unwrap(), 2, "the two older than 365 days");
    let left: Vec<String> = app.audit_events(&[]).await.into_iter().map(|e| e.0).collect();
    assert_eq!(left, ["signed_in", "signed_out"]);
    assert_eq!(sink().purge(365).await.unwrap(), 0);
}

/// SIGTERM right after requests: the audit events they queued (the writer lets a batch fill for
/// 100 ms) are written before the process exits, account events and code events alike.
#[tokio::test]
async fn shutdown_writes_the_queued_audit_events() {
    crate::real_stores_only!("a service process on PostgreSQL, stopped by SIGTERM");
    let stores = crate::process::Stores::new();
    let mut p = Process::start_on(
        stores.clone(),
        &[
            ("SHUTDOWN_DRAIN_SECONDS", "0".into()),
            ("SMS_TEST_NUMBERS", "+16502530888:424242".into()),
        ],
    )
    .await;
    let phone = "+16502530888";
    p.gql(GENERATE, json!({ "p": phone })).await;
    let wrong = p.gql(VERIFY, json!({ "p": phone, "c": "000000" })).await;
    assert_eq!(wrong["errors"][0]["extensions"]["code"], "INVALID_CODE");
    let status = p.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}:\n{}", p.lines().join("\n"));
    let events: Vec<String> = sqlx::query_scalar("select event from audit_events order by at, id")
        .fetch_all(&stores.pg().await)
        .await
        .unwrap();
    assert_eq!(
        events,
        ["code_sent", "code_check_failed"],
        "{}",
        p.lines().join("\n")
    );
}
