//! Resolvers of the rest of an account's life (`services::auth::account`): thin, one service call
//! each, combined with the sign-in resolvers into `Mutation` and `Query` (`MergedObject`).

use async_graphql::{Context, ID, Object, Result, SimpleObject};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{OtpCode, Password, PhoneNumber};
use crate::error::AppError;
use crate::graphql::mutation::{auth, clear_refresh_cookie, client, cookie_mode, detached, signed_in};
use crate::graphql::types::{AuthPayload, GenerateCodePayload, LogoutPayload, User, clamp_i32};
use crate::graphql::{RequestContext, device};
use crate::services::sessions::SessionInfo;

fn bearer(ctx: &Context<'_>) -> Option<String> {
    ctx.data_opt::<RequestContext>().and_then(|r| r.bearer.clone())
}

#[derive(Default)]
pub struct AccountMutation;

#[derive(Default)]
pub struct AccountQuery;

#[derive(SimpleObject)]
pub struct ChangePasswordPayload {
    /// How many of the user's other sessions were revoked (the caller's stays signed in).
    pub revoked_sessions: i32,
}

#[derive(SimpleObject)]
pub struct DeleteAccountPayload {
    /// The id the account had.
    pub deleted_user_id: ID,
}

/// A live session of the signed-in user: a device it is signed in on.
#[derive(SimpleObject)]
pub struct Session {
    /// Pass it to `revokeSession` to sign that device out.
    pub id: ID,
    pub created_at: OffsetDateTime,
    /// The last refresh of its tokens; null if never refreshed.
    pub last_used_at: Option<OffsetDateTime>,
    /// The `User-Agent` it signed in with, cut to 256 characters.
    pub user_agent: Option<String>,
    /// The address it signed in from.
    pub ip: Option<String>,
    /// When it signed in (a refresh does not change it).
    pub auth_time: OffsetDateTime,
    /// How it signed in, as RFC 8176 names methods: `pwd` (password), `sms` (a code by SMS).
    pub auth_methods: Vec<String>,
    /// This is the session of the request's access token.
    pub current: bool,
}

impl Session {
    fn of(info: SessionInfo, current: Uuid) -> Self {
        Session {
            id: ID(info.id.to_string()),
            created_at: info.created_at,
            last_used_at: info.last_used_at,
            user_agent: info.user_agent,
            ip: info.ip,
            auth_time: info.auth_time,
            auth_methods: info.amr,
            current: info.id == current,
        }
    }
}

#[Object]
impl AccountQuery {
    /// The signed-in user's live sessions, newest first. Errors: UNAUTHENTICATED.
    async fn my_sessions(&self, ctx: &Context<'_>) -> Result<Vec<Session>> {
        let mine = auth(ctx).my_sessions(bearer(ctx).as_deref()).await?;
        Ok(mine
            .sessions
            .into_iter()
            .map(|s| Session::of(s, mine.current))
            .collect())
    }
}

