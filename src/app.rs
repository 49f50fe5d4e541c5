//! Wiring: from a `Config` to a running router, with its stores connected and migrated.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::TryRng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretSlice};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::client_ip::TrustedProxies;
use crate::config::{AppEnv, Config, SmsProvider};
use crate::domain::{PhoneNumber, PhonePolicy};
use crate::graphql::build_schema;
use crate::graphql::documents::DocumentCache;
use crate::graphql::guard::DocumentLimits;
use crate::graphql::metrics::ResolverCounter;
use crate::http::{HttpState, router};
use crate::services::Keys;
use crate::services::auth::AuthService;
use crate::services::hasher::PasswordHasher;
use crate::services::lockout::{LockoutService, LockoutSettings};
use crate::services::otp::{OtpService, OtpSettings, TestNumbers};
use crate::services::outbox::{Outbox, OutboxSettings, spawn_workers};
use crate::services::registration::RegistrationTokens;
use crate::services::sessions::SessionStore;
use crate::services::sms::{LogSender, SmsSender, TwilioSender, WebhookSender, http_client};
use crate::services::tokens::{SigningKey, TokenService};
use crate::services::users::UserStore;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct App {
    pub router: axum::Router,
    pub outbox: Arc<Outbox>,
    /// Field resolutions since start.
    pub resolvers: ResolverCounter,
    /// Parsed and validated documents (tests read its counters).
    pub documents: Arc<DocumentCache>,
    pub auth: Arc<AuthService>,
    pub pg: PgPool,
    pub redis: ConnectionManager,
}

/// Creates the database named in `url` if it does not exist (connecting to the server's `postgres`
/// database to do so). Safe against a concurrent creation.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a PostgreSQL URL")?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    if options.connect().await.is_ok() {
        return Ok(());
    }
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("cannot connect to PostgreSQL")?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let create = format!("create database {quoted}");
    match sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // 42P04 duplicate_database: someone else created it meanwhile.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(e).context("cannot create the database"),
    }
}

fn random_secret() -> anyhow::Result<SecretSlice<u8>> {
    let mut bytes = vec![0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("os rng: {e}"))?;
    Ok(SecretSlice::from(bytes))
}

/// The configured SMS provider.
pub fn sms_provider(config: &Config) -> anyhow::Result<Arc<dyn SmsSender>> {
    let timeout = Duration::from_millis(config.sms_http_timeout_ms);
    Ok(match config.sms_provider {
        SmsProvider::Log => {
            anyhow::ensure!(
                config.app_env != AppEnv::Production,
                "SMS_PROVIDER=log writes codes to the log and is refused when APP_ENV=production"
            );
            Arc::new(LogSender)
        }
        SmsProvider::Webhook => {
            let url = config
                .sms_webhook_url
                .clone()
                .ok_or_else(|| anyhow::anyhow!("SMS_PROVIDER=webhook needs SMS_WEBHOOK_URL"))?;
            let secret = config
                .sms_webhook_secret
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("SMS_PROVIDER=webhook needs SMS_WEBHOOK_SECRET"))?;
            Arc::new(WebhookSender::new(http_client(timeout)?, url, secret)?)
        }
        SmsProvider::Twilio => {
            let need = |v: &Option<String>, name: &str| {
                v.clone()
                    .ok_or_else(|| anyhow::anyhow!("SMS_PROVIDER=twilio needs {name}"))
            };
            Arc::new(TwilioSender::new(
                http_client(timeout)?,
                config.twilio_base_url.clone(),
                need(&config.twilio_account_sid, "TWILIO_ACCOUNT_SID")?,
                config
                    .twilio_auth_token
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("SMS_PROVIDER=twilio needs TWILIO_AUTH_TOKEN"))?,
                need(&config.twilio_from, "TWILIO_FROM")?,
            ))
        }
    })
}

