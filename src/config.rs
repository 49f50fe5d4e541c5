//! Configuration from flags and environment (clap). Every duration and count is a setting so that tests
//! can shorten them; the defaults are the documented policy (see README "Settings").

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

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

/// What a production start does with a Redis that would lose the service's state on a restart or under
/// memory pressure (`services::redis_server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityCheck {
    /// Refuse to start, naming what is wrong.
    Refuse,
    /// Start with a loud warning (durability ensured where the service cannot see it).
    Warn,
}

/// Every setting, in groups (`--help` shows one heading per group). Cross-setting rules are in
/// `validate`, the one place that compares settings.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// development, test or production. Production refuses development conveniences
    /// (log SMS sender, generated secrets and keys).
    #[arg(long, env = "APP_ENV", value_enum, default_value = "development")]
    pub app_env: AppEnv,

    /// True when neither --app-env nor APP_ENV was given (development by default). Set by
    /// `note_sources` from the parsed command line; a Config built in code says what it means.
    #[arg(skip)]
    pub app_env_defaulted: bool,

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
    #[command(flatten)]
    pub ops: OpsConfig,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Operations")]
pub struct OpsConfig {
    /// Listener of the Prometheus metrics (`GET /metrics`), apart from the public port: metrics tell
    /// how the service is being attacked. `off` disables it.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,

    /// Log lines as `text` (development) or `json` (production log pipelines). Colours only on a
    /// terminal, never with NO_COLOR set.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::ops::logging::LogFormat,

    /// Days audit events are kept (deleted by the hourly purge). ASVS 7.1 asks for a retention that
    /// covers investigations; a year covers a yearly review.
    #[arg(long, env = "AUDIT_RETENTION_DAYS", default_value_t = 365)]
    pub audit_retention_days: u32,

    /// Record the high-volume code events (code sent, check failed) in the audit trail, besides the
    /// account events that are always recorded. `false` leaves codes to the metrics: for a team whose
    /// SMS volume makes one row per code too much, or to measure what the rows cost.
    #[arg(long, env = "AUDIT_CODE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_code_events: bool,
}

impl OpsConfig {
    /// The metrics listener's address; None when disabled.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.metrics_addr.eq_ignore_ascii_case("off") || self.metrics_addr.is_empty() {
            return Ok(None);
        }
        self.metrics_addr
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("METRICS_ADDR must be host:port or off"))
    }
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// GraphiQL at GET /graphql in a browser (true or false). Unset: on, except when APP_ENV=production.
    #[arg(long, env = "GRAPHIQL")]
    pub graphiql: Option<bool>,

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

    /// Seconds between SIGTERM and closing the listener, during which /readyz answers 503 while every
    /// request is still served (with `Connection: close`, so keep-alive clients move on): the load
    /// balancer stops sending first instead of finding the port closed. Kubernetes takes a terminating
    /// pod out of its endpoints while it sends SIGTERM, and kube-proxy and ingress controllers follow
    /// within a few seconds; balancers that rely on the health check need their probe period times its
    /// failure threshold (raise this for them). 0: close at once (tests).
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 5)]
    pub shutdown_drain_seconds: u64,

    /// Proxies whose X-Forwarded-For is believed, comma-separated CIDRs (e.g. 10.0.0.0/8). Empty: the
    /// client address is the socket's, and X-Forwarded-For is ignored.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Origins of browser apps allowed to call /graphql cross-origin, comma-separated, exact
    /// (`https://app.example.com`, scheme and port included). Empty: no cross-origin access (the
    /// browser's same-origin policy stands). `*` allows any origin, and is refused with
    /// REFRESH_TOKEN_COOKIE=true: a credentialed request may never be allowed from anywhere (Fetch
    /// standard; OWASP HTML5 Security Cheat Sheet, CORS).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "")]
    pub cors_allowed_origins: String,
}

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Stores")]
pub struct StoreConfig {
    /// PostgreSQL URL. The database is created if it does not exist; migrations run at start.
    /// Unset together with REDIS_URL (outside production): the embedded backend, every store in
    /// this process's memory, lost when it ends (for trying the API with nothing installed).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,

    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// How long a request waits for a PostgreSQL connection before SERVICE_UNAVAILABLE, milliseconds.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 3000)]
    pub database_acquire_timeout_ms: u64,

