//! The audit trail: security events in PostgreSQL (`audit_events`, migrations/), kept
//! `AUDIT_RETENTION_DAYS` (deleted by the hourly purge).
//!
//! Two ways in, by what an event is worth:
//! - account events (signed up, signed in, token refreshed, refresh reuse, signed out) are written by
//!   the same SQL statement as the change they record (`AuditRow::cte`), so there is never one without
//!   the other; account events with no change of ours in PostgreSQL (sign-in failed, locked, unlocked)
//!   go through a bounded queue with backpressure (`record`: the flow waits for room, never drops);
//! - high-volume code events (code sent, checked, failed, burnt) go through a second bounded queue
//!   that drops under overload (`record_bulk`, counted in `phone_auth_audit_events_dropped_total`):
//!   an SMS-pumping flood must not turn into a write flood, nor slow or fail a request.
//!
//! One writer task empties both queues in batches (one COPY of up to 4,096 rows, at most every
//! 100 ms under load); at shutdown `AuditLog::close` has it write what is queued before the process
//! exits.
//!
//! Who is asking (client IP, user agent) is request-scoped: the HTTP layer sets `CALLER` around the
//! request, and `AuthService::detached` carries it into the flow's task, so flows do not thread it
//! through every signature only to log it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::domain::PhoneNumber;
use crate::ops::logging::mask_phone;

tokio::task_local! {
    /// The caller of the request being served (set by the HTTP layer).
    pub static CALLER: Caller;
}

/// Built for every GraphQL request and copied into each of its events: the user agent is shared,
/// not copied.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub ip: Option<IpAddr>,
    /// Truncated to 256 characters.
    pub user_agent: Option<Arc<str>>,
}

impl Caller {
    pub fn new(ip: IpAddr, user_agent: Option<&str>) -> Self {
        Caller {
            ip: Some(ip),
            user_agent: user_agent.map(|ua| match ua.char_indices().nth(256) {
                Some((end, _)) => Arc::from(&ua[..end]),
                None => Arc::from(ua),
            }),
        }
    }

    /// The caller of the current request, if any.
    pub fn current() -> Caller {
        CALLER.try_with(Caller::clone).unwrap_or_default()
    }
}

/// One event, ready to insert.
#[derive(Clone, Debug)]
pub struct AuditRow {
    /// When it happened (not when it was written: queued events are written a little later).
    pub at: time::OffsetDateTime,
    pub event: &'static str,
    pub user_id: Option<Uuid>,
    pub phone_masked: Option<String>,
    pub phone_digest: Option<Vec<u8>>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<Arc<str>>,
    pub session_id: Option<Uuid>,
    pub detail: Value,
}

/// The lookup key of a phone in the trail: SHA-256 of `phone-auth audit\0` and the E.164 number.
pub fn phone_digest(e164: &str) -> Vec<u8> {
    Sha256::new()
        .chain_update(b"phone-auth audit\0")
        .chain_update(e164.as_bytes())
        .finalize()
        .to_vec()
}

impl AuditRow {
    /// An event of the current request's caller.
    pub fn new(event: &'static str) -> Self {
        let caller = Caller::current();
        AuditRow {
            at: time::OffsetDateTime::now_utc(),
            event,
            user_id: None,
            phone_masked: None,
            phone_digest: None,
            client_ip: caller.ip,
            user_agent: caller.user_agent,
            session_id: None,
            detail: Value::Object(Default::default()),
        }
    }

    pub fn phone(mut self, phone: &PhoneNumber) -> Self {
        self.phone_masked = Some(mask_phone(phone.e164()));
        self.phone_digest = Some(phone_digest(phone.e164()));
        self
    }

    /// A stored E.164 phone (a user's).
    pub fn phone_e164(mut self, e164: &str) -> Self {
        self.phone_masked = Some(mask_phone(e164));
        self.phone_digest = Some(phone_digest(e164));
        self
    }

