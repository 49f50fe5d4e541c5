use async_graphql::{ID, InputObject, SimpleObject};
use time::OffsetDateTime;

use crate::services::auth::SignedIn;
use crate::services::users;

/// A registered user.
#[derive(SimpleObject)]
pub struct User {
    pub id: ID,
    /// The phone number in E.164 form (`+16502530000`).
    pub phone: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub created_at: OffsetDateTime,
}

impl From<users::User> for User {
    fn from(u: users::User) -> Self {
        User {
            id: ID(u.id.to_string()),
            phone: u.phone,
            first_name: u.first_name,
            last_name: u.last_name,
            created_at: u.created_at,
        }
    }
}

/// A code was sent. The answer is the same whether or not the phone has an account.
#[derive(SimpleObject)]
pub struct GenerateCodePayload {
    /// The phone the code was sent to, in E.164 form.
    pub phone: String,
    /// Seconds the code stays valid.
    pub expires_in_seconds: i32,
    /// Seconds before another code may be requested for this phone.
    pub resend_in_seconds: i32,
}

#[derive(SimpleObject)]
pub struct VerifyUserPayload {
    /// The verified phone, in E.164 form.
    pub phone: String,
    /// True: the phone has an account and the user is now signed in (`auth` is set).
    pub registered: bool,
    /// Set for a registered phone: sign-in by code.
    pub auth: Option<AuthPayload>,
    /// Set for a new phone: pass it to `register`. Single use, bound to this phone.
    pub registration_token: Option<String>,
    pub registration_token_expires_in_seconds: Option<i32>,
}

/// A signed-in session.
#[derive(SimpleObject)]
pub struct AuthPayload {
    pub user: User,
    /// A JWT (EdDSA). Send it as `Authorization: Bearer <accessToken>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token stays valid.
    pub expires_in_seconds: i32,
    /// Opaque, single use: exchange it with `refreshToken` for a new pair. Keep it secret.
    pub refresh_token: String,
}

impl From<SignedIn> for AuthPayload {
    fn from(s: SignedIn) -> Self {
        AuthPayload {
            user: s.user.into(),
            access_token: s.access_token,
            token_type: "Bearer".into(),
            expires_in_seconds: clamp_i32(s.expires_in_seconds),
            refresh_token: s.refresh_token,
        }
    }
}

#[derive(SimpleObject)]
pub struct LogoutPayload {
    /// How many sessions were revoked (0 if this one was already revoked by a racing logout).
    pub revoked_sessions: i32,
}

#[derive(InputObject)]
pub struct RegisterInput {
    /// The token `verifyUser` returned for this phone.
    pub registration_token: String,
    /// 8 to 128 characters; common passwords are refused.
    pub password: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

pub fn clamp_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