    /// Redis URL. Unset together with DATABASE_URL (outside production): the embedded backend.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretString>,

    /// Redis Cluster seed nodes, comma-separated `redis://host:port` URLs (any reachable subset finds
    /// the rest). Instead of REDIS_URL, never with it. Every script then touches one hash slot: the
    /// per-IP budgets are calls of their own (README "Scaling out").
    #[arg(long, env = "REDIS_CLUSTER_URLS", hide_env_values = true)]
    pub redis_cluster_urls: Option<SecretString>,

    /// Redis connect and response timeout, milliseconds: past it a request fails fast with
    /// SERVICE_UNAVAILABLE instead of hanging on a stalled Redis.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// Prefix of every Redis key this service writes (lets several deployments or tests share one Redis).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "phone-auth:")]
    pub redis_key_prefix: String,

    /// With APP_ENV=production, a Redis without `maxmemory-policy noeviction`, or without the
    /// append-only file and without a replica, refuses the start (`refuse`) or is a loud warning
    /// (`warn`): eviction or a restart would lift password locks and reset the throttling budgets
    /// NIST SP 800-63B 5.2.2 asks for. Other profiles only warn.
    #[arg(long, env = "REDIS_DURABILITY_CHECK", value_enum, default_value = "refuse")]
    pub redis_durability_check: DurabilityCheck,
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

    /// `iss` claim of access tokens and the base of the discovery document's `jwks_uri`. Default:
    /// `http://<the address the server listens on>`, so that a verifier that fetches
    /// `<iss>/.well-known/...` reaches this server; set it to the public URL behind a proxy or when
    /// listening on 0.0.0.0.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// `aud` claim of access tokens.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "phone-auth")]
    pub jwt_audience: String,

    /// `client_id` claim of access tokens, which RFC 9068 section 2.2 requires: the OAuth client the
    /// token was issued to. Our clients (the apps that sign users in) do not identify themselves, so
    /// there is one client, and by default its id is JWT_AUDIENCE: the first-party app of this API.
    #[arg(long, env = "JWT_CLIENT_ID")]
    pub jwt_client_id: Option<String>,

    /// Ed25519 signing keys, comma-separated `kid:base64url-32-byte-seed`, newest first: the first signs,
    /// all verify (rotation). Required in production; one is generated at start otherwise.
    #[arg(long, env = "JWT_SIGNING_KEYS", hide_env_values = true)]
    pub jwt_signing_keys: Option<SecretString>,

    /// Keys published in the JWKS and accepted, but not signing yet: rotation step 1 (README "Behind a
    /// gateway"). Same form as JWT_SIGNING_KEYS; a kid may not be in both.
    #[arg(long, env = "JWT_NEXT_KEYS", hide_env_values = true)]
    pub jwt_next_keys: Option<SecretString>,

    /// Browser apps: sign-in, register and refreshToken also set the refresh token as an HttpOnly
    /// `__Host-refresh` cookie, which `refreshToken` reads when called without an argument, and a
    /// browser's request (one with an Origin header) no longer gets it in the body: script never sees
    /// it, so an XSS cannot carry it away (IETF OAuth 2.0 for Browser-Based Applications; OWASP HTML5
    /// Security Cheat Sheet, Local Storage).
    #[arg(long, env = "REFRESH_TOKEN_COOKIE", default_value_t = false)]
    pub refresh_token_cookie: bool,
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

