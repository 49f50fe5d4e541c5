//! Sessions and refresh tokens, in PostgreSQL. Owns tables `sessions` and `refresh_tokens`.
//!
//! A refresh token is 256 bits from the OS CSPRNG, base64url (43 characters), stored only as its
//! SHA-256. Each use rotates it; a second use of a rotated token is treated as theft and revokes the
//! session (RFC 9700 section 4.14.2). A session lives at most `ttl` from its creation, however often it
//! is refreshed.

use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::random::OpaqueToken;
use crate::services::audit::AuditRow;
use crate::services::embedded::Db;
use crate::services::users::User;

pub struct NewSession {
    pub session_id: Uuid,
    pub refresh_token: String,
    /// The session's absolute end: no access or refresh token of it outlives this.
    pub expires_at: OffsetDateTime,
    /// How and when the session was signed in (kept across refreshes).
    pub auth: SessionAuth,
}

/// An authentication method, as RFC 8176 names it (the `amr` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amr {
    /// A password.
    Pwd,
    /// A one-time code sent by SMS.
    Sms,
}

impl Amr {
    pub fn as_str(self) -> &'static str {
        match self {
            Amr::Pwd => "pwd",
            Amr::Sms => "sms",
        }
    }
}

/// When and how a session was signed in.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionAuth {
    pub auth_time: OffsetDateTime,
    pub amr: Vec<String>,
}

impl SessionAuth {
    /// A sign-in happening now (whole seconds, as the `auth_time` claim carries it).
    pub fn now(method: Amr) -> Self {
        let now = OffsetDateTime::now_utc();
        SessionAuth {
            auth_time: now.replace_nanosecond(0).unwrap_or(now),
            amr: vec![method.as_str().to_owned()],
        }
    }
}

/// Where a sign-in came from, as the HTTP edge saw it.
#[derive(Clone, Default)]
pub struct Device {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// A user agent is kept to this many characters: enough for any real browser's (about 150), while a
/// header can be 8 KiB.
pub const USER_AGENT_MAX_CHARS: usize = 256;

impl std::fmt::Debug for Device {
    /// Flows are traced with their arguments: the address and user agent stay out of the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").finish_non_exhaustive()
    }
}

impl Device {
    pub fn new(user_agent: Option<&str>, ip: Option<std::net::IpAddr>) -> Self {
        Device {
            user_agent: user_agent.map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(USER_AGENT_MAX_CHARS)
                    .collect()
            }),
            ip: ip.map(|ip| ip.to_string()),
        }
    }
}

/// A live session as its user sees it (`mySessions`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionInfo {
    pub id: Uuid,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub auth_time: OffsetDateTime,
    pub amr: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct SessionUser {
    #[sqlx(flatten)]
    user: User,
    expires_at: OffsetDateTime,
    #[sqlx(flatten)]
    auth: SessionAuth,
}

#[derive(sqlx::FromRow)]
struct SessionOfUser {
    #[sqlx(flatten)]
    user: User,
    #[sqlx(flatten)]
    auth: SessionAuth,
}

fn new_refresh_token() -> AppResult<(String, Vec<u8>)> {
    let t = OpaqueToken::generate().map_err(AppError::Internal)?;
    Ok((t.token, t.digest.to_vec()))
}

/// A session to insert (`SessionStorage::insert`).
pub struct SessionRow<'a> {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: OffsetDateTime,
    /// SHA-256 of its first refresh token.
    pub token_hash: &'a [u8],
    pub auth: &'a SessionAuth,
    pub device: &'a Device,
}

/// A rotated refresh token: the session's user, id, end and sign-in.
pub type Rotated = (User, Uuid, OffsetDateTime, SessionAuth);

