//! Configuration from flags and environment (clap). Every duration and count is a setting so that tests
//! can shorten them; the defaults are the documented policy (see README "Settings").

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use secrecy::SecretString;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Development,
    Test,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SmsProvider {
    /// Writes the code to the log. Development only: refused when APP_ENV=production.
    Log,
    /// POSTs each message as JSON signed per Standard Webhooks to SMS_WEBHOOK_URL.
    Webhook,
    /// Twilio Programmable Messaging.
    Twilio,
}

/// Every setting, in groups (`--help` shows one heading per group). Cross-setting rules are in
/// `validate`, the one place that compares settings.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// development, test or production. Production refuses development conveniences
    /// (log SMS sender, generated secrets and keys).
    #[arg(long, env = "APP_ENV", value_enum, default_value = "development")]
    pub app_env: AppEnv,

    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub stores: StoreConfig,
    #[command(flatten)]
    pub otp: OtpConfig,
    #[command(flatten)]
    pub ip: IpBudgetConfig,
    #[command(flatten)]
    pub lockout: LockoutConfig,
    #[command(flatten)]
    pub tokens: TokenConfig,
    #[command(flatten)]
    pub hashing: HashConfig,
    #[command(flatten)]
    pub sms: SmsConfig,
    #[command(flatten)]
    pub limits: GraphqlLimits,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Seconds a request may take before it is answered with 408 and its work dropped (slow bodies).
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 15)]
    pub request_timeout_seconds: u64,

    /// Seconds a client has to send its request headers before the connection is closed (slowloris).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_read_timeout_seconds: u64,

    /// Largest request body, bytes; larger gets 413 without being read.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 32 * 1024)]
    pub max_body_bytes: usize,

    /// Proxies whose X-Forwarded-For is believed, comma-separated CIDRs (e.g. 10.0.0.0/8). Empty: the
    /// client address is the socket's, and X-Forwarded-For is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Stores")]
pub struct StoreConfig {
    /// PostgreSQL URL. The database is created if it does not exist; migrations run at start.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/phone_auth",
        hide_env_values = true
    )]
    pub database_url: SecretString,

    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// How long a request waits for a PostgreSQL connection before SERVICE_UNAVAILABLE, milliseconds.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 3000)]
    pub database_acquire_timeout_ms: u64,

    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: SecretString,

    /// Redis connect and response timeout, milliseconds: past it a request fails fast with
    /// SERVICE_UNAVAILABLE instead of hanging on a stalled Redis.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// Prefix of every Redis key this service writes (lets several deployments or tests share one Redis).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "phone-auth:")]
    pub redis_key_prefix: String,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "One-time codes")]
pub struct OtpConfig {
    /// ISO 3166 region (e.g. US, GB) used for phone numbers written without a leading +.
    /// Unset: such numbers are refused with BAD_USER_INPUT.
    #[arg(long, env = "DEFAULT_REGION")]
    pub default_region: Option<String>,

    /// Server secret for the HMAC under which one-time codes are stored (at least 32 bytes).
    /// Required in production; generated at start (and logged as such) otherwise.
    #[arg(long, env = "OTP_HMAC_SECRET", hide_env_values = true)]
    pub otp_hmac_secret: Option<SecretString>,

    /// Lifetime of a one-time code, seconds.
    #[arg(long, env = "OTP_TTL_SECONDS", default_value_t = 300)]
    pub otp_ttl_seconds: u64,

    /// Wrong tries that burn a code (TOO_MANY_ATTEMPTS).
    #[arg(long, env = "OTP_MAX_ATTEMPTS", default_value_t = 5)]
    pub otp_max_attempts: u32,

    /// Seconds after a code is sent before another may be requested for the same phone.
    #[arg(long, env = "OTP_RESEND_COOLDOWN_SECONDS", default_value_t = 60)]
    pub otp_resend_cooldown_seconds: u64,

