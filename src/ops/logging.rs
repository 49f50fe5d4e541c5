//! Logs: the subscriber (`LOG_FORMAT=json|text`; colours only on a terminal and without `NO_COLOR`),
//! request ids, and one access log line per request.
//!
//! Every line logged while a request is served carries its id, as if in a span `request{request_id=..}`
//! (text: that prefix; JSON: `"span":{"request_id":..,"name":"request"}`). The id is not a tracing
//! span but a task-local (`CURRENT_REQUEST`, carried into detached flows), read by our line format
//! (`Lines`): a span per request, entered and left at every poll of the request's future, cost more
//! than the access line itself (docs/BENCHMARKS.md, session 7). The services' `#[instrument]` spans
//! are at `debug` (`RUST_LOG=phone_auth=debug` shows them in text lines).
//!
//! The access line is written by hand (`AccessLine`), in the same layout as the other lines,
//! straight into the batched writer: formatting it through tracing-subscriber's field visitors cost
//! more than the rest of the line's work together. `RUST_LOG` still decides whether it is written
//! (target `phone_auth::access`, level info).
//!
//! Never logged: a phone in clear (masked: `+1650***0000`), a code, a token, a password. The access
//! line carries the GraphQL root field and the `extensions.code`s, never variables or the document.

use std::cell::{Cell, RefCell};
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    /// The id of the request being served: set by `access_log` around the request, carried into
    /// detached flows (`AuthService::detached`), read by `Lines` for every line.
    pub static CURRENT_REQUEST: Arc<str>;
}

/// The id of the request being served here, if any.
pub fn current_request() -> Option<Arc<str>> {
    CURRENT_REQUEST.try_with(Arc::clone).ok()
}

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
    let _ = ACCESS_SINK.set(AccessSink {
        out: writer.clone(),
        json: format == LogFormat::Json,
        ansi,
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(Lines { json: true })
            .init(),
        LogFormat::Text => builder.with_ansi(ansi).event_format(Lines { json: false }).init(),
    }
    guard
}

/// The line format of every event: tracing-subscriber's layouts (full text, or flattened JSON with
/// the current span), with the request id of `CURRENT_REQUEST` where its span would be.
/// JSON: `{"timestamp":..,"level":..,<fields>,"target":..[,"span":{"request_id":..,"name":"request"}]}`.
/// Text: `<time> <LEVEL> [request{request_id=..}:][<debug spans>:] <target>: <fields>`.
struct Lines {
    json: bool,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // An event a crate emitted through `log` has the target "log" and its own in a field: the
        // subscriber's formats print the real one, and so does this.
        let normalized = tracing_log::NormalizeEvent::normalized_metadata(event);
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let request = current_request();
        let mut now = Vec::with_capacity(27);
        timestamp(&mut now);
        let now = std::str::from_utf8(&now).unwrap_or("-");
        if self.json {
            // The fields as one JSON object (`JsonFields`), flattened into the line.
            let mut fields = String::new();
            ctx.format_fields(Writer::new(&mut fields), event)?;
            if normalized.is_some() {
                // A `log` record: its metadata came as `log.*` fields (already used above).
                if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(&fields) {
                    map.retain(|k, _| !k.starts_with("log."));
                    fields = serde_json::Value::Object(map).to_string();
                }
            }
            let fields = fields
                .trim()
                .strip_prefix('{')
                .and_then(|f| f.strip_suffix('}'))
                .unwrap_or("");
            write!(writer, "{{\"timestamp\":\"{now}\",\"level\":\"{}\"", meta.level())?;
            if !fields.is_empty() {
                write!(writer, ",{fields}")?;
            }
            write!(writer, ",\"target\":\"{}\"", meta.target())?;
            if let Some(id) = request {
                // Checked by `request_id`: nothing to escape.
                write!(
                    writer,
                    ",\"span\":{{\"request_id\":\"{id}\",\"name\":\"request\"}}"
                )?;
            }
            return writeln!(writer, "}}");
        }
        let ansi = writer.has_ansi_escapes();
        let paint = |code: &'static str| if ansi { code } else { "" };
        let (dim, bold, reset) = (paint("\x1b[2m"), paint("\x1b[1m"), paint("\x1b[0m"));
        let colour = match *meta.level() {
            tracing::Level::ERROR => paint("\x1b[31m"),
            tracing::Level::WARN => paint("\x1b[33m"),
            tracing::Level::INFO => paint("\x1b[32m"),
            tracing::Level::DEBUG => paint("\x1b[34m"),
            tracing::Level::TRACE => paint("\x1b[35m"),
        };
        write!(
            writer,
            "{dim}{now}{reset} {colour}{:>5}{reset} ",
            meta.level().as_str()
        )?;
        if let Some(id) = request {
            write!(
                writer,
                "{bold}request{{{reset}request_id={id}{bold}}}{reset}{dim}:{reset} "
            )?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{bold}{}", span.name())?;
                let extensions = span.extensions();
                match extensions.get::<FormattedFields<N>>() {
                    Some(fields) if !fields.is_empty() => {
                        write!(writer, "{{{reset}{fields}{bold}}}{reset}{dim}:{reset} ")?;
                    }
                    _ => write!(writer, "{reset}{dim}:{reset} ")?,
                }
            }
        }
        write!(writer, "{dim}{}:{reset} ", meta.target())?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// `+16502530000` -> `+1650***0000`: enough to tell numbers apart in an investigation, not enough to
