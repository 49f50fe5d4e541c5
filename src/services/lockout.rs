//! Password lockout in Redis: after `max_failures` consecutive wrong passwords for one E.164 phone,
//! password sign-in for that phone is refused for `lock_seconds` (default 3 and 3600 s; the product's
//! policy, within NIST SP 800-63B 5.2.2's limit of 100 consecutive failures).
//!
//! Keys (phone hash tag, all with a TTL):
//! - `{phone}:pw_fails`    sorted set of the evaluated wrong passwords of the current run (member: the
//!   attempt's id, score: when); TTL = lock_seconds, renewed by each wrong password (never by a refusal)
//! - `{phone}:pw_inflight` sorted set of the attempts in flight (member: the attempt's id, score: when
//!   its lease ends, ms); pruned by each reservation; TTL = the lease, renewed by each reservation
//! - `{phone}:pw_lock`     present while locked; TTL = lock_seconds
//! - `ip:<addr>:password_attempts` per-IP budget across phones; TTL = IP window (300 s)
//!
//! On a Redis Cluster the per-IP budget has a slot of its own: it is counted by a call of its own
//! before the phone's reservation (`IP_BUDGET_LUA`), its verdict passed to the phone's script, which
//! answers exactly as on one primary (a locked phone says ACCOUNT_LOCKED before the IP's budget is
//! looked at); when the phone's script refuses before the point where one primary would have counted
//! the IP (a lock), the request is given back (`GIVE_BACK_LUA`). A wrong password's failure count
//! and lock are followed by `WAIT 1` on the phone's master (bounded, `LOCK_WAIT_MS`): a failover
//! right after it does not lift the lock (README "Scaling out" says what else the window can lose).
//!
//! An attempt is *reserved* atomically before any hash is computed: the reservation refuses once
//! failures plus attempts in flight reach the limit, so a burst of 30 parallel wrong passwords computes
//! at most 3 hashes and leaves the phone locked. Counted per phone whether or not an account exists, so
//! an unknown phone and a wrong password look the same. Only an evaluated wrong password counts toward
//! the lock: an attempt refused for hashing overload, or whose store failed, is released.
//!
//! A reservation is a *lease*: it ends by itself (`lease`, longer than the longest a login can hold
//! it: see `app.rs`), so a reservation whose end was never recorded (Redis answered after the client's
//! timeout, the process stopped mid-login) cannot hold the phone's last attempts for longer than the
//! lease. Before leases, such a stray reservation refused every later login with RATE_LIMITED, and
//! each refusal renewed it for an hour.
//!
//! Each attempt has its own id, so every script here is idempotent (a rerun after a dropped
//! connection changes nothing: `rerun_if_dropped`) and attempts in flight across a success are
//! handled: a success clears the failures and the lock; a failure that resolves after that counts in
//! the new run, and a release only ever removes its own attempt.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::services::embedded::Memory;
use crate::services::redis_conn::RedisConn;
use crate::services::{
    GIVE_BACK_LUA, IP_BUDGET_LUA, Keys, budget_script, cluster_variant, rerun_if_dropped, retry_after_secs,
};

/// How long a wrong password waits, on a Cluster, for one replica to acknowledge its failure count
/// and lock (`WAIT 1 50`): replication on a LAN takes well under a millisecond, and a master without
/// a replica costs each wrong password this much and no more.
pub const LOCK_WAIT_MS: u64 = 50;

#[derive(Clone, Debug)]
pub struct LockoutSettings {
    pub max_failures: u32,
    pub lock_seconds: u64,
    pub ip_window_seconds: u64,
    pub ip_max_attempts: u32,
}

/// A reserved attempt: must be ended with `record_failure`, `clear` (success) or `release`; if it is
/// not, its lease ends it.
#[derive(Clone, Debug)]
pub struct Reservation {
    id: String,
}

// KEYS: fails, inflight, lock, ip budget. ARGV: max, lock_seconds, ip max, ip window, attempt id,
// lease ms. Returns {status, value}: {0, 0} reserved; {1, pttl} locked; {2, 0} the limit is taken by
// attempts still in flight (none of them has failed yet: retry in a moment); {3, pttl} IP over budget.
// A refusal extends nothing.
const RESERVE_LUA: &str = r"
if redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  -- This very attempt is reserved: a rerun after a dropped connection answers as the first run.
  return {0, 0}