    /// Codes a phone may be sent per window (OTP_SEND_WINDOW_SECONDS).
    #[arg(long, env = "OTP_MAX_SENDS_PER_WINDOW", default_value_t = 5)]
    pub otp_max_sends_per_window: u32,

    /// Window for OTP_MAX_SENDS_PER_WINDOW and OTP_MAX_FAILURES_PER_WINDOW, seconds.
    #[arg(long, env = "OTP_SEND_WINDOW_SECONDS", default_value_t = 3600)]
    pub otp_window_seconds: u64,

    /// Failed code checks a phone may make per window over any number of codes (NIST SP 800-63B 5.2.2).
    #[arg(long, env = "OTP_MAX_FAILURES_PER_WINDOW", default_value_t = 10)]
    pub otp_max_failures_per_window: u32,

    /// Lifetime of the registration token verifyUser returns for a new phone, seconds.
    #[arg(long, env = "REGISTRATION_TOKEN_TTL_SECONDS", default_value_t = 600)]
    pub registration_token_ttl_seconds: u64,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Per-IP budgets")]
pub struct IpBudgetConfig {
    /// Window of the per-IP budgets below, seconds (Supabase's default window: 5 minutes).
    #[arg(long, env = "IP_WINDOW_SECONDS", default_value_t = 300)]
    pub ip_window_seconds: u64,

    /// generateCode requests per IP (IPv6: per /64) per window.
    #[arg(long, env = "IP_MAX_CODE_REQUESTS", default_value_t = 20)]
    pub ip_max_code_requests: u32,

    /// verifyUser checks per IP per window (Supabase: 30 verifications per 5 minutes per IP).
    #[arg(long, env = "IP_MAX_CODE_CHECKS", default_value_t = 30)]
    pub ip_max_code_checks: u32,

    /// login attempts per IP per window (Supabase: 30 sign-ins per 5 minutes per IP).
    #[arg(long, env = "IP_MAX_PASSWORD_ATTEMPTS", default_value_t = 30)]
    pub ip_max_password_attempts: u32,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Password lockout")]
pub struct LockoutConfig {
    /// Consecutive wrong passwords that lock password sign-in for a phone.
    #[arg(long, env = "LOCKOUT_MAX_FAILURES", default_value_t = 3)]
    pub lockout_max_failures: u32,

    /// How long password sign-in stays locked, seconds.
    #[arg(long, env = "LOCKOUT_SECONDS", default_value_t = 3600)]
    pub lockout_seconds: u64,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Tokens and sessions")]
pub struct TokenConfig {
    /// Lifetime of an access token (JWT), seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECONDS", default_value_t = 900)]
    pub access_token_ttl_seconds: u64,

    /// Absolute lifetime of a session and its refresh tokens, seconds (30 days).
    #[arg(long, env = "SESSION_TTL_SECONDS", default_value_t = 2_592_000)]
    pub session_ttl_seconds: u64,

    /// How recent a sign-in must be, seconds, for a sensitive change (a new phone number, deleting the
    /// account): older sessions get REAUTHENTICATION_REQUIRED and must sign in again (OWASP ASVS 4.0
    /// 3.7.1). 600 s is the registration token's lifetime: the window the service already trusts a
    /// proof of the phone for.
    #[arg(long, env = "REAUTH_SECONDS", default_value_t = 600)]
    pub reauth_seconds: u64,

    /// `iss` claim of access tokens.
    #[arg(long, env = "JWT_ISSUER", default_value = "http://127.0.0.1:8080")]
    pub jwt_issuer: String,

    /// `aud` claim of access tokens.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "phone-auth")]
    pub jwt_audience: String,

