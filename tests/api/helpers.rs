//! Spawns the real service on 127.0.0.1:0 against the real PostgreSQL and Redis of this machine, with
//! a fresh database and a fresh Redis key prefix per test, so tests run in parallel without sharing
//! state. The database is dropped and the keys deleted when the `TestApp` is dropped.
//!
//! With `TEST_BACKEND=embedded` the same tests run on the embedded backend instead (no store URL;
//! every store in the test's own process memory): one conformance suite, two backends. Tests about
//! With `TEST_BACKEND=cluster` they run on the real stores with a Redis Cluster
//! (`TEST_REDIS_CLUSTER_URLS`, e.g. from `scripts/redis-cluster start`; scripts/test starts one) in
//! place of the single Redis: every key a test reads goes through `TestApp::key`, which names it as
//! the service does on a cluster. Tests that start service processes of their own on `REDIS_URL`, or
//! compare the scripts with the embedded backend, stay on the single Redis there and say so.
//! the real stores themselves (SQL rows, Redis commands other than the keys and TTLs both backends
//! expose, outages, several processes sharing stores) start with `real_stores_only!("why")`, which
//! skips them on the embedded backend and prints why.

use std::net::SocketAddr;
use std::sync::Arc;

use phone_auth::app::{App, build};
use phone_auth::config::{AppEnv, Config};
use phone_auth::services::Backend;
use phone_auth::services::auth::AuthService;
use phone_auth::services::embedded::{Db, Memory};
use phone_auth::services::redis_conn::{RedisConn, RedisTarget};
use phone_auth::services::sms::TestSender;
use secrecy::SecretString;
use serde_json::{Value, json};

pub const PHONE: &str = "+16502530000";
pub const PASSWORD: &str = "violet-anchor-1987";

/// Whether this run is on the embedded backend (`TEST_BACKEND=embedded`; the real stores otherwise).
pub fn embedded() -> bool {
    match std::env::var("TEST_BACKEND").as_deref() {
        Ok("embedded") => true,
        Ok("real" | "cluster") | Err(_) => false,
        Ok(other) => panic!("TEST_BACKEND={other:?}: expected real or embedded"),
    }
}

/// Whether this run is on a Redis Cluster (`TEST_BACKEND=cluster`).
pub fn cluster() -> bool {
    std::env::var("TEST_BACKEND").as_deref() == Ok("cluster")
}

/// The seed nodes of the test cluster (`TEST_REDIS_CLUSTER_URLS`).
pub fn cluster_urls() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URLS").expect(
        "TEST_BACKEND=cluster needs TEST_REDIS_CLUSTER_URLS (scripts/redis-cluster start DIR prints it)",
    )
}

/// The Redis of this run's tests: the cluster with `TEST_BACKEND=cluster`, else the single Redis.
pub fn redis_target() -> RedisTarget {
    if cluster() {
        RedisTarget::cluster_from_list(&cluster_urls()).expect("TEST_REDIS_CLUSTER_URLS")
    } else {
        RedisTarget::Single(redis_url())
    }
}

/// Skips the rest of a test on a Redis Cluster, saying why: for tests that start processes of their
/// own on the single Redis, or test the single-node client itself.
#[macro_export]
macro_rules! single_redis_only {
    ($why:expr) => {
        if $crate::helpers::cluster() {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "skipped on the Redis Cluster pass (single Redis only): {}: {}",
                module_path!(),
                $why
            );
            return;
        }
    };
}

/// Skips the rest of a test on the embedded backend, saying why: for tests about the real stores
/// themselves.
#[macro_export]
macro_rules! real_stores_only {
    ($why:expr) => {
        if $crate::helpers::embedded() {
            // Straight to stderr, not through eprintln!, which the test harness captures: the run's
            // output lists every skip and its reason.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "skipped on the embedded backend (real stores only): {}: {}",
                module_path!(),
                $why
            );
            return;
        }
    };
}

pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_SERVER").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub sms: Arc<TestSender>,
    pub auth: Arc<AuthService>,
    pub resolvers: phone_auth::graphql::metrics::ResolverCounter,
    pub outbox: Arc<phone_auth::services::outbox::Outbox>,
    pub documents: Arc<phone_auth::graphql::documents::DocumentCache>,
    /// The real stores (None on the embedded backend: `redis()` and `pg()`).
    real: Option<(RedisConn, sqlx::PgPool)>,
    /// How the service names its keys (prefix, shards, cluster or not).
    pub keys: phone_auth::services::Keys,
    /// The embedded backend's memory and database (None on the real stores).
    pub embedded: Option<(Arc<Memory>, Arc<Db>)>,
    pub prefix: String,
    db_name: String,
}

/// Test defaults: the documented policy, but a short hashing queue timeout would make a loaded CI
/// machine flaky, so it is long here (the queue-full test sets its own).
pub fn test_config() -> Config {
    let mut c = Config::defaults();
    c.app_env = AppEnv::Test;
    c.hashing.hash_queue_timeout_ms = 60_000;
    // Tests run in parallel on two shared cores: the fail-fast timeouts of production would turn a
    // busy moment into SERVICE_UNAVAILABLE. The tests of those timeouts set their own.
    c.stores.database_acquire_timeout_ms = 30_000;
    c.stores.redis_timeout_ms = 30_000;
    c.otp.default_region = None;
    c.otp.otp_hmac_secret = Some(SecretString::from("test-secret-test-secret-test-secret!"));
    c.tokens.jwt_signing_keys = None;
    if embedded() {
        c.stores.redis_url = None;
        c.stores.database_url = None;
    } else if cluster() {
        c.stores.redis_url = None;
        c.stores.redis_cluster_urls = Some(SecretString::from(cluster_urls()));
    } else {
        c.stores.redis_url = Some(SecretString::from(redis_url()));
    }
    c.http.shutdown_drain_seconds = 0;
    // The shared Redis runs without the AOF, and tests never reconfigure it: the production-profile
    // tests start on it with a warning. durability.rs checks the refusal on private servers.
    c.stores.redis_durability_check = phone_auth::config::DurabilityCheck::Warn;
    // All tests come from 127.0.0.1: per-IP and service-wide budgets are raised here and tested on
    // their own (hostile.rs).
    c.ip.ip_max_code_requests = 100_000;
    c.ip.ip_max_code_checks = 100_000;
    c.ip.ip_max_password_attempts = 100_000;
    c.sms.sms_max_per_hour = 100_000;
    c
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_with_provider(configure, true).await
    }

    /// `test_sender`: deliver to the in-memory `TestSender` (`app.sms`); false: to the provider the
    /// configuration names (webhook, twilio).
    pub async fn spawn_with_provider(configure: impl FnOnce(&mut Config), test_sender: bool) -> TestApp {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("phone_auth_test_{id}");
        let mut config = test_config();
        if !embedded() {
            config.stores.database_url = Some(SecretString::from(format!("{}/{db_name}", server_url())));
        }
        config.stores.redis_key_prefix = format!("test:{id}:");
        config.stores.database_max_connections = 20;
        // Bound before the build, as the binary does: the default JWT_ISSUER names this address.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        config.http.listen_addr = listener.local_addr().expect("addr");
        configure(&mut config);
        // A test on a private single Redis of its own (faults, round trips) sets REDIS_URL: on the
        // cluster pass the cluster's URLs then go (both set are refused at start).
        if config.stores.redis_url.is_some() {
            config.stores.redis_cluster_urls = None;
        }
        let sms = Arc::new(TestSender::default());
        let App {
            router,
            auth,
            backend,
            embedded,
            resolvers,
            outbox,
            documents,
            ..
        } = build(
            &config,
            test_sender.then(|| sms.clone() as Arc<dyn phone_auth::services::sms::SmsSender>),
        )
        .await
        .expect("app builds");
        let addr = listener.local_addr().expect("addr");
        let header_timeout = std::time::Duration::from_secs(config.http.header_read_timeout_seconds);
        tokio::spawn(async move {
            phone_auth::http::server::serve(listener, router, header_timeout, std::future::pending())
                .await
                .expect("serve");
        });
        TestApp {
            addr,
            client: reqwest::Client::new(),
            sms,
            auth,
            resolvers,
            outbox,
            documents,
            real: match backend {
                Backend::Real { pg, redis } => Some((redis, pg)),
                Backend::Embedded => None,
            },
            embedded,
            keys: config.redis_keys(),
            prefix: config.stores.redis_key_prefix.clone(),
            db_name,
        }
    }

    /// The real Redis of this test (a test that calls it on the embedded backend lacks its
    /// `real_stores_only!`).
    pub fn redis(&self) -> &RedisConn {
        &self
            .real
            .as_ref()
            .expect("a real-store test: mark it real_stores_only!")
            .0
    }

    /// The real PostgreSQL database of this test (see `redis`).
    pub fn pg(&self) -> &sqlx::PgPool {
        &self
            .real
            .as_ref()
            .expect("a real-store test: mark it real_stores_only!")
            .1
    }

    /// The full name of a key of this test from its name on one primary without the prefix
    /// (`{+16502530000}:otp`, `ip:127.0.0.1:code_requests`, `sms:outbox`): on a cluster the phone's
    /// keys carry their shard's tag and the outbox keys are shard 0's (tests run with one shard).
    pub fn key(&self, suffix: &str) -> String {
        key_in(&self.keys, suffix)
    }

    /// The URL of this test's own database.
    pub fn database_url(&self) -> String {
        format!("{}/{}", server_url(), self.db_name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GETs `path` and parses the JSON body.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let res = self.client.get(self.url(path)).send().await.expect("request");
        res.json().await.expect("json body")
    }

    /// POSTs a GraphQL request, optionally with a bearer token; returns the JSON body.
    pub async fn gql_with(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), 200, "GraphQL over application/json answers 200");
        res.json().await.expect("json body")
    }

    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_with(None, query, variables).await
    }

    /// Requests a code and, when one was queued, waits until the workers delivered it.
    pub async fn generate_code(&self, phone: &str) -> Value {
        let r = self.request_code(phone).await;
        self.wait_outbox_empty().await;
        r
    }

    /// Requests a code without waiting for its delivery.
    pub async fn request_code(&self, phone: &str) -> Value {
        self.gql(
            "mutation($p: String!) { generateCode(phone: $p) { phone expiresInSeconds resendInSeconds } }",
            json!({ "p": phone }),
        )
        .await
    }

    /// Waits (at most 30 s) until every queued SMS job was delivered (or dead-lettered).
    pub async fn wait_outbox_empty(&self) {
        for _ in 0..6000 {
            let (len, _) = self.outbox.depth().await.expect("outbox depth");
            if len == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the SMS outbox was not drained within 30 s");
    }

    pub fn last_code(&self, e164: &str) -> String {
        self.sms.last_code(e164).expect("a code was sent")
    }

    pub async fn verify(&self, phone: &str, code: &str) -> Value {
        self.gql(
            "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) {
                phone registered registrationToken registrationTokenExpiresInSeconds
                auth { accessToken refreshToken tokenType expiresInSeconds user { id phone } } } }",
            json!({ "p": phone, "c": code }),
        )
        .await
    }

    pub async fn register(&self, token: &str, password: &str) -> Value {
        self.gql(
            "mutation($i: RegisterInput!) { register(input: $i) {
                accessToken refreshToken tokenType expiresInSeconds user { id phone firstName lastName createdAt } } }",
            json!({ "i": { "registrationToken": token, "password": password, "firstName": "Ada", "lastName": "Lovelace" } }),
        )
        .await
    }

    pub async fn login(&self, phone: &str, password: &str) -> Value {
        self.gql(
            "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) {
                accessToken refreshToken user { id phone } } }",
            json!({ "p": phone, "w": password }),
        )
        .await
    }

    pub async fn me(&self, token: Option<&str>) -> Value {
        self.gql_with(
            token,
            "{ me { id phone firstName lastName createdAt } }",
            json!({}),
        )
        .await
    }

    /// A registration token for `phone` (generateCode + verifyUser).
    pub async fn registration_token(&self, phone: &str) -> String {
        let sent = self.generate_code(phone).await;
        assert!(sent["errors"].is_null(), "{sent}");
        let v = self.verify(phone, &self.last_code(phone)).await;
        v["data"]["verifyUser"]["registrationToken"]
            .as_str()
            .unwrap_or_else(|| panic!("no registration token: {v}"))
            .to_owned()
    }

    /// Registers `phone` with `password`; returns the register payload.
    pub async fn sign_up(&self, phone: &str, password: &str) -> Value {
        let token = self.registration_token(phone).await;
        let r = self.register(&token, password).await;
        assert!(r["errors"].is_null(), "{r}");
        r["data"]["register"].clone()
    }

    /// Every Redis key of this test with its TTL in seconds, except the SMS streams (the outbox exists
    /// from the start; their TTLs are checked in outbox.rs). The embedded backend keeps the same keys
    /// with the same TTLs (its outbox is not a key).
    pub async fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        if let Some((memory, _)) = &self.embedded {
            return memory.keys_with_ttl();
        }
        let mut conn = self.redis().clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut out = Vec::new();
        for k in keys
            .into_iter()
            .filter(|k| !k.ends_with("sms:outbox") && !k.ends_with("sms:dead"))
        {
            let ttl: i64 = redis::cmd("TTL")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .expect("TTL");
            out.push((k, ttl));
        }
        out
    }

    pub async fn redis_get_hash(&self, key_suffix: &str) -> std::collections::HashMap<String, String> {
        let key = self.key(key_suffix);
        if let Some((memory, _)) = &self.embedded {
            return memory.hash_fields(&key);
        }
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.redis().clone())
            .await
            .expect("HGETALL")
    }

    /// Whether a key of this test exists, on either backend.
    pub async fn key_exists(&self, key_suffix: &str) -> bool {
        let key = self.key(key_suffix);
        if let Some((memory, _)) = &self.embedded {
            return memory.keys_with_ttl().iter().any(|(k, _)| *k == key);
        }
        let n: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut self.redis().clone())
            .await
            .expect("EXISTS");
        n == 1
    }

    /// Every account's phone, sorted (`users.phone`), on either backend.
    pub async fn phones(&self) -> Vec<String> {
        if let Some((_, db)) = &self.embedded {
            return db.phones();
        }
        sqlx::query_scalar("select phone from users order by phone")
            .fetch_all(self.pg())
            .await
            .expect("phones")
    }

    /// The stored password hash of `phone`'s account, on either backend.
    pub async fn stored_password_hash(&self, phone: &str) -> String {
        if let Some((_, db)) = &self.embedded {
            return db.password_hash_of(phone).expect("an account");
        }
        sqlx::query_scalar("select password_hash from users where phone = $1")
            .bind(phone)
            .fetch_one(self.pg())
            .await
            .expect("an account")
    }

    /// Sessions stored, and those not revoked, on either backend.
    pub async fn session_counts(&self) -> (i64, i64) {
        if let Some((_, db)) = &self.embedded {
            return db.session_counts();
        }
        sqlx::query_as("select count(*), count(*) filter (where revoked_at is null) from sessions")
            .fetch_one(self.pg())
            .await
            .expect("sessions")
    }

    /// Refresh tokens stored, and those used, on either backend.
    pub async fn refresh_token_counts(&self) -> (i64, i64) {
        if let Some((_, db)) = &self.embedded {
            return db.refresh_token_counts();
        }
        sqlx::query_as("select count(*), count(used_at) from refresh_tokens")
            .fetch_one(self.pg())
            .await
            .expect("refresh tokens")
    }

    /// The audit events named in `events` (all when empty), oldest first: (event, user id, masked
    /// phone, detail).
    pub async fn audit_events(
        &self,
        events: &[&str],
    ) -> Vec<(String, Option<uuid::Uuid>, Option<String>, Value)> {
        if let Some((_, db)) = &self.embedded {
            return db
                .audit_events()
                .into_iter()
                .filter(|r| events.is_empty() || events.contains(&r.event))
                .map(|r| (r.event.to_owned(), r.user_id, r.phone_masked, r.detail))
                .collect();
        }
        sqlx::query_as(
            "select event, user_id, phone_masked, detail from audit_events
             where cardinality($1::text[]) = 0 or event = any($1) order by at, id",
        )
        .bind(events)
        .fetch_all(self.pg())
        .await
        .expect("audit events")
    }

    /// ZCARD of a key of this test, on either backend.
    pub async fn zcard(&self, key_suffix: &str) -> i64 {
        let key = self.key(key_suffix);
        if let Some((memory, _)) = &self.embedded {
            return memory.zcard(&key);
        }
        redis::cmd("ZCARD")
            .arg(key)
            .query_async(&mut self.redis().clone())
            .await
            .expect("ZCARD")
    }

    /// GET of a key of this test, on either backend.
    pub async fn get_key(&self, key_suffix: &str) -> Option<String> {
        let key = self.key(key_suffix);
        if let Some((memory, _)) = &self.embedded {
            return memory.get(&key);
        }
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.redis().clone())
            .await
            .expect("GET")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.real.is_some() {
            drop_test_stores(&self.db_name, Some(&self.prefix));
        }
    }
}

