//! The user store, in PostgreSQL. Owns table `users` (see migrations/).

use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::services::audit::{AuditRow, write_in};
use crate::services::embedded::Db;

#[derive(Clone, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub phone: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for User {
    /// The phone is personal data: not in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
struct UserWithHash {
    #[sqlx(flatten)]
    user: User,
    password_hash: String,
}

/// The user store: each call one statement or one transaction, with its audit event inside it.
/// PostgreSQL (`PgUsers`) and the embedded backend implement it; `UserStore` dispatches.
pub trait UserStorage: Send + Sync {
    fn find_by_phone(&self, phone: &PhoneNumber) -> impl Future<Output = AppResult<Option<User>>> + Send;
    /// The user and their password hash, for sign-in.
    fn find_credentials(
        &self,
        phone: &PhoneNumber,
    ) -> impl Future<Output = AppResult<Option<(User, String)>>> + Send;
    /// Creates the account `id`, or answers PHONE_ALREADY_REGISTERED. If the phone's account is this
    /// very `id` (a registration retried after its answer was lost), it is completed with this
    /// request's password and names. The sign-up event is written only when the row was created.
    fn create(
        &self,
        id: Uuid,
        phone: &PhoneNumber,
        password_hash: &str,
        first_name: Option<&str>,
        last_name: Option<&str>,
    ) -> impl Future<Output = AppResult<User>> + Send;
    fn find_by_ids(&self, ids: &[Uuid]) -> impl Future<Output = AppResult<Vec<User>>> + Send;
    fn password_hash(&self, id: Uuid) -> impl Future<Output = AppResult<Option<String>>> + Send;
    /// Replaces the password hash and revokes every live session of the user but `keep` (`reason`
    /// recorded), and writes `audit` with `revokedSessions` in its detail: all or nothing. None when
    /// the user no longer exists; else how many sessions were revoked.
    fn set_password_revoking(
        &self,
        id: Uuid,
        password_hash: &str,
        keep: Option<Uuid>,
        reason: &str,
        audit: AuditRow,
    ) -> impl Future<Output = AppResult<Option<u64>>> + Send;
    /// Moves the account to `new_phone`; the phone it had, None when the user is gone;
    /// PHONE_ALREADY_REGISTERED when another account has it.
    fn change_phone(
        &self,
        id: Uuid,
        new_phone: &PhoneNumber,
        audit: AuditRow,
    ) -> impl Future<Output = AppResult<Option<String>>> + Send;
    /// Deletes the account with its sessions and refresh tokens; its phone, None when already gone.
    fn delete(&self, id: Uuid, audit: AuditRow) -> impl Future<Output = AppResult<Option<String>>> + Send;
}

/// The user store of this process: PostgreSQL, or the embedded backend.
pub enum UserStore {
    Postgres(PgUsers),
    Embedded(Arc<Db>),
}

impl UserStore {
    pub fn new(pool: PgPool) -> Self {
        UserStore::Postgres(PgUsers { pool })
    }
}

macro_rules! dispatch {
    ($self:ident, $op:literal, $s:ident => $call:expr) => {
        match $self {
            UserStore::Postgres($s) => crate::ops::metrics::timed("postgres", $op, $call).await,
            UserStore::Embedded($s) => {
                let $s = &**$s;
                $call.await
            }
        }
    };
}

impl UserStorage for UserStore {
    async fn find_by_phone(&self, phone: &PhoneNumber) -> AppResult<Option<User>> {
        dispatch!(self, "find_by_phone", s => s.find_by_phone(phone))
    }
    async fn find_credentials(&self, phone: &PhoneNumber) -> AppResult<Option<(User, String)>> {
        dispatch!(self, "find_credentials", s => s.find_credentials(phone))
    }
    async fn create(
        &self,
        id: Uuid,
        phone: &PhoneNumber,
        password_hash: &str,
        first_name: Option<&str>,
        last_name: Option<&str>,
    ) -> AppResult<User> {
        dispatch!(self, "create", s => s.create(id, phone, password_hash, first_name, last_name))
    }
    async fn find_by_ids(&self, ids: &[Uuid]) -> AppResult<Vec<User>> {
        dispatch!(self, "find_by_ids", s => s.find_by_ids(ids))
    }
    async fn password_hash(&self, id: Uuid) -> AppResult<Option<String>> {
        dispatch!(self, "password_hash", s => s.password_hash(id))
    }
    async fn set_password_revoking(
        &self,
        id: Uuid,
        password_hash: &str,
        keep: Option<Uuid>,
        reason: &str,
        audit: AuditRow,
    ) -> AppResult<Option<u64>> {
        dispatch!(self, "set_password_revoking", s => s.set_password_revoking(id, password_hash, keep, reason, audit))
    }
    async fn change_phone(
        &self,
        id: Uuid,
        new_phone: &PhoneNumber,
        audit: AuditRow,
    ) -> AppResult<Option<String>> {
        dispatch!(self, "change_phone", s => s.change_phone(id, new_phone, audit))
    }
    async fn delete(&self, id: Uuid, audit: AuditRow) -> AppResult<Option<String>> {
        dispatch!(self, "delete", s => s.delete(id, audit))
    }
}

