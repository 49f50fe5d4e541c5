//! The user store, in PostgreSQL. Owns table `users` (see migrations/).

use sqlx::PgPool;
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

    /// The users among `ids`, in one statement whatever their number (federation `_entities`: a
    /// gateway sends every `User` reference of a response in one request). Unknown ids are absent.
    pub async fn find_by_ids(&self, ids: &[Uuid]) -> AppResult<Vec<User>> {
        Ok(sqlx::query_as::<_, User>(
            "select id, phone, first_name, last_name, created_at from users where id = any($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }
}
