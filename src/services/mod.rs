//! Services, one concern each. Each says in its header which Redis keys or tables it owns.
//! Dependencies point one way: graphql -> services -> domain.

pub mod audit;
pub mod auth;
pub mod embedded;
pub mod lockout;
pub mod otp;
pub mod outbox;
pub mod password;
pub mod phone_change;
pub mod redis_conn;
pub mod redis_server;
pub mod registration;
pub mod sessions;
pub mod sms;
pub mod tokens;
pub mod users;

use crate::domain::PhoneNumber;

/// The stores a process runs on, chosen at start (`app::build`): the real ones, or the embedded
/// backend (development only, no servers: `embedded`). Only readiness and wiring look at it; the
/// services reach their stores through one narrow interface each (`otp::CodeStore`,
/// `lockout::LockoutStore`, ...), whose enums are the only code that knows both.
#[derive(Clone)]
pub enum Backend {
    Real {
        pg: sqlx::PgPool,
        redis: redis_conn::RedisConn,
    },
    Embedded,
}

/// Which store answers (`/readyz`).
pub struct Readiness {
    pub postgres: bool,
    pub redis: bool,
    /// The embedded backend: in this process, so it answers while the process does.
    pub embedded: bool,
}

impl Backend {
    /// Whether PostgreSQL and Redis answer within 2 s each.
    pub async fn readiness(&self) -> Readiness {
        let Backend::Real { pg, redis } = self else {
            return Readiness {
                postgres: false,
                redis: false,
                embedded: true,
            };
        };
        let timeout = std::time::Duration::from_secs(2);
        let pg = sqlx::query("select 1").execute(pg);
        let mut redis = redis.clone();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut redis);
        let (pg, redis) = tokio::join!(
            tokio::time::timeout(timeout, pg),
            tokio::time::timeout(timeout, ping)
        );
        Readiness {
            postgres: matches!(pg, Ok(Ok(_))),
            redis: matches!(redis, Ok(Ok(_))),
            embedded: false,
        }
    }
}

/// Redis key naming. Every key of one phone carries one hash tag, so a Redis Cluster keeps them on
/// one slot and each Lua script touches a single slot:
/// - one primary: the phone itself (`{+16502530000}:otp`), as always;
/// - a Cluster: the tag of the phone's outbox shard (`{s3}+16502530000:otp`, shard =
///   FNV-1a(E.164) mod `SMS_OUTBOX_SHARDS`), shared with that shard's stream (`{s3}sms:outbox`) and
///   its slice of the service-wide SMS budget (`{s3}sms:hour`). The code's script thus stores the
///   code, spends the phone's and the shard's budgets and appends the SMS job in one atomic step on
///   one node, as on a single primary ("no code without a job", STYLE.md). The price: phones spread
///   over `SMS_OUTBOX_SHARDS` slots, not 16384, so on a cluster the shard count is also the unit of
///   balance between masters (README "Scaling out": several shards per master).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    shards: u32,
    cluster: bool,
}