/// The SMS outbox and its delivery settings (used by the server and by `phone-auth worker`).
pub async fn build_outbox(config: &Config, provider: Arc<dyn SmsSender>) -> anyhow::Result<Outbox> {
    anyhow::ensure!(
        config.sms_claim_idle_ms > config.sms_http_timeout_ms + config.sms_backoff_max_ms,
        "SMS_CLAIM_IDLE_MS must exceed SMS_HTTP_TIMEOUT_MS + SMS_BACKOFF_MAX_MS, or live jobs get claimed twice"
    );
    let settings = OutboxSettings {
        max_len: config.sms_outbox_max_len,
        dead_max_len: config.sms_dead_letter_max_len,
        max_attempts: config.sms_max_attempts.max(1),
        backoff_base: Duration::from_millis(config.sms_backoff_base_ms),
        backoff_max: Duration::from_millis(config.sms_backoff_max_ms),
        claim_idle: Duration::from_millis(config.sms_claim_idle_ms),
        block: Duration::from_secs(2),
        code_ttl: Duration::from_secs(config.otp_ttl_seconds),
        app_name: config.sms_app_name.clone(),
        template: config.sms_template.clone(),
        webotp_domain: config.sms_webotp_domain.clone(),
    };
    let keys = Keys::new(config.redis_key_prefix.clone());
    let pool_size = u32::try_from(config.sms_workers)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    Outbox::new(
        config.redis_url.expose_secret(),
        &keys,
        settings,
        provider,
        pool_size,
    )
    .await
    .context("cannot set up the SMS outbox")
}

