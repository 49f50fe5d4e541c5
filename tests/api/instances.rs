//! Many instances: the service keeps no state of its own (codes, budgets, locks and the SMS outbox are
//! in Redis, users and sessions in PostgreSQL, the token keys in the settings), so several processes on
//! one Redis key prefix and one database behave as one service. Three real processes here, requests
//! spread round-robin over them, SMS delivered by the workers of all three to a local webhook stub.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phone_auth::services::tokens::SigningKey;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_code};
use crate::process::{Process, Stores, sample};
use crate::stub::{Received, Stub};

const INSTANCES: usize = 3;

const GENERATE: &str =
    "mutation($p: String!) { generateCode(phone: $p) { phone expiresInSeconds resendInSeconds } }";
const VERIFY: &str = "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) {
    registered registrationToken auth { accessToken refreshToken } } }";
const REGISTER: &str = "mutation($t: String!, $w: String!) {
    register(input: { registrationToken: $t, password: $w }) { accessToken refreshToken user { id } } }";
const LOGIN: &str =
    "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { accessToken refreshToken } }";
const REFRESH: &str = "mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken refreshToken } }";
const ME: &str = "{ me { id } }";
const LOGOUT: &str = "mutation { logout(allSessions: false) { revokedSessions } }";

/// Three processes on the same stores, with the same code secret (set by `Process`) and the same
/// signing key, each with its own SMS workers, all delivering to one stub.
struct Cluster {
    // Declared first, so dropped first: the processes are killed before the stores are cleaned.
    nodes: Vec<Process>,
    stub: Stub,
    stores: Arc<Stores>,
}

