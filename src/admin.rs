//! `phone-auth admin ...`: what an operator does by hand against the live stores, with the service's
//! own settings and code (never raw SQL or Redis commands typed under pressure). Each command prints
//! what it did and exits non-zero with a clear message on bad input or an unreachable store. Actions
//! that change something are audited (`admin_*` events, plus the event they cause, e.g. `unlocked`).

use std::time::Duration;

use crate::services::redis_conn::RedisConn;
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use secrecy::ExposeSecret as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{PhoneNumber, PhonePolicy};
use crate::ops::logging::mask_phone;
use crate::services::Keys;
use crate::services::audit::{self, AuditRow};
use crate::services::lockout::LockoutService;
use crate::services::sessions::SessionStore;
use crate::services::tokens::{SigningKey, TokenService};
use crate::services::users::UserStorage as _;
use crate::services::users::{User, UserStore};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Lift the password lock of a phone and clear its failure count.
    Unlock { phone: String },
    /// A user's sessions.
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// A user's account.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// SMS delivery.
    Sms {
        #[command(subcommand)]
        action: SmsAction,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Audit events of a user or a phone, oldest first.
    Audit {
        #[command(flatten)]
        who: Who,
        /// Newest events shown at most.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// A user id (UUID).
    #[arg(long)]
    user: Option<String>,
    /// A phone number (E.164, or national with DEFAULT_REGION).
    #[arg(long)]
    phone: Option<String>,
}

#[derive(Subcommand)]
pub enum SessionsAction {
    /// List the sessions (live and ended) of a user.
    List {
        #[command(flatten)]
        who: Who,
    },
    /// Revoke every live session of a user.
    Revoke {
        #[command(flatten)]
        who: Who,
    },
}

#[derive(Subcommand)]
pub enum UserAction {
    /// Show an account: id, names, creation, live sessions, lock.
    Show { phone: String },
    /// Delete an account: its row, sessions and refresh tokens, and its phone's pending Redis state.
    Delete { phone: String },
}

#[derive(Subcommand)]
pub enum SmsAction {
    /// Dead-lettered SMS jobs (never with their code: a user whose code failed asks for a new one).
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(subcommand)]
        action: DeadLettersAction,
    },
}

#[derive(Subcommand)]
pub enum DeadLettersAction {
    /// List them: id, masked phone, reason, age.
    List,
    /// Delete them all.
    Purge,
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// Print a fresh Ed25519 signing key in JWT_SIGNING_KEYS form.
    Generate,
    /// Print the public keys (JWKS) of the configured JWT_SIGNING_KEYS.
    Show,
}

/// id, created, expires, revoked at, revoked reason.
type SessionRow = (
    Uuid,
    time::OffsetDateTime,
    time::OffsetDateTime,
    Option<time::OffsetDateTime>,
    Option<String>,
);

struct Stores {
    pg: PgPool,
    redis: RedisConn,
    keys: Keys,
    policy: PhonePolicy,
}

impl Stores {
    async fn connect(config: &Config) -> anyhow::Result<Stores> {
        let stores = &config.stores;
        let needs = |name: &str| {
            anyhow::anyhow!(
                "admin commands need {name} (and the other store's URL): the embedded backend's data \
                 lives in the memory of the server process and cannot be reached from another one"
            )
        };
        let database_url = stores
            .database_url
            .as_ref()
            .ok_or_else(|| needs("DATABASE_URL"))?;
        let pg = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(database_url.expose_secret())
            .await
            .context("cannot connect to PostgreSQL (DATABASE_URL)")?;
        let target = config
            .redis_target()
            .ok_or_else(|| needs("REDIS_URL or REDIS_CLUSTER_URLS"))?;
        let redis = target
            .connect(Duration::from_secs(5), 1)
            .await
            .context("cannot connect to Redis")?;
        Ok(Stores {
            pg,
            redis,
            keys: config.redis_keys(),
            // Any valid number: an operator may need to act on a region no longer allowed.
            policy: PhonePolicy::from_config(config.otp.default_region.as_deref(), None)?,
        })
    }

    fn phone(&self, input: &str) -> anyhow::Result<PhoneNumber> {
        PhoneNumber::parse(input, &self.policy)
            .map_err(|_| anyhow::anyhow!("{input:?} is not a valid phone number"))
    }

