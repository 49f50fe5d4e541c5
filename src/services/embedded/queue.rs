//! The SMS outbox in memory, with the semantics of the Redis stream and its consumer group that the
//! workers rely on (`outbox/mod.rs`): a read hands each new job to one worker and keeps it pending
//! until finished; a job pending longer than the claim time can be taken by another worker
//! (XAUTOCLAIM), and a worker proves it still owns a job before each retry (XCLAIM with a minimum
//! idle time); finishing acknowledges and deletes jobs and writes dead letters (`FINISH_LUA`). Like
//! the stream, the queue expires `outbox_ttl` after its last append (every job left is stale by then).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::services::outbox::{
    Appender, DEAD_LETTER_TTL_SECONDS, Job, Notice, OutboxSettings, OutboxStore, Reader,
};

use super::{Memory, now_ms};

/// A job as appended.
pub(super) struct Queued {
    pub message_id: String,
    pub to: String,
    pub sealed: String,
    pub notice: Option<Notice>,
    pub created_ms: u64,
}

struct Entry {
    job: Queued,
    appended_ms: i64,
}

struct Pending {
    /// When it was last handed out or claimed (its idle time starts there).
    since_ms: i64,
}

#[derive(Default)]
pub(super) struct Queue {
    entries: BTreeMap<u64, Entry>,
    next: u64,
    /// The group's last delivered entry: a read hands out what comes after it.
    last_delivered: u64,
    pending: HashMap<u64, Pending>,
    expires_ms: Option<i64>,
    /// Dead letters kept: {id, to, reason, failed_ms}, as in the Redis `sms:dead` stream (never the
    /// code).
    dead: VecDeque<HashMap<String, String>>,
    dead_expires_ms: Option<i64>,
}

impl Queue {
    /// Drops the stream (and its group) or the dead letters once their TTL passed.
    fn expire(&mut self, now: i64) {
        if self.expires_ms.is_some_and(|t| t <= now) {
            self.entries.clear();
            self.pending.clear();
            self.last_delivered = self.next;
            self.expires_ms = None;
        }
        if self.dead_expires_ms.is_some_and(|t| t <= now) {
            self.dead.clear();
            self.dead_expires_ms = None;
        }
    }

    /// XLEN: jobs in the stream, pending ones included.
    pub fn len(&mut self, now: i64) -> u64 {
        self.expire(now);
        self.entries.len() as u64
    }

    pub fn append(&mut self, job: Queued, now: i64, ttl_seconds: u64) {
        self.expire(now);
        self.next += 1;
        self.entries.insert(
            self.next,
            Entry {
                job,
                appended_ms: now,
            },
        );
        self.expires_ms = Some(now + ttl_seconds as i64 * 1000);
    }

    fn job(&self, seq: u64) -> Option<Job> {
        let e = self.entries.get(&seq)?;
        Some(Job {
            stream_id: seq.to_string(),
            message_id: e.job.message_id.clone(),
            to: e.job.to.clone(),
            sealed: e.job.sealed.clone(),
            notice: e.job.notice,
            created_ms: e.job.created_ms,
        })
    }

    /// XREADGROUP ... >: the next `count` new jobs, now pending for `name`.
    fn read(&mut self, count: usize, now: i64) -> Vec<Job> {
        self.expire(now);
        let seqs: Vec<u64> = self
            .entries
            .range(self.last_delivered + 1..)
            .take(count)
            .map(|(s, _)| *s)
            .collect();
        let mut jobs = Vec::with_capacity(seqs.len());
        for seq in seqs {
            self.last_delivered = seq;
            self.pending.insert(seq, Pending { since_ms: now });
            jobs.extend(self.job(seq));
        }
        jobs
    }
}

impl Memory {
    /// The queued jobs' fields as the Redis stream holds them, oldest first: id, to, sealed or kind,
    /// created_ms (tests, as they read `sms:outbox`).
    pub fn queued_jobs(&self) -> Vec<Vec<(String, String)>> {
        let now = now_ms();
        let mut state = self.lock();
        state.queue.expire(now);
        state
            .queue
            .entries
            .values()
            .map(|e| {
                let j = &e.job;
                let what = match j.notice {
                    Some(n) => ("kind".to_owned(), n.as_str().to_owned()),
                    None => ("sealed".to_owned(), j.sealed.clone()),
                };
                vec![
                    ("id".to_owned(), j.message_id.clone()),
                    ("to".to_owned(), j.to.clone()),
                    what,
                    ("created_ms".to_owned(), j.created_ms.to_string()),
                ]
            })
            .collect()
    }

    /// Jobs handed to a worker and not yet finished (XPENDING's count; tests).
    pub fn pending_jobs(&self) -> usize {
        let now = now_ms();
        let mut state = self.lock();
        state.queue.expire(now);
        state.queue.pending.len()
    }

    /// The outbox's and the dead letters' TTLs in seconds, as Redis's TTL answers them (-2: none).
    pub fn outbox_ttls(&self) -> (i64, i64) {
        let now = now_ms();
        let mut state = self.lock();
        state.queue.expire(now);
        let ttl = |t: Option<i64>| t.map_or(-2, |t| (t - now + 500) / 1000);
        (ttl(state.queue.expires_ms), ttl(state.queue.dead_expires_ms))
    }

