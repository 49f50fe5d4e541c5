//! The one definition of an SMS delivery job: the fields `generateCode`'s script writes (through the
//! Lua snippet below, which `services::otp` embeds in its script) and the parse the workers read them
//! back with. Nothing else knows the stream's field names.
//!
//! Two kinds of job: a code (fields `id`, `to`, `code`, `created_ms`), and a notice (`id`, `to`,
//! `kind`, `created_ms`, no code): a fixed message about the account, e.g. `phone_changed` to the
//! number an account has left. A notice carries no text of its own: the worker renders it from its
//! kind, so nothing personal sits in the stream.

use redis::streams::StreamId;

/// Lua functions put in front of a script that appends jobs (`otp`'s issue script). KEYS and ARGV
/// stay the caller's; these take them as parameters.
pub(crate) const APPEND_LUA: &str = r"
local function outbox_full(stream, max_len)
  return redis.call('XLEN', stream) >= tonumber(max_len)
end

-- Appends a job and renews the stream's TTL (see `outbox_ttl_seconds`).
local function outbox_append(stream, ttl, id, to, code, created_ms)
  redis.call('XADD', stream, '*', 'id', id, 'to', to, 'code', code, 'created_ms', created_ms)
  redis.call('EXPIRE', stream, ttl)
end
";

/// The notices there are (the `kind` field of a notice job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// To the old number, once an account moved to another one.
    PhoneChanged,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::PhoneChanged => "phone_changed",
        }
    }

    fn parse(kind: &str) -> Option<Notice> {
        match kind {
            "phone_changed" => Some(Notice::PhoneChanged),
            _ => None,
        }
    }

    /// The message text. Says which app, never the new number.
    pub fn render(self, app: &str) -> String {
        match self {
            Notice::PhoneChanged => format!(
                "{app}: the phone number of your account was changed to another number. If this was not \
                 you, contact support."
            ),
        }
    }
}

// KEYS: the outbox. ARGV: max len, ttl, message id, to, kind, created ms. Returns 0 when the outbox is
// full (the notice is not queued), 1 queued.
const APPEND_NOTICE_LUA: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[3], 'to', ARGV[4], 'kind', ARGV[5], 'created_ms', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// What a script needs to append jobs to the outbox: its key, its cap and its TTL. Handed out by
/// `Outbox::appender`, so the code service appends where the workers read.
#[derive(Clone, Debug)]
pub struct Appender {
    pub stream_key: String,
    /// Jobs the outbox holds at most: a full outbox refuses new codes rather than trimming.
    pub max_len: u64,
    pub ttl_seconds: u64,
}

impl Appender {
    /// Queues a notice to `to`. False when the outbox is full (nothing queued): a notice is worth
    /// less than the codes that fill it, and is not forced in.
    pub async fn append_notice(
        &self,
        redis: &redis::aio::ConnectionManager,
        to: &str,
        notice: Notice,
    ) -> redis::RedisResult<bool> {
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let queued: i64 = redis::Script::new(APPEND_NOTICE_LUA)
            .key(&self.stream_key)
            .arg(self.max_len)
            .arg(self.ttl_seconds)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(to)
            .arg(notice.as_str())
            .arg(created_ms)
            .invoke_async(&mut redis.clone())
            .await?;
        Ok(queued == 1)
    }
}

/// A job read back from the stream.
pub(super) struct Job {
    pub stream_id: String,
    /// The message's id (a UUID): the idempotency key providers dedupe on.
    pub message_id: String,
    pub to: String,
    /// Empty for a notice.
    pub code: String,
    /// Set for a notice (then there is no code).
    pub notice: Option<Notice>,
    pub created_ms: u64,
}

impl Job {
    /// None for an entry that is not a job of ours (it is left alone).
    pub fn parse(entry: StreamId) -> Option<Job> {
        let field = |name: &str| entry.get::<String>(name);
        // A `kind` we do not know is not a job of ours either.
        let notice = match field("kind") {
            Some(kind) => Some(Notice::parse(&kind)?),
            None => None,
        };
        Some(Job {
            message_id: field("id")?,
            to: field("to")?,
            code: if notice.is_some() {
                String::new()
            } else {
                field("code")?
            },
            notice,
            created_ms: field("created_ms")?.parse().ok()?,
            stream_id: entry.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), redis::Value::BulkString(v.as_bytes().to_vec())))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn codes_notices_and_strangers() {
        let base = [("id", "m1"), ("to", "+16502530000"), ("created_ms", "5")];
        let code = Job::parse(entry(&[base[0], base[1], base[2], ("code", "123456")])).unwrap();
        assert_eq!((code.code.as_str(), code.notice), ("123456", None));
        let notice = Job::parse(entry(&[base[0], base[1], base[2], ("kind", "phone_changed")])).unwrap();
        assert_eq!(
            (notice.code.as_str(), notice.notice),
            ("", Some(Notice::PhoneChanged))
        );
        assert!(Notice::PhoneChanged.render("Acme").starts_with("Acme: "));
        // A job of a kind we do not know, or a code job without its code, is not ours.
        assert!(Job::parse(entry(&[base[0], base[1], base[2], ("kind", "other")])).is_none());
        assert!(Job::parse(entry(&base)).is_none());
    }
}