end
local pttl = redis.call('PTTL', KEYS[3])
if pttl > 0 then
  return {1, pttl}
end
if pttl == -1 then
  -- A lock key without a TTL cannot come from us; treat it as locked and bound it.
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  return {1, tonumber(ARGV[2]) * 1000}
end
local ip_wait = over_budget(KEYS[4], ARGV[3], ARGV[4])
if ip_wait then
  return {3, ip_wait}
end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then
  return {2, 0}
end
local lease = tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
redis.call('PEXPIRE', KEYS[2], lease)
return {0, 0}
";

// KEYS: fails, inflight, lock. ARGV: max, lock_seconds, attempt id. The attempt was a wrong password:
// it leaves the attempts in flight and joins the failures (once, whatever the run it was reserved in).
// Reaching the limit sets the lock. Returns 1 if locked.
const FAIL_LUA: &str = r"
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], now_ms(), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
  return 1
end
return 0
";

// KEYS: fails, inflight, lock. ARGV: the succeeding attempt's id, or '' (a sign-in by code or a
// registration). A success: a new run, no failures, no lock. Returns 1 if a lock was lifted.
const CLEAR_LUA: &str = r"
local was_locked = redis.call('EXISTS', KEYS[3])
redis.call('DEL', KEYS[1], KEYS[3])
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return was_locked
";

/// The lockout store: each decision about one phone's password attempts is one atomic step, with
/// the answers of the scripts above (`reserve` -> `(status, value)` as `RESERVE_LUA`; `fail` ->
/// locked as `FAIL_LUA`; `clear` -> a lock was lifted as `CLEAR_LUA`). Implemented by Redis
/// (`RedisLockout`) and the embedded backend; `Lockouts` dispatches.
pub trait LockoutStore: Send + Sync {
    fn reserve(
        &self,
        phone: &PhoneNumber,
        client: &str,
        id: &str,
        s: &LockoutSettings,
        lease_ms: u64,
    ) -> impl Future<Output = AppResult<(i64, i64)>> + Send;
    fn fail(
        &self,
        phone: &PhoneNumber,
        id: &str,
        s: &LockoutSettings,
    ) -> impl Future<Output = AppResult<bool>> + Send;
    /// `id`: the succeeding attempt, or None (a sign-in by code, a registration, an operator).
    fn clear(&self, phone: &PhoneNumber, id: Option<&str>) -> impl Future<Output = AppResult<bool>> + Send;
    /// The lock's PTTL in ms (as Redis answers it: -2 none, -1 no expiry).
    fn lock_pttl(&self, phone: &PhoneNumber) -> impl Future<Output = AppResult<i64>> + Send;
    fn release(&self, phone: &PhoneNumber, id: &str) -> impl Future<Output = AppResult<()>> + Send;
}

/// The lockout store in Redis.
pub struct RedisLockout {
    redis: RedisConn,
    keys: Keys,
    reserve: Script,
    fail: Script,
    clear: Script,
    ip_budget: Script,
    give_back: Script,
}

impl RedisLockout {
    pub fn new(redis: RedisConn, keys: Keys) -> Self {
        let reserve = if keys.cluster() {
            // ARGV[7]: the ms to wait when the IP's own call found it over budget, else -1.
            cluster_variant(
                RESERVE_LUA,
                "over_budget(KEYS[4], ARGV[3], ARGV[4])",
                "((tonumber(ARGV[7]) >= 0) and tonumber(ARGV[7])) or nil",
            )
        } else {
            RESERVE_LUA.to_owned()
        };
        RedisLockout {
            redis,
            keys,
            reserve: budget_script(&reserve),
            fail: budget_script(FAIL_LUA),
            clear: Script::new(CLEAR_LUA),
            ip_budget: Script::new(IP_BUDGET_LUA),
            give_back: Script::new(GIVE_BACK_LUA),
        }
    }

    fn key(&self, phone: &PhoneNumber, what: &str) -> String {
        self.keys.phone(phone, what)
    }
}