/// call one.
pub fn mask_phone(e164: &str) -> String {
    // E.164 is ASCII: byte positions are characters.
    if e164.is_ascii() {
        if e164.len() < 9 {
            return "***".to_owned();
        }
        let mut masked = String::with_capacity(12);
        masked.push_str(&e164[..5]);
        masked.push_str("***");
        masked.push_str(&e164[e164.len() - 4..]);
        return masked;
    }
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
fn request_id(req: &Request) -> Arc<str> {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        })
        .map_or_else(new_request_id, Arc::from)
}

/// A new request id: a random (version 4) UUID from the thread's CSPRNG (rand's `ThreadRng`, seeded
/// from the OS). Random, so it tells a client nothing about our traffic (a counter would), without a
/// getrandom call per request (`Uuid::new_v4` makes one).
fn new_request_id() -> Arc<str> {
    use rand::RngExt as _;
    let uuid = uuid::Builder::from_random_bytes(rand::rng().random()).into_uuid();
    Arc::from(&*uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()))
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
    // `Uri` shares the request's bytes: no copy of the path unless a line is written.
    let uri = req.uri().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let mut response = CURRENT_REQUEST.scope(Arc::clone(&id), next.run(req)).await;
    let took = start.elapsed();
    let status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    crate::ops::metrics::http_request(status);
    let outcome = response.extensions().get::<GraphqlOutcome>();
    if let Some(outcome) = outcome {
        crate::ops::metrics::graphql_request(outcome.operation, &outcome.codes, took);
    }
    if tracing::enabled!(target: "phone_auth::access", tracing::Level::INFO)
        && let Some(sink) = ACCESS_SINK.get()
    {
        sink.write(&AccessLine {
            request_id: &id,
            method: method.as_str(),
            path: uri.path(),
            status,
            outcome,
            client_ip: outcome.map(|o| o.client_ip).or(peer),
            took,
        });
    }
    response
}

/// Where access lines go: set by `init` (the subscriber's writer and format). Without it (a process
/// that did not install our subscriber, such as the API tests) no access line is written.
static ACCESS_SINK: OnceLock<AccessSink> = OnceLock::new();

struct AccessSink {
    out: crate::ops::log_writer::BatchedStdout,
    json: bool,
    ansi: bool,
}

impl AccessSink {
    fn write(&self, line: &AccessLine<'_>) {
        thread_local! {
            static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            if self.json {
                line.json(buf);
            } else {
                line.text(buf, self.ansi);
            }
            self.out.append(buf);
        });
    }
}

/// One access line's fields. Nothing in it comes from the request unchecked except the path, which
/// is escaped in JSON (hyper has already refused control characters and spaces in it).
struct AccessLine<'a> {
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    outcome: Option<&'a GraphqlOutcome>,
    client_ip: Option<IpAddr>,
    took: Duration,
}

