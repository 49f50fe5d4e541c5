//! The embedded backend: every store of the service in this process, for development with nothing
//! installed (no `DATABASE_URL`, no `REDIS_URL`; refused in production, see `app::build`). Data lives
//! in memory and is lost when the process ends.
//!
//! Two halves, each behind one lock:
//! - `Memory`, what Redis holds: codes, budgets, lockout, registration tokens, pending phone changes
//!   and the SMS outbox. It keeps the same keys with the same TTLs as Redis (`Kv`: lazy expiry on
//!   access, as Redis does, plus a sweep every 10 s), and each decision is a port of its Lua script
//!   run under the lock, so it is one atomic step as the script is (`codes.rs`). The outbox is a
//!   stream with a consumer group's semantics (pending jobs, claims of idle ones, dead letters:
//!   `queue.rs`), so the same workers deliver through the configured provider with the same retries.
//! - `Db`, what PostgreSQL holds: users, sessions, refresh tokens and the audit trail (`db.rs`). Each
//!   call is one transaction under the lock: a change and its audit event are written together, a
//!   password change and its session revocations too.
//!
//! A std mutex, never held across an await: a decision is a few map operations (microseconds), far
//! shorter than a Redis round trip, so one lock per half does not limit a development server.

mod codes;
mod db;
mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;

pub use db::Db;
use queue::Queue;

use crate::services::Keys;

/// Milliseconds since the Unix epoch (what Redis's TIME gives the scripts).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What Redis holds, in this process.
pub struct Memory {
    state: Mutex<State>,
    /// Woken when a job is appended (a worker's blocking read waits on it).
    queued: Notify,
    /// Key names as the Redis stores make them, with the same prefix, so that tests and operators
    /// read the same names on both backends.
    keys: Keys,
}

struct State {
    kv: Kv,
    queue: Queue,
}

impl Memory {
    /// Starts the sweep of expired keys on the current runtime; it ends with the last reference.
    pub fn start(keys: Keys) -> Arc<Memory> {
        let memory = Arc::new(Memory {
            state: Mutex::new(State {
                kv: Kv::default(),
                queue: Queue::default(),
            }),
            queued: Notify::new(),
            keys,
        });
        let weak: Weak<Memory> = Arc::downgrade(&memory);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                every.tick().await;
                let Some(memory) = weak.upgrade() else { return };
                memory.lock().kv.sweep(now_ms());
            }
        });
        memory
    }

    /// The state, its clock set to now: one decision runs under one guard (a poisoned lock only
    /// means a panic elsewhere mid-decision; the maps themselves are always whole).
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.kv.now = now_ms();
        state
    }

    /// Every live key with its TTL in seconds as Redis's TTL answers it (rounded to the nearest
    /// second; -1 without expiry). For tests, which check the same keys and TTLs on both backends.
    pub fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        let mut state = self.lock();
        let now = state.kv.now;
        state.kv.sweep(now);
        state
            .kv
            .map
            .iter()
            .map(|(k, e)| (k.clone(), e.exp.map_or(-1, |t| (t - now + 500) / 1000)))
            .collect()
    }

    /// A hash's fields (HGETALL; tests).
    pub fn hash_fields(&self, key: &str) -> HashMap<String, String> {
        self.lock().kv.hash(key).cloned().unwrap_or_default()
    }

    /// A sorted set's size (ZCARD; tests).
    pub fn zcard(&self, key: &str) -> i64 {
        self.lock().kv.zcard(key)
    }

    /// A counter's or string's value (GET; tests).
    pub fn get(&self, key: &str) -> Option<String> {
        let mut state = self.lock();
        match state.kv.live(key) {
            Some(Entry { val: Val::Int(n), .. }) => Some(n.to_string()),
            Some(Entry { val: Val::Str(s), .. }) => Some(s.clone()),
            _ => None,
        }
    }
}

enum Val {
    Int(i64),
    Str(String),
    Hash(HashMap<String, String>),
    /// Sorted by (score, member), as Redis orders a sorted set.
    ZSet(Vec<(i64, String)>),
    Set(HashSet<String>),
}

struct Entry {
    val: Val,
    /// Expiry, ms since the epoch; None: none (Redis TTL -1).
    exp: Option<i64>,
}

/// Keys with Redis's expiry semantics: an expired key is gone (read as absent, deleted on access),
/// a write keeps a key's TTL unless it sets one, EXPIRE on a missing key does nothing, and an
/// emptied hash, set or sorted set is deleted with its TTL.
#[derive(Default)]
struct Kv {
    map: HashMap<String, Entry>,
    /// This decision's clock (`Memory::lock`).
    now: i64,
}

impl Kv {
    fn sweep(&mut self, now: i64) {
        self.map.retain(|_, e| e.exp.is_none_or(|t| t > now));
    }

