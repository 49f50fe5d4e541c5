//! Prometheus metrics: every name in one place, described once, served on their own listener
//! (`METRICS_ADDR`, never the public port: they say how the service is attacked).
//!
//! Conventions (prometheus.io "Metric and label naming"): `phone_auth_` prefix, base units
//! (`_seconds`), `_total` for counters. Labels never carry a phone, an IP, a user id or anything a
//! client chooses freely: an operation label is one of the schema's root fields or `other`, a country
//! is a calling code. Every error answered over HTTP 200 is counted by its `extensions.code`, so a
//! Redis outage shows here even though a load balancer sees only 200s.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{
    Counter, Histogram, Key, Label, counter, describe_counter, describe_gauge, describe_histogram, gauge,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "phone_auth_http_requests_total";
pub const GRAPHQL_REQUESTS: &str = "phone_auth_graphql_requests_total";
pub const GRAPHQL_DURATION: &str = "phone_auth_graphql_request_duration_seconds";
pub const SMS_JOBS: &str = "phone_auth_sms_jobs_total";
pub const SMS_OUTBOX_DEPTH: &str = "phone_auth_sms_outbox_depth";
pub const SMS_OUTBOX_OLDEST_AGE: &str = "phone_auth_sms_outbox_oldest_job_age_seconds";
pub const SMS_DEAD_LETTERS: &str = "phone_auth_sms_dead_letters";
pub const CODES_ISSUED: &str = "phone_auth_codes_issued_total";
pub const CODES_VERIFIED: &str = "phone_auth_codes_verified_total";
pub const CODE_CHECKS_FAILED: &str = "phone_auth_code_checks_failed_total";
pub const BUDGET_REFUSALS: &str = "phone_auth_budget_refusals_total";
pub const LOCKOUTS: &str = "phone_auth_lockouts_total";
pub const UNLOCKS: &str = "phone_auth_unlocks_total";
pub const HASH_QUEUE_DEPTH: &str = "phone_auth_hash_queue_depth";
pub const HASH_WAIT: &str = "phone_auth_hash_wait_seconds";
pub const HASH_REFUSALS: &str = "phone_auth_hash_refusals_total";
pub const STORE_ERRORS: &str = "phone_auth_store_errors_total";
pub const STORE_DURATION: &str = "phone_auth_store_duration_seconds";
pub const AUDIT_DROPPED: &str = "phone_auth_audit_events_dropped_total";

/// Latency buckets, seconds: from a cached `me` (~0.2 ms) to a request timeout (15 s).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];

const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once (several `App`s in one test process share it) and returns
/// the handle that renders the exposition text. Concurrent first calls wait for the one that installs.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| format!("metrics buckets: {e}"))?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|_| "another metrics recorder is installed".to_owned())?;
            describe();
            // `build_recorder` spawns no upkeep: without it every histogram sample is kept until the
            // next scrape (unbounded memory when nobody scrapes). Drained every 5 s on its own thread.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| format!("metrics upkeep thread: {e}"))?;
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Whether our recorder is installed: before (or without) it, every metric call is a no-op.
fn installed() -> bool {
    matches!(HANDLE.get(), Some(Ok(_)))
}

thread_local! {
    /// The series recorded on every request, by their name and label values (the `&'static str`s'
    /// addresses: every value is a constant of this crate). `counter!` with labels builds a key (a
    /// `Vec` of labels), hashes it and looks it up in the shared registry on each call; a handle is
    /// an `Arc` to the series itself. Filled only once the recorder is installed (a handle taken
    /// before would point at no recorder for good).
    static COUNTERS: RefCell<HashMap<Series<4>, Counter, AddressHash>> = RefCell::new(HashMap::default());
    static HISTOGRAMS: RefCell<HashMap<Series<3>, Histogram, AddressHash>> = RefCell::new(HashMap::default());
}

/// A series by the addresses of its name and label values (unused label slots are 0).
#[derive(PartialEq, Eq)]
struct Series<const N: usize>([usize; N]);

impl<const N: usize> std::hash::Hash for Series<N> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Word by word, without the length prefix that hashing the array would add.
        for address in self.0 {
            state.write_u64(address as u64);
        }
    }
}

/// A hash for the caches' keys, which are addresses of constants (nothing a client chooses): one
/// multiply per word (FxHash's) instead of SipHash, which cost more than the lookup it served.
#[derive(Clone, Copy, Default)]
struct AddressHash;

impl std::hash::BuildHasher for AddressHash {
    type Hasher = AddressHasher;
    fn build_hasher(&self) -> AddressHasher {
        AddressHasher(0)
    }
}

struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    // `Series` writes one premixed word; anything else is mixed in word by word.
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Gives `apply` the handle of series `name{pairs}` from `cache`, registered with the recorder the
/// first time (`register`); nothing without the recorder. The handle is used where it is kept: a
/// clone would be an `Arc` increment and decrement, on a count every worker thread shares, per call.
/// `N` is one more than the most labels the cache's series have.
fn with_cached<T, const N: usize>(
    cache: &'static std::thread::LocalKey<RefCell<HashMap<Series<N>, T, AddressHash>>>,
    name: &'static str,
    pairs: &[(&'static str, &'static str)],
    register: impl FnOnce(&dyn metrics::Recorder, &Key) -> T,
    apply: impl FnOnce(&T),
) {
    if !installed() {
        return;
    }
    debug_assert!(pairs.len() < N, "{name}: more labels than its cache keys");
    let mut id = [0usize; N];
    id[0] = name.as_ptr() as usize;
    for (slot, (_, value)) in id[1..].iter_mut().zip(pairs) {
        *slot = value.as_ptr() as usize;
    }
    let series = Series(id);
    cache.with_borrow_mut(|cache| {
        if let Some(handle) = cache.get(&series) {
            return apply(handle);
        }
        let labels: Vec<Label> = pairs
            .iter()
            .map(|(k, v)| Label::from_static_parts(k, v))
            .collect();
        let handle = metrics::with_recorder(|r| register(r, &Key::from_parts(name, labels)));
        apply(cache.entry(series).or_insert(handle));
    });
}

/// `counter!(name, k1 => v1, ...).increment(by)` (up to three labels), its handle kept per thread.
fn count(name: &'static str, pairs: &[(&'static str, &'static str)], by: u64) {
    with_cached(
        &COUNTERS,
        name,
        pairs,
        |r, key| r.register_counter(key, &METADATA),
        |c: &Counter| c.increment(by),
    );
}

/// `histogram!(name, k1 => v1, ...).record(value)` (up to two labels), its handle kept per thread.
fn observe(name: &'static str, pairs: &[(&'static str, &'static str)], value: f64) {
    with_cached(
        &HISTOGRAMS,
        name,
        pairs,
        |r, key| r.register_histogram(key, &METADATA),
        |h: &Histogram| h.record(value),
    );
}

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by status.");
    describe_counter!(
        GRAPHQL_REQUESTS,
        "GraphQL requests by root field (operation) and extensions.code (OK when no error)."
    );
    describe_histogram!(
        GRAPHQL_DURATION,
        "GraphQL request latency by root field, seconds."
    );
    describe_counter!(
        SMS_JOBS,
        "SMS delivery jobs by provider, calling code and outcome (sent, retried, dead_lettered, expired)."
    );
    describe_gauge!(
        SMS_OUTBOX_DEPTH,
        "Jobs in the SMS outbox (queued or being delivered)."
    );
    describe_gauge!(
        SMS_OUTBOX_OLDEST_AGE,
        "Age of the oldest job in the SMS outbox, seconds."
    );
    describe_gauge!(
        SMS_DEAD_LETTERS,
        "Dead letters kept in the SMS dead-letter stream."
    );
    describe_counter!(CODES_ISSUED, "One-time codes issued (sent or test numbers).");
    describe_counter!(
        CODES_VERIFIED,
        "One-time codes verified: against codes issued, the first sign of SMS pumping."
    );
    describe_counter!(CODE_CHECKS_FAILED, "Wrong, expired or burnt code checks.");
    describe_counter!(
        BUDGET_REFUSALS,
        "Requests refused by a budget or a number policy, by budget."
    );
    describe_counter!(LOCKOUTS, "Phones locked for password sign-in.");
    describe_counter!(UNLOCKS, "Password locks lifted, by how (code, admin).");
    describe_gauge!(HASH_QUEUE_DEPTH, "Password hashes queued or running.");
    describe_histogram!(HASH_WAIT, "Time a password hash waited for a thread, seconds.");
    describe_counter!(HASH_REFUSALS, "Sign-ins refused because hashing was saturated.");
    describe_counter!(STORE_ERRORS, "Store errors by store (postgres, redis) and kind.");
    describe_histogram!(
        STORE_DURATION,
        "Store call latency by store and operation, seconds."
    );
    describe_counter!(
        AUDIT_DROPPED,
        "High-volume audit events (code sent, failed check) dropped under overload."
    );
}

/// The root fields an `operation` label may take; anything else is `other`, so a client cannot grow
/// the label set.
const KNOWN_OPERATIONS: &[&str] = &[
    "generateCode",
    "verifyUser",
    "register",
    "login",
    "refreshToken",
    "logout",
    "me",
    "_entities",
    "_service",
    "__schema",
    "__type",
    "__typename",
    "changePassword",
    "resetPassword",
    "requestPhoneChange",
    "confirmPhoneChange",
    "mySessions",
    "revokeSession",
    "deleteAccount",
];

pub fn operation_label(root_field: Option<&str>) -> &'static str {
    match root_field {
        None => "none",
        Some(field) => KNOWN_OPERATIONS
            .iter()
            .find(|known| **known == field)
            .copied()
            .unwrap_or("other"),
    }
}