/// `TestApp::key` for the key layout `keys` (its prefix included).
pub fn key_in(keys: &phone_auth::services::Keys, suffix: &str) -> String {
    if let Some(rest) = suffix.strip_prefix('{')
        && let Some((phone, what)) = rest.split_once('}')
        && phone.starts_with('+')
        && keys.cluster()
    {
        let shard = keys.shard_of_e164(phone);
        let what = what.strip_prefix(':').unwrap_or(what);
        return format!("{}{{s{shard}}}{phone}:{what}", keys.prefix());
    }
    if let Some(what) = ["sms:outbox", "sms:dead", "sms:hour"]
        .into_iter()
        .find(|w| *w == suffix)
    {
        return keys.shard(0, what);
    }
    format!("{}{}", keys.prefix(), suffix)
}

/// Drops a test's database and deletes its Redis keys (`prefix`, when it has its own). Called from
/// `Drop`, which cannot await and may run inside the test's runtime: the work runs on a thread with a
/// runtime of its own.
pub fn drop_test_stores(db: &str, prefix: Option<&str>) {
    let (db, prefix) = (db.to_owned(), prefix.map(str::to_owned));
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            use sqlx::ConnectOptions;
            if let Ok(opts) = format!("{}/postgres", server_url()).parse::<sqlx::postgres::PgConnectOptions>()
                && let Ok(mut conn) = opts.connect().await
            {
                let sql = format!("drop database if exists \"{db}\" with (force)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
            }
            if let Some(prefix) = prefix
                && let Ok(mut conn) = redis_target()
                    .connect(std::time::Duration::from_secs(10), 1)
                    .await
            {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                // One DEL per key: a cluster refuses a DEL of keys in several slots.
                for key in keys {
                    let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
                }
            }
        });
    })
    .join();
}

/// `errors[0].extensions.code` of a response, if any.
pub fn code(v: &Value) -> Option<&str> {
    v["errors"][0]["extensions"]["code"].as_str()
}

pub fn assert_code(v: &Value, expected: &str) {
    assert_eq!(code(v), Some(expected), "expected {expected}: {v}");
}
