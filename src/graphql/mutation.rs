use std::future::Future;
use std::sync::Arc;

use async_graphql::{Context, Object, Result};
use axum::http::header::SET_COOKIE;

use crate::domain::{OtpCode, Password, PersonName, PhoneNumber};
use crate::error::AppError;
use crate::graphql::types::{
    AuthPayload, GenerateCodePayload, LogoutPayload, RegisterInput, VerifyUserPayload, clamp_i32,
};
use crate::graphql::{REFRESH_COOKIE, RequestContext, device};
use crate::services::auth::{AuthService, SignedIn, Verified};

#[derive(Default)]
pub struct AuthMutation;

pub(super) fn auth<'a>(ctx: &Context<'a>) -> &'a Arc<AuthService> {
    ctx.data_unchecked::<Arc<AuthService>>()
}

/// The caller's budget key for per-IP limits.
pub(super) fn client(ctx: &Context<'_>) -> String {
    ctx.data_opt::<RequestContext>()
        .map_or_else(|| "unknown".to_owned(), |r| r.client.clone())
}

/// The `__Host-refresh` cookie: HttpOnly (no script reads it), Secure and the `__Host-` prefix (only
/// over HTTPS, or http://localhost, which browsers treat as secure; never for a subdomain),
/// SameSite=Strict (never sent on a cross-site request), and it lives as long as the session.
fn refresh_cookie(value: &str, max_age_seconds: u64) -> String {
    format!("{REFRESH_COOKIE}={value}; Max-Age={max_age_seconds}; Path=/; HttpOnly; Secure; SameSite=Strict")
}

pub(super) fn cookie_mode(ctx: &Context<'_>) -> bool {
    ctx.data_opt::<RequestContext>()
        .is_some_and(|r| r.refresh_cookie_mode)
}

pub(super) fn clear_refresh_cookie(ctx: &Context<'_>) {
    ctx.append_http_header(SET_COOKIE, refresh_cookie("", 0));
}

/// The answer of a sign-in. Cookie mode: the refresh token also goes into the cookie, and a browser
/// (a request with `Origin`) gets it only there, so script never holds it.
pub(super) fn signed_in(ctx: &Context<'_>, s: SignedIn) -> AuthPayload {
    if !cookie_mode(ctx) {
        return s.into();
    }
    ctx.append_http_header(
        SET_COOKIE,
        refresh_cookie(&s.refresh_token, s.session_expires_in_seconds),
    );
    let from_browser = ctx.data_opt::<RequestContext>().is_some_and(|r| r.from_browser);
    let mut payload = AuthPayload::from(s);
    if from_browser {
        payload.refresh_token = None;
    }
    payload
}