/// FNV-1a 64: a stable hash of the phone, the same in every instance and every release.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Keys {
    /// One primary, one outbox stream: today's names.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            shards: 1,
            cluster: false,
        }
    }

    /// `shards` outbox streams (at least 1); `cluster`: names for a Redis Cluster (see above).
    pub fn with_layout(prefix: impl Into<String>, shards: u32, cluster: bool) -> Self {
        Keys {
            prefix: prefix.into(),
            shards: shards.max(1),
            cluster,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// The outbox shard that takes `phone`'s codes.
    pub fn shard_of(&self, phone: &PhoneNumber) -> u32 {
        self.shard_of_e164(phone.e164())
    }

    /// The same for a number already in E.164 (a job's `to`).
    pub fn shard_of_e164(&self, e164: &str) -> u32 {
        (fnv1a(e164) % u64::from(self.shards)) as u32
    }

    pub fn phone(&self, phone: &PhoneNumber, what: &str) -> String {
        if self.cluster {
            format!(
                "{}{{s{}}}{}:{}",
                self.prefix,
                self.shard_of(phone),
                phone.e164(),
                what
            )
        } else {
            format!("{}{{{}}}:{}", self.prefix, phone.e164(), what)
        }
    }

    pub fn other(&self, what: &str) -> String {
        format!("{}{}", self.prefix, what)
    }

    /// A key of outbox shard `shard` (`sms:outbox`, `sms:dead`, `sms:hour`): with one shard on one
    /// primary, today's name; with more, a numbered one; on a Cluster, in the shard's hash tag.
    pub fn shard(&self, shard: u32, what: &str) -> String {
        if self.cluster {
            format!("{}{{s{shard}}}{what}", self.prefix)
        } else if self.shards == 1 {
            self.other(what)
        } else {
            format!("{}{what}:{shard}", self.prefix)
        }
    }

    /// The kind of a key made here, its variable part replaced by a placeholder: `{phone}:otp`,
    /// `ip:<addr>:code_requests` (otp.rs, lockout.rs), `reg:<sha256>` (registration.rs), `sms:outbox`.
    /// None for a key without this prefix. For audits (the benchmark's TTL check).
    pub fn kind(&self, key: &str) -> Option<String> {
        let k = key.strip_prefix(&self.prefix)?;
        if let Some(rest) = k.strip_prefix('{')
            && let Some((_, what)) = rest.split_once('}')
        {
            // A Cluster's phone keys carry the shard tag, then the phone: `{s3}+1650...:otp`.
            // and a shard's own keys its tag alone: `{s3}sms:outbox`.
            return Some(match what.strip_prefix('+') {
                Some(rest) => format!("{{phone}}:{}", rest.split_once(':').map_or(rest, |(_, w)| w)),
                None if what.starts_with(':') => format!("{{phone}}{what}"),
                None => format!("{{shard}}{what}"),
            });
        }
        if let Some(rest) = k.strip_prefix("ip:")
            && let Some((_, what)) = rest.rsplit_once(':')
        {
            return Some(format!("ip:<addr>:{what}"));
        }
        if k.starts_with("reg:") {
            return Some("reg:<sha256>".into());
        }
        Some(k.to_owned())
    }
}

/// Lua helpers shared by the budget scripts, put in front of each script that uses them (Redis scripts
/// cannot share functions otherwise; `FUNCTION LOAD` would need Redis 7 everywhere and a load step).
pub(crate) const BUDGET_LUA: &str = r"
-- Fixed-window budget: counts this request; the ms to wait when it is over `max`, else nil.
local function over_budget(key, max, window_s)
  local n = redis.call('INCR', key)
  if n == 1 then
    redis.call('EXPIRE', key, window_s)
  end
  if n > tonumber(max) then
    return redis.call('PTTL', key)
  end
  return nil
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Sliding-window log in a sorted set: forgets entries older than the window; the entries left.
local function sliding_count(key, window_ms, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
  return redis.call('ZCARD', key)
end

-- The ms until the oldest entry of a (non-empty) log leaves the window.
local function sliding_wait(key, window_ms, now)
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + window_ms - now
end

-- The ms to wait when `max` entries remain in the window, else nil.
local function sliding_full(key, max, window_ms, now)
  if sliding_count(key, window_ms, now) >= tonumber(max) then
    return sliding_wait(key, window_ms, now)
  end
  return nil
end

local function sliding_add(key, member, window_ms, now)
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window_ms)
end
";

/// On a Redis Cluster, a per-IP budget as a call of its own (its key has a slot of its own).
/// KEYS: the budget. ARGV: max, window (s). Counts this request, as `over_budget` in the phone's
/// script would on one primary; returns the ms to wait when over, else nil.
pub(crate) const IP_BUDGET_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
if n > tonumber(ARGV[1]) then
  return redis.call('PTTL', KEYS[1])
end
return false
";

/// On a Redis Cluster, gives back one request counted by `IP_BUDGET_LUA` that the phone's script then
/// refused before the point where, on one primary, it would have counted it. Never below zero, and
/// never a key without its TTL (DECR keeps it; an expired budget is not recreated).
pub(crate) const GIVE_BACK_LUA: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then
  redis.call('DECR', KEYS[1])
end
return n
";

/// A script's Cluster variant: `call` (an `over_budget` of a key in another slot) replaced by `by`.
/// Panics at start if the script no longer says `call` (a test builds every store on a cluster).
pub(crate) fn cluster_variant(script: &str, call: &str, by: &str) -> String {
    assert!(script.contains(call), "the script no longer calls {call}");
    script.replace(call, by)
}

/// A script with the budget helpers in front.
pub(crate) fn budget_script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{BUDGET_LUA}{body}"))
}