    /// Delivery attempts of one message at most before it is dead-lettered. Unset (the default): a
    /// transient failure is retried for as long as the code lives, and the job is then dropped as
    /// expired; a fixed count gave up 3-8 s into a 300 s code when a provider answered 503 for 25 s.
    /// Set it only to cap what a provider that bills failed calls can cost.
    #[arg(long, env = "SMS_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..))]
    pub sms_max_attempts: Option<u32>,

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

    /// SMS outbox streams. 1: one stream (`sms:outbox`), as always. More: N streams, a phone's codes
    /// in the stream its number hashes to, workers reading all. On a Redis Cluster each shard is
    /// a hash slot shared with its phones' keys: use several per master (README "Scaling out").
    #[arg(long, env = "SMS_OUTBOX_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub sms_outbox_shards: u32,

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

    /// If set, messages end with the origin-bound line `@domain #code` that the WebOTP API (Chrome on
    /// Android) and Safari's code autofill read from the last line of a message.
    #[arg(long, env = "SMS_WEBOTP_DOMAIN")]
    pub sms_webotp_domain: Option<String>,

    /// The Android app's 11-character SMS Retriever hash. Android's SMS Retriever API delivers a
    /// message to the app only if it includes this hash (Google's "Perform SMS Verification on a
    /// Server"); without it only the SMS User Consent API, which asks the user each time, can read the
    /// code. Added on its own line before the `@domain #code` line (see `sms::render`).
    #[arg(long, env = "SMS_ANDROID_APP_HASH")]
    pub sms_android_app_hash: Option<String>,

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

    /// Representations one federation `_entities` field may carry; more is refused with
    /// QUERY_LIMIT_EXCEEDED before any query. A gateway (Apollo Gateway, Apollo Router) sends each
    /// distinct `User` of a response once, in one `_entities` call per fetch, so this is the number of
    /// distinct users one response may hold: public GraphQL APIs cap a list page at 100 (GitHub) to
    /// 250 (Shopify), and 1,000 leaves room for several such lists. They are all loaded by one SQL
    /// statement, so the cap bounds that statement's array, not a number of statements.
    #[arg(long, env = "MAX_ENTITY_REPRESENTATIONS", default_value_t = 1000)]
    pub max_entity_representations: usize,
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

    /// Records which settings the command line and environment left at their defaults (clap's derived
    /// structs do not keep it): today only APP_ENV, which `validate` needs to tell a forgotten profile
    /// from a chosen one.
    pub fn note_sources(&mut self, matches: &clap::ArgMatches) {
        self.app_env_defaulted = matches
            .value_source("app_env")
            .is_none_or(|s| s == clap::parser::ValueSource::DefaultValue);
    }

    /// No store URL at all: the embedded backend (`services::embedded`). `validate` refuses it in
    /// production, and refuses one URL without the other.
    pub fn embedded_stores(&self) -> bool {
        self.stores.database_url.is_none() && self.redis_target().is_none()
    }

    /// The configured Redis: REDIS_URL or REDIS_CLUSTER_URLS (`validate` refuses both, and a cluster
    /// list that names no node).
    pub fn redis_target(&self) -> Option<crate::services::redis_conn::RedisTarget> {
        use crate::services::redis_conn::RedisTarget;
        if let Some(url) = &self.stores.redis_url {
            return Some(RedisTarget::Single(url.expose_secret().to_owned()));
        }
        let list = self.stores.redis_cluster_urls.as_ref()?;
        RedisTarget::cluster_from_list(list.expose_secret()).ok()
    }

    /// The Redis key layout: the prefix, the outbox shards, and whether on a Cluster.
    pub fn redis_keys(&self) -> crate::services::Keys {
        crate::services::Keys::with_layout(
            self.stores.redis_key_prefix.clone(),
            self.sms.sms_outbox_shards,
            self.stores.redis_cluster_urls.is_some() && self.stores.redis_url.is_none(),
        )
    }

