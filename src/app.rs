//! Wiring: from a `Config` to a running router, with its stores connected and migrated.

use std::sync::Arc;
use std::time::Duration;

use crate::services::redis_conn::RedisTarget;
use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretSlice};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::{Config, SmsProvider};
use crate::domain::{PhoneNumber, PhonePolicy};
use crate::graphql::build_schema;
use crate::graphql::documents::{DocumentCache, DocumentGuard};
use crate::graphql::metrics::ResolverCounter;
use crate::http::client_ip::TrustedProxies;
use crate::http::{BrowserApps, Draining, HttpState, router};
use crate::random::random_bytes;
use crate::services::audit::{AuditLog, AuditSink};
use crate::services::auth::{AuthService, Parts};
use crate::services::embedded::{Db, Memory};
use crate::services::lockout::LockoutService;
use crate::services::lockout::{Lockouts, RedisLockout};
use crate::services::otp::{Codes, RedisCodes};
use crate::services::otp::{OtpService, TestNumbers};
use crate::services::outbox::{CodeCipher, Outbox, spawn_workers};
use crate::services::outbox::{OutboxQueue, RedisOutbox};
use crate::services::password::PasswordHasher;
use crate::services::phone_change::PhoneChanges;
use crate::services::phone_change::{PhoneChangeStores, RedisPhoneChanges};
use crate::services::redis_server;
use crate::services::registration::RegistrationTokens;
use crate::services::registration::{RedisRegistrations, Registrations};
use crate::services::sessions::SessionStore;
use crate::services::sessions::Sessions;
use crate::services::sms::{LogSender, SmsSender, TwilioSender, WebhookSender, http_client};
use crate::services::tokens::{SigningKey, TokenService};
use crate::services::users::UserStore;
use crate::services::{Backend, Keys};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct App {
    pub router: axum::Router,
    /// Renders the Prometheus metrics (served by `main` on METRICS_ADDR); None with METRICS_ADDR=off:
    /// then no recorder is installed and every metric call is a no-op.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub outbox: Arc<Outbox>,
    /// Field resolutions since start.
    pub resolvers: ResolverCounter,
    /// Parsed and validated documents (tests read its counters).
    pub documents: Arc<DocumentCache>,
    pub auth: Arc<AuthService>,
    /// The stores this process runs on: the real ones (tests reach them to inspect keys and rows),
    /// or the embedded backend.
    pub backend: Backend,
    /// The embedded backend's two halves, when it runs (tests read its audit trail and keys).
    pub embedded: Option<(Arc<Memory>, Arc<Db>)>,
    /// Set at SIGTERM (`serve`): /readyz answers 503 from then on.
    pub draining: Draining,
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

/// `scheme://host[:port]` of a URL (the issuer's origin, for same-origin checks).
fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

/// The configured SMS provider (`Config::validate` has checked that its settings are there).
pub fn sms_provider(config: &Config) -> anyhow::Result<Arc<dyn SmsSender>> {
    let sms = &config.sms;
    let timeout = Duration::from_millis(sms.sms_http_timeout_ms);
    let missing = |name: &str| anyhow::anyhow!("SMS_PROVIDER needs {name}");
    Ok(match sms.sms_provider {
        SmsProvider::Log => Arc::new(LogSender),
        SmsProvider::Webhook => Arc::new(WebhookSender::new(
            http_client(timeout)?,
            sms.sms_webhook_url
                .clone()
                .ok_or_else(|| missing("SMS_WEBHOOK_URL"))?,
            sms.sms_webhook_secret
                .as_ref()
                .ok_or_else(|| missing("SMS_WEBHOOK_SECRET"))?,
        )?),
        SmsProvider::Twilio => Arc::new(TwilioSender::new(
            http_client(timeout)?,
            sms.twilio_base_url.clone(),
            sms.twilio_account_sid
                .clone()
                .ok_or_else(|| missing("TWILIO_ACCOUNT_SID"))?,
            sms.twilio_auth_token
                .clone()
                .ok_or_else(|| missing("TWILIO_AUTH_TOKEN"))?,
            sms.twilio_from.clone().ok_or_else(|| missing("TWILIO_FROM"))?,
        )),
    })
}

/// The SMS outbox on Redis and its delivery settings (`phone-auth worker`, which runs apart from
/// the server and so needs the real stores). `secret` is `OTP_HMAC_SECRET`: the codes in the jobs are
/// sealed under a key derived from it, so a worker process needs the server's secret.
pub async fn build_outbox(
    config: &Config,
    provider: Arc<dyn SmsSender>,
    secret: &SecretSlice<u8>,
) -> anyhow::Result<Outbox> {
    let target = config.redis_target().context(
        "phone-auth worker needs REDIS_URL or REDIS_CLUSTER_URLS: with the embedded backend the server \
         delivers its SMS itself",
    )?;
    let keys = config.redis_keys();
    let queue = OutboxQueue::Redis(
        RedisOutbox::connect(&target, &keys)
            .await
            .context("cannot set up the SMS outbox")?,
    );
    outbox_on(queue, config, provider, secret).await
}

async fn outbox_on(
    queue: OutboxQueue,
    config: &Config,
    provider: Arc<dyn SmsSender>,
    secret: &SecretSlice<u8>,
) -> anyhow::Result<Outbox> {
    let keys = config.redis_keys();
    Outbox::new(
        queue,
        &keys,
        config.into(),
        provider,
        CodeCipher::from_secret(secret.expose_secret()),
    )
    .await
    .context("cannot set up the SMS outbox")
}

/// Every store of the service, on one backend.
struct Stores {
    backend: Backend,
    embedded: Option<(Arc<Memory>, Arc<Db>)>,
    codes: Codes,
    lockouts: Lockouts,
    registrations: Registrations,
    phone_changes: PhoneChangeStores,
    queue: OutboxQueue,
    users: UserStore,
    sessions: SessionStore,
    audit: AuditSink,
}

/// The real stores: Redis and PostgreSQL, connected, checked and migrated.
async fn real_stores(config: &Config, target: &RedisTarget, db_url: &str) -> anyhow::Result<Stores> {
    let stores = &config.stores;
    let production = config.production();
    // One multiplexed connection that reconnects by itself: it pipelines concurrent commands over one
    // socket, about 5x the throughput of a bb8 pool measured on this machine (docs/BENCHMARKS.md), and
    // unlike bb8-redis (whose `has_broken` always says false) it recovers after a Redis restart.
    // On a Cluster (REDIS_CLUSTER_URLS) the same kind of connection over the cluster client, bounded
    // by the same timeout (services::redis_conn).
    let redis = target
        .connect(Duration::from_millis(stores.redis_timeout_ms), 2)
        .await
        .context("cannot connect to Redis")?;
    // Before anything is written: a Redis that would lose locks and budgets, or a Cluster behind
    // REDIS_URL, is found at start, not after a restart.
    redis_server::check(target, &redis, production, stores.redis_durability_check).await?;

    ensure_database(db_url).await?;
    let pg = PgPoolOptions::new()
        .max_connections(stores.database_max_connections)
        .acquire_timeout(Duration::from_millis(stores.database_acquire_timeout_ms))
        .connect(db_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    MIGRATOR.run(&pg).await.context("migrations failed")?;

    let keys = config.redis_keys();
    let queue = OutboxQueue::Redis(
        RedisOutbox::connect(target, &keys)
            .await
            .context("cannot set up the SMS outbox")?,
    );
    Ok(Stores {
        codes: Codes::Redis(RedisCodes::new(redis.clone(), keys.clone())),
        lockouts: Lockouts::Redis(RedisLockout::new(redis.clone(), keys.clone())),
        registrations: Registrations::Redis(RedisRegistrations::new(redis.clone(), keys.clone())),
        phone_changes: PhoneChangeStores::Redis(RedisPhoneChanges::new(redis.clone(), keys)),
        queue,
        users: UserStore::new(pg.clone()),
        sessions: SessionStore::new(pg.clone(), config.tokens.session_ttl_seconds),
        audit: AuditSink::Postgres(pg.clone()),
        backend: Backend::Real { pg, redis },
        embedded: None,
    })
}

/// The embedded backend: every store in this process (`services::embedded`).
fn embedded_stores(config: &Config) -> Stores {
    let memory = Memory::start(Keys::new(config.stores.redis_key_prefix.clone()));
    let db = Arc::new(Db::default());
    Stores {
        codes: Codes::Embedded(memory.clone()),
        lockouts: Lockouts::Embedded(memory.clone()),
        registrations: Registrations::Embedded(memory.clone()),
        phone_changes: PhoneChangeStores::Embedded(memory.clone()),
        queue: OutboxQueue::Embedded(memory.clone()),
        users: UserStore::Embedded(db.clone()),
        sessions: SessionStore::with_backend(
            Sessions::Embedded(db.clone()),
            config.tokens.session_ttl_seconds,
        ),
        audit: AuditSink::Embedded(db.clone()),
        backend: Backend::Embedded,
        embedded: Some((memory, db)),
    }
}

/// Builds the service. `sms` overrides the configured provider (tests pass a `TestSender`).
pub async fn build(config: &Config, sms: Option<Arc<dyn SmsSender>>) -> anyhow::Result<App> {
    config.validate_with(sms.is_none())?;
    config.log_profile(sms.is_none());
    let production = config.production();
    let metrics = match config.ops.metrics_addr()? {
        Some(_) => Some(crate::ops::metrics::install()?),
        None => None,
    };

    let provider = match sms {
        Some(s) => s,
        None => sms_provider(config)?,
    };

    let otp_secret = match &config.otp.otp_hmac_secret {
        Some(s) => SecretSlice::from(s.expose_secret().as_bytes().to_vec()),
        None => {
            tracing::warn!(
                "OTP_HMAC_SECRET is not set: using a random secret; pending codes will not survive a restart"
            );
            SecretSlice::from(random_bytes::<32>()?.to_vec())
        }
    };

    let tokens_config = &config.tokens;
    let keys = match &tokens_config.jwt_signing_keys {
        Some(spec) => SigningKey::parse_list(spec)?,
        None => {
            let key = SigningKey::generate()?;
            tracing::warn!(
                kid = %key.kid,
                "JWT_SIGNING_KEYS is not set: generated a signing key for this run; access tokens will not \
                 survive a restart. Set JWT_SIGNING_KEYS=<kid>:<base64url 32-byte seed> to keep them"
            );
            vec![key]
        }
    };
    let next_keys = match &tokens_config.jwt_next_keys {
        Some(spec) => SigningKey::parse_next(spec)?,
        None => Vec::new(),
    };
    let tokens = TokenService::with_next_keys(
        &keys,
        &next_keys,
        config.jwt_issuer(),
        tokens_config.jwt_audience.clone(),
        config.jwt_client_id(),
        tokens_config.access_token_ttl_seconds,
    )?;

    let phone_policy = PhonePolicy::from_config(
        config.otp.default_region.as_deref(),
        Some(config.sms.sms_allowed_regions.as_str()),
    )?;
    let trusted_proxies = TrustedProxies::parse(&config.http.trusted_proxies)?;
    // libphonenumber's metadata loads lazily (about 60 ms): pay it now, not on the first request.
    let _ = PhoneNumber::parse("+16502530000", &phone_policy);

    let test_numbers = TestNumbers::parse(&config.sms.sms_test_numbers)?;
    if !test_numbers.is_empty() {
        tracing::warn!("SMS_TEST_NUMBERS is set: those numbers get a fixed code and no SMS");
    }
    let stores = match (config.redis_target(), &config.stores.database_url) {
        (Some(target), Some(db_url)) => real_stores(config, &target, db_url.expose_secret()).await?,
        // `validate` refused one URL without the other, and no URL in production.
        _ => {
            tracing::warn!(
                "no DATABASE_URL and no REDIS_URL: running on the embedded backend; every user, session, \
                 code and lock lives in this process's memory and is lost when it ends"
            );
            embedded_stores(config)
        }
    };
    let Stores {
        backend,
        embedded,
        codes,
        lockouts,
        registrations,
        phone_changes,
        queue,
        users,
        sessions,
        audit,
    } = stores;
    let outbox = Arc::new(outbox_on(queue, config, provider, &otp_secret).await?);
    let key_names = config.redis_keys();
    let hashing = &config.hashing;
    let hasher = PasswordHasher::new(
        hashing
            .hash_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        Duration::from_millis(hashing.hash_queue_timeout_ms),
        hashing.hash_thread_nice,
    )?;
    // A reserved password attempt holds its place for this long if its end is never recorded (a
    // Redis reply lost to the timeout, the process stopped mid-login). It must outlast the longest a
    // login can hold it, or a slow burst could compute more hashes than the lock allows: the reserve
    // reply (Redis timeout), the account lookup (PostgreSQL acquire timeout; the lookup is one indexed
    // row), the hash (queue wait plus the grace of a started hash) and the outcome script (Redis
    // timeout). At the defaults: 2 + 3 + 4 + 2 = 11 s.
    let lockout_lease =
        Duration::from_millis(2 * config.stores.redis_timeout_ms + config.stores.database_acquire_timeout_ms)
            + hasher.longest_wait();
    let auth = Arc::new(AuthService::new(Parts {
        phone_policy,
        otp: OtpService::new(codes, otp_secret, config.into(), test_numbers, outbox.appender()),
        lockout: LockoutService::with_store(lockouts, config.into(), lockout_lease),
        users,
        sessions,
        tokens,
        registration: RegistrationTokens::new(
            registrations,
            key_names,
            config.otp.registration_token_ttl_seconds,
        ),
        hasher,
        audit: AuditLog::start(audit.clone(), config.ops.audit_code_events),
        phone_changes: PhoneChanges::new(phone_changes, config.otp.otp_ttl_seconds),
        notices: outbox.appender(),
        reauth_seconds: tokens_config.reauth_seconds,
        backend: backend.clone(),
    }));

    // Ended sessions are deleted hourly, so the tables do not grow without bound.
    let purger = auth.clone();
    let (purge_audit, retention_days) = (audit, config.ops.audit_retention_days);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            match purger.purge_expired_sessions().await {
                Ok(n) if n > 0 => tracing::info!(sessions = n, "purged ended sessions"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = ?e, "purging ended sessions failed"),
            }
            match purge_audit.purge(retention_days).await {
                Ok(n) if n > 0 => tracing::info!(events = n, "purged old audit events"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging audit events failed"),
            }
        }
    });

    let _workers = spawn_workers(&outbox, config.sms.sms_workers);
    if config.sms.sms_workers > 0 {
        tracing::info!(
            workers = config.sms.sms_workers,
            "SMS delivery workers started in this process"
        );
    }

    let resolvers = ResolverCounter::default();
    // A client application sends a handful of distinct documents; 256 leaves room for many
    // applications and GraphiQL users and bounds the memory to about 256 x 4 KiB of text.
    let documents = Arc::new(DocumentCache::new(256));
    let guard = DocumentGuard::new(documents.clone(), (&config.limits).into());
    let schema = build_schema(
        auth.clone(),
        production,
        resolvers.clone(),
        guard,
        config.limits.max_entity_representations,
    );
    let draining = Draining::default();
    let router = router(
        HttpState {
            schema,
            auth: auth.clone(),
            trusted_proxies,
            graphiql: config.http.graphiql.unwrap_or(!production),
            draining: draining.clone(),
            browser: BrowserApps {
                allowed_origins: config.cors_origins(),
                refresh_cookie: config.tokens.refresh_token_cookie,
                issuer_origin: origin_of(&config.jwt_issuer()),
            },
        },
        Duration::from_secs(config.http.request_timeout_seconds),
        config.http.max_body_bytes,
    );
    Ok(App {
        router,
        metrics,
        outbox,
        resolvers,
        documents,
        auth,
        backend,
        embedded,
        draining,
    })
}