pub struct PgUsers {
    pool: PgPool,
}

impl UserStorage for PgUsers {
    async fn find_by_phone(&self, phone: &PhoneNumber) -> AppResult<Option<User>> {
        Ok(sqlx::query_as::<_, User>(
            "select id, phone, first_name, last_name, created_at from users where phone = $1",
        )
        .bind(phone.e164())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The user and their password hash, for sign-in.
    async fn find_credentials(&self, phone: &PhoneNumber) -> AppResult<Option<(User, String)>> {
        let row = sqlx::query_as::<_, UserWithHash>(
            "select id, phone, first_name, last_name, created_at, password_hash from users where phone = $1",
        )
        .bind(phone.e164())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.user, r.password_hash)))
    }

    /// Creates the account `id`, or answers PHONE_ALREADY_REGISTERED: the unique constraint decides
    /// races. If the phone's account is this very `id` (a registration retried after its answer was
    /// lost), it is completed with this request's password and names, as the client last asked.
    /// The sign-up event is written by the same statement, only when the row was created.
    async fn create(
        &self,
        id: Uuid,
        phone: &PhoneNumber,
        password_hash: &str,
        first_name: Option<&str>,
        last_name: Option<&str>,
    ) -> AppResult<User> {
        let sql = format!(
            "with u as (insert into users (id, phone, password_hash, first_name, last_name)
                        values ($1, $2, $3, $4, $5)
                        on conflict (phone) do update
                          set password_hash = excluded.password_hash, first_name = excluded.first_name,
                              last_name = excluded.last_name
                          where users.id = excluded.id
                        returning id, phone, first_name, last_name, created_at, (xmax = 0) as inserted),
             {}
             select id, phone, first_name, last_name, created_at from u",
            AuditRow::cte(6, "u where u.inserted", None, None)
        );
        let query = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(phone.e164())
            .bind(password_hash)
            .bind(first_name)
            .bind(last_name);
        let audit = AuditRow::new("signed_up").phone(phone).user(id);
        crate::bind_audit!(query, audit)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(AppError::PhoneAlreadyRegistered)
    }

    /// The users among `ids`, in one statement whatever their number (federation `_entities`: a
    /// gateway sends every `User` reference of a response in one request). Unknown ids are absent.
    async fn find_by_ids(&self, ids: &[Uuid]) -> AppResult<Vec<User>> {
        Ok(sqlx::query_as::<_, User>(
            "select id, phone, first_name, last_name, created_at from users where id = any($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The password hash of a user, for checking the current password before a change.
    async fn password_hash(&self, id: Uuid) -> AppResult<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, String>("select password_hash from users where id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// One transaction: the new hash, the revocations, and the event.
    async fn set_password_revoking(
        &self,
        id: Uuid,
        password_hash: &str,
        keep: Option<Uuid>,
        reason: &str,
        audit: AuditRow,
    ) -> AppResult<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("update users set password_hash = $2, updated_at = now() where id = $1")
            .bind(id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let revoked = sqlx::query(
            "update sessions set revoked_at = now(), revoked_reason = $3
             where user_id = $1 and revoked_at is null and ($2::uuid is null or id <> $2)",
        )
        .bind(id)
        .bind(keep)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let audit = audit.detail(serde_json::json!({ "revokedSessions": revoked }));
        write_in(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// Moves the account to `new_phone`; returns the phone it had. The unique constraint on `phone`
    /// decides a race with a registration or another change to the same number: the loser gets
    /// PHONE_ALREADY_REGISTERED. None when the user no longer exists. The event (`audit`,
    /// phone_changed) is written by the same statement.
    async fn change_phone(
        &self,
        id: Uuid,
        new_phone: &PhoneNumber,
        audit: AuditRow,
    ) -> AppResult<Option<String>> {
        let sql = format!(
            "with c as (update users u set phone = $2, updated_at = now()
                        from (select id, phone from users where id = $1 for update) old
                        where u.id = old.id
                        returning old.phone),
             {}
             select phone from c",
            AuditRow::cte(3, "c", None, None)
        );
        let query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(new_phone.e164());
        let result = crate::bind_audit!(query, audit.user(id))
            .fetch_optional(&self.pool)
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_phone_key") => {
                Err(AppError::PhoneAlreadyRegistered)
            }
            other => Ok(other?),
        }
    }

    /// Deletes the account (its sessions and refresh tokens go by cascade); returns its phone. None
    /// when it was already gone. The event (`audit`, account_deleted) is written by the same
    /// statement (the trail has no foreign key to users: it outlives the account).
    async fn delete(&self, id: Uuid, audit: AuditRow) -> AppResult<Option<String>> {
        let sql = format!(
            "with d as (delete from users where id = $1 returning phone),
             {}
             select phone from d",
            AuditRow::cte(2, "d", None, None)
        );
        let query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(id);
        Ok(crate::bind_audit!(query, audit.user(id))
            .fetch_optional(&self.pool)
            .await?)
    }
}