    /// What this profile runs with that a deployment must not: the start-up log lists them.
    /// `configured_provider` as in `validate_with`.
    pub fn development_conveniences(&self, configured_provider: bool) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.production() {
            return out;
        }
        if self.embedded_stores() {
            out.push("the embedded backend (no DATABASE_URL / REDIS_URL: data in memory, lost on exit)");
        }
        if configured_provider && self.sms.sms_provider == SmsProvider::Log {
            out.push("log SMS sender (codes are written to the log)");
        }
        if self.tokens.jwt_signing_keys.is_none() {
            out.push("generated JWT signing key (tokens die with the process)");
        }
        if self.otp.otp_hmac_secret.is_none() {
            out.push("random OTP_HMAC_SECRET (pending codes die with the process)");
        }
        out.push("GraphiQL, introspection and field suggestions");
        if !self.sms.sms_test_numbers.trim().is_empty() {
            out.push("SMS_TEST_NUMBERS (fixed codes, no SMS)");
        }
        out
    }

    /// One line saying which profile runs; outside production, a warning naming the development
    /// conveniences in force, so a deployment that runs the wrong profile says so at the top of its log.
    pub fn log_profile(&self, configured_provider: bool) {
        let profile = format!("{:?}", self.app_env).to_lowercase();
        if self.production() {
            tracing::info!(profile = %profile, "profile: production");
            return;
        }
        let source = if self.app_env_defaulted {
            "APP_ENV is not set, so the default"
        } else {
            "chosen by APP_ENV"
        };
        tracing::warn!(
            profile = %profile,
            "profile: {profile} ({source}); development conveniences in force: {}. Set APP_ENV=production for a deployment",
            self.development_conveniences(configured_provider).join(", ")
        );
    }

    /// CORS_ALLOWED_ORIGINS as a list (trimmed, empty entries dropped).
    pub fn cors_origins(&self) -> Vec<String> {
        self.http
            .cors_allowed_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    }

    /// JWT_ISSUER, or `http://LISTEN_ADDR` when unset.
    pub fn jwt_issuer(&self) -> String {
        self.tokens
            .jwt_issuer
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.http.listen_addr))
    }

    /// JWT_CLIENT_ID, or JWT_AUDIENCE when unset.
    pub fn jwt_client_id(&self) -> String {
        self.tokens
            .jwt_client_id
            .clone()
            .unwrap_or_else(|| self.tokens.jwt_audience.clone())
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
        // A range (`+1650254*`) in production gives every real subscriber in it one known code: an
        // account takeover for anyone who learns it. Production takes exact numbers only (a reviewer's).
        ensure!(
            !production
                || !sms
                    .sms_test_numbers
                    .split(',')
                    .any(|item| item.split(':').next().is_some_and(|n| n.trim().ends_with('*'))),
            "SMS_TEST_NUMBERS: ranges (+prefix*) are refused when APP_ENV=production; list exact numbers"
        );
        // Forgetting APP_ENV must not put the development profile (codes in the log, GraphiQL,
        // generated keys) on the network. A deployment has to listen on a non-loopback address to be
        // reached (a container on 0.0.0.0), while `scripts/run` and a developer's machine listen on
        // 127.0.0.1 by default: so a non-loopback LISTEN_ADDR needs APP_ENV said out loud. A start-up
        // refusal is noticed before any user is; a warning banner scrolls past in a log nobody reads.
        ensure!(
            production || !self.app_env_defaulted || self.http.listen_addr.ip().is_loopback(),
            "APP_ENV is not set and LISTEN_ADDR={} is not a loopback address: set APP_ENV=production for a \
             deployment, or APP_ENV=development to serve the development profile on the network on purpose",
            self.http.listen_addr
        );
        if production {
            check_issuer(&self.jwt_issuer())?;
        }
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
                if production {
                    check_https(
                        "SMS_WEBHOOK_URL",
                        sms.sms_webhook_url.as_deref().unwrap_or_default(),
                    )?;
                }
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
                if production {
                    check_https("TWILIO_BASE_URL", &sms.twilio_base_url)?;
                }
            }
        }
        self.ops.metrics_addr()?;
        ensure!(
            self.ops.metrics_addr()? != Some(self.http.listen_addr),
            "METRICS_ADDR must not be LISTEN_ADDR: metrics stay off the public port"
        );
        ensure!(
            self.ops.audit_retention_days >= 1,
            "AUDIT_RETENTION_DAYS must be at least 1"
        );
        let origins = self.cors_origins();
        ensure!(
            !(self.tokens.refresh_token_cookie && origins.iter().any(|o| o == "*")),
            "CORS_ALLOWED_ORIGINS=* is refused with REFRESH_TOKEN_COOKIE=true: a request that carries \
             credentials must never be allowed from any origin"
        );
        for origin in origins.iter().filter(|o| *o != "*") {
            ensure!(
                is_origin(origin),
                "CORS_ALLOWED_ORIGINS: {origin:?} is not an origin (scheme://host[:port], nothing after)"
            );
        }
        if let Some(hash) = &sms.sms_android_app_hash {
            use crate::services::sms::{SMS_RETRIEVER_MAX_BYTES, is_android_app_hash, render};
            ensure!(
                is_android_app_hash(hash),
                "SMS_ANDROID_APP_HASH must be the app's 11-character hash (base64 characters)"
            );
            // The longest message this configuration sends, with the longest code and lifetime it uses.
            let longest = render(
                &sms.sms_template,
                &sms.sms_app_name,
                "000000",
                otp.otp_ttl_seconds,
                sms.sms_webotp_domain.as_deref(),
                Some(hash),
            );
            ensure!(
                longest.len() <= SMS_RETRIEVER_MAX_BYTES,
                "SMS_ANDROID_APP_HASH is set but the message is {} bytes: the SMS Retriever API reads \
                 messages of at most {SMS_RETRIEVER_MAX_BYTES} bytes (shorten SMS_TEMPLATE or SMS_APP_NAME)",
                longest.len()
            );
        }
        ensure!(
            sms.sms_claim_idle_ms > sms.sms_http_timeout_ms + sms.sms_backoff_max_ms,
            "SMS_CLAIM_IDLE_MS must exceed SMS_HTTP_TIMEOUT_MS + SMS_BACKOFF_MAX_MS, or live jobs get claimed twice"
        );
        ensure!(
            !(production && self.embedded_stores()),
            "APP_ENV=production needs DATABASE_URL and REDIS_URL: without them the service would run on \
             its embedded backend, which keeps users, sessions, locks and budgets in this process's \
             memory and loses them on exit (for development only)"
        );
        ensure!(
            !(self.stores.redis_url.is_some() && self.stores.redis_cluster_urls.is_some()),
            "set REDIS_URL (one primary) or REDIS_CLUSTER_URLS (a Redis Cluster), not both"
        );
        if let Some(list) = &self.stores.redis_cluster_urls {
            crate::services::redis_conn::RedisTarget::cluster_from_list(list.expose_secret())?;
            // On a cluster each shard gets its share of the service-wide SMS budget (otp.rs): a
            // share of 0 would refuse every code of its phones.
            ensure!(
                self.sms.sms_max_per_hour >= self.sms.sms_outbox_shards,
                "SMS_MAX_PER_HOUR must be at least SMS_OUTBOX_SHARDS on a Redis Cluster: each shard \
                 gets its share of the hourly budget"
            );
        }
        ensure!(
            self.stores.database_url.is_some() == self.redis_target().is_some(),
            "set both DATABASE_URL and REDIS_URL (the real stores), or neither (the embedded backend, \
             development only): one without the other is refused"
        );
        Ok(())
    }
}

