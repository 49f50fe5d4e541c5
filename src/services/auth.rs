//! The sign-up and sign-in flows, composed from the single-concern services. Owns no state of its own.
//! Callers (resolvers, the HTTP edge, tests) go through its methods, never round them to a store.
//! The flows after sign-up (password change and reset, phone change, devices, deletion) are in
//! `account`.

mod account;

pub use account::{MySessions, PasswordChanged};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Notify;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::{OtpCode, Password, PersonName, PhoneNumber, PhonePolicy};
use crate::error::{AppError, AppResult};
use crate::services::Backend;
use crate::services::audit::{AuditLog, AuditRow, CALLER, Caller};
use crate::services::lockout::LockoutService;
use crate::services::otp::OtpService;
use crate::services::outbox::Appender;
use crate::services::password::PasswordHasher;
use crate::services::phone_change::PhoneChanges;
use crate::services::registration::RegistrationTokens;
use crate::services::sessions::{Amr, Device, NewSession, SessionAuth, SessionStore};
use crate::services::tokens::TokenService;
use crate::services::users::{User, UserStorage as _, UserStore};

pub struct AuthService {
    phone_policy: PhonePolicy,
    otp: OtpService,
    lockout: LockoutService,
    users: UserStore,
    sessions: SessionStore,
    tokens: TokenService,
    registration: RegistrationTokens,
    hasher: PasswordHasher,
    audit: AuditLog,
    phone_changes: PhoneChanges,
    /// Where notices (the old number's "your phone was changed") are queued.
    notices: Appender,
    /// How recent a sign-in must be for a sensitive change (`REAUTH_SECONDS`).
    reauth_seconds: u64,
    /// The stores themselves, for readiness.
    backend: Backend,
    /// Detached flows still running: shutdown waits for them (`wait_detached`).
    flows: Arc<FlowCount>,
}

/// How many detached flows run, and a wake-up for whoever waits for none.
#[derive(Default)]
struct FlowCount {
    running: AtomicUsize,
    idle: Notify,
}

/// Held by a detached flow's task: dropped when the flow ends, however it ends.
struct FlowGuard(Arc<FlowCount>);

