//! Registration tokens in Redis: proof, handed out by verifyUser, that the holder received the code
//! sent to a phone that has no account yet. Single use, bound to that phone.
//!
//! Keys: `reg:<sha256 of token>` -> E.164 phone; TTL = 600 s. The token itself (256 random bits,
//! base64url) is never stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::services::Keys;
use crate::services::otp::hex;

pub struct RegistrationTokens {
    redis: ConnectionManager,
    keys: Keys,
    ttl_seconds: u64,
}

impl RegistrationTokens {
    pub fn new(redis: ConnectionManager, keys: Keys, ttl_seconds: u64) -> Self {
        RegistrationTokens {
            redis,
            keys,
            ttl_seconds,
        }
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    fn key(&self, token: &str) -> Option<String> {
        // Our tokens are 43 characters: anything far off is refused without a lookup.
        if token.is_empty() || token.len() > 64 {
            return None;
        }
        Some(
            self.keys
                .other(&format!("reg:{}", hex(&Sha256::digest(token.as_bytes())))),
        )
    }

    pub async fn create(&self, phone: &PhoneNumber) -> AppResult<String> {
        let mut bytes = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("os rng: {e}")))?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let key = self
            .key(&token)
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("token length")))?;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(phone.e164())
            .arg("EX")
            .arg(self.ttl_seconds)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(token)
    }

    /// The phone a live token is bound to, without using it up.
    pub async fn peek(&self, token: &str) -> AppResult<PhoneNumber> {
        let key = self.key(token).ok_or(AppError::InvalidToken)?;
        let phone: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await?;
        phone
            .map(PhoneNumber::from_trusted_e164)
            .ok_or(AppError::InvalidToken)
    }

    /// Uses the token up (GETDEL: of racing uses, exactly one gets the phone).
    pub async fn consume(&self, token: &str) -> AppResult<PhoneNumber> {
        let key = self.key(token).ok_or(AppError::InvalidToken)?;
        let phone: Option<String> = redis::cmd("GETDEL")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await?;
        phone
            .map(PhoneNumber::from_trusted_e164)
            .ok_or(AppError::InvalidToken)
    }
}