#[Object]
impl AccountMutation {
    /// Changes the password (`Authorization: Bearer`). The current password is checked like a
    /// `login` (three wrong ones lock password sign-in for the phone); the new one follows the rules
    /// of `register`. Every other session of the user is revoked, and the phone's pending code and
    /// registration tokens end. Errors: UNAUTHENTICATED, BAD_USER_INPUT (newPassword: TOO_SHORT,
    /// TOO_LONG, TOO_COMMON), INVALID_CREDENTIALS (wrong current password), ACCOUNT_LOCKED,
    /// RATE_LIMITED, SERVICE_UNAVAILABLE.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> Result<ChangePasswordPayload> {
        let current = Password::for_login(&current_password).map_err(|e| renamed(e, "currentPassword"))?;
        let new = Password::parse(&new_password).map_err(|e| renamed(e, "newPassword"))?;
        let (bearer, client) = (bearer(ctx), client(ctx));
        let changed = detached(ctx, |auth| async move {
            auth.change_password(bearer.as_deref(), &current, &new, &client)
                .await
        })
        .await?;
        Ok(ChangePasswordPayload {
            revoked_sessions: clamp_i32(changed.revoked_sessions),
        })
    }

    /// Forgotten password: sets a new password with the code `generateCode` sent to the phone. Lifts
    /// the password lock, revokes every session of the account, and signs it in. Errors:
    /// BAD_USER_INPUT, INVALID_CODE, TOO_MANY_ATTEMPTS, RATE_LIMITED (as `verifyUser`, whether or not
    /// the phone has an account), INVALID_CREDENTIALS (the code was right but the phone has no
    /// account), SERVICE_UNAVAILABLE.
    async fn reset_password(
        &self,
        ctx: &Context<'_>,
        phone: String,
        code: String,
        new_password: String,
    ) -> Result<AuthPayload> {
        let phone = PhoneNumber::parse(&phone, auth(ctx).phone_policy())?;
        let code = OtpCode::parse(&code)?;
        let new = Password::parse(&new_password).map_err(|e| renamed(e, "newPassword"))?;
        let (client, device) = (client(ctx), device(ctx));
        let s = detached(ctx, |auth| async move {
            auth.reset_password(&phone, &code, &new, &client, &device).await
        })
        .await?;
        // A sign-in like the others: in cookie mode the refresh token goes into the cookie.
        Ok(signed_in(ctx, s))
    }

    /// Sends a code to the number the signed-in user wants to move to (every budget of
    /// `generateCode` applies to it). Needs a recent sign-in. Errors: UNAUTHENTICATED,
    /// REAUTHENTICATION_REQUIRED, BAD_USER_INPUT (newPhone: as `generateCode`, or SAME_PHONE),
    /// RATE_LIMITED, SERVICE_UNAVAILABLE.
    async fn request_phone_change(
        &self,
        ctx: &Context<'_>,
        new_phone: String,
    ) -> Result<GenerateCodePayload> {
        let phone =
            PhoneNumber::parse(&new_phone, auth(ctx).phone_policy()).map_err(|e| renamed(e, "newPhone"))?;
        let (bearer, client) = (bearer(ctx), client(ctx));
        let e164 = phone.e164().to_owned();
        // Detached: the code and the pending change are written in two steps.
        let sent = detached(ctx, |auth| async move {
            auth.request_phone_change(bearer.as_deref(), &phone, &client)
                .await
        })
        .await?;
        Ok(GenerateCodePayload {
            phone: e164,
            expires_in_seconds: clamp_i32(sent.expires_in_seconds),
            resend_in_seconds: clamp_i32(sent.resend_in_seconds),
        })
    }

    /// Moves the signed-in user to `newPhone` with the code `requestPhoneChange` sent there. Sessions
    /// stay; the old number gets an SMS saying the number changed. Needs a recent sign-in. Errors:
    /// UNAUTHENTICATED, REAUTHENTICATION_REQUIRED, BAD_USER_INPUT, INVALID_CODE (also: no change to
    /// this number pending for this user), TOO_MANY_ATTEMPTS, RATE_LIMITED, PHONE_ALREADY_REGISTERED
    /// (only once the code is right).
    async fn confirm_phone_change(&self, ctx: &Context<'_>, new_phone: String, code: String) -> Result<User> {
        let phone =
            PhoneNumber::parse(&new_phone, auth(ctx).phone_policy()).map_err(|e| renamed(e, "newPhone"))?;
        let code = OtpCode::parse(&code)?;
        let (bearer, client) = (bearer(ctx), client(ctx));
        let user = detached(ctx, |auth| async move {
            auth.confirm_phone_change(bearer.as_deref(), &phone, &code, &client)
                .await
        })
        .await?;
        Ok(User::of_viewer(user))
    }

    /// Signs out one of the signed-in user's sessions (see `mySessions`). Errors: UNAUTHENTICATED,
    /// NOT_FOUND (not a live session of this user: another user's session is answered the same).
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> Result<LogoutPayload> {
        let bearer = bearer(ctx);
        // A malformed id is a session that does not exist: the same answer.
        let parsed = Uuid::parse_str(&id);
        detached(ctx, |auth| async move {
            let id = parsed.map_err(|_| AppError::NotFound)?;
            auth.revoke_session(bearer.as_deref(), id).await
        })
        .await?;
        Ok(LogoutPayload { revoked_sessions: 1 })
    }

    /// Deletes the signed-in user's account, its sessions and the phone's pending codes, lock and
    /// registration tokens; the phone can sign up again. Needs a recent sign-in. Errors:
    /// UNAUTHENTICATED, REAUTHENTICATION_REQUIRED.
    async fn delete_account(&self, ctx: &Context<'_>) -> Result<DeleteAccountPayload> {
        let bearer = bearer(ctx);
        let id = detached(
            ctx,
            |auth| async move { auth.delete_account(bearer.as_deref()).await },
        )
        .await?;
        if cookie_mode(ctx) {
            // The account's sessions are gone: so is its refresh cookie.
            clear_refresh_cookie(ctx);
        }
        Ok(DeleteAccountPayload {
            deleted_user_id: ID(id.to_string()),
        })
    }
}

/// The domain parsers name the argument `password` / `phone`; here it is another argument.
fn renamed(e: AppError, field: &'static str) -> AppError {
    match e {
        AppError::BadInput { reason, message, .. } => AppError::BadInput {
            field,
            reason,
            message,
        },
        other => other,
    }
}
