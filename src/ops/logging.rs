//! Logs: the subscriber (`LOG_FORMAT=json|text`; colours only on a terminal and without `NO_COLOR`),
//! request ids, and one access log line per request.
//!
//! At `info` the request span (its id) is the only span: the services' `#[instrument]` spans are at
//! `debug`, since formatting three more spans for every request cost more than the access line
//! itself (`RUST_LOG=phone_auth=debug` brings them back).
//!
//! Never logged: a phone in clear (masked: `+1650***0000`), a code, a token, a password. The access
//! line carries the GraphQL root field and the `extensions.code`s, never variables or the document.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (development).
    Text,
    /// One JSON object per line (production: log pipelines parse it).
    Json,
}

/// Installs the subscriber. Lines are formatted on the thread that logs them and written to stdout in
/// batches (`log_writer`). Keep the guard until exit: dropping it writes what is buffered.
#[must_use = "dropping the guard may lose the last lines"]
pub fn init(format: LogFormat) -> crate::ops::log_writer::FlushGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // https://no-color.org: any non-empty NO_COLOR turns colours off; a file or a pipe never gets
    // escape codes.
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (writer, guard) = crate::ops::log_writer::batched_stdout();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.with_ansi(ansi).init(),
    }
    guard
}

/// `+16502530000` -> `+1650***0000`: enough to tell numbers apart in an investigation, not enough to
/// call one.
pub fn mask_phone(e164: &str) -> String {
    let chars: Vec<char> = e164.chars().collect();
    if chars.len() < 9 {
        return "***".to_owned();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's `X-Request-Id` is kept when it is 1 to 128 characters of `[A-Za-z0-9._:-]` (what
/// proxies and tracing systems send: UUIDs, hex, ULIDs); otherwise a new one is made, so a log line
/// can never be forged or split through it.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        })
        .map_or_else(new_request_id, str::to_owned)
}

/// A new request id: a random (version 4) UUID from the thread's CSPRNG (rand's `ThreadRng`, seeded
/// from the OS). Random, so it tells a client nothing about our traffic (a counter would), without a
/// getrandom call per request (`Uuid::new_v4` makes one).
fn new_request_id() -> String {
    use rand::RngExt as _;
    uuid::Builder::from_random_bytes(rand::rng().random())
        .into_uuid()
        .to_string()
}

/// What the GraphQL handler learned, for the access line and the metrics (response extension).
#[derive(Clone, Debug)]
pub struct GraphqlOutcome {
    /// `query` or `mutation`, when the document parsed.
    pub kind: &'static str,
    /// The operation's first root field, bounded (`ops::metrics::operation_label`).
    pub operation: &'static str,
    /// The `extensions.code`s answered, as the constants of `graphql::error::codes`.
    pub codes: Vec<&'static str>,
    pub client_ip: std::net::IpAddr,
}

/// Request id in, request id out, a span around the request (so every line it logs carries the id),
/// one access line and the request metrics at the end.
pub async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = request_id(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(req).instrument(span.clone()).await;
    let took = start.elapsed();
    let status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    crate::ops::metrics::http_request(status);
    let _entered = span.enter();
    match response.extensions().get::<GraphqlOutcome>() {
        Some(outcome) => {
            crate::ops::metrics::graphql_request(outcome.operation, &outcome.codes, took);
            tracing::info!(
                target: "phone_auth::access",
                %method, %path, status,
                kind = outcome.kind,
                operation = outcome.operation,
                codes = %outcome.codes.join(","),
                latency_ms = took.as_secs_f64() * 1000.0,
                client_ip = %outcome.client_ip,
                "request"
            );
        }
        None => tracing::info!(
            target: "phone_auth::access",
            %method, %path, status,
            latency_ms = took.as_secs_f64() * 1000.0,
            client_ip = %peer.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            "request"
        ),
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_masked() {
        assert_eq!(mask_phone("+16502530000"), "+1650***0000");
        assert_eq!(mask_phone("+442079460000"), "+4420***0000");
        assert_eq!(mask_phone("+1234"), "***");
    }

    #[test]
    fn request_ids_are_kept_only_when_safe() {
        let req = |v: &str| {
            Request::builder()
                .header("x-request-id", v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(request_id(&req("abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in ["", "a b", "evil\"}", &"a".repeat(129), "semi;colon"] {
            let id = request_id(&req(bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 36, "a fresh UUID-shaped id");
        }
        let (a, b) = (request_id(&req("")), request_id(&req("")));
        assert_ne!(a, b, "never the same twice");
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
    }
}