/// Runs `flow` to its end even if the client goes (`AuthService::detached`).
pub(super) async fn detached<T, F>(ctx: &Context<'_>, flow: impl FnOnce(Arc<AuthService>) -> F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, AppError>> + Send + 'static,
{
    Ok(auth(ctx).detached(flow).await?)
}

/// Sign-up and sign-in by phone (error codes: see `Mutation`).
#[Object]
impl AuthMutation {
    /// Sends a 6-digit code by SMS to `phone` (E.164, or national form when the server has a default
    /// region). The answer is the same whether or not the phone has an account. Errors: BAD_USER_INPUT,
    /// RATE_LIMITED (one code per 60 s, 5 per hour per phone).
    async fn generate_code(&self, ctx: &Context<'_>, phone: String) -> Result<GenerateCodePayload> {
        let phone = PhoneNumber::parse(&phone, auth(ctx).phone_policy())?;
        // Not detached: storing the code and queueing its SMS is one Lua script, so a request dropped
        // at any point leaves either both or neither (and a task spawn per request is ~10% of the
        // CPU of this, the most frequent mutation).
        let sent = auth(ctx).generate_code(&phone, &client(ctx)).await?;
        Ok(GenerateCodePayload {
            phone: phone.e164().to_owned(),
            expires_in_seconds: clamp_i32(sent.expires_in_seconds),
            resend_in_seconds: clamp_i32(sent.resend_in_seconds),
        })
    }

    /// Checks the code sent to `phone` and uses it up. A registered phone is signed in; a new phone gets
    /// a registration token. Errors: BAD_USER_INPUT, INVALID_CODE (wrong, expired, used or none
    /// pending), TOO_MANY_ATTEMPTS (the 5th wrong try burns the code), RATE_LIMITED (10 failed checks per
    /// hour per phone).
    async fn verify_user(&self, ctx: &Context<'_>, phone: String, code: String) -> Result<VerifyUserPayload> {
        let phone = PhoneNumber::parse(&phone, auth(ctx).phone_policy())?;
        let code = OtpCode::parse(&code)?;
        let e164 = phone.e164().to_owned();
        let client = client(ctx);
        let device = device(ctx);
        let verified = detached(ctx, |auth| async move {
            auth.verify_user(&phone, &code, &client, &device).await
        })
        .await?;
        Ok(match verified {
            Verified::SignedIn(s) => VerifyUserPayload {
                phone: e164,
                registered: true,
                auth: Some(signed_in(ctx, s)),
                registration_token: None,
                registration_token_expires_in_seconds: None,
            },
            Verified::NewPhone {
                registration_token,
                expires_in_seconds,
            } => VerifyUserPayload {
                phone: e164,
                registered: false,
                auth: None,
                registration_token: Some(registration_token),
                registration_token_expires_in_seconds: Some(clamp_i32(expires_in_seconds)),
            },
        })
    }

    /// Creates the account of a verified phone and signs it in. Errors: BAD_USER_INPUT (password:
    /// TOO_SHORT, TOO_LONG, TOO_COMMON; names: TOO_LONG, INVALID_CHARACTERS), INVALID_TOKEN,
    /// PHONE_ALREADY_REGISTERED, SERVICE_UNAVAILABLE.
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> Result<AuthPayload> {
        let password = Password::parse(&input.password)?;
        let first_name = PersonName::parse_optional("firstName", input.first_name.as_deref())?;
        let last_name = PersonName::parse_optional("lastName", input.last_name.as_deref())?;
        let token = input.registration_token;
        let device = device(ctx);
        let s = detached(ctx, |auth| async move {
            auth.register(
                &token,
                &password,
                first_name.as_ref(),
                last_name.as_ref(),
                &device,
            )
            .await
        })
        .await?;
        Ok(signed_in(ctx, s))
    }

    /// Signs in with phone and password. Errors: BAD_USER_INPUT, INVALID_CREDENTIALS (unknown phone or
    /// wrong password: one answer), ACCOUNT_LOCKED (3 wrong passwords lock password sign-in for an hour;
    /// a sign-in by code lifts it), SERVICE_UNAVAILABLE.
    async fn login(&self, ctx: &Context<'_>, phone: String, password: String) -> Result<AuthPayload> {
        let phone = PhoneNumber::parse(&phone, auth(ctx).phone_policy())?;
        let password = Password::for_login(&password)?;
        let client = client(ctx);
        let device = device(ctx);
        let s = detached(ctx, |auth| async move {
            auth.login(&phone, &password, &client, &device).await
        })
        .await?;
        Ok(signed_in(ctx, s))
    }

    /// Exchanges a refresh token for a new access token and refresh token (the old one is used up;
    /// using it again revokes the session). Without the argument, the `__Host-refresh` cookie is used
    /// (cookie mode). Errors: INVALID_TOKEN (also with neither; a bad cookie is cleared).
    async fn refresh_token(&self, ctx: &Context<'_>, refresh_token: Option<String>) -> Result<AuthPayload> {
        let (token, from_cookie) = match refresh_token {
            Some(token) => (token, false),
            None => {
                let cookie = ctx
                    .data_opt::<RequestContext>()
                    .and_then(|r| r.refresh_cookie.clone());
                (cookie.ok_or(AppError::InvalidToken)?, true)
            }
        };
        match detached(ctx, |auth| async move { auth.refresh(&token).await }).await {
            Ok(s) => Ok(signed_in(ctx, s)),
            Err(e) => {
                if from_cookie {
                    clear_refresh_cookie(ctx);
                }
                Err(e)
            }
        }
    }

    /// Revokes the current session, or every session of the user with `allSessions: true`. Takes effect
    /// at once. Errors: UNAUTHENTICATED.
    async fn logout(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = false)] all_sessions: bool,
    ) -> Result<LogoutPayload> {
        let bearer = ctx.data_opt::<RequestContext>().and_then(|r| r.bearer.clone());
        if cookie_mode(ctx) {
            // Signing out leaves no refresh cookie behind, whatever the outcome.
            clear_refresh_cookie(ctx);
        }
        let revoked = detached(ctx, |auth| async move {
            auth.logout(bearer.as_deref(), all_sessions).await
        })
        .await?;
        Ok(LogoutPayload {
            revoked_sessions: clamp_i32(revoked),
        })
    }
}
