//! The SMS outbox: a Redis Stream that `generateCode` appends to in the same Lua script that stores the
//! code (no code without a job, no job without a code), and workers that deliver from it through a
//! consumer group.
//!
//! Keys (bounded by length, and with a TTL like every key of the service):
//! - `sms:outbox` jobs {id, to, sealed, created_ms} (`sealed`: the code encrypted, see `job.rs`; never
//!   the code in clear), and notices {id, to, kind, created_ms} (no code; job.rs); at most `max_len`
//!   (a full outbox refuses new codes with SERVICE_UNAVAILABLE rather than trimming undelivered jobs);
//!   consumer group `sms-workers`.
//!   TTL `outbox_ttl(code lifetime)`, renewed by every new job: when it lapses, no job has been added
//!   for twice a code's lifetime (at least an hour), so every job left is one that would be dropped
//!   as expired anyway. Workers recreate the stream and group when it is gone.
//! - `sms:dead`   dead letters {id, to, reason, failed_ms} (never the code); trimmed to `dead_max_len`;
//!   TTL `DEAD_LETTER_TTL_SECONDS` (7 days), renewed by every new dead letter.
//!
//! A worker reads up to 16 jobs at a time and runs each delivery as a task of its own (a provider's
//! HTTP API answers in tens to hundreds of milliseconds: one message at a time would cap a worker at a
//! few messages a second), up to `MAX_IN_FLIGHT` at once; it reads again as soon as there is room, so
//! no job waits for another's backoff. The jobs that end together are finished by one script.
//!
//! Delivery is at least once: a job is acknowledged and deleted (so its code leaves Redis) only after
//! the provider accepted it or it was dead-lettered. Transient failures are retried in the worker with
//! exponential backoff and full jitter for as long as the code lives (a 25 s provider outage must not
//! cost the codes sent during it; `max_attempts`, unset by default, can bound the calls too); before
//! each retry the worker re-claims the job (XCLAIM JUSTID), which proves it still owns it and resets its
//! idle time. A job whose worker died stays pending and is claimed by another worker once idle for
//! `claim_idle` (XAUTOCLAIM). The job id (a UUID) is the idempotency key providers can dedupe on. A code job
//! older than the code's lifetime, or whose next retry would come after it, is dropped, not sent (a
//! notice: after the stream's TTL instead). A job whose code cannot be opened (the secret was rotated)
//! is dead-lettered, never sent; a notice has no code and is rendered from its kind.
//!
//! Connections: every command but the blocking read goes over one shared `ConnectionManager`
//! (multiplexed, reconnects by itself). A blocking read (XREADGROUP BLOCK) must never hold up a shared
//! connection, so each worker owns one connection for its reads alone, opened with a response timeout
//! longer than the BLOCK (redis-rs's default of 500 ms is shorter: a read the client gives up on while
//! Redis still hands it an entry strands that entry as pending until it is reclaimed, found by the
//! tests here), and reopened after any error so that a Redis restart heals. (A bb8 pool of workers + 1
//! connections served every command before: a worker's 16 concurrent deliveries could wait on it.)

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use redis::Script;
use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::services::embedded::Memory;
use crate::services::redis_conn::{RedisConn, RedisTarget};
use crate::services::sms::{DeliveryError, SmsMessage, SmsSender, render};
use crate::services::{Keys, rerun_if_dropped};

mod job;

pub(crate) use job::APPEND_LUA;
pub use job::{Appender, CodeCipher, Job, Notice};

pub const GROUP: &str = "sms-workers";

#[derive(Clone, Debug)]
pub struct OutboxSettings {
    pub max_len: u64,
    pub dead_max_len: u64,
    /// Calls to the provider per job at most; None: as many as fit in the code's lifetime.
    pub max_attempts: Option<u32>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub claim_idle: Duration,
    pub block: Duration,
    /// The code's lifetime: older jobs are dropped.
    pub code_ttl: Duration,
    pub app_name: String,
    pub template: String,
    pub webotp_domain: Option<String>,
    /// Android SMS Retriever app hash (`SMS_ANDROID_APP_HASH`), see `sms::render`.
    pub android_app_hash: Option<String>,
}

