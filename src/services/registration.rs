//! Registration tokens in Redis: proof, handed out by verifyUser, that the holder received the code
//! sent to a phone that has no account yet. Single use, bound to that phone.
//!
//! Keys: `reg:<sha256 of token>` -> hash {p: E.164 phone, n: times presented, u: the id of the account
//! it makes, c / ce: the registration that holds it and until when (ms)}; TTL = 600 s. The token itself
//! (256 random bits, base64url) is never stored. A token may be presented at most `MAX_PRESENTATIONS`
//! times (each costs a password hash before it is used up), so one verified phone cannot drive the
//! hash pool without bound. `{phone}:reg_tokens` -> set of the `reg:` keys issued for the phone,
//! TTL = 600 s (renewed by each new token): lets a password change or an account deletion end every
//! pending token of the phone (`revoke_all`). The `reg:` keys are not in the phone's hash tag (a token
//! does not name its phone), so on a Redis Cluster the two steps that touch both are split, in an
//! order that keeps `revoke_all` complete: creating adds the key to the phone's set first, then
//! writes the token, then checks that the set still lists it (a revocation that ran in between
//! emptied the set: the new token is deleted); revoking takes and deletes the set in one step, then
//! deletes each token it listed. A token created after a revocation's first step is newer than it
//! and is rightly kept.
//!
//! Creating the account (PostgreSQL) and using the token up (Redis) cannot be one transaction, so a
//! registration *claims* the token (of racing uses, exactly one holds it), creates the account with
//! the id the token names, and only then deletes the token. If PostgreSQL fails, the claim is given
//! back and the token is as it was. If the account was created but the answer was lost (or the
//! session insert failed), a retry with the same token finds the account that token made (same id)
//! and completes it as a sign-in. A claim whose registration stopped without a word (the process
//! ended) lapses after `CLAIM_LEASE_MS`.
//!
//! Every call here is rerun once on a dropped connection (`rerun_if_dropped`), as each is safe to run
//! twice: a claim carries its id, unclaim and finish are idempotent, a token is created under a fresh
//! random key, and a presentation counted twice only errs on the safe side.

use std::future::Future;
use std::sync::Arc;

use redis::Script;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::random::OpaqueToken;
use crate::services::embedded::Memory;
use crate::services::redis_conn::RedisConn;
use crate::services::{Keys, budget_script, rerun_if_dropped};

// Cluster steps of CREATE_LUA / REVOKE_ALL_LUA, each in one slot.
// KEYS: the phone's token set. ARGV: a token key, ttl. Lists the token before it exists.
const LIST_LUA: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";
// KEYS: a token. ARGV: phone, ttl.
const WRITE_TOKEN_LUA: &str = r"
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'n', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";
// KEYS: the phone's token set. Takes it: its members, and the set deleted.
const TAKE_LIST_LUA: &str = r"
local keys = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return keys
";

/// A register call that fails after the hash (a race lost, the store down) may be retried; a few
/// presentations cover that, and bound the argon2 work one token can cause.
pub const MAX_PRESENTATIONS: u32 = 3;

const CREATE_LUA: &str = r"
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'n', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
";

// KEYS: the phone's token set. Deletes every token it lists, and itself. Returns how many tokens were
// still live.
const REVOKE_ALL_LUA: &str = r"
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', key)
end
redis.call('DEL', KEYS[1])
return n
";

// Returns the phone, or nil when the token is unknown or was presented too often. An over-presented
// token is refused but not deleted: presentations already under way may still complete with it.
const PRESENT_LUA: &str = r"
local p = redis.call('HGET', KEYS[1], 'p')
if not p then
  return false
end
if redis.call('HINCRBY', KEYS[1], 'n', 1) > tonumber(ARGV[1]) then
  return false
end
return p
";

/// How long a claim holds the token if its registration never ends it: longer than the account
/// insert, the lockout clear and the session insert take (each bounded by the 3 s PostgreSQL acquire
/// timeout or the 2 s Redis timeout by default), short enough that a user whose registration died
/// with its process can retry within the token's lifetime.
pub const CLAIM_LEASE_MS: u64 = 30_000;

