//! One-time codes in Redis.
//!
//! Keys (all with a TTL, all in the phone's hash tag):
//! - `{phone}:otp`       hash {h: HMAC-SHA256(secret, phone || 0 || code), tries}; TTL = code lifetime (300 s)
//! - `{phone}:otp_sends` sorted set of the codes sent in the last window (3600 s), by time: a sliding
//!   window, so no burst at a window's edge can exceed the budget; its newest entry is also the resend
//!   cooldown (no new code until it is 60 s old), so the cooldown needs no key of its own; TTL = window
//! - `{phone}:otp_fails` the same for failed checks, over any number of codes; TTL = window
//! - `ip:<addr>:code_requests`, `ip:<addr>:code_checks` per-IP budgets; TTL = IP window (300 s)
//! - `sms:hour`          SMS sent by the whole service this hour; TTL = 3600 s
//!
//! Each decision (issue, check) is one script over all its keys. The phone's keys share a hash tag.
//! On a Redis Cluster (`REDIS_CLUSTER_URLS`) a script may only touch one slot, so:
//! - the per-IP budget is a call of its own in its own slot (`IP_BUDGET_LUA`), made before the
//!   phone's script. Both scripts check the IP first and count every request against it, so the
//!   answers and limits are today's: an IP over budget is refused before the phone's script runs;
//! - the service-wide SMS budget is split into one counter per outbox shard (`{sN}sms:hour`, in the
//!   phone's slot, see `Keys`), each allowed its share of `SMS_MAX_PER_HOUR` (`sms_quota`): checked
//!   and given back inside the phone's script as on one primary, and no single hot key takes every
//!   code request. The total never exceeds the limit; a shard may refuse while others still have room
//!   (at most `shards - 1` SMS of headroom unused per hour when traffic is skewed to one shard).
//!
//! The code itself is never stored: only its HMAC under a server secret, and in its SMS job only sealed
//! (`outbox::CodeCipher`, a key derived from the same secret), so a Redis dump or AOF does not reveal
//! live codes. Issuing and checking are each one Lua script, that is one atomic step and one
//! round trip: of many parallel correct submissions exactly one consumes the code.

use std::future::Future;
use std::sync::Arc;

use crate::services::redis_conn::RedisConn;
use hmac::{Hmac, Mac};
use redis::Script;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use crate::domain::{OtpCode, PhoneNumber};
use crate::error::{AppError, AppResult};
use crate::services::embedded::Memory;
use crate::services::outbox::{APPEND_LUA, Appender};
use crate::services::{
    BUDGET_LUA, IP_BUDGET_LUA, Keys, budget_script, cluster_variant, rerun_if_dropped, retry_after_secs,
};

#[derive(Clone, Debug)]
pub struct OtpSettings {
    pub ttl_seconds: u64,
    pub max_attempts: u32,
    pub resend_cooldown_seconds: u64,
    pub max_sends_per_window: u32,
    pub window_seconds: u64,
    pub max_failures_per_window: u32,
    pub ip_window_seconds: u64,
    pub ip_max_code_requests: u32,
    pub ip_max_code_checks: u32,
    pub sms_max_per_hour: u32,
}

pub struct Issued {
    pub code: OtpCode,
    pub expires_in_seconds: u64,
    pub resend_in_seconds: u64,
    /// A configured test number: no SMS is sent.
    pub test_number: bool,
}

/// Configured test numbers and their fixed codes (`SMS_TEST_NUMBERS`).
#[derive(Default)]
pub struct TestNumbers {
    exact: std::collections::HashMap<String, String>,
    prefixes: Vec<(String, String)>,
}