impl LockoutStore for RedisLockout {
    async fn reserve(
        &self,
        phone: &PhoneNumber,
        client: &str,
        id: &str,
        s: &LockoutSettings,
        lease_ms: u64,
    ) -> AppResult<(i64, i64)> {
        let ip_key = self.keys.other(&format!("ip:{client}:password_attempts"));
        let cluster = self.keys.cluster();
        // On a Cluster: the IP counted first, in its own slot; rerun on a dropped connection (a
        // request may then count twice, never less: the safe side).
        let ip_wait: Option<i64> = if cluster {
            rerun_if_dropped(|| async {
                self.ip_budget
                    .key(&ip_key)
                    .arg(s.ip_max_attempts)
                    .arg(s.ip_window_seconds)
                    .invoke_async(&mut self.redis.clone())
                    .await
            })
            .await?
        } else {
            None
        };
        let script_ip_key = if cluster {
            self.key(phone, "pw_fails")
        } else {
            ip_key.clone()
        };
        let answer: (i64, i64) = rerun_if_dropped(|| async {
            self.reserve
                .key(self.key(phone, "pw_fails"))
                .key(self.key(phone, "pw_inflight"))
                .key(self.key(phone, "pw_lock"))
                .key(&script_ip_key)
                .arg(s.max_failures)
                .arg(s.lock_seconds)
                .arg(s.ip_max_attempts)
                .arg(s.ip_window_seconds)
                .arg(id)
                .arg(lease_ms)
                .arg(ip_wait.map_or(-1, |w| w.max(0)))
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?;
        if cluster && answer.0 == 1 {
            // Locked: one primary answers that before it counts the IP, so the IP is given back.
            // Rerun on a dropped connection: a request given back twice costs the IP one request of
            // its budget in its favour, at most once per dropped connection.
            let _: i64 = rerun_if_dropped(|| async {
                self.give_back
                    .key(&ip_key)
                    .invoke_async(&mut self.redis.clone())
                    .await
            })
            .await?;
        }
        Ok(answer)
    }

    async fn fail(&self, phone: &PhoneNumber, id: &str, s: &LockoutSettings) -> AppResult<bool> {
        let locked: i64 = rerun_if_dropped(|| async {
            self.fail
                .key(self.key(phone, "pw_fails"))
                .key(self.key(phone, "pw_inflight"))
                .key(self.key(phone, "pw_lock"))
                .arg(s.max_failures)
                .arg(s.lock_seconds)
                .arg(id)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?;
        if self.keys.cluster() {
            // Replication is asynchronous: without this, a master killed right after the failure
            // was counted would come back as a replica that never saw it. Its answer is not needed
            // (a master without a replica acknowledges none): the failure is counted either way.
            let key = self.key(phone, "pw_fails");
            if let Err(e) = self.redis.clone().wait_on_owner(&key, 1, LOCK_WAIT_MS).await {
                tracing::info!(error = %e, "WAIT after a wrong password failed");
            }
        }
        Ok(locked == 1)
    }

    async fn clear(&self, phone: &PhoneNumber, id: Option<&str>) -> AppResult<bool> {
        let lifted: i64 = rerun_if_dropped(|| async {
            self.clear
                .key(self.key(phone, "pw_fails"))
                .key(self.key(phone, "pw_inflight"))
                .key(self.key(phone, "pw_lock"))
                .arg(id.unwrap_or(""))
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?;
        Ok(lifted == 1)
    }

    async fn lock_pttl(&self, phone: &PhoneNumber) -> AppResult<i64> {
        Ok(redis::cmd("PTTL")
            .arg(self.key(phone, "pw_lock"))
            .query_async(&mut self.redis.clone())
            .await?)
    }

    async fn release(&self, phone: &PhoneNumber, id: &str) -> AppResult<()> {
        let _: i64 = rerun_if_dropped(|| async {
            redis::cmd("ZREM")
                .arg(self.key(phone, "pw_inflight"))
                .arg(id)
                .query_async(&mut self.redis.clone())
                .await
        })
        .await?;
        Ok(())
    }
}

/// The lockout store of this process: Redis, or the embedded backend.
// One per process: the Redis variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Lockouts {
    Redis(RedisLockout),
    Embedded(Arc<Memory>),
}

impl LockoutStore for Lockouts {
    async fn reserve(
        &self,
        phone: &PhoneNumber,
        client: &str,
        id: &str,
        s: &LockoutSettings,
        lease_ms: u64,
    ) -> AppResult<(i64, i64)> {
        match self {
            Lockouts::Redis(store) => store.reserve(phone, client, id, s, lease_ms).await,
            Lockouts::Embedded(store) => store.reserve(phone, client, id, s, lease_ms).await,
        }
    }

    async fn fail(&self, phone: &PhoneNumber, id: &str, s: &LockoutSettings) -> AppResult<bool> {
        match self {
            Lockouts::Redis(store) => store.fail(phone, id, s).await,
            Lockouts::Embedded(store) => store.fail(phone, id, s).await,
        }
    }

    async fn clear(&self, phone: &PhoneNumber, id: Option<&str>) -> AppResult<bool> {
        match self {
            Lockouts::Redis(store) => store.clear(phone, id).await,
            Lockouts::Embedded(store) => store.clear(phone, id).await,
        }
    }

    async fn lock_pttl(&self, phone: &PhoneNumber) -> AppResult<i64> {
        match self {
            Lockouts::Redis(store) => store.lock_pttl(phone).await,
            Lockouts::Embedded(store) => store.lock_pttl(phone).await,
        }
    }

    async fn release(&self, phone: &PhoneNumber, id: &str) -> AppResult<()> {
        match self {
            Lockouts::Redis(store) => store.release(phone, id).await,
            Lockouts::Embedded(store) => store.release(phone, id).await,
        }
    }
}

pub struct LockoutService {
    store: Lockouts,
    settings: LockoutSettings,
    lease_ms: u64,
}

impl LockoutService {
    /// Against Redis (the operator commands). `lease`: how long a reservation holds its place if its
    /// end is never recorded.
    pub fn new(redis: RedisConn, keys: Keys, settings: LockoutSettings, lease: Duration) -> Self {
        Self::with_store(Lockouts::Redis(RedisLockout::new(redis, keys)), settings, lease)
    }

    pub fn with_store(store: Lockouts, settings: LockoutSettings, lease: Duration) -> Self {
        LockoutService {
            store,
            settings,
            lease_ms: (lease.as_millis() as u64).max(1),
        }
    }

    pub fn lock_seconds(&self) -> u64 {
        self.settings.lock_seconds
    }

    /// Reserves one password attempt for `phone`, or answers ACCOUNT_LOCKED / RATE_LIMITED.
    pub async fn reserve(&self, phone: &PhoneNumber, client: &str) -> AppResult<Reservation> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (status, value) = self
            .store
            .reserve(phone, client, &id, &self.settings, self.lease_ms)
            .await?;
        match status {
            0 => Ok(Reservation { id }),
            1 => Err(AppError::AccountLocked {
                retry_after_seconds: retry_after_secs(value),
            }),
            // Not locked: the last allowed attempts are being checked right now.
            2 => Err(AppError::RateLimited {
                retry_after_seconds: 1,
            }),
            3 => {
                crate::ops::metrics::budget_refused("ip_password_attempts");
                Err(AppError::RateLimited {
                    retry_after_seconds: retry_after_secs(value),
                })
            }
            other => Err(AppError::Internal(anyhow::anyhow!(
                "lockout reserve script returned {other}"
            ))),
        }
    }

    /// The reserved attempt was a wrong password. Returns whether the phone is now locked.
    pub async fn record_failure(&self, phone: &PhoneNumber, reservation: &Reservation) -> AppResult<bool> {
        let locked = self.store.fail(phone, &reservation.id, &self.settings).await?;
        if locked {
            metrics::counter!(crate::ops::metrics::LOCKOUTS).increment(1);
        }
        Ok(locked)
    }

    /// A correct password (`reservation`: its attempt), or a sign-in by code or a registration (None):
    /// clears the failures and lifts any lock. Returns whether a lock was lifted.
    pub async fn clear(&self, phone: &PhoneNumber, reservation: Option<&Reservation>) -> AppResult<bool> {
        let lifted = self
            .store
            .clear(phone, reservation.map(|r| r.id.as_str()))
            .await?;
        if lifted {
            metrics::counter!(crate::ops::metrics::UNLOCKS, "by" => "sign_in").increment(1);
        }
        Ok(lifted)
    }

    /// Seconds the phone stays locked for password sign-in; None when it is not locked.
    pub async fn locked_for(&self, phone: &PhoneNumber) -> AppResult<Option<u64>> {
        let pttl = self.store.lock_pttl(phone).await?;
        Ok((pttl > 0).then(|| retry_after_secs(pttl)))
    }

    /// Gives back a reservation whose attempt never got an answer (the hash pool was full, a store
    /// failed): it neither failed nor succeeded, so it must not count.
    pub async fn release(&self, phone: &PhoneNumber, reservation: &Reservation) -> AppResult<()> {
        self.store.release(phone, &reservation.id).await
    }
}