impl AccessLine<'_> {
    /// As tracing-subscriber's JSON format with `flatten_event(true)` and `with_current_span(true)`:
    /// `{"timestamp":..,"level":"INFO","message":"request",<fields>,"target":..,"span":{..}}`.
    fn json(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(buf);
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
        json_str(buf, self.method);
        buf.extend_from_slice(b",\"path\":");
        json_str(buf, self.path);
        buf.extend_from_slice(b",\"status\":");
        num(buf, u64::from(self.status));
        if let Some(o) = self.outcome {
            for (key, value) in [
                (&b",\"kind\":\""[..], o.kind),
                (b"\",\"operation\":\"", o.operation),
            ] {
                buf.extend_from_slice(key);
                buf.extend_from_slice(value.as_bytes());
            }
            buf.extend_from_slice(b"\",\"codes\":\"");
            codes(buf, &o.codes);
            buf.push(b'"');
        }
        buf.extend_from_slice(b",\"latency_ms\":");
        latency_ms(buf, self.took);
        buf.extend_from_slice(b",\"client_ip\":\"");
        write_ip(buf, self.client_ip);
        buf.extend_from_slice(b"\",\"target\":\"phone_auth::access\",\"span\":{\"request_id\":\"");
        // Checked by `request_id`: only `[A-Za-z0-9._:-]`, nothing to escape.
        buf.extend_from_slice(self.request_id.as_bytes());
        buf.extend_from_slice(b"\",\"name\":\"request\"}}\n");
    }

    /// As tracing-subscriber's full text format: `<time>  INFO request{request_id=..}: <target>:
    /// request method=POST ...`, with its colours on a terminal.
    fn text(&self, buf: &mut Vec<u8>, ansi: bool) {
        let paint = |code: &'static [u8]| -> &'static [u8] { if ansi { code } else { b"" } };
        let (dim, bold, italic) = (paint(b"\x1b[2m"), paint(b"\x1b[1m"), paint(b"\x1b[3m"));
        let (green, reset) = (paint(b"\x1b[32m"), paint(b"\x1b[0m"));
        let put = |buf: &mut Vec<u8>, parts: &[&[u8]]| {
            for part in parts {
                buf.extend_from_slice(part);
            }
        };
        buf.extend_from_slice(dim);
        timestamp(buf);
        put(
            buf,
            &[
                reset,
                b" ",
                green,
                b" INFO",
                reset,
                b" ",
                bold,
                b"request{",
                reset,
                b"request_id=",
            ],
        );
        buf.extend_from_slice(self.request_id.as_bytes());
        put(
            buf,
            &[
                bold,
                b"}",
                reset,
                dim,
                b":",
                reset,
                b" ",
                dim,
                b"phone_auth::access",
                reset,
            ],
        );
        put(buf, &[dim, b":", reset, b" request"]);
        let field = |buf: &mut Vec<u8>, name: &[u8]| put(buf, &[b" ", italic, name, reset, dim, b"=", reset]);
        field(buf, b"method");
        buf.extend_from_slice(self.method.as_bytes());
        field(buf, b"path");
        buf.extend_from_slice(self.path.as_bytes());
        field(buf, b"status");
        num(buf, u64::from(self.status));
        if let Some(o) = self.outcome {
            field(buf, b"kind");
            put(buf, &[b"\"", o.kind.as_bytes(), b"\""]);
            field(buf, b"operation");
            put(buf, &[b"\"", o.operation.as_bytes(), b"\""]);
            field(buf, b"codes");
            codes(buf, &o.codes);
        }
        field(buf, b"latency_ms");
        latency_ms(buf, self.took);
        field(buf, b"client_ip");
        write_ip(buf, self.client_ip);
        buf.push(b'\n');
    }
}

fn codes(buf: &mut Vec<u8>, codes: &[&'static str]) {
    for (i, code) in codes.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(code.as_bytes());
    }
}