/// Runs one Redis call, and once more if it failed on a dropped connection (`is_connection_dropped`:
/// broken pipe, reset, refused, end of stream). After a Redis restart or a killed connection, the first
/// command on the shared `ConnectionManager` fails that way (the connection was already closed when it
/// was sent) and only then does the manager reconnect: without a second try, the first request on
/// each instance answered SERVICE_UNAVAILABLE.
///
/// The error cannot prove that the command never ran (a connection dropped after Redis executed a
/// script but before its reply came back fails the same way), so this is only for calls that are
/// safe to run twice: each caller says why. Timeouts are never rerun (the command may still run).
pub(crate) async fn rerun_if_dropped<T, F, Fut>(call: F) -> redis::RedisResult<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    match call().await {
        Err(e) if e.is_connection_dropped() => {
            tracing::info!(error = %e, "Redis connection dropped; running the command once more");
            call().await
        }
        other => other,
    }
}

/// Converts a Redis PTTL in milliseconds into whole seconds to wait, never less than one.
pub(crate) fn retry_after_secs(pttl_ms: i64) -> u64 {
    if pttl_ms <= 0 {
        1
    } else {
        (pttl_ms as u64).div_ceil(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(e164: &str) -> PhoneNumber {
        PhoneNumber::from_trusted_e164(e164.to_owned())
    }

    /// The hash tag Redis Cluster hashes: the first `{...}` with something inside.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = key[open..].find('}').expect("a closed tag") + open;
        &key[open + 1..close]
    }

    #[test]
    fn one_primary_keeps_todays_names() {
        let keys = Keys::new("p:");
        let p = phone("+16502530000");
        assert_eq!(keys.phone(&p, "otp"), "p:{+16502530000}:otp");
        assert_eq!(keys.shard(0, "sms:outbox"), "p:sms:outbox");
        let sharded = Keys::with_layout("p:", 4, false);
        assert_eq!(sharded.phone(&p, "otp"), "p:{+16502530000}:otp");
        assert_eq!(sharded.shard(3, "sms:outbox"), "p:sms:outbox:3");
    }

    #[test]
    fn on_a_cluster_a_phone_shares_its_slot_with_its_outbox_shard() {
        let keys = Keys::with_layout("p:", 16, true);
        let mut used = std::collections::BTreeSet::new();
        for i in 0..200 {
            let p = phone(&format!("+1650253{i:04}"));
            let shard = keys.shard_of(&p);
            used.insert(shard);
            let otp = keys.phone(&p, "otp");
            for what in ["sms:outbox", "sms:dead", "sms:hour"] {
                assert_eq!(tag(&otp), tag(&keys.shard(shard, what)), "{otp}");
            }
            assert_eq!(keys.kind(&otp).as_deref(), Some("{phone}:otp"));
        }
        assert_eq!(used.len(), 16, "200 phones reach every shard: {used:?}");
        assert_eq!(
            keys.kind("p:{s3}sms:outbox").as_deref(),
            Some("{shard}sms:outbox")
        );
    }

    #[test]
    fn the_shard_of_a_phone_never_changes() {
        // FNV-1a of the E.164 string: the same in every instance and release (a change would move
        // every phone's keys and strand its jobs).
        let keys = Keys::with_layout("p:", 16, true);
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            keys.shard_of_e164("+16502530000"),
            (fnv1a("+16502530000") % 16) as u32
        );
    }
}
