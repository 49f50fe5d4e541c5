//! Services, one concern each. Each says in its header which Redis keys or tables it owns.
//! Dependencies point one way: graphql -> services -> domain.

pub mod auth;
pub mod hasher;
pub mod lockout;
pub mod otp;
pub mod outbox;
pub mod registration;
pub mod sessions;
pub mod sms;
pub mod tokens;
pub mod users;

use crate::domain::PhoneNumber;

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
}

/// Converts a Redis PTTL in milliseconds into whole seconds to wait, never less than one.
pub(crate) fn retry_after_secs(pttl_ms: i64) -> u64 {
    if pttl_ms <= 0 {
        1
    } else {
        (pttl_ms as u64).div_ceil(1000)
    }
}