impl TestNumbers {
    /// Parses `+E164:code,+prefix*:code`. Numbers must be E.164 (digits after `+`), codes 6 digits.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut out = TestNumbers::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (number, code) = item
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("SMS_TEST_NUMBERS: {item:?} is not number:code"))?;
            OtpCode::parse(code)
                .map_err(|_| anyhow::anyhow!("SMS_TEST_NUMBERS: the code of {number} is not 6 digits"))?;
            let (digits, prefix) = match number.strip_suffix('*') {
                Some(p) => (p, true),
                None => (number, false),
            };
            anyhow::ensure!(
                digits.starts_with('+')
                    && digits.len() > 2
                    && digits[1..].bytes().all(|b| b.is_ascii_digit()),
                "SMS_TEST_NUMBERS: {number:?} must be E.164 (+ and digits, optionally ending with *)"
            );
            if prefix {
                out.prefixes.push((digits.to_owned(), code.to_owned()));
            } else {
                out.exact.insert(digits.to_owned(), code.to_owned());
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    fn code_for(&self, phone: &PhoneNumber) -> Option<OtpCode> {
        let e164 = phone.e164();
        let code = self.exact.get(e164).or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| e164.starts_with(prefix.as_str()))
                .map(|(_, code)| code)
        })?;
        OtpCode::parse(code).ok()
    }
}

// Returns {status, pttl_ms}: 0 stored, 1 cooling down, 2 phone's window budget spent, 3 IP budget
// spent, 4 service-wide SMS budget spent, 5 the SMS outbox is full. Storing the code and appending its
// delivery job to the outbox stream happen together or not at all. Every request counts against its
// IP; only a sent code counts against the phone, and only a real SMS against the service.
// A new code replaces the pending one (its tries start at 0) but never touches otp_fails: a fresh code
// must not reset the phone's failure count (NIST SP 800-63B 5.2.2).
// The cooldown is read from the newest send in the window (the cooldown never exceeds the window:
// checked at start-up), the service-wide count is taken first and given back on refusal: fewer
// commands and keys per code than a key per limit (see docs/BENCHMARKS.md).
const ISSUE_LUA: &str = r"
if redis.call('ZSCORE', KEYS[2], ARGV[10]) then
  -- This very send is stored: a rerun after a dropped connection (see rerun_if_dropped).
  return {0, 0}
end
local ip_wait = over_budget(KEYS[3], ARGV[6], ARGV[7])
if ip_wait then
  return {3, ip_wait}
end
local now = now_ms()
local window = tonumber(ARGV[5]) * 1000
local sent = sliding_count(KEYS[2], window, now)
if sent > 0 then
  local cooldown = tonumber(ARGV[3]) * 1000
  if cooldown > 0 then
    local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    local wait = tonumber(newest[2]) + cooldown - now
    if wait > 0 then
      return {1, wait}
    end
  end
  if sent >= tonumber(ARGV[4]) then
    return {2, sliding_wait(KEYS[2], window, now)}
  end
end
if ARGV[9] == '1' then
  if outbox_full(KEYS[5], ARGV[12]) then
    return {5, 0}
  end
  -- A refused SMS is given back: only a sent one spends the service's budget.
  local sms_wait = over_budget(KEYS[4], ARGV[8], 3600)
  if sms_wait then
    redis.call('DECR', KEYS[4])
    return {4, sms_wait}
  end
end
-- Both fields are (re)written: a previous code's hash has no other field to clear.
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'tries', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
sliding_add(KEYS[2], ARGV[10], window, now)
if ARGV[9] == '1' then
  outbox_append(KEYS[5], ARGV[15], ARGV[10], ARGV[13], ARGV[14], ARGV[11])
end
return {0, 0}
";

// Returns {status, pttl_ms, tries, expires_at_ms, newest_send}: 0 correct (code consumed), 1 invalid
// (wrong, expired, used, none), 2 burnt by this wrong try, 3 phone over its failure budget for the
// window, 4 IP over its budget. A consumed code also returns what `RESTORE_LUA` needs to give it back:
// its tries, when it expires, and the score of the newest send (which tells a newer code apart).
const CHECK_LUA: &str = r"
local ip_wait = over_budget(KEYS[3], ARGV[5], ARGV[6])
if ip_wait then
  return {4, ip_wait}
end
local now = now_ms()
local window = tonumber(ARGV[4]) * 1000
local phone_wait = sliding_full(KEYS[2], ARGV[3], window, now)
if phone_wait then
  return {3, phone_wait}
end
local h = redis.call('HGET', KEYS[1], 'h')
if not h then
  return {1, 0}