impl Cluster {
    async fn start(extra: &[(&str, String)]) -> Cluster {
        let stub = Stub::start([]).await;
        let key = SigningKey::generate().unwrap().to_config();
        let mut env: Vec<(&str, String)> = vec![
            ("JWT_SIGNING_KEYS", key),
            // One issuer for all: by default each names the address it listens on, and tokens of one
            // would name another issuer than the others accept.
            ("JWT_ISSUER", "http://auth.test".into()),
            ("SMS_PROVIDER", "webhook".into()),
            ("SMS_WEBHOOK_URL", stub.url("/sms")),
            (
                "SMS_WEBHOOK_SECRET",
                "whsec_c2VjcmV0LWtleS1mb3Itc21zLXdlYmhvb2stdGVzdHM=".into(),
            ),
            ("SMS_WORKERS", "2".into()),
            // Three processes among the parallel tests of a shared 2-core machine: production's
            // fail-fast waits would turn a busy moment into SERVICE_UNAVAILABLE (helpers::test_config
            // raises them for the same reason). Few connections each: the PostgreSQL is shared.
            ("HASH_CONCURRENCY", "1".into()),
            ("HASH_QUEUE_TIMEOUT_MS", "60000".into()),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "30000".into()),
            ("REDIS_TIMEOUT_MS", "30000".into()),
            ("DATABASE_MAX_CONNECTIONS", "4".into()),
        ];
        env.extend(extra.iter().cloned());
        let stores = Stores::new();
        // The first creates the database and runs the migrations; the others then start together.
        let first = Process::start_on(stores.clone(), &env).await;
        let (second, third) = tokio::join!(
            Process::start_on(stores.clone(), &env),
            Process::start_on(stores.clone(), &env)
        );
        Cluster {
            nodes: vec![first, second, third],
            stub,
            stores,
        }
    }

    /// Instance `i` round-robin.
    fn at(&self, i: usize) -> &Process {
        &self.nodes[i % INSTANCES]
    }

    /// The messages the stub received for `phone`, in order.
    fn sms_to(&self, phone: &str) -> Vec<Received> {
        self.stub
            .received()
            .into_iter()
            .filter(|r| body(r)["to"] == phone)
            .collect()
    }

    /// The code of the `n`th message (from 1) to `phone`, from the webhook body, once delivered.
    async fn nth_code(&self, phone: &str, n: usize) -> String {
        let start = Instant::now();
        loop {
            if let Some(r) = self.sms_to(phone).get(n - 1) {
                return body(r)["code"].as_str().unwrap().to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "message {n} to {phone} not delivered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (at most `limit`) until the outbox holds no job, delivered or pending: from then on the
    /// stub can receive nothing more, so its counts are final.
    async fn wait_drained(&self, limit: Duration) {
        let mut redis = self.stores.redis().await;
        let stream = self.stores.key("sms:outbox");
        let start = Instant::now();
        loop {
            let len: u64 = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut redis)
                .await
                .unwrap();
            if len == 0 {
                return;
            }
            assert!(start.elapsed() < limit, "{len} SMS jobs left after {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs `phone` up across three instances: the code requested on `i`, checked on `i + 1`, the
    /// registration token redeemed on `i + 2`. Returns the register payload.
    async fn sign_up(&self, phone: &str, i: usize) -> Value {
        let n = self.sms_to(phone).len() + 1;
        let sent = self.at(i).gql(GENERATE, json!({ "p": phone })).await;
        assert!(sent["errors"].is_null(), "{sent}");
        let code = self.nth_code(phone, n).await;
        let v = self.at(i + 1).gql(VERIFY, json!({ "p": phone, "c": code })).await;
        let token = v["data"]["verifyUser"]["registrationToken"]
            .as_str()
            .unwrap_or_else(|| panic!("no registration token: {v}"))
            .to_owned();
        let r = self
            .at(i + 2)
            .gql(REGISTER, json!({ "t": token, "w": PASSWORD }))
            .await;
        assert!(r["errors"].is_null(), "{r}");
        r["data"]["register"].clone()
    }

    async fn me(&self, i: usize, token: &str) -> Value {
        let bearer = format!("Bearer {token}");
        let r = self
            .at(i)
            .gql_with(&[("authorization", &bearer)], ME, json!({}))
            .await;
        assert!(r["errors"].is_null(), "{r}");
        r["data"]["me"].clone()
    }

    /// The `revoked_reason` of every session of `user`.
    async fn sessions(&self, user: &str) -> Vec<Option<String>> {
        let pg = self.stores.pg().await;
        let rows: Vec<(Option<String>,)> =
            sqlx::query_as("select revoked_reason from sessions where user_id = $1 order by created_at")
                .bind(uuid::Uuid::parse_str(user).unwrap())
                .fetch_all(&pg)
                .await
                .unwrap();
        rows.into_iter().map(|(r,)| r).collect()
    }
}

fn body(r: &Received) -> Value {
    serde_json::from_str(&r.body).unwrap()
}

fn retry_after(v: &Value) -> u64 {
    v["errors"][0]["extensions"]["retryAfterSeconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retryAfterSeconds: {v}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {pointer} in {v}"))
}

/// Locks, codes, sessions and SMS delivery are shared by three instances. No resend cooldown and three
/// codes per phone per window, so the per-phone send budget is reached across instances at once; the
/// per-IP and service budgets are raised (every request comes from 127.0.0.1).
#[tokio::test]
async fn three_instances_share_codes_locks_sessions_and_delivery() {
    crate::real_stores_only!(
        "several processes sharing one Redis and one PostgreSQL (the embedded backend is one process's memory)"
    );
    let started = Instant::now();
    let c = Cluster::start(&[
        ("OTP_RESEND_COOLDOWN_SECONDS", "0".into()),
        ("OTP_MAX_SENDS_PER_WINDOW", "3".into()),
        ("IP_MAX_CODE_REQUESTS", "100000".into()),
        ("IP_MAX_CODE_CHECKS", "100000".into()),
        ("IP_MAX_PASSWORD_ATTEMPTS", "100000".into()),
        ("SMS_MAX_PER_HOUR", "100000".into()),
    ])
    .await;
    let boot = started.elapsed();

    // Every instance publishes the same keys, so each verifies the others' tokens.
    let jwks: Vec<Value> = futures_util::future::join_all(c.nodes.iter().map(|p| async {
        p.client
            .get(format!("{}/.well-known/jwks.json", p.addr))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    }))
    .await;
    assert_eq!(jwks[0]["keys"].as_array().unwrap().len(), 1, "{}", jwks[0]);
    assert!(jwks.iter().all(|k| *k == jwks[0]), "{jwks:?}");

    // 4. A code issued on one instance verifies on another, once; its registration token is redeemed on
    // a third, once.
    let phone = "+16502530101";
    let sent = c.at(0).gql(GENERATE, json!({ "p": phone })).await;
    assert_eq!(sent["data"]["generateCode"]["phone"], phone, "{sent}");
    let issued = c.nth_code(phone, 1).await;
    let wrong = if issued == "000000" { "111111" } else { "000000" };
    assert_code(
        &c.at(1).gql(VERIFY, json!({ "p": phone, "c": wrong })).await,
        "INVALID_CODE",
    );
    let v = c.at(2).gql(VERIFY, json!({ "p": phone, "c": issued })).await;
    assert_eq!(v["data"]["verifyUser"]["registered"], false, "{v}");
    let token = str_at(&v, "/data/verifyUser/registrationToken").to_owned();
    assert_code(
        &c.at(1).gql(VERIFY, json!({ "p": phone, "c": issued })).await,
        "INVALID_CODE", // consumed on instance 2
    );
    let r = c.at(0).gql(REGISTER, json!({ "t": token, "w": PASSWORD })).await;
    assert!(r["data"]["register"]["accessToken"].is_string(), "{r}");
    assert_code(
        &c.at(1).gql(REGISTER, json!({ "t": token, "w": PASSWORD })).await,
        "INVALID_TOKEN", // redeemed on instance 0
    );
    let pg = c.stores.pg().await;
    let (users,): (i64,) = sqlx::query_as("select count(*) from users where phone = $1")
        .bind(phone)
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(users, 1);

    // 1. Three wrong passwords, one per instance, lock the phone on all three.
    let phone = "+16502530102";
    c.sign_up(phone, 1).await;
    for i in 0..INSTANCES {
        let r = c
            .at(i)
            .gql(LOGIN, json!({ "p": phone, "w": "wrong-password-1" }))
            .await;
        // The third consecutive failure locks (LOCKOUT_MAX_FAILURES=3) and says so.
        assert_code(
            &r,
            if i < 2 {
                "INVALID_CREDENTIALS"
            } else {
                "ACCOUNT_LOCKED"
            },
        );
    }
    for i in 0..INSTANCES {
        let r = c.at(i).gql(LOGIN, json!({ "p": phone, "w": PASSWORD })).await;
        assert_code(&r, "ACCOUNT_LOCKED");
        let wait = retry_after(&r);
        assert!((3500..=3600).contains(&wait), "LOCKOUT_SECONDS=3600: {r}");
    }
    let mut redis = c.stores.redis().await;
    let lock_ttl: i64 = redis::cmd("TTL")
        .arg(c.stores.key(&format!("{{{phone}}}:pw_lock")))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        (3500..=3600).contains(&lock_ttl),
        "one lock in Redis: TTL {lock_ttl}"
    );
    // A sign-in by code on one instance lifts it for all.
    c.at(0).gql(GENERATE, json!({ "p": phone })).await;
    let by_code = c
        .at(1)
        .gql(VERIFY, json!({ "p": phone, "c": c.nth_code(phone, 2).await }))
        .await;
    assert!(
        by_code["data"]["verifyUser"]["auth"]["accessToken"].is_string(),
        "{by_code}"
    );
    let r = c.at(2).gql(LOGIN, json!({ "p": phone, "w": PASSWORD })).await;
    assert!(r["data"]["login"]["accessToken"].is_string(), "{r}");

    // 5. Refresh-token reuse: rotated on one instance, the old token presented to another is refused
    // and revokes the session, which a third then sees.
    let auth = c.sign_up("+16502530103", 2).await;
    let user = str_at(&auth, "/user/id").to_owned();
    let old = str_at(&auth, "/refreshToken").to_owned();
    let rotated = c.at(0).gql(REFRESH, json!({ "r": old })).await;
    let access = str_at(&rotated, "/data/refreshToken/accessToken").to_owned();
    let new = str_at(&rotated, "/data/refreshToken/refreshToken").to_owned();
    assert_eq!(
        c.me(2, &access).await["id"],
        user.as_str(),
        "live before the reuse"
    );
    assert_code(&c.at(1).gql(REFRESH, json!({ "r": old })).await, "INVALID_TOKEN");
    assert_eq!(c.me(2, &access).await, Value::Null, "revoked by the reuse");
    assert_code(&c.at(0).gql(REFRESH, json!({ "r": new })).await, "INVALID_TOKEN");
    assert_eq!(c.sessions(&user).await, [Some("refresh_token_reuse".to_owned())]);

    // 6. Logout on one instance is seen by all.
    let auth = c.sign_up("+16502530104", 0).await;
    let user = str_at(&auth, "/user/id").to_owned();
    let access = str_at(&auth, "/accessToken").to_owned();
    for i in 0..INSTANCES {
        assert_eq!(c.me(i, &access).await["id"], user.as_str(), "instance {i}");
    }
    let bearer = format!("Bearer {access}");
    let out = c
        .at(1)
        .gql_with(&[("authorization", &bearer)], LOGOUT, json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["revokedSessions"], 1, "{out}");
    for i in 0..INSTANCES {
        assert_eq!(
            c.me(i, &access).await,
            Value::Null,
            "instance {i} sees the logout"
        );
    }
    assert_code(
        &c.at(2)
            .gql_with(&[("authorization", &bearer)], LOGOUT, json!({}))
            .await,
        "UNAUTHENTICATED",
    );
    assert_eq!(c.sessions(&user).await, [Some("logout".to_owned())]);

    // 2b. The per-phone send budget (3 per window, no cooldown) is one budget across instances.
    let phone = "+16502530105";
    for i in 0..3 {
        let r = c.at(i).gql(GENERATE, json!({ "p": phone })).await;
        assert!(r["errors"].is_null(), "send {} on instance {i}: {r}", i + 1);
    }
    let fourth = c.at(0).gql(GENERATE, json!({ "p": phone })).await;
    assert_code(&fourth, "RATE_LIMITED");
    assert!(
        (3500..=3600).contains(&retry_after(&fourth)),
        "until the oldest send leaves the 3600 s window: {fourth}"
    );
    let sends: u64 = redis::cmd("ZCARD")
        .arg(c.stores.key(&format!("{{{phone}}}:otp_sends")))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(sends, 3);

    // 7. SMS delivered exactly once by the workers of all three: N codes to distinct numbers, requested
    // concurrently, round-robin.
    const N: usize = 60;
    let phones: Vec<String> = (0..N).map(|i| format!("+165025302{i:02}")).collect();
    let t0 = Instant::now();
    let answers = futures_util::future::join_all(
        phones
            .iter()
            .enumerate()
            .map(|(i, p)| c.at(i).gql(GENERATE, json!({ "p": p }))),
    )
    .await;
    for (p, a) in phones.iter().zip(&answers) {
        assert_eq!(a["data"]["generateCode"]["phone"], p.as_str(), "{a}");
    }
    c.wait_drained(Duration::from_secs(30)).await;
    let delivered_in = t0.elapsed();
    // Drained: every job was acknowledged and deleted, so nothing more can arrive.
    let got: Vec<Received> = c
        .stub
        .received()
        .into_iter()
        .filter(|r| phones.iter().any(|p| body(r)["to"] == p.as_str()))
        .collect();
    let mut per_phone: HashMap<String, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for r in &got {
        let id = r.headers["webhook-id"].to_str().unwrap().to_owned();
        assert_eq!(
            body(r)["messageId"],
            id.as_str(),
            "one id in the header and the body"
        );
        assert!(ids.insert(id.clone()), "message {id} delivered twice");
        *per_phone
            .entry(body(r)["to"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(got.len(), N, "{} messages for {N} codes", got.len());
    for p in &phones {
        assert_eq!(per_phone.get(p), Some(&1), "{p}: one message");
    }
    // And the instances' own counts agree: every message the stub got was sent once, by one worker.
    // (A worker counts a job just after deleting it: a moment's grace.)
    let all = c.stub.received().len();
    let start = Instant::now();
    let sent_by = loop {
        let mut sent_by = Vec::new();
        for p in &c.nodes {
            let m = p.scrape().await;
            sent_by.push(sample(&m, "phone_auth_sms_jobs_total", &[("outcome", "sent")]) as usize);
            assert_eq!(
                sample(&m, "phone_auth_sms_jobs_total", &[("outcome", "retried")]),
                0.0
            );
        }
        if sent_by.iter().sum::<usize>() >= all || start.elapsed() > Duration::from_secs(5) {
            break sent_by;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sent_by.iter().sum::<usize>(),
        all,
        "sent per instance {sent_by:?}"
    );
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(c.stores.key("sms:outbox"))
        .arg("sms-workers")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0))),
        "nothing pending: {pending:?}"
    );
    eprintln!(
        "instances: started in {boot:?}; {N} SMS delivered in {delivered_in:?}, sent per instance \
         {sent_by:?}; whole test {:?}",
        started.elapsed()
    );
}

/// Budgets are counted once for the whole service: the resend cooldown (the default 60 s) and a small
/// per-IP code budget. The instances sit behind a trusted proxy (127.0.0.1, as a load balancer would),
/// so each part of the test has a client address of its own (X-Forwarded-For).
#[tokio::test]
async fn three_instances_count_budgets_together() {
    crate::real_stores_only!(
        "several processes sharing one Redis and one PostgreSQL (the embedded backend is one process's memory)"
    );
    let c = Cluster::start(&[
        ("TRUSTED_PROXIES", "127.0.0.1".into()),
        ("IP_MAX_CODE_REQUESTS", "4".into()),
    ])
    .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];

    // 2a. The resend cooldown: a second code for the phone on another instance is refused.
    let phone = "+16502530301";
    let first = c
        .at(0)
        .gql_with(&from("203.0.113.10"), GENERATE, json!({ "p": phone }))
        .await;
    assert_eq!(first["data"]["generateCode"]["resendInSeconds"], 60, "{first}");
    for i in 1..INSTANCES {
        let r = c
            .at(i)
            .gql_with(&from("203.0.113.10"), GENERATE, json!({ "p": phone }))
            .await;
        assert_code(&r, "RATE_LIMITED");
        assert!((50..=60).contains(&retry_after(&r)), "the cooldown's rest: {r}");
    }

    // 3. The per-IP budget (4 code requests per window): counted over the three instances together.
    let ip = "203.0.113.20";
    for i in 0..4 {
        let r = c
            .at(i)
            .gql_with(&from(ip), GENERATE, json!({ "p": format!("+1650253031{i}") }))
            .await;
        assert!(r["errors"].is_null(), "request {} on instance {i}: {r}", i + 1);
    }
    for i in 4..6 {
        let r = c
            .at(i)
            .gql_with(&from(ip), GENERATE, json!({ "p": format!("+1650253031{i}") }))
            .await;
        assert_code(&r, "RATE_LIMITED");
        assert!(
            (1..=300).contains(&retry_after(&r)),
            "until the IP window (300 s) ends: {r}"
        );
    }
    // Per address, not per service: another client is served.
    let other = c
        .at(1)
        .gql_with(&from("203.0.113.30"), GENERATE, json!({ "p": "+16502530319" }))
        .await;
    assert!(other["errors"].is_null(), "{other}");
    let mut redis = c.stores.redis().await;
    let counted: u64 = redis::cmd("GET")
        .arg(c.stores.key(&format!("ip:{ip}:code_requests")))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        counted, 6,
        "every request of the address, refused ones included, in one counter"
    );

    // One message per code issued: the refused requests sent nothing.
    c.wait_drained(Duration::from_secs(20)).await;
    assert_eq!(c.sms_to(phone).len(), 1);
    let to: Vec<String> = c
        .stub
        .received()
        .iter()
        .map(|r| body(r)["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(to.len(), 6, "{to:?}");
    for p in ["+16502530314", "+16502530315"] {
        assert!(!to.iter().any(|t| t == p), "{p} was refused: {to:?}");
    }
}
