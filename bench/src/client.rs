//! The load client: one HTTP/1.1 keep-alive connection per virtual client (hyper's low-level client
//! connection), a recorder of latencies and outcomes per operation, and a driver that runs N clients
//! until a deadline or a request budget, whichever comes first.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Largest response body read; ours are under 2 KiB.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// One keep-alive connection. Reconnects (and counts a TRANSPORT error) if the server drops it.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<String>>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            host: addr.to_string(),
            sender: None,
        }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<String>, String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Opens the connection now, so that connecting is not part of the first measured request.
    pub async fn connect(&mut self) -> Result<(), String> {
        self.sender().await.map(|_| ())
    }

    /// POSTs `body` as JSON to `path`. Returns the HTTP status and the body parsed as JSON.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: String,
        bearer: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, self.host.as_str())
            .header(CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder.body(body).map_err(|e| format!("request: {e}"))?;
        let result = self.send(request).await;
        if result.is_err() {
            self.sender = None;
        }
        let (status, bytes) = result?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, json))
    }

    /// GET `path`; the status only.
    pub async fn get(&mut self, path: &str) -> Result<u16, String> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, self.host.as_str())
            .body(String::new())
            .map_err(|e| format!("request: {e}"))?;
        let result = self.send(request).await;
        if result.is_err() {
            self.sender = None;
        }
        result.map(|(status, _)| status)
    }

    async fn send(&mut self, request: Request<String>) -> Result<(u16, axum::body::Bytes), String> {
        let sender = self.sender().await?;
        sender.ready().await.map_err(|e| format!("ready: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(axum::body::Body::new(response.into_body()), MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok((status, bytes))
    }
}

/// `errors[0].extensions.code`, or a made-up code for a non-GraphQL failure.
pub fn outcome_code(status: u16, json: &Value) -> Option<String> {
    if let Some(code) = json["errors"][0]["extensions"]["code"].as_str() {
        return Some(code.to_owned());
    }
    if !json["errors"].is_null() {
        return Some("ERROR_WITHOUT_CODE".to_owned());
    }
    if status != 200 {
        return Some(format!("HTTP_{status}"));
    }
    None
}

/// Latencies and outcomes of one operation.
#[derive(Default, Clone)]
pub struct OpStats {
    /// Microseconds, one per request.
    pub latencies_us: Vec<u32>,
    pub ok: u64,
    /// Error codes the scenario expects (e.g. INVALID_CODE for wrong codes), by code.
    pub expected: BTreeMap<String, u64>,
    /// Every other error, by code.
    pub errors: BTreeMap<String, u64>,
    /// Latencies of the errors, by code (to tell a fast refusal from a slow one).
    pub error_latencies_us: BTreeMap<String, Vec<u32>>,
    /// The first few unexpected answers, verbatim, for the report.
    pub samples: Vec<String>,
    pub first_start: Option<Instant>,
    pub last_end: Option<Instant>,
}

impl OpStats {
    pub fn merge(&mut self, other: OpStats) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        for (k, v) in other.expected {
            *self.expected.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.error_latencies_us {
            self.error_latencies_us.entry(k).or_default().extend(v);
        }
        for s in other.samples {
            if self.samples.len() < 3 {
                self.samples.push(s);
            }
        }
        self.first_start = match (self.first_start, other.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_end = match (self.last_end, other.last_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn count(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    pub fn unexpected(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Per-operation stats of one client (or, merged, of a scenario). Ordered by name.
pub type Recorded = BTreeMap<String, OpStats>;

pub fn merge_all(parts: impl IntoIterator<Item = Recorded>) -> Recorded {
    let mut out = Recorded::new();
    for part in parts {
        for (op, stats) in part {
            out.entry(op).or_default().merge(stats);
        }
    }
    out
}

/// When a run starts measuring, when it stops, and how many measured units it may start.
pub struct Limits {
    pub measure_from: Instant,
    pub deadline: Instant,
    pub max: u64,
    started: AtomicU64,
}

impl Limits {
    pub fn new(warmup: Duration, duration: Duration, max: u64) -> Arc<Limits> {
        let measure_from = Instant::now() + warmup;
        Arc::new(Limits {
            measure_from,
            deadline: measure_from + duration,
            max,
            started: AtomicU64::new(0),
        })
    }

    /// May another unit (a request, or a flow of requests) start? Warm-up units are not counted.
    pub fn next(&self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        if now < self.measure_from {
            return true;
        }
        self.started.fetch_add(1, Ordering::Relaxed) < self.max
    }
}

/// One virtual client: its connection, its stats, the run's limits.
pub struct Client {
    pub id: usize,
    pub conn: Conn,
    pub limits: Arc<Limits>,
    pub recorded: Recorded,
}

/// The answer to one GraphQL request.
pub struct Answer {
    pub json: Value,
    /// None: success.
    pub code: Option<String>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.code.is_none()
    }
}

impl Client {
    pub fn measuring(&self, at: Instant) -> bool {
        at >= self.limits.measure_from
    }

    /// Records one observation under `op`: `code` None is a success.
    pub fn record(&mut self, op: &str, start: Instant, end: Instant, code: Option<&str>, expected: &[&str]) {
        if !self.measuring(start) {
            return;
        }
        let us = u32::try_from(end.duration_since(start).as_micros()).unwrap_or(u32::MAX);
        let stats = self.recorded.entry(op.to_owned()).or_default();
        stats.latencies_us.push(us);
        stats.first_start = Some(stats.first_start.map_or(start, |s| s.min(start)));
        stats.last_end = Some(stats.last_end.map_or(end, |e| e.max(end)));
        let Some(c) = code else {
            stats.ok += 1;
            return;
        };
        let counts = if expected.contains(&c) {
            &mut stats.expected
        } else {
            &mut stats.errors
        };
        *counts.entry(c.to_owned()).or_default() += 1;
        stats.error_latencies_us.entry(c.to_owned()).or_default().push(us);
    }

    /// Sends a GraphQL request, records it under `op`, returns the answer. Error codes in `expected`
    /// are counted as expected outcomes, others as errors.
    pub async fn gql(&mut self, op: &str, body: String, bearer: Option<&str>, expected: &[&str]) -> Answer {
        self.post_to("/graphql", op, body, bearer, expected).await
    }

    /// As `gql`, to another path (the baselines' second handler).
    pub async fn post_to(
        &mut self,
        path: &str,
        op: &str,
        body: String,
        bearer: Option<&str>,
        expected: &[&str],
    ) -> Answer {
        let start = Instant::now();
        let result = self.conn.post_json(path, body, bearer).await;
        let end = Instant::now();
        let (json, code) = match result {
            Ok((status, json)) => {
                let code = outcome_code(status, &json);
                (json, code)
            }
            Err(e) => (Value::String(e), Some("TRANSPORT".to_owned())),
        };
        self.record(op, start, end, code.as_deref(), expected);
        if let Some(c) = &code
            && !expected.contains(&c.as_str())
            && self.measuring(start)
            && let Some(stats) = self.recorded.get_mut(op)
            && stats.samples.len() < 3
        {
            let mut text = json.to_string();
            text.truncate(400);
            stats.samples.push(text);
        }
        Answer { json, code }
    }

    /// Records a flow (several requests) as one operation.
    pub fn record_flow(&mut self, op: &str, start: Instant, ok: bool) {
        let end = Instant::now();
        let code = if ok { None } else { Some("FLOW_FAILED") };
        self.record(op, start, end, code, &[]);
    }
}

/// Runs `clients` virtual clients, each running `body` (its own loop, which should stop when
/// `client.limits.next()` says so), and returns what they recorded. Every connection is opened before
/// the warm-up starts.
pub async fn drive<F, Fut>(
    addr: SocketAddr,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    max: u64,
    body: F,
) -> anyhow::Result<Recorded>
where
    F: Fn(Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Client> + Send + 'static,
{
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut conn = Conn::new(addr);
        conn.connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
        conns.push(conn);
    }
    let limits = Limits::new(warmup, duration, max);
    let body = Arc::new(body);
    let mut tasks = Vec::with_capacity(clients);
    for (id, conn) in conns.into_iter().enumerate() {
        let body = body.clone();
        let client = Client {
            id,
            conn,
            limits: limits.clone(),
            recorded: Recorded::new(),
        };
        tasks.push(tokio::spawn(async move { body(client).await }));
    }
    // A hard stop well after the deadline: a client stuck on a request that never answers must not
    // keep the run going. Requests have their own server-side timeout (15 s).
    let hard_stop = limits.deadline + Duration::from_secs(30);
    let mut parts = Vec::with_capacity(clients);
    for task in tasks {
        let left = hard_stop.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(client)) => parts.push(client.recorded),
            Ok(Err(e)) => anyhow::bail!("a client task failed: {e}"),
            Err(_) => anyhow::bail!("a client did not stop 30 s after the deadline"),
        }
    }
    Ok(merge_all(parts))
}

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A small deterministic PRNG (xorshift64*), one per client: no shared state, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&[7], 1.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