    /// Ed25519 signing keys, comma-separated `kid:base64url-32-byte-seed`, newest first: the first signs,
    /// all verify (rotation). Required in production; one is generated at start otherwise.
    #[arg(long, env = "JWT_SIGNING_KEYS", hide_env_values = true)]
    pub jwt_signing_keys: Option<SecretString>,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Password hashing")]
pub struct HashConfig {
    /// Password hashes computed at once (argon2id is CPU bound: default the number of cores).
    #[arg(long, env = "HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    /// How long a request waits for a hashing slot before SERVICE_UNAVAILABLE, milliseconds.
    #[arg(long, env = "HASH_QUEUE_TIMEOUT_MS", default_value_t = 2000)]
    pub hash_queue_timeout_ms: u64,

    /// Nice value of the hashing threads (0..=19; Linux, per thread). 19: cheap requests preempt a
    /// hash, yet hashing keeps a share of the CPU when cheap requests alone would saturate it (with
    /// SCHED_IDLE it got none, and sign-ins were refused under a mixed load: docs/BENCHMARKS.md).
    #[arg(long, env = "HASH_THREAD_NICE", default_value_t = 19, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub hash_thread_nice: u8,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "SMS")]
pub struct SmsConfig {
    /// How SMS codes are delivered: log (development), webhook, twilio.
    #[arg(long, env = "SMS_PROVIDER", value_enum, default_value = "log")]
    pub sms_provider: SmsProvider,

    /// webhook provider: where messages are POSTed.
    #[arg(long, env = "SMS_WEBHOOK_URL")]
    pub sms_webhook_url: Option<String>,

    /// webhook provider: signing secret, `whsec_<base64 of at least 24 random bytes>`.
    #[arg(long, env = "SMS_WEBHOOK_SECRET", hide_env_values = true)]
    pub sms_webhook_secret: Option<SecretString>,

    /// twilio provider: Account SID.
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,

    /// twilio provider: Auth Token.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<SecretString>,

    /// twilio provider: sender number (E.164) or Messaging Service SID (MG...).
    #[arg(long, env = "TWILIO_FROM")]
    pub twilio_from: Option<String>,

    /// twilio provider: API base URL.
    #[arg(long, env = "TWILIO_BASE_URL", default_value = "https://api.twilio.com")]
    pub twilio_base_url: String,

    /// Timeout of one call to the SMS provider, milliseconds.
    #[arg(long, env = "SMS_HTTP_TIMEOUT_MS", default_value_t = 10_000)]
    pub sms_http_timeout_ms: u64,

    /// SMS delivery workers run inside this process (0: none; run `phone-auth worker` apart).
    #[arg(long, env = "SMS_WORKERS", default_value_t = 2)]
    pub sms_workers: usize,

    /// Delivery attempts of one message before it is dead-lettered.
    #[arg(long, env = "SMS_MAX_ATTEMPTS", default_value_t = 5)]
    pub sms_max_attempts: u32,

    /// First retry waits up to this, doubling each time (full jitter), milliseconds.
    #[arg(long, env = "SMS_BACKOFF_BASE_MS", default_value_t = 500)]
    pub sms_backoff_base_ms: u64,

    /// Longest wait between two attempts, milliseconds.
    #[arg(long, env = "SMS_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub sms_backoff_max_ms: u64,

    /// A job untouched this long is presumed orphaned by a dead worker and claimed by another,
    /// milliseconds. Must exceed SMS_HTTP_TIMEOUT_MS + SMS_BACKOFF_MAX_MS.
    #[arg(long, env = "SMS_CLAIM_IDLE_MS", default_value_t = 60_000)]
    pub sms_claim_idle_ms: u64,

    /// Jobs the outbox holds at most; a full outbox refuses new codes (SERVICE_UNAVAILABLE).
    #[arg(long, env = "SMS_OUTBOX_MAX_LEN", default_value_t = 10_000)]
    pub sms_outbox_max_len: u64,

    /// Dead letters kept (oldest trimmed).
    #[arg(long, env = "SMS_DEAD_LETTER_MAX_LEN", default_value_t = 10_000)]
    pub sms_dead_letter_max_len: u64,

