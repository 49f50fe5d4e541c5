//! The sign-up and sign-in flows, composed from the single-concern services. Owns no state of its own.
//! Callers (resolvers, the HTTP edge, tests) go through its methods, never round them to a store.
//! The flows after sign-up (password change and reset, phone change, devices, deletion) are in
//! `account`.

mod account;

pub use account::{MySessions, PasswordChanged};

use std::future::Future;
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{OtpCode, Password, PersonName, PhoneNumber, PhonePolicy};
use crate::error::{AppError, AppResult};
use crate::services::lockout::LockoutService;
use crate::services::otp::OtpService;
use crate::services::outbox::Appender;
use crate::services::password::PasswordHasher;
use crate::services::phone_change::PhoneChanges;
use crate::services::registration::RegistrationTokens;
use crate::services::sessions::{Amr, Device, NewSession, SessionAuth, SessionStore};
use crate::services::tokens::TokenService;
use crate::services::users::{User, UserStore};

pub struct AuthService {
    phone_policy: PhonePolicy,
    otp: OtpService,
    lockout: LockoutService,
    users: UserStore,
    sessions: SessionStore,
    tokens: TokenService,
    registration: RegistrationTokens,
    hasher: PasswordHasher,
    phone_changes: PhoneChanges,
    /// Where notices (the old number's "your phone was changed") are queued.
    notices: Appender,
    /// How recent a sign-in must be for a sensitive change (`REAUTH_SECONDS`).
    reauth_seconds: u64,
    /// The stores themselves: readiness, and the transactions of `account` that span two stores.
    pg: PgPool,
    redis: ConnectionManager,
}

/// The services a flow is composed from (what `AuthService::new` takes).
pub struct Parts {
    pub phone_policy: PhonePolicy,
    pub otp: OtpService,
    pub lockout: LockoutService,
    pub users: UserStore,
    pub sessions: SessionStore,
    pub tokens: TokenService,
    pub registration: RegistrationTokens,
    pub hasher: PasswordHasher,
    pub phone_changes: PhoneChanges,
    pub notices: Appender,
    pub reauth_seconds: u64,
    pub pg: PgPool,
    pub redis: ConnectionManager,
}

/// Which store answers (`/readyz`).
pub struct Readiness {
    pub postgres: bool,
    pub redis: bool,
}

pub struct CodeSent {
    pub expires_in_seconds: u64,
    pub resend_in_seconds: u64,
}

pub struct SignedIn {
    pub user: User,
    pub access_token: String,
    pub expires_in_seconds: u64,
    pub refresh_token: String,
}

pub enum Verified {
    /// The phone has an account: signed in by code.
    SignedIn(SignedIn),
    /// A new phone: this token lets its holder register it.
    NewPhone {
        registration_token: String,
        expires_in_seconds: u64,
    },
}

impl AuthService {
    pub fn new(p: Parts) -> Self {
        AuthService {
            phone_policy: p.phone_policy,
            otp: p.otp,
            lockout: p.lockout,
            users: p.users,
            sessions: p.sessions,
            tokens: p.tokens,
            registration: p.registration,
            hasher: p.hasher,
            phone_changes: p.phone_changes,
            notices: p.notices,
            reauth_seconds: p.reauth_seconds,
            pg: p.pg,
            redis: p.redis,
        }
    }

    pub fn phone_policy(&self) -> &PhonePolicy {
        &self.phone_policy
    }

    /// The password hasher (its counters: tests and benchmarks read them).
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    pub fn jwks(&self) -> &JwkSet {
        self.tokens.jwks()
    }

    pub fn issuer(&self) -> &str {
        self.tokens.issuer()
    }

