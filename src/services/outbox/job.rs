//! The one definition of an SMS delivery job: the fields `generateCode`'s script writes (through the
//! Lua snippet below, which `services::otp` embeds in its script) and the parse the workers read them
//! back with. Nothing else knows the stream's field names.
//!
//! Two kinds of job: a code (fields `id`, `to`, `sealed`, `created_ms`), and a notice (`id`, `to`,
//! `kind`, `created_ms`, no code): a fixed message about the account, e.g. `phone_changed` to the
//! number an account has left. A notice carries no text of its own: the worker renders it from its
//! kind, so nothing personal sits in the stream.
//!
//! The code travels sealed (`CodeCipher`): XChaCha20-Poly1305 (RFC 8439 with the 24-byte nonce of
//! draft-irtf-cfrg-xchacha), a random nonce per job, the message id and the phone as associated data.
//! A stream entry, an AOF or an RDB of a persistent Redis keeps a job's `to` after the job is deleted,
//! and until the rewrite its code too: sealed, that code is useless to whoever reads the file, as the
//! README's Security table promises ("codes stored only as an HMAC", ASVS 2.7.x / 6.2.x). The
//! associated data binds the sealed code to its job: it cannot be moved to another job or another
//! phone (someone who can write to Redis cannot redirect a victim's code to their own number).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305, XNonce};
use redis::streams::StreamId;

use crate::random::random_bytes;

/// Lua functions put in front of a script that appends jobs (`otp`'s issue script). KEYS and ARGV
/// stay the caller's; these take them as parameters.
pub(crate) const APPEND_LUA: &str = r"
local function outbox_full(stream, max_len)
  return redis.call('XLEN', stream) >= tonumber(max_len)
end

-- Appends a job and renews the stream's TTL (see `outbox_ttl_seconds`). `sealed` is the code
-- encrypted by `CodeCipher::seal`, never the code.
local function outbox_append(stream, ttl, id, to, sealed, created_ms)
  redis.call('XADD', stream, '*', 'id', id, 'to', to, 'sealed', sealed, 'created_ms', created_ms)
  redis.call('EXPIRE', stream, ttl)
end
";

/// HKDF-SHA256 (RFC 5869) `info` of the outbox key. The code HMAC keeps `OTP_HMAC_SECRET` itself as
/// its key (changing it would void every pending code at a rolling deploy); the outbox key is
/// HKDF-Expand(HKDF-Extract(secret), this label), a key no other use of the secret produces. A worker
/// process derives the same key from the same setting, so no second secret has to be distributed.
const OUTBOX_KEY_INFO: &[u8] = b"phone-auth/v1/sms-outbox-code-encryption";
const NONCE_LEN: usize = 24;

/// Seals codes into jobs (the code service) and opens them (the workers). One key, derived from
/// `OTP_HMAC_SECRET`; rotating that secret makes older jobs unreadable: they are dead-lettered, never
/// sent (`Outbox::deliver`).
#[derive(Clone)]
pub struct CodeCipher {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for CodeCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeCipher(..)")
    }
}

