use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use time::OffsetDateTime;

use crate::graphql::viewer;
use crate::services::auth::SignedIn;
use crate::services::users;

/// A registered user. A federation entity (`@key(fields: "id")`): other subgraphs may extend it and
/// the gateway may resolve it by id for anyone; its `phone` is shown to that user only.
pub struct User {
    inner: users::User,
    /// The caller has just proven to be this user (sign-in, registration, `me`).
    is_viewer: bool,
}

impl User {
    /// A user the caller has proven to be.
    pub fn of_viewer(inner: users::User) -> Self {
        User {
            inner,
            is_viewer: true,
        }
    }

    /// A user looked up for someone else (federation `_entities`).
    pub fn of_other(inner: users::User) -> Self {
        User {
            inner,
            is_viewer: false,
        }
    }
}

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.inner.id.to_string())
    }

    /// The phone number in E.164 form (`+16502530000`), shown to this user only: null for anyone else
    /// (no error: privacy is the expected answer, and through a gateway an error here would null the
    /// whole response). The bearer token's session is checked once per request, however many users
    /// the response holds.
    async fn phone(&self, ctx: &Context<'_>) -> Result<Option<&str>> {
        let shown = self.is_viewer
            || viewer(ctx)
                .await?
                .is_some_and(|(user, _)| user.id == self.inner.id);
        Ok(shown.then_some(self.inner.phone.as_str()))
    }

    async fn first_name(&self) -> Option<&str> {
        self.inner.first_name.as_deref()
    }

    async fn last_name(&self) -> Option<&str> {
        self.inner.last_name.as_deref()
    }

    async fn created_at(&self) -> OffsetDateTime {
        self.inner.created_at
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
    /// Opaque, single use: exchange it with `refreshToken` for a new pair. Keep it secret. Null when
    /// the server runs in cookie mode and the request came from a browser: the token is then in the
    /// HttpOnly `__Host-refresh` cookie, out of reach of script.
    pub refresh_token: Option<String>,
}

impl From<SignedIn> for AuthPayload {
    fn from(s: SignedIn) -> Self {
        AuthPayload {
            user: User::of_viewer(s.user),
            access_token: s.access_token,
            token_type: "Bearer".into(),
            expires_in_seconds: clamp_i32(s.expires_in_seconds),
            refresh_token: Some(s.refresh_token),
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
