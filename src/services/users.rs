//! The user store, in PostgreSQL. Owns table `users` (see migrations/).

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};

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

pub struct UserStore {
    pool: PgPool,
}

impl UserStore {
    pub fn new(pool: PgPool) -> Self {
        UserStore { pool }
    }

    pub async fn find_by_phone(&self, phone: &PhoneNumber) -> AppResult<Option<User>> {
        Ok(sqlx::query_as::<_, User>(
            "select id, phone, first_name, last_name, created_at from users where phone = $1",
        )
        .bind(phone.e164())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The user and their password hash, for sign-in.
    pub async fn find_credentials(&self, phone: &PhoneNumber) -> AppResult<Option<(User, String)>> {
        let row = sqlx::query_as::<_, UserWithHash>(
            "select id, phone, first_name, last_name, created_at, password_hash from users where phone = $1",
        )
        .bind(phone.e164())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.user, r.password_hash)))
    }

    /// Creates the account, or answers PHONE_ALREADY_REGISTERED: the unique constraint decides races.
    pub async fn create(
        &self,
        phone: &PhoneNumber,
        password_hash: &str,
        first_name: Option<&str>,
        last_name: Option<&str>,
    ) -> AppResult<User> {
        sqlx::query_as::<_, User>(
            "insert into users (id, phone, password_hash, first_name, last_name) values ($1, $2, $3, $4, $5)
             on conflict (phone) do nothing
             returning id, phone, first_name, last_name, created_at",
        )
        .bind(Uuid::new_v4())
        .bind(phone.e164())
        .bind(password_hash)
        .bind(first_name)
        .bind(last_name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(AppError::PhoneAlreadyRegistered)
    }

    pub async fn find_by_id(&self, id: Uuid) -> AppResult<Option<User>> {
        Ok(sqlx::query_as::<_, User>(
            "select id, phone, first_name, last_name, created_at from users where id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The password hash of a user, for checking the current password before a change.
    pub async fn password_hash(&self, id: Uuid) -> AppResult<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, String>("select password_hash from users where id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Replaces the password hash, inside the caller's transaction (sessions are revoked in the same
    /// one). False when the user no longer exists.
    pub async fn set_password(conn: &mut PgConnection, id: Uuid, password_hash: &str) -> AppResult<bool> {
        let done = sqlx::query("update users set password_hash = $2, updated_at = now() where id = $1")
            .bind(id)
            .bind(password_hash)
            .execute(conn)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves the account to `new_phone`; returns the phone it had. The unique constraint on `phone`
    /// decides a race with a registration or another change to the same number: the loser gets
    /// PHONE_ALREADY_REGISTERED. None when the user no longer exists.
    pub async fn change_phone(&self, id: Uuid, new_phone: &PhoneNumber) -> AppResult<Option<String>> {
        let result = sqlx::query_scalar::<_, String>(
            "update users u set phone = $2, updated_at = now()
             from (select id, phone from users where id = $1 for update) old
             where u.id = old.id
             returning old.phone",
        )
        .bind(id)
        .bind(new_phone.e164())
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
    /// when it was already gone.
    pub async fn delete(&self, id: Uuid) -> AppResult<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, String>("delete from users where id = $1 returning phone")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}