fn associated_data(message_id: &str, to: &str) -> Vec<u8> {
    // A 0 byte between the two: neither a UUID nor an E.164 number contains one.
    let mut aad = Vec::with_capacity(message_id.len() + 1 + to.len());
    aad.extend_from_slice(message_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(to.as_bytes());
    aad
}

impl CodeCipher {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(None, secret)
            .expand(OUTBOX_KEY_INFO, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let aead = XChaCha20Poly1305::new_from_slice(&key).expect("the key is 32 bytes");
        key.fill(0);
        CodeCipher { aead }
    }

    /// `base64url(nonce || ciphertext || tag)`. A 24-byte random nonce: collisions are negligible for
    /// any number of jobs one key will ever seal (2^96 birthday bound), so no counter is needed.
    pub fn seal(&self, message_id: &str, to: &str, code: &str) -> anyhow::Result<String> {
        let nonce = random_bytes::<NONCE_LEN>()?;
        let aad = associated_data(message_id, to);
        let sealed = self
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: code.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing the code failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The code, or None when it was sealed under another key (the secret was rotated), for another
    /// job, or altered.
    pub fn open(&self, message_id: &str, to: &str, sealed: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).ok()?;
        let aad = associated_data(message_id, to);
        let code = self
            .aead
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()?;
        String::from_utf8(code).ok()
    }
}

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

    pub(crate) fn parse(kind: &str) -> Option<Notice> {
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
pub(super) const APPEND_NOTICE_LUA: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[3], 'to', ARGV[4], 'kind', ARGV[5], 'created_ms', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// What the code store needs to append jobs to the outbox: its key, its cap, its TTL and the cipher
/// of the codes, and the outbox itself for notices. Handed out by `Outbox::appender`, so the code
/// service appends where the workers read, sealed under the key they open with.
#[derive(Clone)]
pub struct Appender {
    /// The first shard's stream (the only one with `SMS_OUTBOX_SHARDS=1`). The Redis stores append
    /// to the shard of the phone (`Keys::shard_of`), which they name themselves.
    pub stream_key: String,
    /// Jobs the outbox holds at most: a full outbox refuses new codes rather than trimming.
    pub max_len: u64,
    pub ttl_seconds: u64,
    pub cipher: CodeCipher,
    pub(super) queue: std::sync::Arc<super::OutboxQueue>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("stream_key", &self.stream_key)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl Appender {
    /// An appender to `queue` (the service gets its own from `Outbox::appender`; the benchmark's
    /// baseline server builds one).
    pub fn new(
        stream_key: String,
        max_len: u64,
        ttl_seconds: u64,
        cipher: CodeCipher,
        queue: super::OutboxQueue,
    ) -> Self {
        Appender {
            stream_key,
            max_len,
            ttl_seconds,
            cipher,
            queue: std::sync::Arc::new(queue),
        }
    }

    /// Queues a notice to `to`. False when the outbox is full (nothing queued): a notice is worth
    /// less than the codes that fill it, and is not forced in.
    pub async fn append_notice(&self, to: &str, notice: Notice) -> anyhow::Result<bool> {
        use super::OutboxStore as _;
        self.queue.append_notice(self, to, notice).await
    }
}

/// A job read back from the stream.
pub struct Job {
    pub stream_id: String,
    /// The message's id (a UUID): the idempotency key providers dedupe on.
    pub message_id: String,
    pub to: String,
    /// The code, sealed (`CodeCipher`); only `Outbox::deliver` opens it. Empty for a notice.
    pub sealed: String,
    /// Set for a notice (then there is no code, and nothing to open).
    pub notice: Option<Notice>,
    pub created_ms: u64,
}

impl Job {
    /// None for an entry that is not a job of ours (it is left alone).
    pub(crate) fn parse(entry: StreamId) -> Option<Job> {
        let field = |name: &str| entry.get::<String>(name);
        // A `kind` we do not know is not a job of ours either.
        let notice = match field("kind") {
            Some(kind) => Some(Notice::parse(&kind)?),
            None => None,
        };
        Some(Job {
            message_id: field("id")?,
            to: field("to")?,
            // A job written before codes were sealed has `code` instead: it reads as a job whose code
            // cannot be opened, and is dead-lettered rather than left pending for ever. A notice has
            // no code at all.
            sealed: if notice.is_some() {
                String::new()
            } else {
                field("sealed").unwrap_or_default()
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
    fn a_sealed_code_opens_only_with_its_key_and_its_job() {
        let cipher = CodeCipher::from_secret(b"0123456789abcdef0123456789abcdef");
        let sealed = cipher.seal("id-1", "+16502530000", "980442").unwrap();
        assert!(!sealed.contains("980442"));
        assert_eq!(
            cipher.open("id-1", "+16502530000", &sealed).as_deref(),
            Some("980442")
        );
        assert_eq!(cipher.open("id-2", "+16502530000", &sealed), None, "another job");
        assert_eq!(
            cipher.open("id-1", "+16502530001", &sealed),
            None,
            "another phone"
        );
        let rotated = CodeCipher::from_secret(b"another-secret-another-secret-xx");
        assert_eq!(rotated.open("id-1", "+16502530000", &sealed), None, "another key");
        assert_eq!(cipher.open("id-1", "+16502530000", "980442"), None, "not sealed");
        assert_ne!(
            sealed,
            cipher.seal("id-1", "+16502530000", "980442").unwrap(),
            "a fresh nonce per job"
        );
    }

    #[test]
    fn codes_notices_and_strangers() {
        let base = [("id", "m1"), ("to", "+16502530000"), ("created_ms", "5")];
        let code = Job::parse(entry(&[base[0], base[1], base[2], ("sealed", "c2VhbGVk")])).unwrap();
        assert_eq!((code.sealed.as_str(), code.notice), ("c2VhbGVk", None));
        let notice = Job::parse(entry(&[base[0], base[1], base[2], ("kind", "phone_changed")])).unwrap();
        assert_eq!(
            (notice.sealed.as_str(), notice.notice),
            ("", Some(Notice::PhoneChanged))
        );
        assert!(Notice::PhoneChanged.render("Acme").starts_with("Acme: "));
        // A job of a kind we do not know is not ours.
        assert!(Job::parse(entry(&[base[0], base[1], base[2], ("kind", "other")])).is_none());
        // A code job without a sealed code (one written before codes were sealed) is ours, with
        // nothing to open: `deliver` dead-letters it.
        let legacy = Job::parse(entry(&[base[0], base[1], base[2], ("code", "123456")])).unwrap();
        assert_eq!((legacy.sealed.as_str(), legacy.notice), ("", None));
    }
}