// KEYS: token. ARGV: claim id, lease ms, a new account id. Claims the token unless another live
// registration holds it; names the account id once. Returns {phone, account id}, or nil.
const CLAIM_LUA: &str = r"
local p = redis.call('HGET', KEYS[1], 'p')
if not p then
  return false
end
local now = now_ms()
local holder = redis.call('HGET', KEYS[1], 'c')
if holder and holder ~= ARGV[1] and tonumber(redis.call('HGET', KEYS[1], 'ce')) > now then
  return false
end
local u = redis.call('HGET', KEYS[1], 'u')
if not u then
  u = ARGV[3]
end
redis.call('HSET', KEYS[1], 'c', ARGV[1], 'ce', now + tonumber(ARGV[2]), 'u', u)
return {p, u}
";

// KEYS: token. ARGV: claim id. Gives the token back (its account was not made, or not signed in to).
const UNCLAIM_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'c') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'c', 'ce')
end
return 0
";

/// A claimed token: the phone it is bound to and the id of the account it makes.
pub struct Claim {
    pub phone: PhoneNumber,
    pub user_id: uuid::Uuid,
    id: String,
    key: String,
}

/// The registration-token store: each call one atomic step with the answers of the scripts above.
/// `key` is the token's key (`reg:<sha256>`, made by `RegistrationTokens`: the token is never
/// stored). Implemented by Redis (`RedisRegistrations`) and the embedded backend; `Registrations`
/// dispatches.
pub trait RegistrationStore: Send + Sync {
    fn create(
        &self,
        key: &str,
        phone: &PhoneNumber,
        ttl_seconds: u64,
    ) -> impl Future<Output = AppResult<()>> + Send;
    /// The phone, or None when the token is unknown or was presented more than `max` times.
    fn present(&self, key: &str, max: u32) -> impl Future<Output = AppResult<Option<String>>> + Send;
    /// `(phone, account id)`, or None when unknown or held by another live claim.
    fn claim(
        &self,
        key: &str,
        claim_id: &str,
        lease_ms: u64,
        new_user_id: &str,
    ) -> impl Future<Output = AppResult<Option<(String, String)>>> + Send;
    fn unclaim(&self, key: &str, claim_id: &str) -> impl Future<Output = AppResult<()>> + Send;
    fn finish(&self, key: &str) -> impl Future<Output = AppResult<()>> + Send;
    /// Ends every token of `phone`; how many were live.
    fn revoke_all(&self, phone: &PhoneNumber) -> impl Future<Output = AppResult<u64>> + Send;
}

/// Registration tokens in Redis.
pub struct RedisRegistrations {
    redis: RedisConn,
    keys: Keys,
    create: Script,
    present: Script,
    claim: Script,
    unclaim: Script,
    revoke_all: Script,
    list: Script,
    write_token: Script,
    take_list: Script,
}

impl RedisRegistrations {
    pub fn new(redis: RedisConn, keys: Keys) -> Self {
        RedisRegistrations {
            redis,
            keys,
            create: Script::new(CREATE_LUA),
            present: Script::new(PRESENT_LUA),
            claim: budget_script(CLAIM_LUA),
            unclaim: Script::new(UNCLAIM_LUA),
            revoke_all: Script::new(REVOKE_ALL_LUA),
            list: Script::new(LIST_LUA),
            write_token: Script::new(WRITE_TOKEN_LUA),
            take_list: Script::new(TAKE_LIST_LUA),
        }
    }
}

