//! SMS providers: what a worker hands a message to. Chosen by `SMS_PROVIDER`:
//! - `log`: writes the message, code included, to the log (development only);
//! - `webhook`: POSTs JSON `{to, body, code, messageId}` signed per the Standard Webhooks spec, for teams
//!   that bridge to their own gateway;
//! - `twilio`: Twilio's Programmable Messaging API (base URL configurable).
//!
//! A provider answers `Ok`, a transient failure (retry: network, timeout, 408, 429, 5xx) or a permanent
//! one (dead-letter: any other 4xx). `messageId` is the idempotency key: it stays the same across retries
//! and redeliveries, so the receiving side can drop duplicates (delivery is at least once).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

/// One message to deliver.
pub struct SmsMessage<'a> {
    pub to: &'a str,
    pub code: &'a str,
    pub body: &'a str,
    /// Stable across retries: the idempotency key.
    pub message_id: &'a str,
}

#[derive(Debug)]
pub enum DeliveryError {
    /// Worth retrying: the provider or the network may recover.
    Transient(String),
    /// Retrying cannot help (bad number, bad credentials): dead-letter it.
    Permanent(String),
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

pub trait SmsSender: Send + Sync {
    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a>;

    /// The provider's name, a metrics label.
    fn name(&self) -> &'static str {
        "custom"
    }
}

/// Development only: logs the message, code included, at WARN so it is seen. Never in production
/// (`APP_ENV=production` refuses to start with it).
pub struct LogSender;

impl SmsSender for LogSender {
    fn name(&self) -> &'static str {
        "log"
    }

    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::warn!(
                target: "phone_auth::dev_sms",
                to = message.to,
                message_id = message.message_id,
                body = %message.body,
                "development SMS sender: this message would be sent by SMS"
            );
            Ok(())
        })
    }
}

/// Keeps every message in memory, for tests.
#[derive(Default)]
pub struct TestSender {
    sent: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl TestSender {
    /// The code of the newest message sent to `e164`.
    pub fn last_code(&self, e164: &str) -> Option<String> {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.get(e164)
            .and_then(|v| v.last())
            .map(|(code, _)| code.clone())
    }

    /// Every body sent to `e164`, oldest first.
    pub fn bodies(&self, e164: &str) -> Vec<String> {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.get(e164)
            .map(|v| v.iter().map(|(_, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    pub fn count(&self, e164: &str) -> usize {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.get(e164).map_or(0, Vec::len)
    }
}

impl SmsSender for TestSender {
    fn name(&self) -> &'static str {
        "test"
    }

    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.entry(message.to.to_owned())
                .or_default()
                .push((message.code.to_owned(), message.body.to_owned()));
            Ok(())
        })
    }
}

/// How an HTTP answer is classified.
fn classify(status: reqwest::StatusCode, provider: &str) -> Result<(), DeliveryError> {
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        Err(DeliveryError::Transient(format!("{provider} answered {status}")))
    } else {
        Err(DeliveryError::Permanent(format!("{provider} answered {status}")))
    }
}

fn network(provider: &str, e: &reqwest::Error) -> DeliveryError {
    // Only the kind of failure: the error's text could carry the URL with credentials.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    DeliveryError::Transient(format!("{provider}: {kind}"))
}

pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// POSTs `{to, body, code, messageId}` signed per Standard Webhooks (standardwebhooks.com):
/// `webhook-id`, `webhook-timestamp`, and `webhook-signature: v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">` with the secret's key (`whsec_<base64>`).
pub struct WebhookSender {
    client: reqwest::Client,
    url: String,
    key: SecretSlice<u8>,
}

impl WebhookSender {
    pub fn new(client: reqwest::Client, url: String, secret: &SecretString) -> anyhow::Result<Self> {
        let encoded = secret
            .expose_secret()
            .strip_prefix("whsec_")
            .ok_or_else(|| anyhow::anyhow!("SMS_WEBHOOK_SECRET must look like whsec_<base64>"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| anyhow::anyhow!("SMS_WEBHOOK_SECRET: the part after whsec_ is not base64"))?;
        anyhow::ensure!(
            key.len() >= 24,
            "SMS_WEBHOOK_SECRET: use at least 24 random bytes"
        );
        Ok(WebhookSender {
            client,
            url,
            key: SecretSlice::from(key),
        })
    }

    pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl SmsSender for WebhookSender {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let payload = serde_json::json!({
                "to": message.to,
                "body": message.body,
                "code": message.code,
                "messageId": message.message_id,
            })
            .to_string();
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let signature = Self::signature(
                self.key.expose_secret(),
                message.message_id,
                timestamp,
                payload.as_bytes(),
            );
            let response = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("webhook-id", message.message_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(payload)
                .send()
                .await
                .map_err(|e| network("webhook", &e))?;
            classify(response.status(), "webhook")
        })
    }
}

/// Twilio Programmable Messaging: `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form fields
/// `To`, `From` (or `MessagingServiceSid` when the sender starts with `MG`) and `Body`, basic auth, and
/// the message id as `I-Twilio-Idempotency-Token`.
pub struct TwilioSender {
    client: reqwest::Client,
    base_url: String,
    account_sid: String,
    auth_token: SecretString,
    from: String,
}