    /// Runs a flow to its end even if the client disconnects or the request times out. A dropped
    /// future could otherwise stop between two steps: a reserved password attempt never released or
    /// counted, a code or registration token used up with nothing to show for it. (`generate_code`
    /// needs none of this: storing its code and queueing its SMS is one atomic script.)
    pub async fn detached<T, F>(self: &Arc<Self>, flow: impl FnOnce(Arc<AuthService>) -> F) -> AppResult<T>
    where
        T: Send + 'static,
        F: Future<Output = AppResult<T>> + Send + 'static,
    {
        // Boxed before it is spawned: the flow futures are several KiB, and moving them by value into
        // the task cost ~10% of a wrong `verifyUser` (callgrind, docs/BENCHMARKS.md).
        tokio::spawn(Box::pin(flow(self.clone())))
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("flow task: {e}")))?
    }

    /// Whether PostgreSQL and Redis answer within 2 s each.
    pub async fn readiness(&self) -> Readiness {
        let timeout = std::time::Duration::from_secs(2);
        let pg = sqlx::query("select 1").execute(&self.pg);
        let mut redis = self.redis.clone();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut redis);
        let (pg, redis) = tokio::join!(
            tokio::time::timeout(timeout, pg),
            tokio::time::timeout(timeout, ping)
        );
        Readiness {
            postgres: matches!(pg, Ok(Ok(_))),
            redis: matches!(redis, Ok(Ok(_))),
        }
    }

    /// A user by id, for anyone who has the id (federation `_entities`): no phone check here, the
    /// output type decides what a stranger sees.
    pub async fn user_by_id(&self, id: Uuid) -> AppResult<Option<User>> {
        self.users.find_by_id(id).await
    }

    /// Deletes ended sessions (the hourly purge). Returns how many.
    pub async fn purge_expired_sessions(&self) -> AppResult<u64> {
        self.sessions.purge_expired().await
    }

    async fn sign_in(&self, user: User, method: Amr, device: &Device) -> AppResult<SignedIn> {
        // Boxed: the session insert's future is ~8.8 KB (sqlx), and unboxed it made every flow that
        // can sign in that large, copied whole on each move, even on paths that never sign in (a wrong
        // code: 16% of its instructions were memcpy, callgrind).
        let session = Box::pin(self.sessions.create(user.id, SessionAuth::now(method), device)).await?;
        self.signed_in(user, session)
    }

    fn signed_in(&self, user: User, session: NewSession) -> AppResult<SignedIn> {
        let access_token = self
            .tokens
            .issue_for(user.id, session.session_id, &session.auth)?;
        Ok(SignedIn {
            user,
            access_token,
            expires_in_seconds: self.tokens.ttl_seconds(),
            refresh_token: session.refresh_token,
        })
    }

    /// Sends a code (queues its SMS). Answers the same whether or not the phone has an account.
    /// `client` is the caller's budget key (see `client_ip::budget_key`).
    #[tracing::instrument(skip(self))]
    pub async fn generate_code(&self, phone: &PhoneNumber, client: &str) -> AppResult<CodeSent> {
        // Storing the code also queues its SMS (the outbox); workers deliver it.
        let issued = self.otp.issue(phone, client).await?;
        Ok(CodeSent {
            expires_in_seconds: issued.expires_in_seconds,
            resend_in_seconds: issued.resend_in_seconds,
        })
    }

    #[tracing::instrument(skip(self, code))]
    pub async fn verify_user(
        &self,
        phone: &PhoneNumber,
        code: &OtpCode,
        client: &str,
        device: &Device,
    ) -> AppResult<Verified> {
        self.otp.consume(phone, code, client).await?;
        match self.users.find_by_phone(phone).await? {
            Some(user) => {
                // Proving the phone is a stronger proof than the password: it lifts a password lock.
                self.lockout.clear(phone).await?;
                Ok(Verified::SignedIn(self.sign_in(user, Amr::Sms, device).await?))
            }
            None => Ok(Verified::NewPhone {
                registration_token: self.registration.create(phone).await?,
                expires_in_seconds: self.registration.ttl_seconds(),
            }),
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        registration_token: &str,
        password: &Password,
        first_name: Option<&PersonName>,
        last_name: Option<&PersonName>,
        device: &Device,
    ) -> AppResult<SignedIn> {
        // Check the token before the expensive hash, but use it up only after the hash succeeded, so
        // that a full hashing queue does not cost the user their token. A queue that cannot take the
        // hash refuses before the token is even presented (presentations are counted).
        self.hasher.check_capacity()?;
        self.registration.present(registration_token).await?;
        let hash = self.hasher.hash(password).await?;
        let phone = self.registration.consume(registration_token).await?;
        let user = self
            .users
            .create(
                &phone,
                &hash,
                first_name.map(PersonName::as_str),
                last_name.map(PersonName::as_str),
            )
            .await?;
        self.lockout.clear(&phone).await?;
        // The phone was proven by its code moments ago (the token lives 600 s); the password is new,
        // not proven.
        self.sign_in(user, Amr::Sms, device).await
    }

    /// Password sign-in. Unknown phone and wrong password are the same answer, the same work (a hash
    /// against a dummy) and the same count towards the lock.
    #[tracing::instrument(skip(self, password))]
    pub async fn login(
        &self,
        phone: &PhoneNumber,
        password: &Password,
        client: &str,
        device: &Device,
    ) -> AppResult<SignedIn> {
        // Refused first, before any Redis or PostgreSQL work, when the hash could not start in time:
        // under a login flood the refusals stay cheap.
        self.hasher.check_capacity()?;
        let reservation = self.lockout.reserve(phone, client).await?;
        let outcome = async {
            let found = self.users.find_credentials(phone).await?;
            let ok = self
                .hasher
                .verify(password, found.as_ref().map(|(_, h)| h.as_str()))
                .await?;
            AppResult::Ok(found.filter(|_| ok).map(|(user, _)| user))
        }
        .await;
        match outcome {
            Ok(Some(user)) => {
                self.lockout.clear(phone).await?;
                self.sign_in(user, Amr::Pwd, device).await
            }
            Ok(None) => {
                if self.lockout.record_failure(phone, reservation).await? {
                    Err(AppError::AccountLocked {
                        retry_after_seconds: self.lockout.lock_seconds(),
                    })
                } else {
                    Err(AppError::InvalidCredentials)
                }
            }
            Err(e) => {
                // The attempt never got an answer (queue full, store down): it must not count.
                let _ = self.lockout.release(phone, reservation).await;
                Err(e)
            }
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> AppResult<SignedIn> {
        let (user, session) = Box::pin(self.sessions.rotate(refresh_token)).await?;
        self.signed_in(user, session)
    }

    /// The user behind a bearer token whose session is live; None otherwise.
    pub async fn current_user(&self, bearer: Option<&str>) -> AppResult<Option<(User, Uuid)>> {
        let Some(token) = bearer else { return Ok(None) };
        let Ok(verified) = self.tokens.verify(token) else {
            return Ok(None);
        };
        Ok(self
            .sessions
            .live_user(verified.session_id, verified.user_id)
            .await?
            .map(|u| (u, verified.session_id)))
    }

    #[tracing::instrument(skip_all)]
    pub async fn logout(&self, bearer: Option<&str>, all_sessions: bool) -> AppResult<u64> {
        let (user, session_id) = self
            .current_user(bearer)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        self.sessions.revoke(session_id, user.id, all_sessions).await
    }
}