/// Production providers get the code itself (and the webhook its signature, Twilio its auth token):
/// over plain HTTP every hop on the way reads them (ASVS 9.2.1: TLS for every outbound connection).
fn check_https(name: &str, url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|_| anyhow::anyhow!("{name} is not a URL"))?;
    anyhow::ensure!(
        parsed.scheme() == "https",
        "{name} must be https:// when APP_ENV=production: the request carries the code"
    );
    Ok(())
}

/// In production the issuer is the address gateways know us by: `iss` of every token and the base of
/// `jwks_uri`. A loopback one (the development default) is the gateway's own host, not ours, so their
/// key fetches would fail or, worse, reach whatever listens there.
fn check_issuer(issuer: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(issuer).map_err(|_| {
        anyhow::anyhow!("JWT_ISSUER must be a URL when APP_ENV=production (the base of jwks_uri)")
    })?;
    let host = parsed
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let local = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback() || ip.is_unspecified(),
        Err(_) => host.is_empty() || host == "localhost" || host.ends_with(".localhost"),
    };
    anyhow::ensure!(
        !local,
        "JWT_ISSUER={issuer} is a loopback address: set it to the URL gateways reach this service at when \
         APP_ENV=production"
    );
    Ok(())
}

/// `scheme://host[:port]` and nothing else, as browsers send it in `Origin`.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && axum::http::HeaderValue::from_str(origin).is_ok()
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
            max_attempts: s.sms_max_attempts,
            backoff_base: Duration::from_millis(s.sms_backoff_base_ms),
            backoff_max: Duration::from_millis(s.sms_backoff_max_ms),
            claim_idle: Duration::from_millis(s.sms_claim_idle_ms),
            block: Duration::from_secs(2),
            code_ttl: Duration::from_secs(c.otp.otp_ttl_seconds),
            app_name: s.sms_app_name.clone(),
            template: s.sms_template.clone(),
            webotp_domain: s.sms_webotp_domain.clone(),
            android_app_hash: s.sms_android_app_hash.clone(),
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
        c.tokens.jwt_issuer = Some("https://auth.example.com".into());
        c.sms.sms_provider = SmsProvider::Webhook;
        c.sms.sms_webhook_url = Some("https://sms.example/hook".into());
        c.sms.sms_webhook_secret = Some(SecretString::from("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"));
        c.stores.database_url = Some(SecretString::from("postgres://db.internal/phone_auth"));
        c.stores.redis_url = Some(SecretString::from("redis://redis.internal:6379"));
        c
    }

    fn refused(c: &Config, needle: &str) {
        let err = c.validate().expect_err("must be refused").to_string();
        assert!(err.contains(needle), "{err:?} should name {needle}");
    }

    #[test]
    fn issuer_defaults_to_the_listen_address_and_client_id_to_the_audience() {
        let mut c = Config::defaults();
        c.http.listen_addr = "127.0.0.1:9123".parse().unwrap();
        assert_eq!(c.jwt_issuer(), "http://127.0.0.1:9123");
        c.http.listen_addr = "[::1]:9123".parse().unwrap();
        assert_eq!(c.jwt_issuer(), "http://[::1]:9123");
        c.tokens.jwt_issuer = Some("https://auth.example.com".into());
        assert_eq!(c.jwt_issuer(), "https://auth.example.com");
        assert_eq!(c.jwt_client_id(), "phone-auth");
        c.tokens.jwt_client_id = Some("web".into());
        assert_eq!(c.jwt_client_id(), "web");
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
        c.ops.metrics_addr = "nowhere".into();
        refused(&c, "METRICS_ADDR");
        c.ops.metrics_addr = c.http.listen_addr.to_string();
        refused(&c, "METRICS_ADDR must not be LISTEN_ADDR");
        c.ops.metrics_addr = "off".into();
        c.validate().unwrap();
        c.ops.audit_retention_days = 0;
        refused(&c, "AUDIT_RETENTION_DAYS");

        let mut c = Config::defaults();
        c.sms.sms_claim_idle_ms = c.sms.sms_http_timeout_ms + c.sms.sms_backoff_max_ms;
        refused(&c, "SMS_CLAIM_IDLE_MS");

        let mut c = Config::defaults();
        c.http.cors_allowed_origins = "*".into();
        c.validate().unwrap();
        c.tokens.refresh_token_cookie = true;
        refused(&c, "CORS_ALLOWED_ORIGINS=*");
        c.http.cors_allowed_origins = "https://app.example.com, http://localhost:3000".into();
        c.validate().unwrap();
        c.http.cors_allowed_origins = "https://app.example.com/login".into();
        refused(&c, "not an origin");

        let mut c = Config::defaults();
        c.sms.sms_android_app_hash = Some("short".into());
        refused(&c, "11-character");
        c.sms.sms_android_app_hash = Some("FA+9qCX9VSu".into());
        c.sms.sms_webotp_domain = Some("app.example.com".into());
        c.validate().unwrap();
        c.sms.sms_template = format!("{} {{code}}", "x".repeat(120));
        refused(&c, "140 bytes");

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

    #[test]
    fn production_refuses_the_embedded_backend_and_half_configured_stores() {
        let mut c = production();
        assert!(c.validate().is_ok());
        c.stores.database_url = None;
        let half = c.validate().unwrap_err().to_string();
        assert!(half.contains("set both DATABASE_URL and REDIS_URL"), "{half}");
        c.stores.redis_url = None;
        let embedded = c.validate().unwrap_err().to_string();
        assert!(
            embedded.contains("APP_ENV=production needs DATABASE_URL and REDIS_URL"),
            "{embedded}"
        );
        let mut dev = Config::defaults();
        assert!(dev.embedded_stores(), "no URL by default: the embedded backend");
        assert!(dev.validate().is_ok());
        dev.stores.redis_url = Some(SecretString::from("redis://127.0.0.1:6379"));
        assert!(dev.validate().is_err(), "one store URL without the other");
    }

    #[test]
    fn production_refuses_a_loopback_issuer() {
        for issuer in [
            "http://127.0.0.1:8080",
            "http://127.1:8080",
            "https://localhost",
            "http://LOCALHOST.:8080/",
            "http://app.localhost",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]",
            "http://0.0.0.0:8080",
            "not a url",
        ] {
            let mut c = production();
            c.tokens.jwt_issuer = Some(issuer.into());
            refused(&c, "JWT_ISSUER");
        }
        let mut c = production();
        c.tokens.jwt_issuer = Some("http://phone-auth:8080".into());
        c.validate().expect("a cluster-internal issuer is fine");
        let mut c = Config::defaults();
        c.tokens.jwt_issuer = Some("http://127.0.0.1:8080".into());
        c.validate().expect("development keeps the loopback default");
    }

    #[test]
    fn production_refuses_plain_http_providers() {
        let mut c = production();
        c.sms.sms_webhook_url = Some("http://sms.example/hook".into());
        refused(&c, "SMS_WEBHOOK_URL must be https");
        c.app_env = AppEnv::Development;
        c.validate().expect("development may post to a local stub");

        let mut c = production();
        c.sms.sms_provider = SmsProvider::Twilio;
        c.sms.twilio_account_sid = Some("AC1".into());
        c.sms.twilio_auth_token = Some(SecretString::from("t"));
        c.sms.twilio_from = Some("+16502530000".into());
        c.validate().expect("the default Twilio URL is https");
        c.sms.twilio_base_url = "http://api.twilio.com".into();
        refused(&c, "TWILIO_BASE_URL must be https");
    }

    #[test]
    fn production_refuses_test_number_ranges() {
        let mut c = production();
        c.sms.sms_test_numbers_in_production = true;
        c.sms.sms_test_numbers = "+16502530999:424242, +1650254*:135790".into();
        refused(&c, "ranges");
        c.sms.sms_test_numbers = "+16502530999:424242,+16502530998:135790".into();
        c.validate().expect("exact numbers are allowed");
        let mut c = Config::defaults();
        c.sms.sms_test_numbers = "+1650254*:135790".into();
        c.validate().expect("development takes ranges (load tests)");
    }

    #[test]
    fn a_network_listener_needs_app_env_said() {
        let mut c = Config::defaults();
        c.app_env_defaulted = true;
        c.validate().expect("scripts/run: loopback, APP_ENV unset");
        c.http.listen_addr = "0.0.0.0:8080".parse().unwrap();
        refused(&c, "APP_ENV is not set");
        c.http.listen_addr = "[::]:8080".parse().unwrap();
        refused(&c, "APP_ENV is not set");
        c.app_env_defaulted = false;
        c.validate().expect("APP_ENV=development given: on purpose");
    }

    /// `note_sources` tells a defaulted APP_ENV from a given one.
    #[test]
    fn app_env_source() {
        use clap::{CommandFactory, FromArgMatches, Parser};
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let parse = |args: &[&str]| {
            let m = Wrapper::command().get_matches_from(args);
            let mut c = Wrapper::from_arg_matches(&m).unwrap().config;
            c.note_sources(&m);
            c
        };
        let given = parse(&["phone-auth", "--app-env", "development"]);
        assert!(!given.app_env_defaulted);
        if std::env::var_os("APP_ENV").is_none() {
            assert!(parse(&["phone-auth"]).app_env_defaulted);
        }
    }

    #[test]
    fn the_start_up_line_names_the_conveniences() {
        let dev = Config::defaults().development_conveniences(true).join(", ");
        for c in [
            "log SMS sender",
            "generated JWT signing key",
            "random OTP_HMAC_SECRET",
            "GraphiQL",
        ] {
            assert!(dev.contains(c), "{dev}");
        }
        assert!(production().development_conveniences(true).is_empty());
    }

    /// .env.example lists every setting `--help` knows, as `NAME=` or `# NAME=`, and names nothing
    /// that is not one (RUST_LOG aside: the logger reads it). A setting added without its line fails
    /// here, on whichever branch adds it.
    #[test]
    fn env_example_names_every_setting() {
        use std::collections::BTreeSet;
        let command = <Config as clap::Args>::augment_args(clap::Command::new("phone-auth"));
        let settings: BTreeSet<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        assert!(settings.len() > 60, "{settings:?}");
        let named: BTreeSet<String> = include_str!("../.env.example")
            .lines()
            .filter_map(|line| {
                let line = line.trim_start_matches('#').trim_start();
                let (name, _) = line.split_once('=')?;
                let is_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                is_name.then(|| name.to_owned())
            })
            .collect();
        let missing: Vec<_> = settings.difference(&named).collect();
        assert!(missing.is_empty(), ".env.example lacks {missing:?}");
        let unknown: Vec<_> = named
            .difference(&settings)
            .filter(|n| n.as_str() != "RUST_LOG")
            .collect();
        assert!(
            unknown.is_empty(),
            ".env.example names {unknown:?}, which are not settings"
        );
    }

    /// Every value .env.example sets parses, and is the default (the file says so): as flags, the
    /// set lines give the same Config as no flag at all.
    #[test]
    fn env_example_values_are_the_defaults() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut command = <Config as clap::Args>::augment_args(clap::Command::new("phone-auth"));
        command.build();
        let mut args = vec!["phone-auth".to_owned()];
        for line in include_str!("../.env.example").lines() {
            let Some((name, value)) = line.split_once('=').filter(|_| !line.starts_with('#')) else {
                continue;
            };
            let arg = command
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == name))
                .unwrap_or_else(|| panic!("{name} is not a setting"));
            let long = arg.get_long().expect("every setting has a flag");
            if arg.get_num_args().is_some_and(|n| n.takes_values()) {
                args.push(format!("--{long}={}", value.trim_matches('\'')));
            } else {
                assert_eq!(value, "false", "{name}: a switch, off by default");
            }
        }
        let parsed = Wrapper::try_parse_from(&args).expect("every value parses").config;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::defaults()));
    }
}
