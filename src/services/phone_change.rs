//! Pending phone changes in Redis: which account asked to move to a number, so that the code sent to
//! that number moves that account only.
//!
//! Keys: `{phone}:phone_change` -> the id of the user who last asked to move to this phone (the new
//! one); TTL = the code lifetime (300 s): the request is worth nothing once its code expired. A later
//! request for the same number replaces it, as its code replaces the previous code.
//!
//! Why bind the code to the requester: the code of a number is one per phone (`otp`), and a code read
//! out to a stranger ("tell me the code you just got") must not let the stranger's account take the
//! number over without having asked for it first, nor may a `generateCode` code be turned into a phone
//! change by any signed-in user who learns it.

use std::future::Future;
use std::sync::Arc;

use crate::services::redis_conn::RedisConn;
use redis::Script;
use uuid::Uuid;

use crate::domain::PhoneNumber;
use crate::error::AppResult;
use crate::services::Keys;
use crate::services::embedded::Memory;

// KEYS: the pending change. ARGV: the user id. Deletes it if it is this user's. Returns 1 if deleted.
const FINISH_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The pending-change store: `start` records the requester, `owner` reads it, `finish` deletes it
/// if it is that user's (one atomic step, `FINISH_LUA`). Redis (`RedisPhoneChanges`) and the
/// embedded backend implement it; `PhoneChangeStores` dispatches.
pub trait PhoneChangeStore: Send + Sync {
    fn start(
        &self,
        phone: &PhoneNumber,
        user_id: &str,
        ttl_seconds: u64,
    ) -> impl Future<Output = AppResult<()>> + Send;
    fn owner(&self, phone: &PhoneNumber) -> impl Future<Output = AppResult<Option<String>>> + Send;
    fn finish(&self, phone: &PhoneNumber, user_id: &str) -> impl Future<Output = AppResult<()>> + Send;
}

pub struct RedisPhoneChanges {
    redis: RedisConn,
    keys: Keys,
    finish: Script,
}

impl RedisPhoneChanges {
    pub fn new(redis: RedisConn, keys: Keys) -> Self {
        RedisPhoneChanges {
            redis,
            keys,
            finish: Script::new(FINISH_LUA),
        }
    }
}

impl PhoneChangeStore for RedisPhoneChanges {
    async fn start(&self, phone: &PhoneNumber, user_id: &str, ttl_seconds: u64) -> AppResult<()> {
        let _: () = redis::cmd("SET")
            .arg(self.keys.phone(phone, "phone_change"))
            .arg(user_id)
            .arg("EX")
            .arg(ttl_seconds)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    async fn owner(&self, phone: &PhoneNumber) -> AppResult<Option<String>> {
        Ok(redis::cmd("GET")
            .arg(self.keys.phone(phone, "phone_change"))
            .query_async(&mut self.redis.clone())
            .await?)
    }

    async fn finish(&self, phone: &PhoneNumber, user_id: &str) -> AppResult<()> {
        let _: i64 = self
            .finish
            .key(self.keys.phone(phone, "phone_change"))
            .arg(user_id)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}

pub enum PhoneChangeStores {
    Redis(RedisPhoneChanges),
    Embedded(Arc<Memory>),
}

impl PhoneChangeStore for PhoneChangeStores {
    async fn start(&self, phone: &PhoneNumber, user_id: &str, ttl_seconds: u64) -> AppResult<()> {
        match self {
            PhoneChangeStores::Redis(s) => s.start(phone, user_id, ttl_seconds).await,
            PhoneChangeStores::Embedded(s) => s.start(phone, user_id, ttl_seconds).await,
        }
    }

    async fn owner(&self, phone: &PhoneNumber) -> AppResult<Option<String>> {
        match self {
            PhoneChangeStores::Redis(s) => s.owner(phone).await,
            PhoneChangeStores::Embedded(s) => s.owner(phone).await,
        }
    }

    async fn finish(&self, phone: &PhoneNumber, user_id: &str) -> AppResult<()> {
        match self {
            PhoneChangeStores::Redis(s) => PhoneChangeStore::finish(s, phone, user_id).await,
            PhoneChangeStores::Embedded(s) => PhoneChangeStore::finish(&**s, phone, user_id).await,
        }
    }
}

pub struct PhoneChanges {
    store: PhoneChangeStores,
    ttl_seconds: u64,
}

impl PhoneChanges {
    pub fn new(store: PhoneChangeStores, ttl_seconds: u64) -> Self {
        PhoneChanges { store, ttl_seconds }
    }

    /// Records that `user_id` asked to move to `phone` (after its code was queued).
    pub async fn start(&self, phone: &PhoneNumber, user_id: Uuid) -> AppResult<()> {
        self.store
            .start(phone, &user_id.to_string(), self.ttl_seconds)
            .await
    }

    /// Whether the pending change to `phone` is `user_id`'s.
    pub async fn is_pending_for(&self, phone: &PhoneNumber, user_id: Uuid) -> AppResult<bool> {
        let owner = self.store.owner(phone).await?;
        Ok(owner.as_deref() == Some(user_id.to_string().as_str()))
    }

    /// Ends `user_id`'s pending change to `phone` (done, or the account is gone).
    pub async fn finish(&self, phone: &PhoneNumber, user_id: Uuid) -> AppResult<()> {
        self.store.finish(phone, &user_id.to_string()).await
    }
}
