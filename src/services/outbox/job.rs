//! The one definition of an SMS delivery job: the fields `generateCode`'s script writes (through the
//! Lua snippet below, which `services::otp` embeds in its script) and the parse the workers read them
//! back with. Nothing else knows the stream's field names.

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

/// What a script needs to append jobs to the outbox: its key, its cap and its TTL. Handed out by
/// `Outbox::appender`, so the code service appends where the workers read.
#[derive(Clone, Debug)]
pub struct Appender {
    pub stream_key: String,
    /// Jobs the outbox holds at most: a full outbox refuses new codes rather than trimming.
    pub max_len: u64,
    pub ttl_seconds: u64,
}

/// A job read back from the stream.
pub(super) struct Job {
    pub stream_id: String,
    /// The message's id (a UUID): the idempotency key providers dedupe on.
    pub message_id: String,
    pub to: String,
    pub code: String,
    pub created_ms: u64,
}

impl Job {
    /// None for an entry that is not a job of ours (it is left alone).
    pub fn parse(entry: StreamId) -> Option<Job> {
        let field = |name: &str| entry.get::<String>(name);
        Some(Job {
            message_id: field("id")?,
            to: field("to")?,
            code: field("code")?,
            created_ms: field("created_ms")?.parse().ok()?,
            stream_id: entry.id,
        })
    }
}