    /// Name of the app in messages ({app} in the template).
    #[arg(long, env = "SMS_APP_NAME", default_value = "phone-auth")]
    pub sms_app_name: String,

    /// Message text; {app}, {code} and {minutes} are replaced.
    #[arg(
        long,
        env = "SMS_TEMPLATE",
        default_value = "{app}: your code is {code}. It expires in {minutes} minutes. Do not share it."
    )]
    pub sms_template: String,

    /// If set, messages end with the WebOTP / Android SMS Retriever line `@domain #code`.
    #[arg(long, env = "SMS_WEBOTP_DOMAIN")]
    pub sms_webotp_domain: Option<String>,

    /// SMS sent per hour by the whole service: a ceiling on what SMS pumping can cost.
    #[arg(long, env = "SMS_MAX_PER_HOUR", default_value_t = 1000)]
    pub sms_max_per_hour: u32,

    /// Test numbers: comma-separated `+E164:code`, or `+prefix*:code` for a range. They get that fixed
    /// code and no SMS (app-store review, end-to-end tests, load tests). Refused in production unless
    /// SMS_TEST_NUMBERS_IN_PRODUCTION=true.
    #[arg(long, env = "SMS_TEST_NUMBERS", default_value = "", hide_env_values = true)]
    pub sms_test_numbers: String,

    /// Allow SMS_TEST_NUMBERS when APP_ENV=production (an app-store reviewer's number, say).
    #[arg(long, env = "SMS_TEST_NUMBERS_IN_PRODUCTION", default_value_t = false)]
    pub sms_test_numbers_in_production: bool,

    /// Regions SMS may be sent to, comma-separated ISO 3166 codes (e.g. US,CA,GB). Empty: any.
    #[arg(long, env = "SMS_ALLOWED_REGIONS", default_value = "")]
    pub sms_allowed_regions: String,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "GraphQL document limits")]
pub struct GraphqlLimits {
    /// Deepest field nesting of a document (graphql-armor's default; introspection exempt).
    #[arg(long, env = "MAX_QUERY_DEPTH", default_value_t = 6)]
    pub max_query_depth: usize,

    /// Aliases per document (graphql-armor's default).
    #[arg(long, env = "MAX_QUERY_ALIASES", default_value_t = 15)]
    pub max_query_aliases: usize,

    /// Directives per document (graphql-armor's default).
    #[arg(long, env = "MAX_QUERY_DIRECTIVES", default_value_t = 50)]
    pub max_query_directives: usize,

    /// Fields per document, counting each fragment expansion (our largest operation selects ~25).
    #[arg(long, env = "MAX_QUERY_COMPLEXITY", default_value_t = 100)]
    pub max_query_complexity: usize,
}

impl Config {
    /// The defaults, as if no flag or variable were given (used by tests and `print-schema`).
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        Wrapper::parse_from(["phone-auth"]).config
    }

    pub fn production(&self) -> bool {
        self.app_env == AppEnv::Production
    }

    /// Every rule that relates one setting to another or to the profile, in one place. Called by
    /// `app::build` and `phone-auth worker` before anything connects.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_with(true)
    }