end
if h == ARGV[1] then
  local tries = tonumber(redis.call('HGET', KEYS[1], 'tries') or '0')
  local expires_at = now + redis.call('PTTL', KEYS[1])
  local newest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  redis.call('DEL', KEYS[1])
  return {0, 0, tries, expires_at, tonumber(newest[2] or '0')}
end
sliding_add(KEYS[2], ARGV[7], window, now)
if redis.call('HINCRBY', KEYS[1], 'tries', 1) >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {2, 0}
end
return {1, 0}
";

// KEYS: otp, otp_sends. ARGV: h, tries, expires_at_ms, newest_send (as the check returned them).
// Gives a consumed code back, with its tries and its expiry, unless a newer code was issued since
// (the newest send changed, or a code is pending), or it has expired meanwhile. Returns 1 if restored.
const RESTORE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if tonumber(newest[2] or '0') ~= tonumber(ARGV[4]) then
  return 0
end
local left = tonumber(ARGV[3]) - now_ms()
if left <= 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'tries', ARGV[2])
redis.call('PEXPIRE', KEYS[1], left)
return 1
";

/// A code that `consume` used up, with what `restore` needs to give it back.
pub struct Consumed {
    pub tries: i64,
    pub expires_at_ms: i64,
    pub newest_send: i64,
}

/// One code request, as the store decides it (`CodeStore::issue`).
pub struct IssueRequest<'a> {
    pub phone: &'a PhoneNumber,
    /// The caller's budget key.
    pub client: &'a str,
    /// HMAC of the code (the code itself is never stored).
    pub mac: String,
    /// The send's id: a rerun of the same request is recognised by it; also the SMS job's id.
    pub send_id: &'a str,
    pub queued_at_ms: u64,
    /// The code sealed for its SMS job (empty for a test number).
    pub sealed: &'a str,
    /// A real SMS: spends the service-wide budget and gets a delivery job.
    pub sms: bool,
}

/// The code store: every decision about one phone's codes and their budgets is one atomic step.
/// The answers are those of the Lua scripts above (status and milliseconds, the same numbers), so
/// every implementation says the same thing to the same requests:
/// - `issue` -> `(status, pttl_ms)` as `ISSUE_LUA`;
/// - `check` -> `[status, pttl_ms, (tries, expires_at_ms, newest_send)]` as `CHECK_LUA`;
/// - `restore` -> whether the code was given back, as `RESTORE_LUA`.
///
/// Implemented by Redis (`RedisCodes`) and by the embedded backend (`embedded::Memory`); `Codes`
/// dispatches. Native `impl Future` methods: no boxing on the request path. The boundary is the
/// decision, not the keys: on a Redis Cluster, `RedisCodes` alone counts the per-IP budget in a
/// call of its own before the phone's script and keeps the SMS budget's share in the phone's slot
/// (module header); callers do not change.
pub trait CodeStore: Send + Sync {
    fn issue(
        &self,
        req: &IssueRequest<'_>,
        s: &OtpSettings,
        outbox: &Appender,
    ) -> impl Future<Output = AppResult<(i64, i64)>> + Send;
    fn check(
        &self,
        phone: &PhoneNumber,
        client: &str,
        mac: &str,
        s: &OtpSettings,
    ) -> impl Future<Output = AppResult<Vec<i64>>> + Send;
    fn restore(
        &self,
        phone: &PhoneNumber,
        mac: &str,
        consumed: &Consumed,
    ) -> impl Future<Output = AppResult<bool>> + Send;
    /// Deletes the pending code of `phone`, if any.
    fn revoke(&self, phone: &PhoneNumber) -> impl Future<Output = AppResult<()>> + Send;
}

/// The code store in Redis: one script per decision (on a Cluster, the IP budget in front).
pub struct RedisCodes {
    redis: RedisConn,
    keys: Keys,
    issue: Script,
    check: Script,
    restore: Script,
    ip_budget: Script,
}

/// Shard `shard`'s share of a service-wide budget of `max` split over `shards`: the shares add up to
/// `max` exactly (the remainder goes to the first shards).
pub fn sms_quota(max: u32, shard: u32, shards: u32) -> u32 {
    max / shards + u32::from(shard < max % shards)
}