/// What happened to jobs, for tests and operators.
#[derive(Default, Debug)]
pub struct OutboxStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub expired: AtomicU64,
}

// KEYS: outbox, dead. ARGV: group, dead max len, now (ms), dead-letter TTL, then four per finished job:
// stream id, reason ('' = delivered), to, message id.
// Acknowledges and deletes the jobs in one step (their codes leave Redis), dead-lettering those with a
// reason. One call finishes every job of a batch that ended together.
const FINISH_LUA: &str = r"
local ids = {}
local dead = false
for i = 5, #ARGV, 4 do
  ids[#ids + 1] = ARGV[i]
  if ARGV[i + 1] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
      'id', ARGV[i + 3], 'to', ARGV[i + 2], 'reason', ARGV[i + 1], 'failed_ms', ARGV[3])
    dead = true
  end
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
if dead then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return #ids
";

/// Jobs one worker reads at a time.
const BATCH: usize = 16;

/// Deliveries one worker runs at once, retries waiting out their backoff included. A waiting retry
/// costs a timer and a few hundred bytes; 256 per worker holds more than a code lifetime's worth of the
/// default service-wide budget (1,000 SMS an hour is about 83 per 300 s), so a provider outage does not
/// leave new jobs unread behind retries.
const MAX_IN_FLIGHT: usize = 256;

/// A delivery's end, sent to the worker's finisher: the job and `Some("")` delivered, `Some(reason)`
/// dead-lettered (or dropped as expired), `None` taken over by another worker.
type Ended = (Job, Option<String>);

/// Creates the stream (if missing) and the consumer group (if missing), and gives a stream without a
/// TTL one.
const ENSURE_GROUP_LUA: &str = r"
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// Dead letters are kept for inspection for 7 days after the last one.
pub const DEAD_LETTER_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// The outbox stream's TTL for a code lifetime of `code_ttl_seconds`: twice the lifetime, at least an
/// hour (so an idle service does not recreate its stream every few minutes).
pub fn outbox_ttl_seconds(code_ttl_seconds: u64) -> u64 {
    code_ttl_seconds.saturating_mul(2).max(3600)
}