    async fn user(&self, who: &Who) -> anyhow::Result<User> {
        if let Some(user) = &who.user {
            let id =
                Uuid::parse_str(user).map_err(|_| anyhow::anyhow!("{user:?} is not a user id (UUID)"))?;
            let exists = UserStore::new(self.pg.clone())
                .find_by_ids(&[id])
                .await
                .map_err(store_error)?;
            return exists
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("no user {id}"));
        }
        let input = who.phone.as_deref().unwrap_or_default();
        let phone = self.phone(input)?;
        self.user_by_phone(&phone).await
    }

    async fn user_by_phone(&self, phone: &PhoneNumber) -> anyhow::Result<User> {
        UserStore::new(self.pg.clone())
            .find_by_phone(phone)
            .await
            .map_err(store_error)?
            .ok_or_else(|| anyhow::anyhow!("no account for {}", mask_phone(phone.e164())))
    }

    async fn audit(&self, row: AuditRow) -> anyhow::Result<()> {
        audit::write_now(&self.pg, &row)
            .await
            .context("could not write the audit event")
    }
}

fn store_error(e: crate::error::AppError) -> anyhow::Error {
    anyhow::anyhow!("store error: {e:?}")
}

fn admin_row(event: &'static str) -> AuditRow {
    let mut row = AuditRow::new(event);
    row.user_agent = Some(format!("phone-auth admin (uid {})", current_uid()).into());
    row
}

fn current_uid() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