/// Builds the service. `sms` overrides the configured provider (tests pass a `TestSender`).
pub async fn build(config: &Config, sms: Option<Arc<dyn SmsSender>>) -> anyhow::Result<App> {
    let production = config.app_env == AppEnv::Production;

    let provider = match sms {
        Some(s) => s,
        None => sms_provider(config)?,
    };

    let otp_secret = match &config.otp_hmac_secret {
        Some(s) => {
            anyhow::ensure!(
                s.expose_secret().len() >= 32,
                "OTP_HMAC_SECRET must be at least 32 bytes"
            );
            SecretSlice::from(s.expose_secret().as_bytes().to_vec())
        }
        None => {
            anyhow::ensure!(!production, "OTP_HMAC_SECRET is required when APP_ENV=production");
            tracing::warn!(
                "OTP_HMAC_SECRET is not set: using a random secret; pending codes will not survive a restart"
            );
            random_secret()?
        }
    };

    let keys = match &config.jwt_signing_keys {
        Some(spec) => SigningKey::parse_list(spec)?,
        None => {
            anyhow::ensure!(
                !production,
                "JWT_SIGNING_KEYS is required when APP_ENV=production"
            );
            let key = SigningKey::generate()?;
            tracing::warn!(
                kid = %key.kid,
                "JWT_SIGNING_KEYS is not set: generated a signing key for this run; access tokens will not \
                 survive a restart. Set JWT_SIGNING_KEYS=<kid>:<base64url 32-byte seed> to keep them"
            );
            vec![key]
        }
    };
    let tokens = TokenService::new(
        &keys,
        config.jwt_issuer.clone(),
        config.jwt_audience.clone(),
        config.access_token_ttl_seconds,
    )?;

    let phone_policy = PhonePolicy::from_config(
        config.default_region.as_deref(),
        Some(config.sms_allowed_regions.as_str()),
    )?;
    let trusted_proxies = TrustedProxies::parse(&config.trusted_proxies)?;
    // libphonenumber's metadata loads lazily (about 60 ms): pay it now, not on the first request.
    let _ = PhoneNumber::parse("+16502530000", &phone_policy);

    // The cooldown is read from the newest send kept in the window (services/otp.rs).
    anyhow::ensure!(
        config.otp_resend_cooldown_seconds <= config.otp_window_seconds,
        "OTP_RESEND_COOLDOWN_SECONDS must not exceed OTP_SEND_WINDOW_SECONDS"
    );
    let test_numbers = TestNumbers::parse(&config.sms_test_numbers)?;
    if !test_numbers.is_empty() {
        anyhow::ensure!(
            !production || config.sms_test_numbers_in_production,
            "SMS_TEST_NUMBERS is refused when APP_ENV=production unless SMS_TEST_NUMBERS_IN_PRODUCTION=true"
        );
        tracing::warn!("SMS_TEST_NUMBERS is set: those numbers get a fixed code and no SMS");
    }
    let db_url = config.database_url.expose_secret();
    ensure_database(db_url).await?;
    let pg = PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_millis(config.database_acquire_timeout_ms))
        .connect(db_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    MIGRATOR.run(&pg).await.context("migrations failed")?;

    // One multiplexed connection that reconnects by itself: it pipelines concurrent commands over one
    // socket, about 5x the throughput of a bb8 pool measured on this machine (DEPENDENCY-NOTES.md), and
    // unlike bb8-redis (whose `has_broken` always says false) it recovers after a Redis restart.
    let redis_client = redis::Client::open(config.redis_url.expose_secret()).context("REDIS_URL")?;
    let redis_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(config.redis_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(config.redis_timeout_ms)))
        .set_number_of_retries(2);
    let redis = ConnectionManager::new_with_config(redis_client, redis_config)
        .await
        .context("cannot connect to Redis")?;

    let key_names = Keys::new(config.redis_key_prefix.clone());
    let hasher = PasswordHasher::new(
        config
            .hash_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        Duration::from_millis(config.hash_queue_timeout_ms),
        config.hash_thread_nice,
    )?;
    let auth = Arc::new(AuthService {
        phone_policy,
        otp: OtpService::new(
            redis.clone(),
            key_names.clone(),
            otp_secret,
            OtpSettings {
                ttl_seconds: config.otp_ttl_seconds,
                max_attempts: config.otp_max_attempts,
                resend_cooldown_seconds: config.otp_resend_cooldown_seconds,
                max_sends_per_window: config.otp_max_sends_per_window,
                window_seconds: config.otp_window_seconds,
                max_failures_per_window: config.otp_max_failures_per_window,
                ip_window_seconds: config.ip_window_seconds,
                ip_max_code_requests: config.ip_max_code_requests,
                ip_max_code_checks: config.ip_max_code_checks,
                sms_max_per_hour: config.sms_max_per_hour,
                outbox_max_len: config.sms_outbox_max_len,
            },
            test_numbers,
        ),
        lockout: LockoutService::new(
            redis.clone(),
            key_names.clone(),
            LockoutSettings {
                max_failures: config.lockout_max_failures,
                lock_seconds: config.lockout_seconds,
                ip_window_seconds: config.ip_window_seconds,
                ip_max_attempts: config.ip_max_password_attempts,
            },
        ),
        users: UserStore::new(pg.clone()),
        sessions: SessionStore::new(pg.clone(), config.session_ttl_seconds),
        tokens,
        registration: RegistrationTokens::new(
            redis.clone(),
            key_names,
            config.registration_token_ttl_seconds,
        ),
        hasher,
    });

    // Ended sessions are deleted hourly, so the tables do not grow without bound.
    let purger = auth.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            match purger.sessions.purge_expired().await {
                Ok(n) if n > 0 => tracing::info!(sessions = n, "purged ended sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = ?e, "purging ended sessions failed"),
            }
        }
    });

    let outbox = Arc::new(build_outbox(config, provider).await?);
    let workers = spawn_workers(&outbox, config.sms_workers);
    if config.sms_workers > 0 {
        tracing::info!(
            workers = workers.len(),
            "SMS delivery workers started in this process"
        );
    }

    let resolvers = ResolverCounter::default();
    // A client application sends a handful of distinct documents; 256 leaves room for many
    // applications and GraphiQL users and bounds the memory to about 256 x 4 KiB of text.
    let documents = Arc::new(DocumentCache::new(256));
    let schema = build_schema(auth.clone(), production, resolvers.clone());
    let router = router(
        HttpState {
            schema,
            auth: auth.clone(),
            pg: pg.clone(),
            redis: redis.clone(),
            issuer: config.jwt_issuer.clone(),
            limits: Arc::new(DocumentLimits {
                max_depth: config.max_query_depth,
                max_aliases: config.max_query_aliases,
                max_directives: config.max_query_directives,
                max_complexity: config.max_query_complexity,
            }),
            documents: documents.clone(),
            trusted_proxies: Arc::new(trusted_proxies),
            graphiql: config.graphiql.unwrap_or(!production),
        },
        Duration::from_secs(config.request_timeout_seconds),
        config.max_body_bytes,
    );
    Ok(App {
        router,
        outbox,
        resolvers,
        documents,
        auth,
        pg,
        redis,
    })
}