    pub fn user(mut self, user_id: Uuid) -> Self {
        self.user_id = Some(user_id);
        self
    }

    pub fn session(mut self, session_id: Uuid) -> Self {
        self.session_id = Some(session_id);
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    /// A data-modifying CTE that inserts this row inside another statement, once per row of the CTE
    /// `from` (so only when that change happened): `first` is the number of the first of the nine
    /// bind parameters it uses (bind them with `bind_audit!`); `user` and `session` replace the bound
    /// user and session ids with columns of `from` when given.
    pub fn cte(first: usize, from: &str, user: Option<&str>, session: Option<&str>) -> String {
        let p: Vec<String> = (first..first + 9).map(|i| format!("${i}")).collect();
        let user = user.map_or(format!("{}::uuid", p[2]), str::to_owned);
        let session = session.map_or(format!("{}::uuid", p[7]), str::to_owned);
        format!(
            "audit as (insert into audit_events (at, event, user_id, phone_masked, phone_digest, client_ip, \
             user_agent, session_id, detail) select {}::timestamptz, {}, {user}, {}, {}, {}, {}, {session}, \
             {}::jsonb from {from})",
            p[0], p[1], p[3], p[4], p[5], p[6], p[8]
        )
    }
}

/// Binds the eight parameters of `AuditRow::cte` to any sqlx query (`query`, `query_as`,
/// `query_scalar` have no common trait for `bind`).
#[macro_export]
macro_rules! bind_audit {
    ($query:expr, $row:expr) => {{
        let row: &$crate::services::audit::AuditRow = &$row;
        $query
            .bind(row.at)
            .bind(row.event)
            .bind(row.user_id)
            .bind(row.phone_masked.clone())
            .bind(row.phone_digest.clone())
            .bind(row.client_ip.map(|ip| ip.to_string()))
            .bind(row.user_agent.as_deref().map(str::to_owned))
            .bind(row.session_id)
            .bind(row.detail.clone())
    }};
}

/// Rows per COPY at most.
const BATCH: usize = 4096;
/// How long the writer lets a batch fill after its first row: at most this much later in the table.
/// Each COPY is a transaction with its own WAL flush: 200,000 code rows cost PostgreSQL 1.07-1.34 s
/// of CPU in COPYs of 400 rows (20 ms at 20,000 events a second) and 0.71-0.90 s in COPYs of 2,000
/// (100 ms): docs/BENCHMARKS.md, session 8. Shutdown does not wait for it (`AuditLog::close`).
const LINGER: Duration = Duration::from_millis(100);
/// Account events waiting at most (a flow waits for room beyond this).
const ACCOUNT_QUEUE: usize = 4096;
/// Code events waiting at most (dropped and counted beyond this): two lingers' worth at 100,000
/// events a second, a few MB at most.
const BULK_QUEUE: usize = 32768;

#[derive(Clone)]
pub struct AuditLog {
    account: mpsc::Sender<AuditRow>,
    bulk: mpsc::Sender<AuditRow>,
    /// AUDIT_CODE_EVENTS.
    code_events: bool,
    control: Arc<Control>,
}

/// Between `AuditLog::close` and the writer task.
struct Control {
    /// Set by `close`: write what is queued now, without lingering, then stop.
    closing: std::sync::atomic::AtomicBool,
    /// Wakes the writer out of its linger (a permit is kept if it is not waiting yet).
    wake: tokio::sync::Notify,
    /// True once the writer has stopped (everything queued before `close` is written).
    stopped: tokio::sync::watch::Sender<bool>,
    /// Rows taken from the queues but not written yet (the batch in hand), for `close`'s report.
    in_hand: std::sync::atomic::AtomicUsize,
}

impl Control {
    fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Where the trail is kept: PostgreSQL (`audit_events`), or the embedded backend's memory.
#[derive(Clone)]
pub enum AuditSink {
    Postgres(PgPool),
    Embedded(std::sync::Arc<crate::services::embedded::Db>),
}

impl AuditSink {
    async fn insert(&self, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
        match self {
            AuditSink::Postgres(pool) => {
                crate::ops::metrics::timed("postgres", "audit_copy", copy_batch(pool, rows)).await
            }
            AuditSink::Embedded(db) => {
                db.audit_insert(rows);
                Ok(())
            }
        }
    }

