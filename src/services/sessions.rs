//! Sessions and refresh tokens, in PostgreSQL. Owns tables `sessions` and `refresh_tokens`.
//!
//! A refresh token is 256 bits from the OS CSPRNG, base64url (43 characters), stored only as its
//! SHA-256. Each use rotates it; a second use of a rotated token is treated as theft and revokes the
//! session (RFC 9700 section 4.14.2). A session lives at most `ttl` from its creation, however often it
//! is refreshed.

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::random::OpaqueToken;
use crate::services::users::User;

pub struct NewSession {
    pub session_id: Uuid,
    pub refresh_token: String,
    /// The session's absolute end: no access or refresh token of it outlives this.
    pub expires_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct SessionUser {
    #[sqlx(flatten)]
    user: User,
    expires_at: OffsetDateTime,
}

pub struct SessionStore {
    pool: PgPool,
    ttl: time::Duration,
}

fn new_refresh_token() -> AppResult<(String, Vec<u8>)> {
    let t = OpaqueToken::generate().map_err(AppError::Internal)?;
    Ok((t.token, t.digest.to_vec()))
}

impl SessionStore {
    pub fn new(pool: PgPool, ttl_seconds: u64) -> Self {
        SessionStore {
            pool,
            ttl: time::Duration::seconds(ttl_seconds as i64),
        }
    }

    pub async fn create(&self, user_id: Uuid) -> AppResult<NewSession> {
        let session_id = Uuid::new_v4();
        let (token, hash) = new_refresh_token()?;
        // Whole seconds: what PostgreSQL stores (microseconds) and what we compute from must agree.
        let expires_at = (OffsetDateTime::now_utc() + self.ttl)
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc() + self.ttl);
        // One statement (so one round trip and one implicit transaction) instead of BEGIN, two
        // INSERTs and COMMIT: every sign-in goes through here.
        sqlx::query(
            "with s as (insert into sessions (id, user_id, expires_at) values ($1, $2, $3) returning id)
             insert into refresh_tokens (token_hash, session_id) select $4, id from s",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(expires_at)
        .bind(&hash)
        .execute(&self.pool)
        .await?;
        Ok(NewSession {
            session_id,
            refresh_token: token,
            expires_at,
        })
    }

    /// Exchanges a refresh token for a new one on the same session. Returns the session's user.
    pub async fn rotate(&self, refresh_token: &str) -> AppResult<(User, NewSession)> {
        // Anything far off our tokens' length is not one, and is not looked up.
        let hash = OpaqueToken::digest_if_plausible(refresh_token)
            .ok_or(AppError::InvalidToken)?
            .to_vec();
        let mut tx = self.pool.begin().await?;
        // Marking it used is the atomic step: of two racing uses only one updates the row.
        let used: Option<(Uuid,)> = sqlx::query_as(
            "update refresh_tokens set used_at = now() where token_hash = $1 and used_at is null returning session_id",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session_id,)) = used else {
            // Unknown, or already used. A used one is reuse: revoke its session.
            let reused: Option<(Uuid,)> =
                sqlx::query_as("select session_id from refresh_tokens where token_hash = $1")
                    .bind(&hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((sid,)) = reused {
                sqlx::query(
                    "update sessions set revoked_at = now(), revoked_reason = 'refresh_token_reuse'
                     where id = $1 and revoked_at is null",
                )
                .bind(sid)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::warn!(session_id = %sid, "refresh token reused: session revoked");
            }
            return Err(AppError::InvalidToken);
        };
        let live: Option<SessionUser> = sqlx::query_as(
            "select u.id, u.phone, u.first_name, u.last_name, u.created_at, s.expires_at
             from sessions s join users u on u.id = s.user_id
             where s.id = $1 and s.revoked_at is null and s.expires_at > now()",
        )
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(SessionUser { user, expires_at }) = live else {
            return Err(AppError::InvalidToken);
        };
        let (token, new_hash) = new_refresh_token()?;
        sqlx::query("insert into refresh_tokens (token_hash, session_id) values ($1, $2)")
            .bind(&new_hash)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((
            user,
            NewSession {
                session_id,
                refresh_token: token,
                expires_at,
            },
        ))
    }

    /// The user of a session that is live (not revoked, not expired) and belongs to `user_id`.
    pub async fn live_user(&self, session_id: Uuid, user_id: Uuid) -> AppResult<Option<User>> {
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
    pub async fn purge_expired(&self) -> AppResult<u64> {
        let done = sqlx::query(
            "delete from sessions where expires_at < now() - interval '1 day'
                or revoked_at < now() - interval '1 day'",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Revokes one session, or every live session of the user. Returns how many were revoked.
    pub async fn revoke(&self, session_id: Uuid, user_id: Uuid, all: bool) -> AppResult<u64> {
        let result = if all {
            sqlx::query(
                "update sessions set revoked_at = now(), revoked_reason = 'logout_all'
                 where user_id = $1 and revoked_at is null",
            )
            .bind(user_id)
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query(
                "update sessions set revoked_at = now(), revoked_reason = 'logout'
                 where id = $1 and user_id = $2 and revoked_at is null",
            )
            .bind(session_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?
        };
        Ok(result.rows_affected())
    }
}
