//! The user store, in PostgreSQL. Owns table `users` (see migrations/).

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::services::audit::AuditRow;

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

    /// Creates the account `id`, or answers PHONE_ALREADY_REGISTERED: the unique constraint decides
    /// races. If the phone's account is this very `id` (a registration retried after its answer was
    /// lost), it is completed with this request's password and names, as the client last asked.
    /// The sign-up event is written by the same statement, only when the row was created.
    pub async fn create(
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
    pub async fn find_by_ids(&self, ids: &[Uuid]) -> AppResult<Vec<User>> {
        Ok(sqlx::query_as::<_, User>(
            "select id, phone, first_name, last_name, created_at from users where id = any($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }
}
