//! Registration tokens in Redis: proof, handed out by verifyUser, that the holder received the code
//! sent to a phone that has no account yet. Single use, bound to that phone.
//!
//! Keys: `reg:<sha256 of token>` -> hash {p: E.164 phone, n: times presented}; TTL = 600 s. The token
//! itself (256 random bits, base64url) is never stored. `{phone}:reg_tokens` -> set of the `reg:` keys
//! issued for the phone, TTL = 600 s (renewed by each new token): lets a password change or an account
//! deletion end every pending token of the phone (`revoke_all`). (The `reg:` keys are not in the
//! phone's hash tag, so on a Redis Cluster the two scripts that touch both would need one.) A token may be presented at most
//! `MAX_PRESENTATIONS` times (each costs a password hash before it is used up), so one verified phone
//! cannot drive the hash pool without bound.

use redis::Script;
use redis::aio::ConnectionManager;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::random::OpaqueToken;
use crate::services::Keys;

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

// Uses the token up: of racing uses, exactly one gets the phone.
const CONSUME_LUA: &str = r"
local p = redis.call('HGET', KEYS[1], 'p')
if p then
  redis.call('DEL', KEYS[1])
end
return p
";

pub struct RegistrationTokens {
    redis: ConnectionManager,
    keys: Keys,
    ttl_seconds: u64,
    create: Script,
    present: Script,
    consume: Script,
    revoke_all: Script,
}

impl RegistrationTokens {
    pub fn new(redis: ConnectionManager, keys: Keys, ttl_seconds: u64) -> Self {
        RegistrationTokens {
            redis,
            keys,
            ttl_seconds,
            create: Script::new(CREATE_LUA),
            present: Script::new(PRESENT_LUA),
            consume: Script::new(CONSUME_LUA),
            revoke_all: Script::new(REVOKE_ALL_LUA),
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
        let _: i64 = self
            .create
            .key(key)
            .key(self.keys.phone(phone, "reg_tokens"))
            .arg(phone.e164())
            .arg(self.ttl_seconds)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(token)
    }

    /// The phone a live token is bound to, without using it up; counts a presentation.
    pub async fn present(&self, token: &str) -> AppResult<PhoneNumber> {
        self.run(&self.present, token).await
    }

    /// Uses the token up: of racing uses, exactly one gets the phone.
    pub async fn consume(&self, token: &str) -> AppResult<PhoneNumber> {
        self.run(&self.consume, token).await
    }

    /// Ends every pending registration token of `phone` (a password change, a deleted account).
    /// Returns how many were live.
    pub async fn revoke_all(&self, phone: &PhoneNumber) -> AppResult<u64> {
        let n: u64 = self
            .revoke_all
            .key(self.keys.phone(phone, "reg_tokens"))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(n)
    }

    async fn run(&self, script: &Script, token: &str) -> AppResult<PhoneNumber> {
        let key = self.key(token).ok_or(AppError::InvalidToken)?;
        let phone: Option<String> = script
            .key(key)
            .arg(MAX_PRESENTATIONS)
            .invoke_async(&mut self.redis.clone())
            .await?;
        phone
            .map(PhoneNumber::from_trusted_e164)
            .ok_or(AppError::InvalidToken)
    }
}
