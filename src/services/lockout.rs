//! Password lockout in Redis: after `max_failures` consecutive wrong passwords for one E.164 phone,
//! password sign-in for that phone is refused for `lock_seconds` (default 3 and 3600 s; the product's
//! policy, within NIST SP 800-63B 5.2.2's limit of 100 consecutive failures).
//!
//! Keys (phone hash tag, all with a TTL):
//! - `{phone}:pw_attempts` failures of the current run plus attempts in flight; TTL = lock_seconds,
//!   renewed on each reservation
//! - `{phone}:pw_lock`     present while locked; TTL = lock_seconds
//! - `{phone}:pw_gen`      the run number, bumped by each success (`clear`); TTL = lock_seconds
//! - `ip:<addr>:password_attempts` per-IP budget across phones; TTL = IP window (300 s)
//!
//! An attempt is *reserved* atomically before any hash is computed: the reservation refuses once
//! failures plus in-flight attempts reach the limit, so a burst of 30 parallel wrong passwords computes
//! at most 3 hashes and leaves the phone locked. Counted per phone whether or not an account exists, so
//! an unknown phone and a wrong password look the same.
//!
//! A reservation carries the run it was made in. A success starts a new run; a failure that resolves
//! after that still counts (in the new run), and a stale release is ignored, so attempts in flight
//! across a success can neither be forgotten nor eat into the new run's count.

use redis::Script;
use redis::aio::ConnectionManager;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::services::{Keys, budget_script, retry_after_secs};

#[derive(Clone, Debug)]
pub struct LockoutSettings {
    pub max_failures: u32,
    pub lock_seconds: u64,
    pub ip_window_seconds: u64,
    pub ip_max_attempts: u32,
}

/// A reserved attempt: must be ended with `record_failure`, `clear` (success) or `release`.
#[derive(Clone, Copy, Debug)]
pub struct Reservation {
    generation: i64,
}

// KEYS: attempts, lock, ip budget, gen. ARGV: max, lock_seconds, ip max, ip window.
// Returns {status, value}: {0, gen} reserved; {1, pttl} locked; {2, 0} the limit is taken by attempts
// still in flight (none of them has failed yet: retry in a moment); {3, pttl} IP over budget.
const RESERVE_LUA: &str = r"
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 then
  return {1, pttl}
end
if pttl == -1 then
  -- A lock key without a TTL cannot come from us; treat it as locked and repair it.
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {1, tonumber(ARGV[2]) * 1000}
end
local ip_wait = over_budget(KEYS[3], ARGV[3], ARGV[4])
if ip_wait then
  return {3, ip_wait}
end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {2, 0}
end
return {0, tonumber(redis.call('GET', KEYS[4]) or '0')}
";

// KEYS: attempts, lock, gen. ARGV: max, lock_seconds, reservation gen.
// A failure of the current run is already counted by its reservation; one from an earlier run is
// counted now. Reaching the limit sets the lock. Returns 1 if locked.
const FAIL_LUA: &str = r"
local n
if tonumber(redis.call('GET', KEYS[3]) or '0') == tonumber(ARGV[3]) then
  n = tonumber(redis.call('GET', KEYS[1]) or '0')
else
  n = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

// KEYS: attempts, gen. ARGV: reservation gen. Gives back a reservation whose attempt never ran.
const RELEASE_LUA: &str = r"
if tonumber(redis.call('GET', KEYS[2]) or '0') == tonumber(ARGV[1])
   and tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  redis.call('DECR', KEYS[1])
end
return 0
";

// KEYS: attempts, lock, gen. ARGV: lock_seconds. A success: new run, no count, no lock. Returns 1 if
// a lock was lifted.
const CLEAR_LUA: &str = r"
local was_locked = redis.call('EXISTS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return was_locked
";

pub struct LockoutService {
    redis: ConnectionManager,
    keys: Keys,
    settings: LockoutSettings,
    reserve: Script,
    fail: Script,
    release: Script,
    clear: Script,
}

impl LockoutService {
    pub fn new(redis: ConnectionManager, keys: Keys, settings: LockoutSettings) -> Self {
        LockoutService {
            redis,
            keys,
            settings,
            reserve: budget_script(RESERVE_LUA),
            fail: Script::new(FAIL_LUA),
            release: Script::new(RELEASE_LUA),
            clear: Script::new(CLEAR_LUA),
        }
    }

    pub fn lock_seconds(&self) -> u64 {
        self.settings.lock_seconds
    }

    /// Reserves one password attempt for `phone`, or answers ACCOUNT_LOCKED / RATE_LIMITED.
    pub async fn reserve(&self, phone: &PhoneNumber, client: &str) -> AppResult<Reservation> {
        let (status, value): (i64, i64) = self
            .reserve
            .key(self.keys.phone(phone, "pw_attempts"))
            .key(self.keys.phone(phone, "pw_lock"))
            .key(self.keys.other(&format!("ip:{client}:password_attempts")))
            .key(self.keys.phone(phone, "pw_gen"))
            .arg(self.settings.max_failures)
            .arg(self.settings.lock_seconds)
            .arg(self.settings.ip_max_attempts)
            .arg(self.settings.ip_window_seconds)
            .invoke_async(&mut self.redis.clone())
            .await?;
        match status {
            0 => Ok(Reservation { generation: value }),
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
    pub async fn record_failure(&self, phone: &PhoneNumber, reservation: Reservation) -> AppResult<bool> {
        let locked: i64 = self
            .fail
            .key(self.keys.phone(phone, "pw_attempts"))
            .key(self.keys.phone(phone, "pw_lock"))
            .key(self.keys.phone(phone, "pw_gen"))
            .arg(self.settings.max_failures)
            .arg(self.settings.lock_seconds)
            .arg(reservation.generation)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if locked == 1 {
            metrics::counter!(crate::ops::metrics::LOCKOUTS).increment(1);
        }
        Ok(locked == 1)
    }

    /// A correct password, or a sign-in by code: clears the count and lifts any lock. Returns whether
    /// a lock was lifted.
    pub async fn clear(&self, phone: &PhoneNumber) -> AppResult<bool> {
        let lifted: i64 = self
            .clear
            .key(self.keys.phone(phone, "pw_attempts"))
            .key(self.keys.phone(phone, "pw_lock"))
            .key(self.keys.phone(phone, "pw_gen"))
            .arg(self.settings.lock_seconds)
            .invoke_async(&mut self.redis.clone())
            .await?;
        if lifted == 1 {
            metrics::counter!(crate::ops::metrics::UNLOCKS, "by" => "sign_in").increment(1);
        }
        Ok(lifted == 1)
    }

    /// Seconds the phone stays locked for password sign-in; None when it is not locked.
    pub async fn locked_for(&self, phone: &PhoneNumber) -> AppResult<Option<u64>> {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(self.keys.phone(phone, "pw_lock"))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok((pttl > 0).then(|| retry_after_secs(pttl)))
    }

    /// Gives back a reservation whose attempt never got an answer (the hash pool was full): it neither
    /// failed nor succeeded, so it must not count.
    pub async fn release(&self, phone: &PhoneNumber, reservation: Reservation) -> AppResult<()> {
        let _: i64 = self
            .release
            .key(self.keys.phone(phone, "pw_attempts"))
            .key(self.keys.phone(phone, "pw_gen"))
            .arg(reservation.generation)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}