    /// Deletes events older than `days`. Returns how many.
    pub async fn purge(&self, days: u32) -> Result<u64, sqlx::Error> {
        match self {
            AuditSink::Postgres(pool) => purge(pool, days).await,
            AuditSink::Embedded(db) => Ok(db.audit_purge(days)),
        }
    }
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    /// `code_events`: AUDIT_CODE_EVENTS (false: `record_bulk` records nothing).
    pub fn start(sink: AuditSink, code_events: bool) -> Self {
        let (account, account_rx) = mpsc::channel(ACCOUNT_QUEUE);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
        let control = Arc::new(Control {
            closing: false.into(),
            wake: tokio::sync::Notify::new(),
            stopped: tokio::sync::watch::Sender::new(false),
            in_hand: 0.into(),
        });
        tokio::spawn(writer(sink, account_rx, bulk_rx, control.clone()));
        AuditLog {
            account,
            bulk,
            code_events,
            control,
        }
    }

    /// At shutdown, once no request or flow is left to record anything: writes every queued event
    /// now (no linger) and waits for the writer to stop, at most `grace` (PostgreSQL down: it keeps
    /// retrying until then). False, with an error logged that says how many events are lost, if it
    /// did not finish. Events recorded after this are not written.
    pub async fn close(&self, grace: Duration) -> bool {
        use std::sync::atomic::Ordering;
        self.control.closing.store(true, Ordering::Release);
        self.control.wake.notify_one();
        let mut stopped = self.control.stopped.subscribe();
        if tokio::time::timeout(grace, stopped.wait_for(|s| *s))
            .await
            .is_ok()
        {
            return true;
        }
        let queued = (self.account.max_capacity() - self.account.capacity())
            + (self.bulk.max_capacity() - self.bulk.capacity())
            + self.control.in_hand.load(Ordering::Relaxed);
        tracing::error!(
            events = queued,
            ?grace,
            "shutdown: the audit writer could not write its queued events in time; they are lost"
        );
        false
    }

    /// An account event with no PostgreSQL change of its own: waits for room, never dropped.
    pub async fn record(&self, row: AuditRow) {
        if self.account.send(row).await.is_err() {
            tracing::error!("the audit writer has stopped: an account event was not recorded");
        }
    }

