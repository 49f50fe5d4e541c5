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
        redis: redis::aio::ConnectionManager,
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

/// Redis key naming. Every key of one phone carries the phone in a hash tag (`{+16502530000}`), so a
/// Redis Cluster keeps them on one slot and each Lua script touches a single slot.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn phone(&self, phone: &PhoneNumber, what: &str) -> String {
        format!("{}{{{}}}:{}", self.prefix, phone.e164(), what)
    }

    pub fn other(&self, what: &str) -> String {
        format!("{}{}", self.prefix, what)
    }

    /// The kind of a key made here, its variable part replaced by a placeholder: `{phone}:otp`,
    /// `ip:<addr>:code_requests` (otp.rs, lockout.rs), `reg:<sha256>` (registration.rs), `sms:outbox`.
    /// None for a key without this prefix. For audits (the benchmark's TTL check).
    pub fn kind(&self, key: &str) -> Option<String> {
        let k = key.strip_prefix(&self.prefix)?;
        if let Some(rest) = k.strip_prefix('{')
            && let Some((_, what)) = rest.split_once('}')
        {
            return Some(format!("{{phone}}{what}"));
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
