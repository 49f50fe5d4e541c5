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

use redis::Script;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::domain::PhoneNumber;
use crate::error::AppResult;
use crate::services::Keys;

// KEYS: the pending change. ARGV: the user id. Deletes it if it is this user's. Returns 1 if deleted.
const FINISH_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

pub struct PhoneChanges {
    redis: ConnectionManager,
    keys: Keys,
    ttl_seconds: u64,
    finish: Script,
}

impl PhoneChanges {
    pub fn new(redis: ConnectionManager, keys: Keys, ttl_seconds: u64) -> Self {
        PhoneChanges {
            redis,
            keys,
            ttl_seconds,
            finish: Script::new(FINISH_LUA),
        }
    }

    /// Records that `user_id` asked to move to `phone` (after its code was queued).
    pub async fn start(&self, phone: &PhoneNumber, user_id: Uuid) -> AppResult<()> {
        let _: () = redis::cmd("SET")
            .arg(self.keys.phone(phone, "phone_change"))
            .arg(user_id.to_string())
            .arg("EX")
            .arg(self.ttl_seconds)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Whether the pending change to `phone` is `user_id`'s.
    pub async fn is_pending_for(&self, phone: &PhoneNumber, user_id: Uuid) -> AppResult<bool> {
        let owner: Option<String> = redis::cmd("GET")
            .arg(self.keys.phone(phone, "phone_change"))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(owner.as_deref() == Some(user_id.to_string().as_str()))
    }

    /// Ends `user_id`'s pending change to `phone` (done, or the account is gone).
    pub async fn finish(&self, phone: &PhoneNumber, user_id: Uuid) -> AppResult<()> {
        let _: i64 = self
            .finish
            .key(self.keys.phone(phone, "phone_change"))
            .arg(user_id.to_string())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}