fn num(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` in exactly `width` digits (zero-padded; `n` is below 10^width, `width` at most 10).
fn digits(buf: &mut Vec<u8>, mut n: u32, width: usize) {
    let mut out = [b'0'; 10];
    for slot in out[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&out[..width]);
}

/// Milliseconds with microsecond precision: `1.234`.
fn latency_ms(buf: &mut Vec<u8>, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    num(buf, micros / 1000);
    buf.push(b'.');
    digits(buf, (micros % 1000) as u32, 3);
}

/// An IP address as `Display` writes it (IPv4 without the formatter: it is on every line).
pub(crate) fn write_ip(buf: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        Some(IpAddr::V4(v4)) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                num(buf, u64::from(octet));
            }
        }
        Some(ip) => {
            let _ = write!(buf, "{ip}");
        }
        None => buf.push(b'-'),
    }
}

/// A JSON string (RFC 8259 section 7): quotes, backslashes and control characters escaped.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0..0x20 | 0x7f => {
                buf.extend_from_slice(b"\\u00");
                buf.extend_from_slice(hex::encode([b]).as_bytes());
            }
            _ => buf.push(b),
        }
    }
    buf.push(b'"');
}

/// `at` in UTC, RFC 3339 with microseconds (`2026-12-06T20:43:45.123456Z`): what `timestamptz` reads
/// back exactly to the microsecond (its precision), without a format description's interpretation.
pub fn rfc3339_utc(buf: &mut Vec<u8>, at: time::OffsetDateTime) {
    let at = at.to_offset(time::UtcOffset::UTC);
    let year = at.year();
    if !(0..=9999).contains(&year) {
        let _ = write!(buf, "{year}");
    } else {
        digits(buf, year.unsigned_abs(), 4);
    }
    for (sep, n) in [
        (b'-', u32::from(u8::from(at.month()))),
        (b'-', u32::from(at.day())),
        (b'T', u32::from(at.hour())),
        (b':', u32::from(at.minute())),
        (b':', u32::from(at.second())),
    ] {
        buf.push(sep);
        digits(buf, n, 2);
    }
    buf.push(b'.');
    digits(buf, at.microsecond(), 6);
    buf.push(b'Z');
}

/// Now, as `rfc3339_utc` writes it and the subscriber's timer does. The date and time of day are
/// formatted once a second per thread.
fn timestamp(buf: &mut Vec<u8>) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let prefix = SECOND.with(|cached| {
        let (second, prefix) = cached.get();
        if second == secs {
            return prefix;
        }
        let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let mut formatted = Vec::with_capacity(27);
        rfc3339_utc(&mut formatted, t);
        let mut prefix = [0u8; 19];
        prefix.copy_from_slice(&formatted[..19]);
        cached.set((secs, prefix));
        prefix
    });
    buf.extend_from_slice(&prefix);
    buf.push(b'.');
    digits(buf, now.subsec_micros(), 6);
    buf.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_masked() {
        assert_eq!(mask_phone("+16502530000"), "+1650***0000");
        assert_eq!(mask_phone("+442079460000"), "+4420***0000");
        assert_eq!(mask_phone("+1234"), "***");
        assert_eq!(mask_phone("+١٢٣٤٥٦٧٨٩٠"), "+١٢٣٤***٧٨٩٠");
    }

    fn line<'a>(outcome: Option<&'a GraphqlOutcome>, path: &'a str) -> AccessLine<'a> {
        AccessLine {
            request_id: "req-7f3a",
            method: "POST",
            path,
            status: 200,
            outcome,
            client_ip: Some("127.0.0.1".parse().unwrap()),
            took: Duration::from_micros(1_234),
        }
    }

    #[test]
    fn the_json_access_line_has_the_subscribers_shape() {
        let outcome = GraphqlOutcome {
            kind: "mutation",
            operation: "login",
            codes: vec!["INVALID_CREDENTIALS", "ACCOUNT_LOCKED"],
            client_ip: "10.1.2.3".parse().unwrap(),
        };
        let mut buf = Vec::new();
        line(Some(&outcome), "/graphql").json(&mut buf);
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["target"], "phone_auth::access");
        assert_eq!(v["span"]["request_id"], "req-7f3a");
        assert_eq!(v["span"]["name"], "request");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/graphql");
        assert_eq!(v["status"], 200);
        assert_eq!(v["kind"], "mutation");
        assert_eq!(v["operation"], "login");
        assert_eq!(v["codes"], "INVALID_CREDENTIALS,ACCOUNT_LOCKED");
        assert_eq!(v["latency_ms"], 1.234);
        assert_eq!(v["client_ip"], "127.0.0.1");
        let at = time::OffsetDateTime::parse(
            v["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!((time::OffsetDateTime::now_utc() - at).abs() < time::Duration::seconds(5));

        // A hostile path cannot break out of its string or the line.
        let mut buf = Vec::new();
        line(None, "/a\"b\\c\u{1}\n").json(&mut buf);
        assert_eq!(buf.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}\n");
        assert!(v.get("operation").is_none());
    }

    /// Lines as the subscriber of `init` formats them, into a buffer.
    fn captured(json: bool, log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_max_level(tracing::Level::DEBUG);
        if json {
            let subscriber = builder
                .with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(Lines { json: true })
                .finish();
            tracing::subscriber::with_default(subscriber, log);
        } else {
            let subscriber = builder
                .with_ansi(false)
                .event_format(Lines { json: false })
                .finish();
            tracing::subscriber::with_default(subscriber, log);
        }
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn lines_of_a_request_carry_its_id() {
        let in_request = || {
            CURRENT_REQUEST.sync_scope(Arc::from("req-7f3a"), || {
                tracing::warn!(target: "phone_auth::test", attempts = 3, "store \"slow\"");
            });
            tracing::warn!(target: "phone_auth::test", "outside");
        };
        let json = captured(true, in_request);
        let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{json}");
        assert_eq!(lines[0]["span"]["request_id"], "req-7f3a");
        assert_eq!(lines[0]["span"]["name"], "request");
        assert_eq!(lines[0]["message"], "store \"slow\"");
        assert_eq!(lines[0]["attempts"], 3);
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["target"], "phone_auth::test");
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(lines[1].get("span").is_none());

        let text = captured(false, in_request);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0]
                .ends_with(" WARN request{request_id=req-7f3a}: phone_auth::test: store \"slow\" attempts=3"),
            "{text}"
        );
        assert!(lines[1].ends_with(" WARN phone_auth::test: outside"), "{text}");

        // Debug spans (`RUST_LOG=phone_auth=debug`) still show in text lines, after the request.
        let text = captured(false, || {
            CURRENT_REQUEST.sync_scope(Arc::from("req-1"), || {
                let span = tracing::debug_span!("issue", phone = "+1650***0000");
                let _entered = span.enter();
                tracing::info!(target: "phone_auth::test", "inside");
            });
        });
        assert!(
            text.contains(
                "request{request_id=req-1}: issue{phone=\"+1650***0000\"}: phone_auth::test: inside"
            ),
            "{text}"
        );
    }

    #[test]
    fn lines_of_log_records_name_their_real_target() {
        // Records of crates that log through `log` reach the subscriber through its LogTracer.
        let _ = tracing_log::LogTracer::init();
        let text = captured(false, || log::warn!(target: "redis::aio", "reconnecting"));
        assert!(text.ends_with(" WARN redis::aio: reconnecting\n"), "{text}");
        let json = captured(true, || log::warn!(target: "redis::aio", "reconnecting"));
        let line: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(line["target"], "redis::aio", "{json}");
        assert_eq!(line["message"], "reconnecting");
        assert!(line.get("log.target").is_none(), "{json}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_to_the_microsecond() {
        let at = time::macros::datetime!(2026-12-06 20:43:45.123456789 +02:00);
        let mut buf = Vec::new();
        rfc3339_utc(&mut buf, at);
        assert_eq!(buf, b"2026-12-06T18:43:45.123456Z");
        let back = time::OffsetDateTime::parse(
            std::str::from_utf8(&buf).unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(back, at.replace_nanosecond(123_456_000).unwrap());
    }

    #[test]
    fn the_text_access_line_reads_like_the_others() {
        let mut buf = Vec::new();
        line(None, "/healthz").text(&mut buf, false);
        let text = String::from_utf8(buf).unwrap();
        let (at, rest) = text.split_once(' ').unwrap();
        assert!(at.ends_with('Z') && at.len() == 27, "{at}");
        assert_eq!(
            rest,
            " INFO request{request_id=req-7f3a}: phone_auth::access: request method=POST path=/healthz \
             status=200 latency_ms=1.234 client_ip=127.0.0.1\n"
        );
        let mut small = Vec::new();
        latency_ms(&mut small, Duration::from_micros(5));
        write_ip(&mut small, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(small, b"0.0052001:db8::1");
        let mut coloured = Vec::new();
        line(None, "/healthz").text(&mut coloured, true);
        assert!(coloured.contains(&0x1b));
    }

    #[test]
    fn request_ids_are_kept_only_when_safe() {
        let req = |v: &str| {
            Request::builder()
                .header("x-request-id", v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(&*request_id(&req("abc-123_x.y:z")), "abc-123_x.y:z");
        for bad in ["", "a b", "evil\"}", &"a".repeat(129), "semi;colon"] {
            let id = request_id(&req(bad));
            assert_ne!(&*id, bad);
            assert_eq!(id.len(), 36, "a fresh UUID-shaped id");
        }
        let (a, b) = (request_id(&req("")), request_id(&req("")));
        assert_ne!(a, b, "never the same twice");
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
    }
}