    /// The dead letters kept, oldest first (tests, as they read `sms:dead`).
    pub fn dead_letters(&self) -> Vec<HashMap<String, String>> {
        let now = now_ms();
        let mut state = self.lock();
        state.queue.expire(now);
        state.queue.dead.iter().cloned().collect()
    }
}

impl OutboxStore for Memory {
    async fn ensure(&self, _settings: &OutboxSettings) -> anyhow::Result<()> {
        Ok(())
    }

    async fn read_new(
        &self,
        _name: &str,
        _reader: &mut Reader,
        count: usize,
        settings: &OutboxSettings,
    ) -> anyhow::Result<Vec<Job>> {
        // Registered before the look, so an append between the look and the wait still wakes us.
        let appended = self.queued.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let jobs = self.lock().queue.read(count, now_ms());
        if !jobs.is_empty() {
            return Ok(jobs);
        }
        let _ = tokio::time::timeout(settings.block, appended).await;
        Ok(self.lock().queue.read(count, now_ms()))
    }

    async fn claim_stale(&self, name: &str, count: usize, claim_idle: Duration) -> anyhow::Result<Vec<Job>> {
        let now = now_ms();
        let mut state = self.lock();
        let queue = &mut state.queue;
        queue.expire(now);
        let idle = claim_idle.as_millis() as i64;
        let mut stale: Vec<u64> = queue
            .pending
            .iter()
            .filter(|(_, p)| now - p.since_ms >= idle)
            .map(|(s, _)| *s)
            .collect();
        stale.sort_unstable();
        let mut jobs = Vec::new();
        for seq in stale.into_iter().take(count) {
            match queue.job(seq) {
                Some(job) => {
                    queue.pending.insert(seq, Pending { since_ms: now });
                    tracing::info!(worker = %name, message_id = %job.message_id, "outbox: claimed a stale job");
                    jobs.push(job);
                }
                // Deleted meanwhile: XAUTOCLAIM drops it from the pending list.
                None => {
                    queue.pending.remove(&seq);
                }
            }
        }
        Ok(jobs)
    }

    async fn still_mine(&self, _name: &str, job: &Job, waited: Duration) -> bool {
        let Ok(seq) = job.stream_id.parse::<u64>() else {
            return false;
        };
        let now = now_ms();
        let mut state = self.lock();
        let queue = &mut state.queue;
        queue.expire(now);
        if !queue.entries.contains_key(&seq) {
            return false;
        }
        match queue.pending.get_mut(&seq) {
            // The consumer's name matters to Redis's bookkeeping only: ownership is the idle time.
            Some(p) if now - p.since_ms >= waited.as_millis() as i64 => {
                p.since_ms = now;
                true
            }
            _ => false,
        }
    }

    async fn finish(&self, ended: &[(&Job, &str)], settings: &OutboxSettings) -> anyhow::Result<()> {
        let now = now_ms();
        let mut state = self.lock();
        let queue = &mut state.queue;
        for (job, reason) in ended {
            if let Ok(seq) = job.stream_id.parse::<u64>() {
                queue.pending.remove(&seq);
                queue.entries.remove(&seq);
            }
            if !reason.is_empty() {
                queue.dead.push_back(HashMap::from([
                    ("id".to_owned(), job.message_id.clone()),
                    ("to".to_owned(), job.to.clone()),
                    ("reason".to_owned(), (*reason).to_owned()),
                    ("failed_ms".to_owned(), now.to_string()),
                ]));
                while queue.dead.len() as u64 > settings.dead_max_len {
                    queue.dead.pop_front();
                }
                queue.dead_expires_ms = Some(now + DEAD_LETTER_TTL_SECONDS as i64 * 1000);
            }
        }
        Ok(())
    }

    async fn sample(&self) -> anyhow::Result<(u64, u64, f64)> {
        let now = now_ms();
        let mut state = self.lock();
        let queue = &mut state.queue;
        queue.expire(now);
        let age = queue
            .entries
            .values()
            .next()
            .map_or(0.0, |e| (now - e.appended_ms).max(0) as f64 / 1000.0);
        Ok((queue.entries.len() as u64, queue.dead.len() as u64, age))
    }

    /// `job::APPEND_NOTICE_LUA`.
    async fn append_notice(&self, appender: &Appender, to: &str, notice: Notice) -> anyhow::Result<bool> {
        let now = now_ms();
        {
            let mut state = self.lock();
            if state.queue.len(now) >= appender.max_len {
                return Ok(false);
            }
            state.queue.append(
                Queued {
                    message_id: uuid::Uuid::new_v4().to_string(),
                    to: to.to_owned(),
                    sealed: String::new(),
                    notice: Some(notice),
                    created_ms: now as u64,
                },
                now,
                appender.ttl_seconds,
            );
        }
        self.queued.notify_waiters();
        Ok(true)
    }
}
