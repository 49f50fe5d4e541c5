//! The service as a child process (the real binary, so its metrics recorder, its log output and its
//! SMS workers are its own), on a database and Redis key prefix that one or several processes share.
//! Used by ops.rs (one process) and instances.rs (three on the same stores).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{cluster, cluster_urls, drop_test_stores, key_in, redis_target, redis_url, server_url};
use phone_auth::services::redis_conn::RedisConn;

pub const BIN: &str = env!("CARGO_BIN_EXE_phone-auth");

/// The longest a process may take to answer /healthz: it creates its database and runs the migrations
/// first, which takes seconds on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A database name and a Redis key prefix of their own. Dropping the last handle (after every process
/// on them was killed: a `Process` holds one) drops the database and deletes the keys.
pub struct Stores {
    pub db: String,
    pub prefix: String,
}

impl Stores {
    pub fn new() -> Arc<Stores> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Arc::new(Stores {
            db: format!("phone_auth_test_{id}"),
            prefix: format!("test:{id}:"),
        })
    }

    pub fn database_url(&self) -> String {
        format!("{}/{}", server_url(), self.db)
    }

    /// A pool on the database (which the first process creates), to assert the state left behind.
    pub async fn pg(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url())
            .await
            .unwrap()
    }

    /// The run's Redis: the single one, or the cluster with `TEST_BACKEND=cluster`.
    pub async fn redis(&self) -> RedisConn {
        redis_target().connect(Duration::from_secs(10), 2).await.unwrap()
    }

    /// A key of these stores by its name on one primary (`TestApp::key`): the processes run with one
    /// outbox shard.
    pub fn key(&self, suffix: &str) -> String {
        key_in(
            &phone_auth::services::Keys::with_layout(self.prefix.as_str(), 1, cluster()),
            suffix,
        )
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        drop_test_stores(&self.db, Some(&self.prefix));
    }
}

/// One service process; stdout (the log) collected. Killed on drop, then its `Stores` handle is
/// released.
pub struct Process {
    child: Child,
    pub addr: String,
    pub metrics: String,
    out: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
    /// Released after `drop` killed the child: the stores are cleaned once no process uses them.
    _stores: Arc<Stores>,
}

impl Process {
    /// A process on stores of its own.
    pub async fn start(extra: &[(&str, String)]) -> Process {
        Self::start_on(Stores::new(), extra).await
    }

    /// A process on `stores` (the first one on them creates the database and runs the migrations),
    /// with test settings, its own HTTP and metrics ports, and `extra` on top. Returns once /healthz
    /// answers; fails at once, with its log, if the process exits first.
    pub async fn start_on(stores: Arc<Stores>, extra: &[(&str, String)]) -> Process {
        let (port, metrics_port) = (free_port(), free_port());
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("APP_ENV", "test")
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("DATABASE_URL", stores.database_url())
            // The cluster pass puts the processes on the cluster, unless a test gives one a Redis
            // of its own.
            .env(
                if cluster() && !extra.iter().any(|(k, _)| *k == "REDIS_URL") {
                    "REDIS_CLUSTER_URLS"
                } else {
                    "REDIS_URL"
                },
                if cluster() && !extra.iter().any(|(k, _)| *k == "REDIS_URL") {
                    cluster_urls()
                } else {
                    redis_url()
                },
            )
            .env("REDIS_KEY_PREFIX", &stores.prefix)
            .env("OTP_HMAC_SECRET", "test-secret-test-secret-test-secret!")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut p = Process {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            out,
            client: reqwest::Client::new(),
            _stores: stores,
        };
        let start = Instant::now();
        while p.client.get(format!("{}/healthz", p.addr)).send().await.is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("the service exited ({status}):\n{}", p.lines().join("\n"));
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "the service did not start:\n{}",
                p.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    /// POSTs a GraphQL request with extra headers (a bearer token, X-Forwarded-For); the JSON body.
    pub async fn gql_with(&self, headers: &[(&str, &str)], query: &str, variables: Value) -> Value {
        let mut req = self
            .client
            .post(format!("{}/graphql", self.addr))
            .json(&json!({ "query": query, "variables": variables }));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "GraphQL over application/json answers 200");
        res.json().await.unwrap()
    }

    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_with(&[], query, variables).await
    }

    pub async fn scrape(&self) -> String {
        self.client
            .get(&self.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// SIGTERM (what an orchestrator sends), then waits for the exit: its status, or a panic with the
    /// log after `within`.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "no exit {within:?} after SIGTERM:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one sample line `name{labels} value`, matching every given label (summed over the
/// lines that match).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