pub fn graphql_request(operation: &'static str, codes: &[&'static str], took: Duration) {
    if codes.is_empty() {
        count(GRAPHQL_REQUESTS, &[("operation", operation), ("code", "OK")], 1);
    }
    for code in codes {
        count(GRAPHQL_REQUESTS, &[("operation", operation), ("code", code)], 1);
    }
    observe(GRAPHQL_DURATION, &[("operation", operation)], took.as_secs_f64());
}

/// Static labels only: a label built per request (`status.to_string()`) is an allocation and a
/// string hash for every answer.
pub fn http_request(status: u16) {
    let status = match status {
        200 => "200",
        204 => "204",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        413 => "413",
        415 => "415",
        500 => "500",
        503 => "503",
        s if (100..200).contains(&s) => "1xx",
        s if (200..300).contains(&s) => "2xx",
        s if (300..400).contains(&s) => "3xx",
        s if (400..500).contains(&s) => "4xx",
        _ => "5xx",
    };
    count(HTTP_REQUESTS, &[("status", status)], 1);
}

pub fn budget_refused(budget: &'static str) {
    count(BUDGET_REFUSALS, &[("budget", budget)], 1);
}

/// The outcome of the code issue script (`services::otp`): 0 issued, else the budget that refused.
pub fn issue_outcome(status: i64) {
    match status {
        0 => {
            count(CODES_ISSUED, &[], 1);
        }
        1 => budget_refused("phone_resend_cooldown"),
        2 => budget_refused("phone_sends"),
        3 => budget_refused("ip_code_requests"),
        4 => budget_refused("service_sms"),
        5 => budget_refused("outbox_full"),
        _ => {}
    }
}

/// The outcome of the code check script: 0 verified, 1 wrong, 2 wrong and burnt, else a budget.
pub fn check_outcome(status: i64) {
    match status {
        0 => count(CODES_VERIFIED, &[], 1),
        1 | 2 => {
            count(CODE_CHECKS_FAILED, &[], 1);
        }
        3 => budget_refused("phone_failures"),
        4 => budget_refused("ip_code_checks"),
        _ => {}
    }
}

pub fn sms_job(provider: &'static str, to: &str, outcome: &'static str) {
    let labels = [
        ("provider", provider),
        ("country_code", calling_code(to)),
        ("outcome", outcome),
    ];
    count(SMS_JOBS, &labels, 1);
}

/// The calling code of an E.164 number (`+44...` -> "44"): a region label of bounded cardinality
/// (about 230 codes) that names no subscriber. Each code's label is made once (and kept: a
/// `&'static str`, so the series handle is cached like the others).
fn calling_code(e164: &str) -> &'static str {
    static LABELS: std::sync::Mutex<Vec<(u16, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let digits = e164.trim_start_matches('+');
    // ITU-T E.164 calling codes are prefix-free: 1 to 3 digits.
    for len in 1..=3 {
        let Some(code) = digits.get(..len).and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        let mut labels = LABELS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, label)) = labels.iter().find(|(c, _)| *c == code) {
            return label;
        }
        if phonenumber::metadata::DATABASE.by_code(&code).is_some() {
            let label: &'static str = Box::leak(code.to_string().into_boxed_str());
            labels.push((code, label));
            return label;
        }
    }
    "unknown"
}

pub fn store_error(store: &'static str, kind: &'static str) {
    counter!(STORE_ERRORS, "store" => store, "kind" => kind).increment(1);
}

/// Times a store call: `timed("redis", "script", fut)` records its latency in
/// `phone_auth_store_duration_seconds{store, operation}`. Without the recorder, just `fut`.
pub async fn timed<T>(store: &'static str, operation: &'static str, fut: impl Future<Output = T>) -> T {
    if !installed() {
        return fut.await;
    }
    let start = Instant::now();
    let out = fut.await;
    observe(
        STORE_DURATION,
        &[("store", store), ("operation", operation)],
        start.elapsed().as_secs_f64(),
    );
    out
}

/// Whether store calls are timed (the recorder is installed): callers that would box a future only
/// to time it ask first.
pub fn timing_stores() -> bool {
    installed()
}

/// Serves `GET /metrics` on `addr` (its own listener, in the background).
pub async fn serve(addr: std::net::SocketAddr, handle: PrometheusHandle) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on METRICS_ADDR {addr}"))?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    );
    tracing::info!(%addr, "metrics at /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(())
}

pub fn set_gauge(name: &'static str, value: f64) {
    gauge!(name).set(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(operation_label(Some("login")), "login");
        assert_eq!(operation_label(Some("attackerChosenName")), "other");
        assert_eq!(operation_label(None), "none");
        assert_eq!(calling_code("+16502530000"), "1");
        assert_eq!(calling_code("+442079460000"), "44");
        assert_eq!(calling_code("+989121234567"), "98");
        assert_eq!(calling_code("+3584573975"), "358");
        assert_eq!(calling_code("garbage"), "unknown");
    }
}