    fn live(&mut self, key: &str) -> Option<&mut Entry> {
        let now = self.now;
        if self.map.get(key)?.exp.is_some_and(|t| t <= now) {
            self.map.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    fn exists(&mut self, key: &str) -> bool {
        self.live(key).is_some()
    }

    fn del(&mut self, key: &str) -> bool {
        let existed = self.exists(key);
        self.map.remove(key);
        existed
    }

    fn pexpire(&mut self, key: &str, ms: i64) {
        let now = self.now;
        if ms <= 0 {
            self.map.remove(key);
        } else if let Some(e) = self.live(key) {
            e.exp = Some(now + ms);
        }
    }

    fn expire(&mut self, key: &str, seconds: i64) {
        self.pexpire(key, seconds.saturating_mul(1000));
    }

    /// PTTL: -2 missing, -1 no expiry, else the ms left.
    fn pttl(&mut self, key: &str) -> i64 {
        let now = self.now;
        match self.live(key) {
            None => -2,
            Some(Entry { exp: None, .. }) => -1,
            Some(Entry { exp: Some(t), .. }) => *t - now,
        }
    }

    /// The entry at `key`, created empty (no TTL) when missing or of another type.
    fn entry(&mut self, key: &str, empty: fn() -> Val, is: fn(&Val) -> bool) -> &mut Val {
        let fresh = self.live(key).is_none_or(|e| !is(&e.val));
        if fresh {
            self.map.insert(
                key.to_owned(),
                Entry {
                    val: empty(),
                    exp: None,
                },
            );
        }
        &mut self.map.get_mut(key).expect("just made").val
    }

    fn incr(&mut self, key: &str) -> i64 {
        match self.entry(key, || Val::Int(0), |v| matches!(v, Val::Int(_))) {
            Val::Int(n) => {
                *n += 1;
                *n
            }
            _ => unreachable!("an Int entry"),
        }
    }

    fn decr(&mut self, key: &str) {
        if let Val::Int(n) = self.entry(key, || Val::Int(0), |v| matches!(v, Val::Int(_))) {
            *n -= 1;
        }
    }

    fn set_ex(&mut self, key: &str, value: &str, seconds: i64) {
        let now = self.now;
        self.map.insert(
            key.to_owned(),
            Entry {
                val: Val::Str(value.to_owned()),
                exp: Some(now + seconds.saturating_mul(1000)),
            },
        );
    }

    fn get(&mut self, key: &str) -> Option<String> {
        match self.live(key) {
            Some(Entry { val: Val::Str(s), .. }) => Some(s.clone()),
            _ => None,
        }
    }

    fn hash(&mut self, key: &str) -> Option<&mut HashMap<String, String>> {
        match self.live(key) {
            Some(Entry {
                val: Val::Hash(h), ..
            }) => Some(h),
            _ => None,
        }
    }

    fn hget(&mut self, key: &str, field: &str) -> Option<String> {
        self.hash(key)?.get(field).cloned()
    }

    fn hset(&mut self, key: &str, fields: &[(&str, String)]) {
        if let Val::Hash(h) = self.entry(key, || Val::Hash(HashMap::new()), |v| matches!(v, Val::Hash(_))) {
            for (f, v) in fields {
                h.insert((*f).to_owned(), v.clone());
            }
        }
    }

    fn hincrby(&mut self, key: &str, field: &str, by: i64) -> i64 {
        match self.entry(key, || Val::Hash(HashMap::new()), |v| matches!(v, Val::Hash(_))) {
            Val::Hash(h) => {
                let n = h.get(field).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0) + by;
                h.insert(field.to_owned(), n.to_string());
                n
            }
            _ => unreachable!("a Hash entry"),
        }
    }

    fn hdel(&mut self, key: &str, fields: &[&str]) {
        let Some(h) = self.hash(key) else { return };
        for f in fields {
            h.remove(*f);
        }
        if h.is_empty() {
            self.map.remove(key);
        }
    }

    fn zset(&mut self, key: &str) -> Option<&mut Vec<(i64, String)>> {
        match self.live(key) {
            Some(Entry {
                val: Val::ZSet(z), ..
            }) => Some(z),
            _ => None,
        }
    }

    fn zadd(&mut self, key: &str, score: i64, member: &str) {
        if let Val::ZSet(z) = self.entry(key, || Val::ZSet(Vec::new()), |v| matches!(v, Val::ZSet(_))) {
            z.retain(|(_, m)| m != member);
            let at = z.partition_point(|(s, m)| (*s, m.as_str()) < (score, member));
            z.insert(at, (score, member.to_owned()));
        }
    }

    fn zrem(&mut self, key: &str, member: &str) {
        let Some(z) = self.zset(key) else { return };
        z.retain(|(_, m)| m != member);
        if z.is_empty() {
            self.map.remove(key);
        }
    }

    fn zscore(&mut self, key: &str, member: &str) -> Option<i64> {
        self.zset(key)?.iter().find(|(_, m)| m == member).map(|(s, _)| *s)
    }

    fn zcard(&mut self, key: &str) -> i64 {
        self.zset(key).map_or(0, |z| z.len() as i64)
    }

    /// ZREMRANGEBYSCORE key -inf max (inclusive).
    fn zrem_upto(&mut self, key: &str, max: i64) {
        let Some(z) = self.zset(key) else { return };
        z.retain(|(s, _)| *s > max);
        if z.is_empty() {
            self.map.remove(key);
        }
    }

    fn zfirst(&mut self, key: &str) -> Option<i64> {
        self.zset(key)?.first().map(|(s, _)| *s)
    }

    fn zlast(&mut self, key: &str) -> Option<i64> {
        self.zset(key)?.last().map(|(s, _)| *s)
    }

    fn sadd(&mut self, key: &str, member: &str) {
        if let Val::Set(s) = self.entry(key, || Val::Set(HashSet::new()), |v| matches!(v, Val::Set(_))) {
            s.insert(member.to_owned());
        }
    }

    fn smembers(&mut self, key: &str) -> Vec<String> {
        match self.live(key) {
            Some(Entry { val: Val::Set(s), .. }) => s.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    // The budget helpers of `services::BUDGET_LUA`, line for line.

    /// Fixed-window budget: counts this request; the ms to wait when it is over `max`, else None.
    fn over_budget(&mut self, key: &str, max: i64, window_s: i64) -> Option<i64> {
        let n = self.incr(key);
        if n == 1 {
            self.expire(key, window_s);
        }
        (n > max).then(|| self.pttl(key))
    }

    /// Sliding-window log: forgets entries older than the window; the entries left.
    fn sliding_count(&mut self, key: &str, window_ms: i64) -> i64 {
        let now = self.now;
        self.zrem_upto(key, now - window_ms);
        self.zcard(key)
    }

    /// The ms until the oldest entry of a (non-empty) log leaves the window.
    fn sliding_wait(&mut self, key: &str, window_ms: i64) -> i64 {
        let now = self.now;
        self.zfirst(key).unwrap_or(now) + window_ms - now
    }

    fn sliding_full(&mut self, key: &str, max: i64, window_ms: i64) -> Option<i64> {
        (self.sliding_count(key, window_ms) >= max).then(|| self.sliding_wait(key, window_ms))
    }

    fn sliding_add(&mut self, key: &str, member: &str, window_ms: i64) {
        let now = self.now;
        self.zadd(key, now, member);
        self.pexpire(key, window_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_redis() {
        let mut kv = Kv {
            now: 1_000,
            ..Kv::default()
        };
        assert_eq!(kv.pttl("a"), -2);
        assert_eq!(kv.incr("a"), 1);
        assert_eq!(kv.pttl("a"), -1);
        kv.expire("a", 2);
        assert_eq!(kv.pttl("a"), 2_000);
        assert_eq!(kv.incr("a"), 2, "INCR keeps the TTL");
        assert_eq!(kv.pttl("a"), 2_000);
        kv.now = 3_000;
        assert_eq!(kv.pttl("a"), -2, "expired at its deadline");
        assert_eq!(kv.incr("a"), 1, "a fresh counter");
        kv.expire("missing", 5);
        assert!(!kv.exists("missing"), "EXPIRE does not create");
        kv.zadd("z", 5, "b");
        kv.zadd("z", 5, "a");
        kv.zadd("z", 1, "c");
        assert_eq!(kv.zfirst("z"), Some(1));
        kv.zrem_upto("z", 1);
        assert_eq!(kv.zcard("z"), 2);
        kv.zrem("z", "a");
        kv.zrem("z", "b");
        assert_eq!(kv.pttl("z"), -2, "an emptied sorted set is deleted");
    }

    #[test]
    fn budgets_answer_as_the_lua() {
        let mut kv = Kv {
            now: 10_000,
            ..Kv::default()
        };
        assert_eq!(kv.over_budget("b", 2, 60), None);
        assert_eq!(kv.over_budget("b", 2, 60), None);
        assert_eq!(kv.over_budget("b", 2, 60), Some(60_000));
        kv.sliding_add("s", "1", 1_000);
        kv.now += 400;
        kv.sliding_add("s", "2", 1_000);
        assert_eq!(kv.sliding_full("s", 2, 1_000), Some(600));
        kv.now += 600;
        assert_eq!(kv.sliding_full("s", 2, 1_000), None, "the first left the window");
    }
}