impl RegistrationStore for RedisRegistrations {
    async fn create(&self, key: &str, phone: &PhoneNumber, ttl_seconds: u64) -> AppResult<()> {
        if self.keys.cluster() {
            // Each step is safe to rerun (a set add, a write of a fresh random key, a read).
            let set = self.keys.phone(phone, "reg_tokens");
            let _: i64 = rerun_if_dropped(|| async {
                self.list
                    .key(&set)
                    .arg(key)
                    .arg(ttl_seconds)
                    .invoke_async(&mut self.redis.clone())
                    .await
            })
            .await?;
            let _: i64 = rerun_if_dropped(|| async {
                self.write_token
                    .key(key)
                    .arg(phone.e164())
                    .arg(ttl_seconds)
                    .invoke_async(&mut self.redis.clone())
                    .await
            })
            .await?;
            let listed: bool = rerun_if_dropped(|| async {
                redis::cmd("SISMEMBER")
                    .arg(&set)
                    .arg(key)
                    .query_async(&mut self.redis.clone())
                    .await
            })
            .await?;
            if !listed {
                // Revoked between the first step and this one: the token is revoked with the rest.
                let _: i64 = rerun_if_dropped(|| async {
                    redis::cmd("DEL")
                        .arg(key)
                        .query_async(&mut self.redis.clone())
                        .await
                })
                .await?;
            }
            return Ok(());
        }
        let _: i64 = rerun_if_dropped(|| async {
            self.create
                .key(key)
                .key(self.keys.phone(phone, "reg_tokens"))
                .arg(phone.e164())
                .arg(ttl_seconds)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?;
        Ok(())
    }

    async fn present(&self, key: &str, max: u32) -> AppResult<Option<String>> {
        Ok(rerun_if_dropped(|| async {
            self.present
                .key(key)
                .arg(max)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?)
    }

    async fn claim(
        &self,
        key: &str,
        claim_id: &str,
        lease_ms: u64,
        new_user_id: &str,
    ) -> AppResult<Option<(String, String)>> {
        Ok(rerun_if_dropped(|| async {
            self.claim
                .key(key)
                .arg(claim_id)
                .arg(lease_ms)
                .arg(new_user_id)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?)
    }

    async fn unclaim(&self, key: &str, claim_id: &str) -> AppResult<()> {
        let _: i64 = rerun_if_dropped(|| async {
            self.unclaim
                .key(key)
                .arg(claim_id)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?;
        Ok(())
    }

    async fn finish(&self, key: &str) -> AppResult<()> {
        let _: i64 = rerun_if_dropped(|| async {
            redis::cmd("DEL")
                .arg(key)
                .query_async(&mut self.redis.clone())
                .await
        })
        .await?;
        Ok(())
    }

    async fn revoke_all(&self, phone: &PhoneNumber) -> AppResult<u64> {
        let set = self.keys.phone(phone, "reg_tokens");
        if self.keys.cluster() {
            // Taking the set is one step; deleting what it listed is safe to rerun.
            let listed: Vec<String> = rerun_if_dropped(|| async {
                self.take_list
                    .key(&set)
                    .invoke_async(&mut self.redis.clone())
                    .await
            })
            .await?;
            let mut live = 0;
            for key in &listed {
                let n: u64 = rerun_if_dropped(|| async {
                    redis::cmd("DEL")
                        .arg(key)
                        .query_async(&mut self.redis.clone())
                        .await
                })
                .await?;
                live += n;
            }
            return Ok(live);
        }
        Ok(rerun_if_dropped(|| async {
            self.revoke_all
                .key(&set)
                .invoke_async(&mut self.redis.clone())
                .await
        })
        .await?)
    }
}

/// The registration-token store of this process: Redis, or the embedded backend (one per process:
/// the Redis variant's size costs nothing worth a box).
#[allow(clippy::large_enum_variant)]
pub enum Registrations {
    Redis(RedisRegistrations),
    Embedded(Arc<Memory>),
}

impl RegistrationStore for Registrations {
    async fn create(&self, key: &str, phone: &PhoneNumber, ttl_seconds: u64) -> AppResult<()> {
        match self {
            Registrations::Redis(s) => s.create(key, phone, ttl_seconds).await,
            Registrations::Embedded(s) => RegistrationStore::create(&**s, key, phone, ttl_seconds).await,
        }
    }

    async fn present(&self, key: &str, max: u32) -> AppResult<Option<String>> {
        match self {
            Registrations::Redis(s) => s.present(key, max).await,
            Registrations::Embedded(s) => s.present(key, max).await,
        }
    }

    async fn claim(
        &self,
        key: &str,
        claim_id: &str,
        lease_ms: u64,
        new_user_id: &str,
    ) -> AppResult<Option<(String, String)>> {
        match self {
            Registrations::Redis(s) => s.claim(key, claim_id, lease_ms, new_user_id).await,
            Registrations::Embedded(s) => s.claim(key, claim_id, lease_ms, new_user_id).await,
        }
    }

    async fn unclaim(&self, key: &str, claim_id: &str) -> AppResult<()> {
        match self {
            Registrations::Redis(s) => s.unclaim(key, claim_id).await,
            Registrations::Embedded(s) => s.unclaim(key, claim_id).await,
        }
    }

    async fn finish(&self, key: &str) -> AppResult<()> {
        match self {
            Registrations::Redis(s) => RegistrationStore::finish(s, key).await,
            Registrations::Embedded(s) => RegistrationStore::finish(&**s, key).await,
        }
    }

    async fn revoke_all(&self, phone: &PhoneNumber) -> AppResult<u64> {
        match self {
            Registrations::Redis(s) => s.revoke_all(phone).await,
            Registrations::Embedded(s) => s.revoke_all(phone).await,
        }
    }
}

pub struct RegistrationTokens {
    store: Registrations,
    keys: Keys,
    ttl_seconds: u64,
}

impl RegistrationTokens {
    pub fn new(store: Registrations, keys: Keys, ttl_seconds: u64) -> Self {
        RegistrationTokens {
            store,
            keys,
            ttl_seconds,
        }
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    fn key(&self, token: &str) -> Option<String> {
        // Anything far off our tokens' length is refused without a lookup.
        let digest = OpaqueToken::digest_if_plausible(token)?;
        Some(self.keys.other(&format!("reg:{}", hex::encode(digest))))
    }

    pub async fn create(&self, phone: &PhoneNumber) -> AppResult<String> {
        let OpaqueToken { token, digest } = OpaqueToken::generate().map_err(AppError::Internal)?;
        let key = self.keys.other(&format!("reg:{}", hex::encode(digest)));
        self.store.create(&key, phone, self.ttl_seconds).await?;
        Ok(token)
    }

    /// The phone a live token is bound to, without using it up; counts a presentation.
    pub async fn present(&self, token: &str) -> AppResult<PhoneNumber> {
        let key = self.key(token).ok_or(AppError::InvalidToken)?;
        self.store
            .present(&key, MAX_PRESENTATIONS)
            .await?
            .map(PhoneNumber::from_trusted_e164)
            .ok_or(AppError::InvalidToken)
    }

    /// Claims the token for one registration: of racing uses, exactly one holds it.
    pub async fn claim(&self, token: &str) -> AppResult<Claim> {
        let key = self.key(token).ok_or(AppError::InvalidToken)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let claimed = self
            .store
            .claim(&key, &id, CLAIM_LEASE_MS, &uuid::Uuid::new_v4().to_string())
            .await?;
        let (phone, user_id) = claimed.ok_or(AppError::InvalidToken)?;
        let user_id = user_id
            .parse()
            .map_err(|e| AppError::Internal(anyhow::anyhow!("registration token account id: {e}")))?;
        Ok(Claim {
            phone: PhoneNumber::from_trusted_e164(phone),
            user_id,
            id,
            key,
        })
    }

    /// Gives a claimed token back, as it was: its registration failed before it ended.
    pub async fn unclaim(&self, claim: &Claim) -> AppResult<()> {
        self.store.unclaim(&claim.key, &claim.id).await
    }

    /// Uses a claimed token up: its registration ended (signed in, or the phone has another account).
    pub async fn finish(&self, claim: &Claim) -> AppResult<()> {
        self.store.finish(&claim.key).await
    }

    /// Ends every pending registration token of `phone` (a password change, a deleted account).
    /// Returns how many were live. Safe to rerun: a second run finds nothing left.
    pub async fn revoke_all(&self, phone: &PhoneNumber) -> AppResult<u64> {
        self.store.revoke_all(phone).await
    }
}