impl FlowGuard {
    fn new(count: &Arc<FlowCount>) -> Self {
        count.running.fetch_add(1, Ordering::SeqCst);
        FlowGuard(count.clone())
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
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
    pub audit: AuditLog,
    pub phone_changes: PhoneChanges,
    pub notices: Appender,
    pub reauth_seconds: u64,
    pub backend: Backend,
}

pub use crate::services::Readiness;

pub struct CodeSent {
    pub expires_in_seconds: u64,
    pub resend_in_seconds: u64,
}

pub struct SignedIn {
    pub user: User,
    pub access_token: String,
    pub expires_in_seconds: u64,
    pub refresh_token: String,
    /// Seconds the session (and so the refresh token) has left: the refresh cookie's Max-Age.
    pub session_expires_in_seconds: u64,
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
    /// The audit trail's writer (`close` at shutdown).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

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
            audit: p.audit,
            phone_changes: p.phone_changes,
            notices: p.notices,
            reauth_seconds: p.reauth_seconds,
            backend: p.backend,
            flows: Arc::default(),
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
        // With the request's id, so the flow's log lines carry it; with its caller, so its audit
        // events say who asked.
        let caller = Caller::current();
        let request = crate::ops::logging::current_request();
        let guard = FlowGuard::new(&self.flows);
        let flow = CALLER.scope(caller, Box::pin(flow(self.clone())).in_current_span());
        tokio::spawn(async move {
            let _guard = guard;
            match request {
                Some(id) => crate::ops::logging::CURRENT_REQUEST.scope(id, flow).await,
                None => flow.await,
            }
        })
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("flow task: {e}")))?
    }

    /// Waits until no detached flow runs, at most `within`; false if some still ran then. Called at
    /// shutdown, after the HTTP server stopped, so that flows whose client left still release what
    /// they hold (a reserved password attempt, a consumed code's registration token).
    pub async fn wait_detached(&self, within: std::time::Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.flows.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.flows.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Detached flows running now.
    pub fn detached_running(&self) -> usize {
        self.flows.running.load(Ordering::SeqCst)
    }

    /// Whether the stores answer (PostgreSQL and Redis within 2 s each; the embedded backend always).
    pub async fn readiness(&self) -> Readiness {
        self.backend.readiness().await
    }

    /// Users by id, for anyone who has the ids (federation `_entities`): no phone check here, the
    /// output type decides what a stranger sees. One SQL statement for all of them; unknown ids are
    /// absent from the answer.
    pub async fn users_by_ids(&self, ids: &[Uuid]) -> AppResult<Vec<User>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.users.find_by_ids(ids).await
    }

    /// Deletes ended sessions (the hourly purge). Returns how many.
    pub async fn purge_expired_sessions(&self) -> AppResult<u64> {
        self.sessions.purge_expired().await
    }

    /// A sign-in by `amr`; its audit event's method is the one of `amr` (`password`, `code`).
    async fn sign_in(&self, user: User, amr: Amr, device: &Device) -> AppResult<SignedIn> {
        let method = match amr {
            Amr::Pwd => "password",
            Amr::Sms => "code",
        };
        self.sign_in_as(user, amr, device, method).await
    }

    /// `method`: how the caller proved who they are, for the audit trail (`password`, `code`,
    /// `registration`); `amr`, for the session and its tokens (RFC 8176).
    async fn sign_in_as(
        &self,
        user: User,
        amr: Amr,
        device: &Device,
        method: &'static str,
    ) -> AppResult<SignedIn> {
        let audit = AuditRow::new("signed_in")
            .phone_e164(&user.phone)
            .detail(serde_json::json!({ "method": method }));
        // Boxed: the session insert's future is ~8.8 KB (sqlx), and unboxed it made every flow that
        // can sign in that large, copied whole on each move, even on paths that never sign in (a wrong
        // code: 16% of its instructions were memcpy, callgrind).
        let session = Box::pin(
            self.sessions
                .create(user.id, SessionAuth::now(amr), device, audit),
        )
        .await?;
        self.signed_in(user, session)
    }

    fn signed_in(&self, user: User, session: NewSession) -> AppResult<SignedIn> {
        let ends = session.expires_at.unix_timestamp().max(0) as u64;
        let issued = self
            .tokens
            .issue_for(user.id, session.session_id, ends, &session.auth)?;
        let left = session.expires_at - time::OffsetDateTime::now_utc();
        Ok(SignedIn {
            user,
            access_token: issued.token,
            expires_in_seconds: issued.expires_in_seconds,
            refresh_token: session.refresh_token,
            session_expires_in_seconds: left.whole_seconds().max(0) as u64,
        })
    }

    /// Sends a code (queues its SMS). Answers the same whether or not the phone has an account.
    /// `client` is the caller's budget key (see `client_ip::budget_key`).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn generate_code(&self, phone: &PhoneNumber, client: &str) -> AppResult<CodeSent> {
        // Storing the code also queues its SMS (the outbox); workers deliver it.
        let issued = self.otp.issue(phone, client).await?;
        self.audit.record_bulk(|| {
            AuditRow::new("code_sent")
                .phone(phone)
                .detail(serde_json::json!({ "testNumber": issued.test_number }))
        });
        Ok(CodeSent {
            expires_in_seconds: issued.expires_in_seconds,
            resend_in_seconds: issued.resend_in_seconds,
        })
    }

    #[tracing::instrument(level = "debug", skip(self, code))]
    pub async fn verify_user(
        &self,
        phone: &PhoneNumber,
        code: &OtpCode,
        client: &str,
        device: &Device,
    ) -> AppResult<Verified> {
        let checked = self.otp.consume(phone, code, client).await;
        let event = match &checked {
            Ok(_) => Some("code_verified"),
            Err(AppError::InvalidCode) => Some("code_check_failed"),
            Err(AppError::TooManyAttempts) => Some("code_burnt"),
            Err(_) => None,
        };
        if let Some(event) = event {
            self.audit.record_bulk(|| AuditRow::new(event).phone(phone));
        }
        let consumed = checked?;
        let outcome = async {
            match self.users.find_by_phone(phone).await? {
                Some(user) => {
                    // Proving the phone is a stronger proof than the password: it lifts a password lock.
                    if self.lockout.clear(phone, None).await? {
                        self.audit
                            .record(
                                AuditRow::new("unlocked")
                                    .phone(phone)
                                    .user(user.id)
                                    .detail(serde_json::json!({ "by": "code" })),
                            )
                            .await;
                    }
                    Ok(Verified::SignedIn(self.sign_in(user, Amr::Sms, device).await?))
                }
                None => Ok(Verified::NewPhone {
                    registration_token: self.registration.create(phone).await?,
                    expires_in_seconds: self.registration.ttl_seconds(),
                }),
            }
        }
        .await;
        if outcome.is_err() {
            // The user got nothing for their code (a store failed after it was checked): give it back,
            // so that a retry with the same code works.
            match self.otp.restore(phone, code, &consumed).await {
                Ok(true) => {}
                Ok(false) => tracing::info!("a consumed code was not given back: newer code, or expired"),
                Err(e) => tracing::warn!(error = ?e, "could not give back a consumed code"),
            }
        }
        outcome
    }

    #[tracing::instrument(level = "debug", skip_all)]
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
        // The token is used up only once the user is signed in: a store failure before that gives it
        // back, and a retry after a lost answer finds the account it made (registration.rs).
        let claim = self.registration.claim(registration_token).await?;
        let outcome = async {
            let user = self
                .users
                .create(
                    claim.user_id,
                    &claim.phone,
                    &hash,
                    first_name.map(PersonName::as_str),
                    last_name.map(PersonName::as_str),
                )
                .await?;
            self.lockout.clear(&claim.phone, None).await?;
            // The phone was proven by its code moments ago (the token lives 600 s); the password is
            // new, not proven. Still its own method in the audit trail.
            self.sign_in_as(user, Amr::Sms, device, "registration").await
        }
        .await;
        match &outcome {
            // The token's work is done (or can never be: another account has the phone).
            Ok(_) | Err(AppError::PhoneAlreadyRegistered) => {
                if let Err(e) = self.registration.finish(&claim).await {
                    // Left to its claim lease and TTL; it can only complete this same account.
                    tracing::warn!(error = ?e, "could not use up a registration token");
                }
            }
            Err(_) => {
                if let Err(e) = self.registration.unclaim(&claim).await {
                    tracing::warn!(error = ?e, "could not give back a registration token");
                }
            }
        }
        outcome
    }

    /// Password sign-in. Unknown phone and wrong password are the same answer, the same work (a hash
    /// against a dummy) and the same count towards the lock.
    #[tracing::instrument(level = "debug", skip(self, password))]
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
                self.lockout.clear(phone, Some(&reservation)).await?;
                self.sign_in(user, Amr::Pwd, device).await
            }
            Ok(None) => {
                let locked = self.lockout.record_failure(phone, &reservation).await?;
                self.audit
                    .record(AuditRow::new("sign_in_failed").phone(phone))
                    .await;
                if locked {
                    self.audit.record(AuditRow::new("locked").phone(phone)).await;
                    Err(AppError::AccountLocked {
                        retry_after_seconds: self.lockout.lock_seconds(),
                    })
                } else {
                    Err(AppError::InvalidCredentials)
                }
            }
            Err(e) => {
                // The attempt never got an answer (queue full, store down): it must not count.
                let _ = self.lockout.release(phone, &reservation).await;
                Err(e)
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
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

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn logout(&self, bearer: Option<&str>, all_sessions: bool) -> AppResult<u64> {
        let (user, session_id) = self
            .current_user(bearer)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        let audit = AuditRow::new("signed_out").phone_e164(&user.phone);
        self.sessions
            .revoke(session_id, user.id, all_sessions, audit)
            .await
    }
}