    /// `configured_provider`: false when the embedding program supplies its own SMS sender (tests
    /// do), so the SMS_PROVIDER settings are not used and not checked.
    pub fn validate_with(&self, configured_provider: bool) -> anyhow::Result<()> {
        use anyhow::ensure;
        use secrecy::ExposeSecret;
        let production = self.production();
        let (otp, sms) = (&self.otp, &self.sms);

        if let Some(secret) = &otp.otp_hmac_secret {
            ensure!(
                secret.expose_secret().len() >= 32,
                "OTP_HMAC_SECRET must be at least 32 bytes"
            );
        }
        ensure!(
            !production || otp.otp_hmac_secret.is_some(),
            "OTP_HMAC_SECRET is required when APP_ENV=production"
        );
        ensure!(
            !production || self.tokens.jwt_signing_keys.is_some(),
            "JWT_SIGNING_KEYS is required when APP_ENV=production"
        );
        // The cooldown is read from the newest send kept in the window (services/otp.rs).
        ensure!(
            otp.otp_resend_cooldown_seconds <= otp.otp_window_seconds,
            "OTP_RESEND_COOLDOWN_SECONDS must not exceed OTP_SEND_WINDOW_SECONDS"
        );
        ensure!(
            !configured_provider || !production || sms.sms_provider != SmsProvider::Log,
            "SMS_PROVIDER=log writes codes to the log and is refused when APP_ENV=production"
        );
        ensure!(
            !production || sms.sms_test_numbers.trim().is_empty() || sms.sms_test_numbers_in_production,
            "SMS_TEST_NUMBERS is refused when APP_ENV=production unless SMS_TEST_NUMBERS_IN_PRODUCTION=true"
        );
        match sms.sms_provider {
            _ if !configured_provider => {}
            SmsProvider::Log => {}
            SmsProvider::Webhook => {
                ensure!(
                    sms.sms_webhook_url.is_some(),
                    "SMS_PROVIDER=webhook needs SMS_WEBHOOK_URL"
                );
                ensure!(
                    sms.sms_webhook_secret.is_some(),
                    "SMS_PROVIDER=webhook needs SMS_WEBHOOK_SECRET"
                );
            }
            SmsProvider::Twilio => {
                ensure!(
                    sms.twilio_account_sid.is_some(),
                    "SMS_PROVIDER=twilio needs TWILIO_ACCOUNT_SID"
                );
                ensure!(
                    sms.twilio_auth_token.is_some(),
                    "SMS_PROVIDER=twilio needs TWILIO_AUTH_TOKEN"
                );
                ensure!(sms.twilio_from.is_some(), "SMS_PROVIDER=twilio needs TWILIO_FROM");
            }
        }
        ensure!(
            sms.sms_claim_idle_ms > sms.sms_http_timeout_ms + sms.sms_backoff_max_ms,
            "SMS_CLAIM_IDLE_MS must exceed SMS_HTTP_TIMEOUT_MS + SMS_BACKOFF_MAX_MS, or live jobs get claimed twice"
        );
        Ok(())
    }
}

impl From<&Config> for crate::services::otp::OtpSettings {
    fn from(c: &Config) -> Self {
        crate::services::otp::OtpSettings {
            ttl_seconds: c.otp.otp_ttl_seconds,
            max_attempts: c.otp.otp_max_attempts,
            resend_cooldown_seconds: c.otp.otp_resend_cooldown_seconds,
            max_sends_per_window: c.otp.otp_max_sends_per_window,
            window_seconds: c.otp.otp_window_seconds,
            max_failures_per_window: c.otp.otp_max_failures_per_window,
            ip_window_seconds: c.ip.ip_window_seconds,
            ip_max_code_requests: c.ip.ip_max_code_requests,
            ip_max_code_checks: c.ip.ip_max_code_checks,
            sms_max_per_hour: c.sms.sms_max_per_hour,
        }
    }
}

impl From<&Config> for crate::services::lockout::LockoutSettings {
    fn from(c: &Config) -> Self {
        crate::services::lockout::LockoutSettings {
            max_failures: c.lockout.lockout_max_failures,
            lock_seconds: c.lockout.lockout_seconds,
            ip_window_seconds: c.ip.ip_window_seconds,
            ip_max_attempts: c.ip.ip_max_password_attempts,
        }
    }
}