pub async fn run(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    // Commands that need no store.
    match &command {
        AdminCommand::Keys {
            action: KeysAction::Generate,
        } => {
            println!("{}", SigningKey::generate()?.to_config());
            return Ok(());
        }
        AdminCommand::Keys {
            action: KeysAction::Show,
        } => {
            let Some(spec) = &config.tokens.jwt_signing_keys else {
                bail!("JWT_SIGNING_KEYS is not set: there are no keys to show");
            };
            let keys = SigningKey::parse_list(spec)?;
            let tokens = TokenService::new(
                &keys,
                config.jwt_issuer(),
                config.tokens.jwt_audience.clone(),
                config.jwt_client_id(),
                config.tokens.access_token_ttl_seconds,
            )?;
            println!("{}", serde_json::to_string_pretty(tokens.jwks())?);
            return Ok(());
        }
        _ => {}
    }
    let stores = Stores::connect(config).await?;
    match command {
        AdminCommand::Keys { .. } => unreachable!("answered above"),
        AdminCommand::Unlock { phone } => {
            let phone = stores.phone(&phone)?;
            let lockout = LockoutService::new(
                stores.redis.clone(),
                stores.keys.clone(),
                config.into(),
                // Unused: admin commands reserve no attempt.
                Duration::from_secs(1),
            );
            let lifted = lockout.clear(&phone, None).await.map_err(store_error)?;
            stores
                .audit(
                    admin_row("unlocked")
                        .phone(&phone)
                        .detail(serde_json::json!({ "by": "admin", "wasLocked": lifted })),
                )
                .await?;
            println!(
                "{}: {}; failure count cleared",
                mask_phone(phone.e164()),
                if lifted { "lock lifted" } else { "was not locked" }
            );
        }
        AdminCommand::Sessions { action } => match action {
            SessionsAction::List { who } => {
                let user = stores.user(&who).await?.id;
                let rows: Vec<SessionRow> = sqlx::query_as(
                    "select id, created_at, expires_at, revoked_at, revoked_reason from sessions
                         where user_id = $1 order by created_at",
                )
                .bind(user)
                .fetch_all(&stores.pg)
                .await?;
                println!("{} session(s) of user {user}", rows.len());
                for (id, created, expires, revoked, reason) in rows {
                    let state = match (revoked, reason) {
                        (Some(at), reason) => format!("revoked {at} ({})", reason.unwrap_or_default()),
                        (None, _) if expires <= time::OffsetDateTime::now_utc() => "expired".to_owned(),
                        (None, _) => "live".to_owned(),
                    };
                    println!("{id}  created {created}  expires {expires}  {state}");
                }
            }
            SessionsAction::Revoke { who } => {
                let user = stores.user(&who).await?;
                let signed_out = admin_row("signed_out")
                    .phone_e164(&user.phone)
                    .detail(serde_json::json!({ "allSessions": true, "by": "admin" }));
                let revoked = SessionStore::new(stores.pg.clone(), config.tokens.session_ttl_seconds)
                    .revoke(Uuid::nil(), user.id, true, signed_out)
                    .await
                    .map_err(store_error)?;
                stores
                    .audit(
                        admin_row("admin_sessions_revoked")
                            .user(user.id)
                            .phone_e164(&user.phone)
                            .detail(serde_json::json!({ "revoked": revoked })),
                    )
                    .await?;
                println!("revoked {revoked} live session(s) of user {}", user.id);
            }
        },
        AdminCommand::User { action } => match action {
            UserAction::Show { phone } => {
                let phone = stores.phone(&phone)?;
                let user = stores.user_by_phone(&phone).await?;
                let (live,): (i64,) = sqlx::query_as(
                    "select count(*) from sessions where user_id = $1 and revoked_at is null and expires_at > now()",
                )
                .bind(user.id)
                .fetch_one(&stores.pg)
                .await?;
                let lockout = LockoutService::new(
                    stores.redis.clone(),
                    stores.keys.clone(),
                    config.into(),
                    // Unused: admin commands reserve no attempt.
                    Duration::from_secs(1),
                );
                let locked = lockout.locked_for(&phone).await.map_err(store_error)?;
                println!("id:        {}", user.id);
                println!("phone:     {}", mask_phone(&user.phone));
                println!(
                    "name:      {} {}",
                    user.first_name.as_deref().unwrap_or("-"),
                    user.last_name.as_deref().unwrap_or("-")
                );
                println!("created:   {}", user.created_at);
                println!("sessions:  {live} live");
                match locked {
                    Some(secs) => println!("password:  locked for {secs} s more"),
                    None => println!("password:  not locked"),
                }
            }
            UserAction::Delete { phone } => {
                let phone = stores.phone(&phone)?;
                let user = stores.user_by_phone(&phone).await?;
                // Sessions and refresh tokens go by cascade (migrations/).
                sqlx::query("delete from users where id = $1")
                    .bind(user.id)
                    .execute(&stores.pg)
                    .await?;
                let mut redis = stores.redis.clone();
                let keys: Vec<String> = [
                    "otp",
                    "otp_sends",
                    "otp_fails",
                    "pw_attempts",
                    "pw_lock",
                    "pw_gen",
                ]
                .iter()
                .map(|what| stores.keys.phone(&phone, what))
                .collect();
                let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await?;
                stores
                    .audit(admin_row("admin_user_deleted").phone(&phone).user(user.id))
                    .await?;
                println!(
                    "deleted user {} ({}) with its sessions and pending state",
                    user.id,
                    mask_phone(phone.e164())
                );
            }
        },
        AdminCommand::Sms {
            action: SmsAction::DeadLetters { action },
        } => {
            // Every outbox shard's dead letters (`SMS_OUTBOX_SHARDS`; one key with the default).
            let deads: Vec<String> = (0..stores.keys.shards())
                .map(|i| stores.keys.shard(i, "sms:dead"))
                .collect();
            let mut redis = stores.redis.clone();
            match action {
                DeadLettersAction::List => {
                    let mut entries: Vec<(String, Vec<(String, String)>)> = Vec::new();
                    for dead in &deads {
                        let shard: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                            .arg(dead)
                            .arg("-")
                            .arg("+")
                            .query_async(&mut redis)
                            .await?;
                        entries.extend(shard);
                    }
                    println!("{} dead letter(s)", entries.len());
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    for (id, fields) in entries {
                        let get = |name: &str| {
                            fields
                                .iter()
                                .find(|(k, _)| k == name)
                                .map_or("", |(_, v)| v.as_str())
                                .to_owned()
                        };
                        let age_s = get("failed_ms")
                            .parse::<u64>()
                            .map_or(0, |ms| now.saturating_sub(ms) / 1000);
                        println!(
                            "{id}  {}  {}  {age_s} s ago  {}",
                            get("id"),
                            mask_phone(&get("to")),
                            get("reason")
                        );
                    }
                }
                DeadLettersAction::Purge => {
                    let mut n: u64 = 0;
                    for dead in &deads {
                        let len: u64 = redis::cmd("XLEN").arg(dead).query_async(&mut redis).await?;
                        let _: i64 = redis::cmd("DEL").arg(dead).query_async(&mut redis).await?;
                        n += len;
                    }
                    stores
                        .audit(
                            admin_row("admin_dead_letters_purged").detail(serde_json::json!({ "count": n })),
                        )
                        .await?;
                    println!("purged {n} dead letter(s)");
                }
            }
        }
        AdminCommand::Audit { who, limit } => {
            let (user, phone) = match (&who.user, &who.phone) {
                (Some(user), _) => (
                    Some(
                        Uuid::parse_str(user)
                            .map_err(|_| anyhow::anyhow!("{user:?} is not a user id (UUID)"))?,
                    ),
                    None,
                ),
                (None, Some(phone)) => (None, Some(stores.phone(phone)?.e164().to_owned())),
                (None, None) => bail!("give --user or --phone"),
            };
            let events = audit::read(&stores.pg, user, phone.as_deref(), limit.clamp(1, 10_000)).await?;
            println!("{} event(s)", events.len());
            for e in events {
                println!(
                    "{}  {:<24} user={} phone={} ip={} session={} {}",
                    e.at,
                    e.event,
                    e.user_id.map_or("-".into(), |u| u.to_string()),
                    e.phone_masked.as_deref().unwrap_or("-"),
                    e.client_ip.as_deref().unwrap_or("-"),
                    e.session_id.map_or("-".into(), |s| s.to_string()),
                    e.detail
                );
            }
        }
    }
    Ok(())
}