/// The session store: each call one statement or one transaction, with its audit event inside it.
/// PostgreSQL (`PgSessions`) and the embedded backend implement it; `SessionStore` dispatches.
pub trait SessionStorage: Send + Sync {
    /// Inserts the session and its first refresh token, with `audit` (signed in).
    fn insert(&self, row: &SessionRow<'_>, audit: AuditRow) -> impl Future<Output = AppResult<()>> + Send;
    /// Marks the refresh token `hash` used and adds `new_hash` to its session, if the token is unused
    /// and its session live (event token_refreshed). A used token is reuse: its session is revoked
    /// (event refresh_reuse_detected). None unless rotated.
    fn rotate(&self, hash: &[u8], new_hash: &[u8])
    -> impl Future<Output = AppResult<Option<Rotated>>> + Send;
    fn live_user(
        &self,
        session_id: Uuid,
        user_id: Uuid,
    ) -> impl Future<Output = AppResult<Option<User>>> + Send;
    fn purge_expired(&self) -> impl Future<Output = AppResult<u64>> + Send;
    fn revoke(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        all: bool,
        audit: AuditRow,
    ) -> impl Future<Output = AppResult<u64>> + Send;
    fn live_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
    ) -> impl Future<Output = AppResult<Option<(User, SessionAuth)>>> + Send;
    fn list_live(&self, user_id: Uuid) -> impl Future<Output = AppResult<Vec<SessionInfo>>> + Send;
    fn revoke_own(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        audit: AuditRow,
    ) -> impl Future<Output = AppResult<bool>> + Send;
}

/// Where this process keeps its sessions.
pub enum Sessions {
    Postgres(PgSessions),
    Embedded(Arc<Db>),
}

macro_rules! dispatch {
    ($self:ident, $op:literal, $s:ident => $call:expr) => {
        match &$self.backend {
            Sessions::Postgres($s) => crate::ops::metrics::timed("postgres", $op, $call).await,
            Sessions::Embedded($s) => {
                let $s = &**$s;
                $call.await
            }
        }
    };
}

pub struct SessionStore {
    backend: Sessions,
    ttl: time::Duration,
}

impl SessionStore {
    pub fn new(pool: PgPool, ttl_seconds: u64) -> Self {
        Self::with_backend(Sessions::Postgres(PgSessions { pool }), ttl_seconds)
    }

    pub fn with_backend(backend: Sessions, ttl_seconds: u64) -> Self {
        SessionStore {
            backend,
            ttl: time::Duration::seconds(ttl_seconds as i64),
        }
    }

    /// A new session signed in by `auth` from `device`; `audit` (signed in) is written with it.
    pub async fn create(
        &self,
        user_id: Uuid,
        auth: SessionAuth,
        device: &Device,
        audit: AuditRow,
    ) -> AppResult<NewSession> {
        let session_id = Uuid::new_v4();
        let (token, hash) = new_refresh_token()?;
        let audit = audit.user(user_id).session(session_id);
        // Whole seconds: what PostgreSQL stores (microseconds) and what we compute from must agree.
        let expires_at = (OffsetDateTime::now_utc() + self.ttl)
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc() + self.ttl);
        let row = SessionRow {
            session_id,
            user_id,
            expires_at,
            token_hash: &hash,
            auth: &auth,
            device,
        };
        dispatch!(self, "insert", s => s.insert(&row, audit))?;
        Ok(NewSession {
            session_id,
            refresh_token: token,
            expires_at,
            auth,
        })
    }

    /// Exchanges a refresh token for a new one on the same session. Returns the session's user; the
    /// session's sign-in (time and method) carries over (a refresh is not a sign-in), and its last
    /// use is now.
    pub async fn rotate(&self, refresh_token: &str) -> AppResult<(User, NewSession)> {
        // Anything far off our tokens' length is not one, and is not looked up.
        let hash = OpaqueToken::digest_if_plausible(refresh_token).ok_or(AppError::InvalidToken)?;
        let (token, new_hash) = new_refresh_token()?;
        let (user, session_id, expires_at, auth) =
            dispatch!(self, "rotate", s => s.rotate(&hash, &new_hash))?.ok_or(AppError::InvalidToken)?;
        Ok((
            user,
            NewSession {
                session_id,
                refresh_token: token,
                expires_at,
                auth,
            },
        ))
    }

    /// The user of a session that is live (not revoked, not expired) and belongs to `user_id`.
    pub async fn live_user(&self, session_id: Uuid, user_id: Uuid) -> AppResult<Option<User>> {
        dispatch!(self, "live_user", s => s.live_user(session_id, user_id))
    }

    /// Deletes sessions (and their refresh tokens) that ended more than a day ago.
    pub async fn purge_expired(&self) -> AppResult<u64> {
        dispatch!(self, "purge_expired", s => s.purge_expired())
    }

    /// Revokes one session, or every live session of the user. Returns how many were revoked. The
    /// sign-out event (`audit`, completed here) is written with it.
    pub async fn revoke(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        all: bool,
        audit: AuditRow,
    ) -> AppResult<u64> {
        let audit = audit
            .user(user_id)
            .session(session_id)
            .detail(serde_json::json!({ "allSessions": all }));
        dispatch!(self, "revoke", s => s.revoke(session_id, user_id, all, audit))
    }

    /// A live session of `user_id` with its user and how it was signed in (recent-authentication
    /// checks read the stored session, not the token, so a refresh cannot make a sign-in look recent).
    pub async fn live_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
    ) -> AppResult<Option<(User, SessionAuth)>> {
        dispatch!(self, "live_session", s => s.live_session(session_id, user_id))
    }

    /// The live sessions of a user, newest first.
    pub async fn list_live(&self, user_id: Uuid) -> AppResult<Vec<SessionInfo>> {
        dispatch!(self, "list_live", s => s.list_live(user_id))
    }

    /// Revokes one live session of `user_id` (`revokeSession`). False when there is none with that id
    /// for that user. The event (`audit`, completed here: session_revoked) is written with it.
    pub async fn revoke_own(&self, session_id: Uuid, user_id: Uuid, audit: AuditRow) -> AppResult<bool> {
        let audit = audit.user(user_id);
        dispatch!(self, "revoke_own", s => s.revoke_own(session_id, user_id, audit))
    }
}