    /// A high-volume code event: dropped (and counted) when the queue is full, never waited for.
    /// `row` is built only when code events are recorded.
    pub fn record_bulk(&self, row: impl FnOnce() -> AuditRow) {
        if !self.code_events {
            return;
        }
        if self.bulk.try_send(row()).is_err() {
            metrics::counter!(crate::ops::metrics::AUDIT_DROPPED).increment(1);
        }
    }
}

async fn writer(
    sink: AuditSink,
    mut account: mpsc::Receiver<AuditRow>,
    mut bulk: mpsc::Receiver<AuditRow>,
    control: Arc<Control>,
) {
    use std::sync::atomic::Ordering;
    let mut batch = Vec::with_capacity(BATCH);
    let (mut account_open, mut bulk_open) = (true, true);
    loop {
        if control.closing() {
            // Closing: whatever is queued, in full batches, then stop.
            if !fill(&mut batch, &mut account, &mut bulk) && batch.is_empty() {
                break;
            }
        } else {
            // Account events first: they are the ones that must not wait behind a flood.
            tokio::select! {
                biased;
                row = account.recv(), if account_open => match row {
                    Some(row) => batch.push(row),
                    None => {
                        account_open = false;
                        continue;
                    }
                },
                row = bulk.recv(), if bulk_open => match row {
                    Some(row) => batch.push(row),
                    None => {
                        bulk_open = false;
                        continue;
                    }
                },
                () = control.wake.notified(), if account_open || bulk_open => continue,
                // Every `AuditLog` dropped and nothing queued.
                else => break,
            }
            // Let the batch fill for `LINGER` before writing it: rows arriving meanwhile are queued
            // without waking this task, and a busy server makes one COPY (one transaction, one WAL
            // flush) every `LINGER` instead of one per handful of rows. A backlog (a full batch
            // already) is written back to back; `close` cuts the wait short.
            if !fill(&mut batch, &mut account, &mut bulk) {
                tokio::select! {
                    () = tokio::time::sleep(LINGER) => {}
                    () = control.wake.notified() => {}
                }
                fill(&mut batch, &mut account, &mut bulk);
            }
        }
        control.in_hand.store(batch.len(), Ordering::Relaxed);
        // A failed batch is retried (PostgreSQL down): account events must not be lost while the
        // process lives; backpressure holds new ones meanwhile.
        let mut wait = Duration::from_millis(100);
        while let Err(e) = sink.insert(&batch).await {
            tracing::warn!(error = %e, events = batch.len(), "writing audit events failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        batch.clear();
        control.in_hand.store(0, Ordering::Relaxed);
    }
    control.stopped.send_replace(true);
}

/// Takes what is queued, account events first, up to `BATCH` rows. True when the batch is full.
fn fill(
    batch: &mut Vec<AuditRow>,
    account: &mut mpsc::Receiver<AuditRow>,
    bulk: &mut mpsc::Receiver<AuditRow>,
) -> bool {
    while batch.len() < BATCH {
        match account.try_recv().or_else(|_| bulk.try_recv()) {
            Ok(row) => batch.push(row),
            Err(_) => return false,
        }
    }
    true
}

/// Writes one event now (admin commands: a short-lived process has no writer task to wait for).
pub async fn write_now(pool: &PgPool, row: &AuditRow) -> Result<(), sqlx::Error> {
    insert(pool, std::slice::from_ref(row)).await
}

/// Writes one event inside the caller's transaction (a change made of several statements: the event
/// commits with it, or not at all).
pub async fn write_in(conn: &mut sqlx::PgConnection, row: &AuditRow) -> Result<(), sqlx::Error> {
    insert(conn, std::slice::from_ref(row)).await
}

async fn insert<'e>(exec: impl sqlx::PgExecutor<'e>, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
    let mut qb = sqlx::QueryBuilder::new(
        "insert into audit_events (at, event, user_id, phone_masked, phone_digest, client_ip, user_agent, session_id, detail) ",
    );
    qb.push_values(rows, |mut b, r| {
        b.push_bind(r.at)
            .push_bind(r.event)
            .push_bind(r.user_id)
            .push_bind(r.phone_masked.clone())
            .push_bind(r.phone_digest.clone())
            .push_bind(r.client_ip.map(|ip| ip.to_string()))
            .push_bind(r.user_agent.as_deref().map(str::to_owned))
            .push_bind(r.session_id)
            .push_bind(r.detail.clone());
    });
    qb.build().execute(exec).await.map(|_| ())
}

/// The writer's batches go in by `COPY ... FROM STDIN` in PostgreSQL's binary format: one statement
/// whatever the batch size, every field written with its length (nothing to escape, so no value can
/// end a field or a row) and nothing for PostgreSQL to parse. A multi-row INSERT was a new statement
/// for every batch size (each prepared, planned and cached per connection) with 9 bind parameters a
/// row (docs/BENCHMARKS.md, session 5). Against COPY's text format, the binary one loaded 200,000
/// code rows in 0.51-0.58 s instead of 0.66-0.98 s (psql); in the load benchmark PostgreSQL's CPU per
/// audited request did not measurably change (about 5 us either way: session 8).
async fn copy_batch(pool: &PgPool, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
    use sqlx::postgres::PgPoolCopyExt as _;
    let mut data = Vec::with_capacity(COPY_HEADER.len() + rows.len() * 160 + 2);
    data.extend_from_slice(COPY_HEADER);
    for r in rows {
        encode_copy_row(&mut data, r);
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    let mut copy = pool
        .copy_in_raw(
            "copy audit_events (at, event, user_id, phone_masked, phone_digest, client_ip, user_agent, \
             session_id, detail) from stdin with (format binary)",
        )
        .await?;
    if let Err(e) = copy.send(data).await {
        let _ = copy.abort("the batch could not be sent").await;
        return Err(e);
    }
    copy.finish().await.map(|_| ())
}

/// The binary COPY file header: signature, flags (no OIDs), no header extension (PostgreSQL docs,
/// COPY, "Binary Format").
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One tuple of COPY's binary format: the field count, then each field as its length (-1: null)
/// and its bytes in the type's binary (`send`) representation: timestamptz an i64 of microseconds
/// since 2000, uuid its 16 bytes, text its UTF-8, bytea its bytes, jsonb a version byte (1) then
/// the JSON text. Lengths are written, never searched for, so no value (a hostile user agent) can
/// end a field or a row. Written straight into the batch: no allocation per field.
fn encode_copy_row(out: &mut Vec<u8>, r: &AuditRow) {
    fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                // A field is far below 2 GiB: a user agent is cut at 256 characters.
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    // A field written in place (an address as text, the JSON): its length is patched in after.
    fn written(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        write(out);
        let len = (out.len() - at - 4) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&9i16.to_be_bytes());
    // Floor to the microsecond (what PostgreSQL keeps), before or after 1970 alike.
    let micros = i64::try_from(r.at.unix_timestamp_nanos().div_euclid(1000)).unwrap_or(i64::MAX);
    field(out, Some(&micros.saturating_sub(PG_EPOCH_MICROS).to_be_bytes()));
    field(out, Some(r.event.as_bytes()));
    field(out, r.user_id.as_ref().map(|u| u.as_bytes().as_slice()));
    field(out, r.phone_masked.as_deref().map(str::as_bytes));
    field(out, r.phone_digest.as_deref());
    match r.client_ip {
        None => field(out, None),
        ip => written(out, |out| crate::ops::logging::write_ip(out, ip)),
    }
    field(out, r.user_agent.as_deref().map(str::as_bytes));
    field(out, r.session_id.as_ref().map(|u| u.as_bytes().as_slice()));
    written(out, |out| {
        out.push(1);
        let _ = serde_json::to_writer(&mut *out, &r.detail);
    });
}

/// Deletes events older than `days`. Returns how many.
pub async fn purge(pool: &PgPool, days: u32) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("delete from audit_events where at < now() - make_interval(days => $1)")
        .bind(i32::try_from(days).unwrap_or(i32::MAX))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// An event as `admin audit` prints it.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: i64,
    pub at: time::OffsetDateTime,
    pub event: String,
    pub user_id: Option<Uuid>,
    pub phone_masked: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<Uuid>,
    pub detail: Value,
}

/// The newest `limit` events of a user or a phone, oldest first.
pub async fn read(
    pool: &PgPool,
    user_id: Option<Uuid>,
    phone: Option<&str>,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let mut rows: Vec<StoredEvent> = sqlx::query_as(
        "select id, at, event, user_id, phone_masked, client_ip, user_agent, session_id, detail
         from audit_events
         where ($1::uuid is null or user_id = $1) and ($2::bytea is null or phone_digest = $2)
         order by at desc, id desc limit $3",
    )
    .bind(user_id)
    .bind(phone.map(phone_digest))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.reverse();
    Ok(rows)
}