impl TwilioSender {
    pub fn new(
        client: reqwest::Client,
        base_url: String,
        account_sid: String,
        auth_token: SecretString,
        from: String,
    ) -> Self {
        TwilioSender {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            account_sid,
            auth_token,
            from,
        }
    }
}

impl SmsSender for TwilioSender {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let url = format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                self.base_url, self.account_sid
            );
            let from_field = if self.from.starts_with("MG") {
                "MessagingServiceSid"
            } else {
                "From"
            };
            let form = [
                ("To", message.to),
                (from_field, self.from.as_str()),
                ("Body", message.body),
            ];
            let response = self
                .client
                .post(url)
                .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
                .header("I-Twilio-Idempotency-Token", message.message_id)
                .form(&form)
                .send()
                .await
                .map_err(|e| network("twilio", &e))?;
            classify(response.status(), "twilio")
        })
    }
}

/// The message text: `template` with `{app}`, `{code}` and `{minutes}`, then the lines that let phones
/// and browsers fill the code in by themselves:
///
/// - `android_app_hash`: Android's SMS Retriever API hands a message to an app only if the message
///   includes that app's 11-character hash (developers.google.com/identity/sms-retriever/verify,
///   "Construct a verification message": at most 140 bytes, the code, the hash). Without it only the
///   SMS User Consent API (which asks the user for each message) sees the code. Older versions of that
///   page said the message must *end* with the hash; the current one says *include*.
/// - `webotp_domain`: the origin-bound line `@domain #code`, which the WebOTP API and Safari's
///   autofill read only as the message's LAST line (WICG "Origin-bound one-time codes delivered via
///   SMS": the last line is `@` host, a space, `#` code).
///
/// Both at once: the hash goes on its own line just before the `@domain #code` line, which stays last
/// (the current SMS Retriever rule, "include", and WebOTP's rule both hold). With the hash alone it
/// ends the message, which also satisfies the older "end with" wording.
pub fn render(
    template: &str,
    app: &str,
    code: &str,
    ttl_seconds: u64,
    webotp_domain: Option<&str>,
    android_app_hash: Option<&str>,
) -> String {
    let minutes = ttl_seconds.div_ceil(60).to_string();
    let mut body = template
        .replace("{app}", app)
        .replace("{code}", code)
        .replace("{minutes}", &minutes);
    if let Some(hash) = android_app_hash.filter(|h| !h.is_empty()) {
        body.push_str(&format!("\n\n{hash}"));
    }
    if let Some(domain) = webotp_domain.filter(|d| !d.is_empty()) {
        body.push_str(&format!("\n\n@{domain} #{code}"));
    }
    body
}

/// Longest message the SMS Retriever API reads (bytes), per the page cited on `render`.
pub const SMS_RETRIEVER_MAX_BYTES: usize = 140;

/// Whether `hash` has the shape of an SMS Retriever app hash: 11 characters of base64 (the first 11
/// of the base64 SHA-256 of the package name and signing certificate).
pub fn is_android_app_hash(hash: &str) -> bool {
    hash.len() == 11
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_and_webotp_line() {
        let t = "{app}: your code is {code}. It expires in {minutes} minutes.";
        assert_eq!(
            render(t, "Acme", "123456", 300, None, None),
            "Acme: your code is 123456. It expires in 5 minutes."
        );
        let b = render(t, "Acme", "123456", 300, Some("app.example.com"), None);
        assert!(b.ends_with("\n\n@app.example.com #123456"), "{b}");
    }

    /// The SMS Retriever hash: at the end alone; before the WebOTP line (which stays last) with both;
    /// the default template with both fits the 140 bytes the SMS Retriever reads.
    #[test]
    fn android_app_hash_and_webotp_line_together() {
        let t = "{app}: your code is {code}. It expires in {minutes} minutes. Do not share it.";
        assert_eq!(
            render(t, "Acme", "123456", 300, None, Some("FA+9qCX9VSu")),
            "Acme: your code is 123456. It expires in 5 minutes. Do not share it.\n\nFA+9qCX9VSu"
        );
        let both = render(
            t,
            "phone-auth",
            "123456",
            300,
            Some("app.example.com"),
            Some("FA+9qCX9VSu"),
        );
        assert_eq!(
            both,
            "phone-auth: your code is 123456. It expires in 5 minutes. Do not share it.\n\n\
             FA+9qCX9VSu\n\n@app.example.com #123456"
        );
        assert_eq!(both.lines().last(), Some("@app.example.com #123456"));
        assert!(both.len() <= SMS_RETRIEVER_MAX_BYTES, "{} bytes", both.len());
        assert!(is_android_app_hash("FA+9qCX9VSu"));
        for bad in ["", "FA+9qCX9VS", "FA+9qCX9VSuu", "FA+9qCX9VS-", "FA+9qCX9VS "] {
            assert!(!is_android_app_hash(bad), "{bad:?}");
        }
    }

    /// The example of the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_signature_matches_the_spec_example() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = WebhookSender::signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