impl From<&Config> for crate::services::outbox::OutboxSettings {
    fn from(c: &Config) -> Self {
        use std::time::Duration;
        let s = &c.sms;
        crate::services::outbox::OutboxSettings {
            max_len: s.sms_outbox_max_len,
            dead_max_len: s.sms_dead_letter_max_len,
            max_attempts: s.sms_max_attempts.max(1),
            backoff_base: Duration::from_millis(s.sms_backoff_base_ms),
            backoff_max: Duration::from_millis(s.sms_backoff_max_ms),
            claim_idle: Duration::from_millis(s.sms_claim_idle_ms),
            block: Duration::from_secs(2),
            code_ttl: Duration::from_secs(c.otp.otp_ttl_seconds),
            app_name: s.sms_app_name.clone(),
            template: s.sms_template.clone(),
            webotp_domain: s.sms_webotp_domain.clone(),
        }
    }
}

impl From<&GraphqlLimits> for crate::graphql::guard::DocumentLimits {
    fn from(l: &GraphqlLimits) -> Self {
        crate::graphql::guard::DocumentLimits {
            max_depth: l.max_query_depth,
            max_aliases: l.max_query_aliases,
            max_directives: l.max_query_directives,
            max_complexity: l.max_query_complexity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn production() -> Config {
        let mut c = Config::defaults();
        c.app_env = AppEnv::Production;
        c.otp.otp_hmac_secret = Some(SecretString::from("x".repeat(32)));
        c.tokens.jwt_signing_keys = Some(SecretString::from("k1:seed"));
        c.sms.sms_provider = SmsProvider::Webhook;
        c.sms.sms_webhook_url = Some("https://sms.example/hook".into());
        c.sms.sms_webhook_secret = Some(SecretString::from("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"));
        c
    }

    fn refused(c: &Config, needle: &str) {
        let err = c.validate().expect_err("must be refused").to_string();
        assert!(err.contains(needle), "{err:?} should name {needle}");
    }

    #[test]
    fn the_defaults_and_a_complete_production_profile_pass() {
        Config::defaults().validate().unwrap();
        production().validate().unwrap();
    }

    #[test]
    fn every_cross_setting_rule_refuses() {
        let mut c = Config::defaults();
        c.otp.otp_hmac_secret = Some(SecretString::from("short"));
        refused(&c, "OTP_HMAC_SECRET");

        let mut c = production();
        c.otp.otp_hmac_secret = None;
        refused(&c, "OTP_HMAC_SECRET");
        let mut c = production();
        c.tokens.jwt_signing_keys = None;
        refused(&c, "JWT_SIGNING_KEYS");
        let mut c = production();
        c.sms.sms_provider = SmsProvider::Log;
        refused(&c, "SMS_PROVIDER=log");
        c.validate_with(false)
            .expect("an injected sender replaces the log provider");
        let mut c = production();
        c.sms.sms_test_numbers = "+16502530999:424242".into();
        refused(&c, "SMS_TEST_NUMBERS");
        c.sms.sms_test_numbers_in_production = true;
        c.validate().unwrap();

        let mut c = Config::defaults();
        c.otp.otp_resend_cooldown_seconds = c.otp.otp_window_seconds + 1;
        refused(&c, "OTP_RESEND_COOLDOWN_SECONDS");

        let mut c = Config::defaults();
        c.sms.sms_claim_idle_ms = c.sms.sms_http_timeout_ms + c.sms.sms_backoff_max_ms;
        refused(&c, "SMS_CLAIM_IDLE_MS");

        let mut c = Config::defaults();
        c.sms.sms_provider = SmsProvider::Webhook;
        refused(&c, "SMS_WEBHOOK_URL");
        c.sms.sms_webhook_url = Some("https://x".into());
        refused(&c, "SMS_WEBHOOK_SECRET");

        let mut c = Config::defaults();
        c.sms.sms_provider = SmsProvider::Twilio;
        refused(&c, "TWILIO_ACCOUNT_SID");
        c.sms.twilio_account_sid = Some("AC1".into());
        refused(&c, "TWILIO_AUTH_TOKEN");
        c.sms.twilio_auth_token = Some(SecretString::from("t"));
        refused(&c, "TWILIO_FROM");
        c.sms.twilio_from = Some("+16502530000".into());
        c.validate().unwrap();
    }
}