impl RedisCodes {
    pub fn new(redis: RedisConn, keys: Keys) -> Self {
        let (mut issue, mut check) = (ISSUE_LUA.to_owned(), CHECK_LUA.to_owned());
        if keys.cluster() {
            // The IP was counted by its own call before (`ip_over`): an IP over budget never gets here.
            issue = cluster_variant(&issue, "over_budget(KEYS[3], ARGV[6], ARGV[7])", "nil");
            check = cluster_variant(&check, "over_budget(KEYS[3], ARGV[5], ARGV[6])", "nil");
        }
        RedisCodes {
            redis,
            keys,
            issue: redis::Script::new(&format!("{BUDGET_LUA}{APPEND_LUA}{issue}")),
            check: budget_script(&check),
            restore: budget_script(RESTORE_LUA),
            ip_budget: Script::new(IP_BUDGET_LUA),
        }
    }

    /// On a Cluster: counts this request against the IP budget `key` in a call of its own; the ms to
    /// wait when the IP is over it. On one primary: None, the phone's script counts it. Rerun on a
    /// dropped connection: a request may then count twice (never less), which errs on the safe side.
    async fn ip_over(&self, key: &str, max: u32, window_seconds: u64) -> AppResult<Option<i64>> {
        if !self.keys.cluster() {
            return Ok(None);
        }
        Ok(rerun_if_dropped(|| async {
            self.ip_budget
                .key(key)
                .arg(max)
                .arg(window_seconds)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?)
    }

    /// The key of the IP budget `what` of `client`; on a Cluster the phone's script gets its own
    /// first key in that place instead (a key of its slot it does not use).
    fn ip_key(&self, client: &str, what: &str) -> String {
        self.keys.other(&format!("ip:{client}:{what}"))
    }
}

impl CodeStore for RedisCodes {
    async fn issue(&self, r: &IssueRequest<'_>, s: &OtpSettings, outbox: &Appender) -> AppResult<(i64, i64)> {
        let phone = r.phone;
        let ip_key = self.ip_key(r.client, "code_requests");
        if let Some(wait) = self
            .ip_over(&ip_key, s.ip_max_code_requests, s.ip_window_seconds)
            .await?
        {
            return Ok((3, wait));
        }
        let shard = self.keys.shard_of(phone);
        let (script_ip_key, sms_key, sms_max) = if self.keys.cluster() {
            (
                self.keys.phone(phone, "otp"),
                self.keys.shard(shard, "sms:hour"),
                sms_quota(s.sms_max_per_hour, shard, self.keys.shards()),
            )
        } else {
            (ip_key, self.keys.other("sms:hour"), s.sms_max_per_hour)
        };
        let stream_key = self.keys.shard(shard, "sms:outbox");
        // Rerun on a dropped connection: safe, a rerun of a script that did run finds its send id in
        // otp_sends and answers as the first run did (one code, one SMS job).
        Ok(rerun_if_dropped(|| async {
            self.issue
                .key(self.keys.phone(phone, "otp"))
                .key(self.keys.phone(phone, "otp_sends"))
                .key(&script_ip_key)
                .key(&sms_key)
                .key(&stream_key)
                .arg(&r.mac)
                .arg(s.ttl_seconds)
                .arg(s.resend_cooldown_seconds)
                .arg(s.max_sends_per_window)
                .arg(s.window_seconds)
                .arg(s.ip_max_code_requests)
                .arg(s.ip_window_seconds)
                .arg(sms_max)
                // Only a real SMS spends the service-wide budget and gets a delivery job.
                .arg(if r.sms { "1" } else { "0" })
                .arg(r.send_id)
                .arg(r.queued_at_ms)
                .arg(outbox.max_len)
                .arg(phone.e164())
                .arg(r.sealed)
                .arg(outbox.ttl_seconds)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?)
    }

    /// Not rerun on a dropped connection: a rerun of a check that did run would find the code gone
    /// (INVALID_CODE) or count a wrong try twice; SERVICE_UNAVAILABLE is the honest answer.
    async fn check(
        &self,
        phone: &PhoneNumber,
        client: &str,
        mac: &str,
        s: &OtpSettings,
    ) -> AppResult<Vec<i64>> {
        let ip_key = self.ip_key(client, "code_checks");
        if let Some(wait) = self
            .ip_over(&ip_key, s.ip_max_code_checks, s.ip_window_seconds)
            .await?
        {
            return Ok(vec![4, wait]);
        }
        let script_ip_key = if self.keys.cluster() {
            self.keys.phone(phone, "otp")
        } else {
            ip_key
        };
        Ok(self
            .check
            .key(self.keys.phone(phone, "otp"))
            .key(self.keys.phone(phone, "otp_fails"))
            .key(script_ip_key)
            .key(self.keys.phone(phone, "otp_sends"))
            .arg(mac)
            .arg(s.max_attempts)
            .arg(s.max_failures_per_window)
            .arg(s.window_seconds)
            .arg(s.ip_max_code_checks)
            .arg(s.ip_window_seconds)
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .invoke_async(&mut self.redis.clone())
            .await?)
    }

    async fn restore(&self, phone: &PhoneNumber, mac: &str, consumed: &Consumed) -> AppResult<bool> {
        // Rerun on a dropped connection: safe, a restored code exists and is not restored twice.
        let restored: i64 = rerun_if_dropped(|| async {
            self.restore
                .key(self.keys.phone(phone, "otp"))
                .key(self.keys.phone(phone, "otp_sends"))
                .arg(mac)
                .arg(consumed.tries)
                .arg(consumed.expires_at_ms)
                .arg(consumed.newest_send)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?;
        Ok(restored == 1)
    }

    /// Safe to rerun on a dropped connection: a second DEL finds nothing.
    async fn revoke(&self, phone: &PhoneNumber) -> AppResult<()> {
        let key = self.keys.phone(phone, "otp");
        let _: i64 = rerun_if_dropped(|| async {
            redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut self.redis.clone())
                .await
        })
        .await?;
        Ok(())
    }
}

/// The code store of this process: Redis, or the embedded backend.
// One per process: the Redis variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Codes {
    Redis(RedisCodes),
    Embedded(Arc<Memory>),
}

impl CodeStore for Codes {
    async fn issue(&self, r: &IssueRequest<'_>, s: &OtpSettings, outbox: &Appender) -> AppResult<(i64, i64)> {
        match self {
            Codes::Redis(store) => store.issue(r, s, outbox).await,
            Codes::Embedded(store) => store.issue(r, s, outbox).await,
        }
    }

    async fn check(
        &self,
        phone: &PhoneNumber,
        client: &str,
        mac: &str,
        s: &OtpSettings,
    ) -> AppResult<Vec<i64>> {
        match self {
            Codes::Redis(store) => store.check(phone, client, mac, s).await,
            Codes::Embedded(store) => store.check(phone, client, mac, s).await,
        }
    }

    async fn restore(&self, phone: &PhoneNumber, mac: &str, consumed: &Consumed) -> AppResult<bool> {
        match self {
            Codes::Redis(store) => store.restore(phone, mac, consumed).await,
            Codes::Embedded(store) => store.restore(phone, mac, consumed).await,
        }
    }

    async fn revoke(&self, phone: &PhoneNumber) -> AppResult<()> {
        match self {
            Codes::Redis(store) => store.revoke(phone).await,
            Codes::Embedded(store) => store.revoke(phone).await,
        }
    }
}

pub struct OtpService {
    store: Codes,
    /// HMAC-SHA256 keyed with the server secret once (the key schedule is two SHA-256 blocks), cloned
    /// for each code.
    keyed_mac: Hmac<Sha256>,
    settings: OtpSettings,
    test_numbers: TestNumbers,
    outbox: Appender,
}

impl OtpService {
    pub fn new(
        store: Codes,
        secret: SecretSlice<u8>,
        settings: OtpSettings,
        test_numbers: TestNumbers,
        outbox: Appender,
    ) -> Self {
        OtpService {
            outbox,
            store,
            keyed_mac: <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret())
                .expect("HMAC accepts keys of any length"),
            settings,
            test_numbers,
        }
    }

    pub fn settings(&self) -> &OtpSettings {
        &self.settings
    }

    fn mac(&self, phone: &PhoneNumber, code: &OtpCode) -> String {
        let mut mac = self.keyed_mac.clone();
        mac.update(phone.e164().as_bytes());
        mac.update(&[0]);
        mac.update(code.expose().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Draws and stores a new code for `phone`, unless the phone is cooling down or out of budget.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn issue(&self, phone: &PhoneNumber, client: &str) -> AppResult<Issued> {
        let (code, test_number) = match self.test_numbers.code_for(phone) {
            Some(fixed) => (fixed, true),
            None => (OtpCode::generate()?, false),
        };
        let s = &self.settings;
        // Drawn once: a rerun (below) sends the same send id, which the script recognises.
        let send_id = uuid::Uuid::new_v4().to_string();
        let queued_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // A test number gets no job, so nothing to seal.
        let sealed = if test_number {
            String::new()
        } else {
            self.outbox
                .cipher
                .seal(&send_id, phone.e164(), code.expose())
                .map_err(AppError::Internal)?
        };
        let (status, pttl) = self
            .store
            .issue(
                &IssueRequest {
                    phone,
                    client,
                    mac: self.mac(phone, &code),
                    send_id: &send_id,
                    queued_at_ms,
                    sealed: &sealed,
                    sms: !test_number,
                },
                s,
                &self.outbox,
            )
            .await?;
        crate::ops::metrics::issue_outcome(status);
        match status {
            0 => Ok(Issued {
                code,
                expires_in_seconds: s.ttl_seconds,
                resend_in_seconds: s.resend_cooldown_seconds,
                test_number,
            }),
            1..=4 => Err(AppError::RateLimited {
                retry_after_seconds: retry_after_secs(pttl),
            }),
            5 => Err(AppError::Unavailable(anyhow::anyhow!("the SMS outbox is full"))),
            other => Err(AppError::Internal(anyhow::anyhow!(
                "otp issue script returned {other}"
            ))),
        }
    }

    /// Ends the pending code of `phone`, if any (a password change, a deleted account). The phone's
    /// budgets stay: they count what was sent and tried, whatever became of the account.
    pub async fn revoke(&self, phone: &PhoneNumber) -> AppResult<()> {
        self.store.revoke(phone).await
    }

    /// Checks `code` against the pending code of `phone` and consumes it if it matches.
    #[tracing::instrument(level = "debug", skip(self, code))]
    pub async fn consume(&self, phone: &PhoneNumber, code: &OtpCode, client: &str) -> AppResult<Consumed> {
        let out = self
            .store
            .check(phone, client, &self.mac(phone, code), &self.settings)
            .await?;
        crate::ops::metrics::check_outcome(out.first().copied().unwrap_or(-1));
        match out[..] {
            [0, _, tries, expires_at_ms, newest_send] => Ok(Consumed {
                tries,
                expires_at_ms,
                newest_send,
            }),
            [1, _] => Err(AppError::InvalidCode),
            [2, _] => Err(AppError::TooManyAttempts),
            [3 | 4, pttl] => Err(AppError::RateLimited {
                retry_after_seconds: retry_after_secs(pttl),
            }),
            _ => Err(AppError::Internal(anyhow::anyhow!(
                "otp check script returned {out:?}"
            ))),
        }
    }

    /// Gives back a code that `consume` used up when the flow after it failed (the user got nothing
    /// for it): same tries, same expiry; not if a newer code was issued since. Returns whether it did.
    pub async fn restore(&self, phone: &PhoneNumber, code: &OtpCode, consumed: &Consumed) -> AppResult<bool> {
        self.store.restore(phone, &self.mac(phone, code), consumed).await
    }
}

#[cfg(test)]
mod quota_tests {
    use super::sms_quota;

    #[test]
    fn the_shares_add_up_to_the_limit() {
        for (max, shards) in [(1000, 16), (7, 4), (3, 4), (1_000_000_000, 1)] {
            let total: u32 = (0..shards).map(|i| sms_quota(max, i, shards)).sum();
            assert_eq!(total, max, "{max} over {shards}");
        }
        assert_eq!(sms_quota(7, 0, 4), 2);
        assert_eq!(sms_quota(7, 3, 4), 1);
    }
}
