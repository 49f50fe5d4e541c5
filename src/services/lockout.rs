//! Password lockout in Redis: after `max_failures` consecutive wrong passwords for one E.164 phone,
//! password sign-in for that phone is refused for `lock_seconds` (default 3 and 3600 s).
//!
//! Keys (phone hash tag, all with a TTL):
//! - `{phone}:pw_attempts` failures so far plus attempts in flight; TTL = lock_seconds, renewed on each
//!   reservation
//! - `{phone}:pw_lock`     present while locked; TTL = lock_seconds
//! - `ip:<addr>:password_attempts` per-IP budget across phones; TTL = IP window (300 s)
//!
//! An attempt is *reserved* atomically before any hash is computed: the reservation script refuses
//! once failures plus in-flight attempts reach the limit, so a burst of 30 parallel wrong passwords
//! computes at most 3 hashes and leaves the phone locked. Counted per phone whether or not an account
//! exists, so an unknown phone and a wrong password look the same.

use redis::Script;
use redis::aio::ConnectionManager;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::services::{Keys, retry_after_secs};

#[derive(Clone, Debug)]
pub struct LockoutSettings {
    pub max_failures: u32,
    pub lock_seconds: u64,
    pub ip_window_seconds: u64,
    pub ip_max_attempts: u32,
}

// Returns {status, pttl_ms}: 0 reserved, 1 locked (pttl of the lock), 2 the limit is taken by
// attempts still in flight (answered as locked too: one of them is a failure that will lock), 3 the
// caller's IP is over its budget of attempts across all phones.
const RESERVE_LUA: &str = r"
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 then
  return {1, pttl}
end
local ip = redis.call('INCR', KEYS[3])
if ip == 1 then
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
if ip > tonumber(ARGV[3]) then
  return {3, redis.call('PTTL', KEYS[3])}
end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {2, tonumber(ARGV[2]) * 1000}
end
return {0, 0}
";

// A reserved attempt failed: it stays counted. Reaching the limit sets the lock.
const FAIL_LUA: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const RELEASE_LUA: &str = r"
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  redis.call('DECR', KEYS[1])
end
return 0
";

pub struct LockoutService {
    redis: ConnectionManager,
    keys: Keys,
    settings: LockoutSettings,
    reserve: Script,
    fail: Script,
    release: Script,
}

impl LockoutService {
    pub fn new(redis: ConnectionManager, keys: Keys, settings: LockoutSettings) -> Self {
        LockoutService {
            redis,
            keys,
            settings,
            reserve: Script::new(RESERVE_LUA),
            fail: Script::new(FAIL_LUA),
            release: Script::new(RELEASE_LUA),
        }
    }

    pub fn lock_seconds(&self) -> u64 {
        self.settings.lock_seconds
    }

    /// Reserves one password attempt for `phone`, or answers ACCOUNT_LOCKED.
    pub async fn reserve(&self, phone: &PhoneNumber, client: &str) -> AppResult<()> {
        let (status, pttl): (i64, i64) = self
            .reserve
            .key(self.keys.phone(phone, "pw_attempts"))
            .key(self.keys.phone(phone, "pw_lock"))
            .key(self.keys.other(&format!("ip:{client}:password_attempts")))
            .arg(self.settings.max_failures)
            .arg(self.settings.lock_seconds)
            .arg(self.settings.ip_max_attempts)
            .arg(self.settings.ip_window_seconds)
            .invoke_async(&mut self.redis.clone())
            .await?;
        match status {
            0 => Ok(()),
            3 => Err(AppError::RateLimited {
                retry_after_seconds: retry_after_secs(pttl),
            }),
            _ => Err(AppError::AccountLocked {
                retry_after_seconds: retry_after_secs(pttl),
            }),
        }
    }

    /// The reserved attempt was a wrong password. Returns whether the phone is now locked.
    pub async fn record_failure(&self, phone: &PhoneNumber) -> AppResult<bool> {
        let locked: i64 = self
            .fail
            .key(self.keys.phone(phone, "pw_attempts"))
            .key(self.keys.phone(phone, "pw_lock"))
            .arg(self.settings.max_failures)
            .arg(self.settings.lock_seconds)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(locked == 1)
    }

    /// A correct password, or a sign-in by code: clears the count and lifts any lock.
    pub async fn clear(&self, phone: &PhoneNumber) -> AppResult<()> {
        let _: () = redis::cmd("DEL")
            .arg(self.keys.phone(phone, "pw_attempts"))
            .arg(self.keys.phone(phone, "pw_lock"))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Releases a reservation whose attempt never ran (the hash pool was full): it neither failed nor
    /// succeeded, so it must not count.
    pub async fn release(&self, phone: &PhoneNumber) -> AppResult<()> {
        let _: i64 = self
            .release
            .key(self.keys.phone(phone, "pw_attempts"))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}