/// The outbox's store, worker side and notices: each call one step of the stream's life, with
/// Redis Streams semantics (a consumer group: a read hands jobs to one worker and keeps them pending
/// until finished; an idle pending job can be claimed by another worker). Implemented by Redis
/// (`RedisOutbox`) and by the embedded backend; `OutboxQueue` dispatches. Codes are appended by the
/// code store's `issue`, in the same atomic step that stores the code.
pub trait OutboxStore: Send + Sync {
    /// Creates the stream and its consumer group if missing.
    fn ensure(&self, settings: &OutboxSettings) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// New jobs for worker `name`, waiting up to `settings.block` for one.
    fn read_new(
        &self,
        name: &str,
        reader: &mut Reader,
        count: usize,
        settings: &OutboxSettings,
    ) -> impl Future<Output = anyhow::Result<Vec<Job>>> + Send;
    /// Up to `count` jobs left pending longer than `claim_idle` by a worker that died.
    fn claim_stale(
        &self,
        name: &str,
        count: usize,
        claim_idle: Duration,
    ) -> impl Future<Output = anyhow::Result<Vec<Job>>> + Send;
    /// Re-claims `job` for `name` if it is still pending and idle at least `waited`.
    fn still_mine(&self, name: &str, job: &Job, waited: Duration) -> impl Future<Output = bool> + Send;
    /// Acknowledges and deletes the ended jobs, dead-lettering those with a reason.
    fn finish(
        &self,
        ended: &[(&Job, &str)],
        settings: &OutboxSettings,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Jobs waiting, dead letters kept, and the oldest job's age in seconds.
    fn sample(&self) -> impl Future<Output = anyhow::Result<(u64, u64, f64)>> + Send;
    /// Queues a notice unless the outbox is full (false then).
    fn append_notice(
        &self,
        appender: &Appender,
        to: &str,
        notice: Notice,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
}

/// A worker's own reading state: for Redis, the connection of its blocking reads (opened on first
/// use, dropped after an error so that the next read reconnects); the embedded queue needs none.
#[derive(Default)]
pub struct Reader {
    conn: Option<RedisConn>,
    /// The shard to read first next time (several shards are read in turn).
    next_shard: usize,
}

/// The outbox in Redis: a stream, a consumer group, a dead-letter stream.
pub struct RedisOutbox {
    target: RedisTarget,
    redis: RedisConn,
    keys: Keys,
    /// Per shard (`SMS_OUTBOX_SHARDS`): the stream and its dead letters, in one slot on a Cluster.
    streams: Vec<String>,
    deads: Vec<String>,
    finish: Script,
    ensure: Script,
    append_notice: Script,
}

impl RedisOutbox {
    pub async fn connect(target: &RedisTarget, keys: &Keys) -> anyhow::Result<Self> {
        let redis = target.connect(Duration::from_secs(3), 2).await?;
        Ok(RedisOutbox {
            target: target.clone(),
            redis,
            keys: keys.clone(),
            streams: (0..keys.shards()).map(|i| keys.shard(i, "sms:outbox")).collect(),
            deads: (0..keys.shards()).map(|i| keys.shard(i, "sms:dead")).collect(),
            finish: Script::new(FINISH_LUA),
            ensure: Script::new(ENSURE_GROUP_LUA),
            append_notice: Script::new(job::APPEND_NOTICE_LUA),
        })
    }

    /// A connection for one worker's blocking reads alone: its response timeout is longer than the
    /// BLOCK of a read, with room for a loaded server.
    async fn blocking_connection(&self, block: Duration) -> redis::RedisResult<RedisConn> {
        self.target.connect(block + Duration::from_secs(10), 0).await
    }

    /// The shard a job of `to` was appended to (`Keys::shard_of`, the same hash at both ends).
    fn shard_of(&self, to: &str) -> usize {
        self.keys.shard_of_e164(to) as usize
    }
}

/// The outbox store of this process: Redis, or the embedded backend. One per process, so the
/// size of the Redis variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum OutboxQueue {
    Redis(RedisOutbox),
    Embedded(Arc<Memory>),
}

impl OutboxStore for OutboxQueue {
    async fn ensure(&self, settings: &OutboxSettings) -> anyhow::Result<()> {
        match self {
            OutboxQueue::Redis(s) => s.ensure(settings).await,
            OutboxQueue::Embedded(s) => s.ensure(settings).await,
        }
    }

    async fn read_new(
        &self,
        name: &str,
        reader: &mut Reader,
        count: usize,
        settings: &OutboxSettings,
    ) -> anyhow::Result<Vec<Job>> {
        match self {
            OutboxQueue::Redis(s) => s.read_new(name, reader, count, settings).await,
            OutboxQueue::Embedded(s) => s.read_new(name, reader, count, settings).await,
        }
    }

    async fn claim_stale(&self, name: &str, count: usize, claim_idle: Duration) -> anyhow::Result<Vec<Job>> {
        match self {
            OutboxQueue::Redis(s) => s.claim_stale(name, count, claim_idle).await,
            OutboxQueue::Embedded(s) => s.claim_stale(name, count, claim_idle).await,
        }
    }

    async fn still_mine(&self, name: &str, job: &Job, waited: Duration) -> bool {
        match self {
            OutboxQueue::Redis(s) => s.still_mine(name, job, waited).await,
            OutboxQueue::Embedded(s) => s.still_mine(name, job, waited).await,
        }
    }

