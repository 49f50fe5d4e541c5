//! SMS delivery. `SmsSender` is the seam: the development sender writes the code to the log (and is
//! refused in production), the test sender keeps messages in memory for the tests to read. Providers
//! and a durable outbox are a later step (issue 5).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use crate::domain::{OtpCode, PhoneNumber};
use crate::error::AppResult;

pub struct SmsMessage<'a> {
    pub to: &'a PhoneNumber,
    pub code: &'a OtpCode,
    pub body: String,
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = AppResult<()>> + Send + 'a>>;

pub trait SmsSender: Send + Sync {
    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a>;
}

/// Development only: logs the message, code included, at WARN so it is seen. Never in production
/// (`AppEnv::Production` refuses to start with it).
pub struct LogSender;

impl SmsSender for LogSender {
    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::warn!(
                target: "phone_auth::dev_sms",
                to = message.to.e164(),
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
    fn send<'a>(&'a self, message: SmsMessage<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.entry(message.to.e164().to_owned())
                .or_default()
                .push((message.code.expose().to_owned(), message.body));
            Ok(())
        })
    }
}

/// The text of a code message.
pub fn message_body(app_name: &str, code: &OtpCode, ttl_seconds: u64) -> String {
    let minutes = ttl_seconds.div_ceil(60);
    format!(
        "{app_name}: your code is {}. It expires in {minutes} minutes. Do not share it.",
        code.expose()
    )
}