/// Sessions in PostgreSQL.
pub struct PgSessions {
    pool: PgPool,
}

impl SessionStorage for PgSessions {
    async fn insert(&self, row: &SessionRow<'_>, audit: AuditRow) -> AppResult<()> {
        // One statement (so one round trip and one implicit transaction) instead of BEGIN, three
        // INSERTs and COMMIT: every sign-in goes through here.
        let sql = format!(
            "with s as (insert into sessions (id, user_id, expires_at, auth_time, amr, user_agent, ip)
                        values ($1, $2, $3, $5, $6, $7, $8) returning id),
             {}
             insert into refresh_tokens (token_hash, session_id) select $4, id from s",
            AuditRow::cte(9, "s", None, None)
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(row.session_id)
            .bind(row.user_id)
            .bind(row.expires_at)
            .bind(row.token_hash)
            .bind(row.auth.auth_time)
            .bind(&row.auth.amr)
            .bind(row.device.user_agent.as_deref())
            .bind(row.device.ip.as_deref());
        crate::bind_audit!(query, audit).execute(&self.pool).await?;
        Ok(())
    }

    async fn rotate(&self, hash: &[u8], new_hash: &[u8]) -> AppResult<Option<Rotated>> {
        let mut tx = self.pool.begin().await?;
        // Marking it used is the atomic step: of two racing uses only one updates the row.
        let used: Option<(Uuid,)> = sqlx::query_as(
            "update refresh_tokens set used_at = now() where token_hash = $1 and used_at is null returning session_id",
        )
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session_id,)) = used else {
            // Unknown, or already used. A used one is reuse: revoke its session.
            let reused: Option<(Uuid, String)> = sqlx::query_as(
                "select t.session_id, u.phone from refresh_tokens t
                 join sessions s on s.id = t.session_id join users u on u.id = s.user_id
                 where t.token_hash = $1",
            )
            .bind(hash)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((sid, phone)) = reused {
                let sql = format!(
                    "with r as (update sessions set revoked_at = now(), revoked_reason = 'refresh_token_reuse'
                     where id = $1 and revoked_at is null returning id, user_id),
                     {}
                     select count(*) from r",
                    AuditRow::cte(2, "r", Some("r.user_id"), Some("r.id"))
                );
                let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sid);
                crate::bind_audit!(query, AuditRow::new("refresh_reuse_detected").phone_e164(&phone))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                tracing::warn!(session_id = %sid, "refresh token reused: session revoked");
            }
            return Ok(None);
        };
        let live: Option<SessionUser> = sqlx::query_as(
            "with s as (update sessions set last_used_at = now()
                        where id = $1 and revoked_at is null and expires_at > now()
                        returning user_id, expires_at, auth_time, amr)
             select u.id, u.phone, u.first_name, u.last_name, u.created_at, s.expires_at, s.auth_time, s.amr
             from s join users u on u.id = s.user_id",
        )
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(SessionUser {
            user,
            expires_at,
            auth,
        }) = live
        else {
            return Ok(None);
        };
        let sql = format!(
            "with t as (insert into refresh_tokens (token_hash, session_id) values ($1, $2) returning 1),
             {}
             select count(*) from t",
            AuditRow::cte(3, "t", None, None)
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(new_hash)
            .bind(session_id);
        let audit = AuditRow::new("token_refreshed")
            .user(user.id)
            .session(session_id)
            .phone_e164(&user.phone);
        crate::bind_audit!(query, audit).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some((user, session_id, expires_at, auth)))
    }

    /// The user of a session that is live (not revoked, not expired) and belongs to `user_id`.
    async fn live_user(&self, session_id: Uuid, user_id: Uuid) -> AppResult<Option<User>> {
        Ok(sqlx::query_as::<_, User>(
            "select u.id, u.phone, u.first_name, u.last_name, u.created_at
             from sessions s join users u on u.id = s.user_id
             where s.id = $1 and s.user_id = $2 and s.revoked_at is null and s.expires_at > now()",
        )
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Deletes sessions (and, by cascade, their refresh tokens) that ended more than a day ago. Used
    /// refresh tokens are kept until then: reuse detection needs them for the session's whole life.
    async fn purge_expired(&self) -> AppResult<u64> {
        let done = sqlx::query(
            "delete from sessions where expires_at < now() - interval '1 day'
                or revoked_at < now() - interval '1 day'",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Revokes one session, or every live session of the user. Returns how many were revoked. The
    /// sign-out event (`audit`, completed here) is written by the same statement.
    async fn revoke(&self, session_id: Uuid, user_id: Uuid, all: bool, audit: AuditRow) -> AppResult<u64> {
        let (reason, filter) = if all {
            ("logout_all", "user_id = $2")
        } else {
            ("logout", "id = $1 and user_id = $2")
        };
        let sql = format!(
            "with r as (update sessions set revoked_at = now(), revoked_reason = '{reason}'
             where {filter} and revoked_at is null returning id),
             {}
             select count(*) from r",
            AuditRow::cte(3, "(select 1 from r limit 1) as any_revoked", None, None)
        );
        let query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind(session_id)
            .bind(user_id);
        let revoked = crate::bind_audit!(query, audit).fetch_one(&self.pool).await?;
        Ok(u64::try_from(revoked).unwrap_or(0))
    }

    /// A live session of `user_id` with its user and how it was signed in (recent-authentication
    /// checks read the row, not the token, so a refresh cannot make a sign-in look recent).
    async fn live_session(&self, session_id: Uuid, user_id: Uuid) -> AppResult<Option<(User, SessionAuth)>> {
        let found: Option<SessionOfUser> = sqlx::query_as(
            "select u.id, u.phone, u.first_name, u.last_name, u.created_at, s.auth_time, s.amr
             from sessions s join users u on u.id = s.user_id
             where s.id = $1 and s.user_id = $2 and s.revoked_at is null and s.expires_at > now()",
        )
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(|f| (f.user, f.auth)))
    }

    /// The live sessions of a user, newest first.
    async fn list_live(&self, user_id: Uuid) -> AppResult<Vec<SessionInfo>> {
        Ok(sqlx::query_as::<_, SessionInfo>(
            "select id, created_at, last_used_at, user_agent, ip, auth_time, amr from sessions
             where user_id = $1 and revoked_at is null and expires_at > now()
             order by created_at desc, id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes one live session of `user_id` (`revokeSession`). False when there is none with that id
    /// for that user: another user's session is, to the caller, a session that does not exist. The
    /// event (`audit`, completed here: session_revoked) is written by the same statement.
    async fn revoke_own(&self, session_id: Uuid, user_id: Uuid, audit: AuditRow) -> AppResult<bool> {
        let sql = format!(
            "with r as (update sessions set revoked_at = now(), revoked_reason = 'revoked_by_user'
             where id = $1 and user_id = $2 and revoked_at is null and expires_at > now() returning id),
             {}
             select count(*) from r",
            AuditRow::cte(3, "r", None, Some("r.id"))
        );
        let query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind(session_id)
            .bind(user_id);
        let revoked = crate::bind_audit!(query, audit).fetch_one(&self.pool).await?;
        Ok(revoked == 1)
    }
}