    async fn finish(&self, ended: &[(&Job, &str)], settings: &OutboxSettings) -> anyhow::Result<()> {
        match self {
            OutboxQueue::Redis(s) => OutboxStore::finish(s, ended, settings).await,
            OutboxQueue::Embedded(s) => OutboxStore::finish(&**s, ended, settings).await,
        }
    }

    async fn sample(&self) -> anyhow::Result<(u64, u64, f64)> {
        match self {
            OutboxQueue::Redis(s) => s.sample().await,
            OutboxQueue::Embedded(s) => s.sample().await,
        }
    }

    async fn append_notice(&self, appender: &Appender, to: &str, notice: Notice) -> anyhow::Result<bool> {
        match self {
            OutboxQueue::Redis(s) => s.append_notice(appender, to, notice).await,
            OutboxQueue::Embedded(s) => s.append_notice(appender, to, notice).await,
        }
    }
}

pub struct Outbox {
    queue: Arc<OutboxQueue>,
    settings: OutboxSettings,
    provider: Arc<dyn SmsSender>,
    cipher: CodeCipher,
    /// Where code jobs are appended (the Redis key; the embedded queue ignores it).
    stream: String,
    pub stats: OutboxStats,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Outbox {
    pub async fn new(
        queue: OutboxQueue,
        keys: &Keys,
        settings: OutboxSettings,
        provider: Arc<dyn SmsSender>,
        cipher: CodeCipher,
    ) -> anyhow::Result<Self> {
        let outbox = Outbox {
            queue: Arc::new(queue),
            stream: Self::stream_key(keys),
            settings,
            provider,
            cipher,
            stats: OutboxStats::default(),
        };
        outbox.queue.ensure(&outbox.settings).await?;
        Ok(outbox)
    }

    pub fn stream_key(keys: &Keys) -> String {
        keys.other("sms:outbox")
    }

    pub fn dead_key(keys: &Keys) -> String {
        keys.other("sms:dead")
    }

    /// Where and how the code service appends its jobs.
    pub fn appender(&self) -> Appender {
        Appender {
            stream_key: self.stream.clone(),
            max_len: self.settings.max_len,
            ttl_seconds: outbox_ttl_seconds(self.settings.code_ttl.as_secs()),
            cipher: self.cipher.clone(),
            queue: self.queue.clone(),
        }
    }

    /// Jobs waiting (queued, or read and not yet finished), and dead letters kept.
    pub async fn depth(&self) -> anyhow::Result<(u64, u64)> {
        let (depth, dead, _) = self.queue.sample().await?;
        Ok((depth, dead))
    }

    /// Runs one worker until the task is dropped (its deliveries are dropped with it; their jobs stay
    /// pending and are claimed by another worker). `name` must be unique among live workers.
    ///
    /// Two halves run side by side in this one task: the reader, which reads jobs while there is room
    /// and starts a delivery task for each, and the finisher, which acknowledges whatever deliveries
    /// ended, together. Neither is ever cancelled mid-command (a cancelled XREADGROUP would strand
    /// the entries Redis handed out), and the finisher does not wait for the reader's blocking read.
    pub async fn run_worker(self: Arc<Self>, name: String) {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel::<Ended>();
        tokio::join!(self.clone().read_loop(name, ended_tx), self.finish_loop(ended_rx));
    }

    async fn read_loop(self: Arc<Self>, name: String, ended: mpsc::UnboundedSender<Ended>) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        // Dropped with the worker: its deliveries stop with it.
        let mut deliveries = JoinSet::new();
        let mut last_claim = std::time::Instant::now() - self.settings.claim_idle;
        let mut reader = Reader::default();
        loop {
            while deliveries.try_join_next().is_some() {}
            // Wait for one free slot, then take as many more as are free, up to a batch.
            let Ok(first) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            while permits.len() < BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if last_claim.elapsed() >= self.settings.claim_idle / 2 {
                last_claim = std::time::Instant::now();
                match self
                    .queue
                    .claim_stale(&name, permits.len(), self.settings.claim_idle)
                    .await
                {
                    Ok(jobs) => self.start(&name, jobs, &mut permits, &mut deliveries, &ended),
                    Err(e) => {
                        tracing::warn!(error = %e, worker = %name, "outbox: reclaiming stale jobs failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                if permits.is_empty() {
                    continue;
                }
            }
            match self
                .queue
                .read_new(&name, &mut reader, permits.len(), &self.settings)
                .await
            {
                Ok(jobs) => self.start(&name, jobs, &mut permits, &mut deliveries, &ended),
                Err(e) => {
                    tracing::warn!(error = %e, worker = %name, "outbox: reading the stream failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = self.queue.ensure(&self.settings).await;
                }
            }
        }
    }

    /// Starts one delivery task per job, each holding one of `permits` until it ends.
    fn start(
        self: &Arc<Self>,
        name: &str,
        jobs: Vec<Job>,
        permits: &mut Vec<OwnedSemaphorePermit>,
        deliveries: &mut JoinSet<()>,
        ended: &mpsc::UnboundedSender<Ended>,
    ) {
        for job in jobs {
            let Some(permit) = permits.pop() else {
                // Never: a read asks for at most as many jobs as there are permits. Left pending, the
                // job would be claimed later.
                tracing::error!(message_id = %job.message_id, "outbox: a job read without a slot");
                continue;
            };
            let (this, name, ended) = (self.clone(), name.to_owned(), ended.clone());
            deliveries.spawn(async move {
                let outcome = this.deliver(&name, &job).await;
                drop(permit);
                let _ = ended.send((job, outcome));
            });
        }
    }

    /// Finishes the deliveries that ended, all those that ended together in one call.
    async fn finish_loop(self: Arc<Self>, mut ended: mpsc::UnboundedReceiver<Ended>) {
        let mut batch = Vec::with_capacity(BATCH);
        while ended.recv_many(&mut batch, MAX_IN_FLIGHT).await > 0 {
            self.finish(&batch).await;
            batch.clear();
        }
    }

    /// Delivers one job to its end: `Some("")` delivered, `Some(reason)` to be dead-lettered (or
    /// dropped as expired), `None` if another worker took the job over (it finishes it).
    async fn deliver(&self, name: &str, job: &Job) -> Option<String> {
        let (code, body) = match job.notice {
            // A notice has no code: nothing to open, rendered from its kind.
            Some(notice) => (String::new(), notice.render(&self.settings.app_name)),
            None => {
                let Some(code) = self.cipher.open(&job.message_id, &job.to, &job.sealed) else {
                    tracing::warn!(message_id = %job.message_id, "outbox: the code cannot be decrypted (OTP_HMAC_SECRET changed?): dead-lettered");
                    self.stats.dead.fetch_add(1, Ordering::Relaxed);
                    crate::ops::metrics::sms_job(self.provider.name(), &job.to, "dead_lettered");
                    return Some(
                        "undecryptable: the code was sealed under another key (OTP_HMAC_SECRET changed?)"
                            .to_owned(),
                    );
                };
                let body = render(
                    &self.settings.template,
                    &self.settings.app_name,
                    &code,
                    self.settings.code_ttl.as_secs(),
                    self.settings.webotp_domain.as_deref(),
                    self.settings.android_app_hash.as_deref(),
                );
                (code, body)
            }
        };
        // A code is useless once it has expired: that, not a count, bounds the retries. A notice is
        // still worth sending for as long as the stream keeps it (at least an hour:
        // `outbox_ttl_seconds`).
        let max_age_ms = match job.notice {
            Some(_) => outbox_ttl_seconds(self.settings.code_ttl.as_secs()) * 1000,
            None => self.settings.code_ttl.as_millis() as u64,
        };
        let deadline_ms = job.created_ms.saturating_add(max_age_ms);
        let expired = |why: String| {
            tracing::info!(message_id = %job.message_id, %why, "outbox: the job expired before it could be sent: dropped");
            self.stats.expired.fetch_add(1, Ordering::Relaxed);
            crate::ops::metrics::sms_job(self.provider.name(), &job.to, "expired");
            Some(why)
        };
        let mut attempt = 1u32;
        loop {
            if now_ms() >= deadline_ms {
                return expired(if attempt == 1 {
                    "expired".to_owned()
                } else {
                    format!("expired (after {} attempts)", attempt - 1)
                });
            }
            let sent = self
                .provider
                .send(SmsMessage {
                    to: &job.to,
                    code: &code,
                    body: &body,
                    message_id: &job.message_id,
                })
                .await;
            match sent {
                Ok(()) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    crate::ops::metrics::sms_job(self.provider.name(), &job.to, "sent");
                    return Some(String::new());
                }
                Err(DeliveryError::Permanent(reason)) => {
                    tracing::warn!(message_id = %job.message_id, %reason, "outbox: permanent failure: dead-lettered");
                    self.stats.dead.fetch_add(1, Ordering::Relaxed);
                    crate::ops::metrics::sms_job(self.provider.name(), &job.to, "dead_lettered");
                    return Some(reason);
                }
                Err(DeliveryError::Transient(reason))
                    if self.settings.max_attempts.is_some_and(|max| attempt >= max) =>
                {
                    tracing::warn!(message_id = %job.message_id, %reason, attempt, "outbox: out of retries: dead-lettered");
                    self.stats.dead.fetch_add(1, Ordering::Relaxed);
                    crate::ops::metrics::sms_job(self.provider.name(), &job.to, "dead_lettered");
                    return Some(format!("{reason} (after {attempt} attempts)"));
                }
                Err(DeliveryError::Transient(reason)) => {
                    let wait = self.backoff(attempt);
                    if now_ms().saturating_add(wait.as_millis() as u64) >= deadline_ms {
                        // The next try would come after the code expired.
                        return expired(format!("expired (after {attempt} attempts; last: {reason})"));
                    }
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    crate::ops::metrics::sms_job(self.provider.name(), &job.to, "retried");
                    tracing::info!(message_id = %job.message_id, %reason, attempt, ?wait, "outbox: transient failure: retrying");
                    tokio::time::sleep(wait).await;
                    if !self.queue.still_mine(name, job, wait).await {
                        return None;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter"):
    /// uniform in [0, min(max, base * 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .settings
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.settings.backoff_max);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// Acknowledges and deletes the ended jobs, dead-lettering those with a reason (see `FINISH_LUA`).
    async fn finish(&self, ended: &[Ended]) {
        let done: Vec<(&Job, &str)> = ended
            .iter()
            .filter_map(|(job, reason)| reason.as_deref().map(|r| (job, r)))
            .collect();
        if done.is_empty() {
            return;
        }
        if let Err(e) = self.queue.finish(&done, &self.settings).await {
            // The jobs stay pending and will be claimed again: at least once, never lost.
            tracing::warn!(error = %e, jobs = done.len(), "outbox: could not acknowledge jobs");
        }
    }
}

/// Starts `n` workers on the current runtime, and (with any worker) the sampler of the outbox gauges.
pub fn spawn_workers(outbox: &Arc<Outbox>, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let host = std::process::id();
    let mut tasks: Vec<_> = (0..n)
        .map(|i| {
            let name = format!("w-{host}-{i}-{}", uuid::Uuid::new_v4().simple());
            tokio::spawn(outbox.clone().run_worker(name))
        })
        .collect();
    if n > 0 {
        tasks.push(tokio::spawn(outbox.clone().sample_gauges()));
    }
    tasks
}

/// A stream entry as XRANGE returns it: id and field pairs.
type StreamEntry = (String, Vec<(String, String)>);

impl Outbox {
    /// Every 10 s: the outbox's depth, the age of its oldest job and the dead letters kept (Prometheus
    /// scrapes every 15 to 60 s).
    async fn sample_gauges(self: Arc<Self>) {
        use crate::ops::metrics::{SMS_DEAD_LETTERS, SMS_OUTBOX_DEPTH, SMS_OUTBOX_OLDEST_AGE, set_gauge};
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            let Ok((depth, dead, age)) = self.queue.sample().await else {
                continue;
            };
            set_gauge(SMS_OUTBOX_DEPTH, depth as f64);
            set_gauge(SMS_DEAD_LETTERS, dead as f64);
            set_gauge(SMS_OUTBOX_OLDEST_AGE, age);
        }
    }
}

impl OutboxStore for RedisOutbox {
    async fn ensure(&self, settings: &OutboxSettings) -> anyhow::Result<()> {
        // From the start of the stream ("0"), so jobs written before the group existed are delivered.
        for stream in &self.streams {
            let _: i64 = self
                .ensure
                .key(stream)
                .arg(GROUP)
                .arg(outbox_ttl_seconds(settings.code_ttl.as_secs()))
                .invoke_async(&mut self.redis.clone())
                .await?;
        }
        Ok(())
    }

    /// Reads on the worker's own connection (`Reader`).
    async fn read_new(
        &self,
        name: &str,
        reader: &mut Reader,
        count: usize,
        settings: &OutboxSettings,
    ) -> anyhow::Result<Vec<Job>> {
        let conn = match &mut reader.conn {
            Some(conn) => conn,
            None => reader
                .conn
                .insert(self.blocking_connection(settings.block).await?),
        };
        // One shard: one blocking read, as always. Several: each in turn without blocking (one
        // XREADGROUP cannot name streams of several slots on a Cluster), and when all are empty a
        // short blocking read on the next, so an idle worker neither spins nor sleeps through a
        // burst on another shard for longer than `block / shards` (at least 50 ms).
        let n = self.streams.len();
        let idle_block = if n == 1 {
            settings.block
        } else {
            (settings.block / n as u32).max(Duration::from_millis(50))
        };
        let mut jobs = Vec::new();
        for turn in 0..=n {
            let shard = (reader.next_shard + turn) % n;
            let block = if turn < n && n > 1 {
                None
            } else if !jobs.is_empty() {
                break;
            } else {
                Some(idle_block)
            };
            let mut options = StreamReadOptions::default()
                .group(GROUP, name)
                .count(count - jobs.len());
            if let Some(block) = block {
                options = options.block(block.as_millis() as usize);
            }
            let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg(&options)
                .arg("STREAMS")
                .arg(&self.streams[shard])
                .arg(">")
                .query_async(&mut *conn)
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // The stream's TTL lapsed while the service was idle: start again.
                    tracing::info!(worker = %name, shard, "outbox: the stream expired; recreating it");
                    self.ensure(settings).await?;
                    return Ok(jobs);
                }
                Err(e) => {
                    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                        reader.conn = None;
                    }
                    if jobs.is_empty() {
                        return Err(e.into());
                    }
                    // Jobs already read are pending for this worker: deliver them.
                    tracing::warn!(error = %e, worker = %name, shard, "outbox: reading a shard failed");
                    return Ok(jobs);
                }
            };
            jobs.extend(
                reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .filter_map(Job::parse),
            );
            if jobs.len() >= count || block.is_some() {
                break;
            }
        }
        reader.next_shard = (reader.next_shard + 1) % n;
        Ok(jobs)
    }

    async fn claim_stale(&self, name: &str, count: usize, claim_idle: Duration) -> anyhow::Result<Vec<Job>> {
        let mut jobs: Vec<Job> = Vec::new();
        for stream in &self.streams {
            if jobs.len() >= count {
                break;
            }
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(name)
                .arg(claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(count - jobs.len())
                .query_async(&mut self.redis.clone())
                .await?;
            jobs.extend(reply.claimed.into_iter().filter_map(Job::parse));
        }
        for job in &jobs {
            tracing::info!(worker = %name, message_id = %job.message_id, "outbox: claimed a stale job");
        }
        Ok(jobs)
    }

    /// XCLAIM JUSTID: the job has been idle at least `waited` if nobody touched it; if another worker
    /// claimed it meanwhile, its idle time is shorter, the claim fails, and this worker lets it go.
    /// Also fails once the job is finished. When Redis cannot answer, ownership is unproven: the
    /// worker lets the job go too, and it stays pending until a worker claims it after `claim_idle`
    /// (late, never lost, never sent by two workers at once).
    async fn still_mine(&self, name: &str, job: &Job, waited: Duration) -> bool {
        let claimed: redis::RedisResult<Vec<String>> = redis::cmd("XCLAIM")
            .arg(&self.streams[self.shard_of(&job.to)])
            .arg(GROUP)
            .arg(name)
            .arg(waited.as_millis() as u64)
            .arg(&job.stream_id)
            .arg("JUSTID")
            .query_async(&mut self.redis.clone())
            .await;
        matches!(claimed, Ok(ids) if !ids.is_empty())
    }

    async fn finish(&self, ended: &[(&Job, &str)], settings: &OutboxSettings) -> anyhow::Result<()> {
        // One call per shard the jobs came from (a shard's stream and dead letters share a slot).
        for shard in 0..self.streams.len() {
            let mine: Vec<&(&Job, &str)> = ended
                .iter()
                .filter(|(job, _)| self.shard_of(&job.to) == shard)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut invocation = self.finish.prepare_invoke();
            invocation
                .key(&self.streams[shard])
                .key(&self.deads[shard])
                .arg(GROUP)
                .arg(settings.dead_max_len)
                .arg(now_ms())
                .arg(DEAD_LETTER_TTL_SECONDS);
            for (job, reason) in mine {
                invocation
                    .arg(&job.stream_id)
                    .arg(*reason)
                    .arg(&job.to)
                    .arg(&job.message_id);
            }
            let _: i64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        }
        Ok(())
    }

    /// Three cheap reads (XLEN, XLEN, XRANGE COUNT 1); rerun on a dropped connection (reads).
    async fn sample(&self) -> anyhow::Result<(u64, u64, f64)> {
        let (mut depth, mut dead, mut oldest_ms) = (0u64, 0u64, None::<u64>);
        // Per shard: its keys share a slot on a Cluster.
        for (stream, dead_key) in self.streams.iter().zip(&self.deads) {
            let (d, x, oldest): (u64, u64, Vec<StreamEntry>) = rerun_if_dropped(|| async {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(stream)
                    .cmd("XLEN")
                    .arg(dead_key)
                    .cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut self.redis.clone())
                    .await
            })
            .await?;
            depth += d;
            dead += x;
            // A stream id is `<ms>-<seq>`: the oldest job's age without reading its fields.
            if let Some(ms) = oldest
                .first()
                .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
            {
                oldest_ms = Some(oldest_ms.map_or(ms, |o| o.min(ms)));
            }
        }
        let age = oldest_ms.map_or(0.0, |ms| now_ms().saturating_sub(ms) as f64 / 1000.0);
        Ok((depth, dead, age))
    }

    async fn append_notice(&self, appender: &Appender, to: &str, notice: Notice) -> anyhow::Result<bool> {
        let queued: i64 = self
            .append_notice
            .key(&self.streams[self.shard_of(to)])
            .arg(appender.max_len)
            .arg(appender.ttl_seconds)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(to)
            .arg(notice.as_str())
            .arg(now_ms())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(queued == 1)
    }
}
