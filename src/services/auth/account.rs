//! The rest of an account's life, after sign-up: changing or resetting the password, moving to another
//! phone number, seeing and ending one's sessions, deleting the account. Owns no state of its own:
//! each flow is composed from the single-concern services, like the flows of `auth`.
//!
//! Sensitive changes (a new phone, deleting the account) need a *recent* sign-in: the session must
//! have signed in, by password or code, within `REAUTH_SECONDS` (OWASP ASVS 4.0 3.7.1). Its time and
//! method are read from the session row, which a refresh never changes. A password change needs the
//! current password instead (that is itself a fresh proof), and a reset needs the phone's code.
//!
//! Order of the steps: what is harmless to do early and could fail (Redis: ending codes, tokens,
//! locks) is done before the PostgreSQL commit that makes the change, so a failure leaves the account
//! as it was; only the old number's notice comes after the commit, best effort. A code that was
//! checked is given back (`otp.restore`) when a later step fails: a single-use secret is spent
//! together with what it pays for.
//!
//! Audit events (`audit_events`): password_changed, password_change_failed, password_reset,
//! phone_changed, session_revoked, account_deleted; each written with the change it records (same
//! statement or same transaction), but the failed attempt, which changes nothing in PostgreSQL.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{AuthService, CodeSent, SignedIn};
use crate::domain::{OtpCode, Password, PhoneNumber};
use crate::error::{AppError, AppResult};
use crate::services::audit::AuditRow;
use crate::services::otp::Consumed;
use crate::services::outbox::Notice;
use crate::services::sessions::{Amr, Device, SessionAuth, SessionInfo};
use crate::services::users::{User, UserStorage as _};

pub struct PasswordChanged {
    /// The caller's other sessions, now revoked.
    pub revoked_sessions: u64,
}

/// The caller's live sessions.
pub struct MySessions {
    /// The session of the bearer token.
    pub current: Uuid,
    pub sessions: Vec<SessionInfo>,
}

/// The caller's live session: its user, id and sign-in.
struct Caller {
    user: User,
    session_id: Uuid,
    auth: SessionAuth,
}

impl Caller {
    fn phone(&self) -> PhoneNumber {
        PhoneNumber::from_trusted_e164(self.user.phone.clone())
    }
}

impl AuthService {
    /// The session of a bearer token, if it is live; UNAUTHENTICATED otherwise.
    async fn caller(&self, bearer: Option<&str>) -> AppResult<Caller> {
        let token = bearer.ok_or(AppError::Unauthenticated)?;
        let verified = self.tokens.verify(token).map_err(|_| AppError::Unauthenticated)?;
        let (user, auth) = self
            .sessions
            .live_session(verified.session_id, verified.user_id)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        Ok(Caller {
            user,
            session_id: verified.session_id,
            auth,
        })
    }

    /// A caller whose session signed in within `REAUTH_SECONDS`, by a method we know.
    async fn recent_caller(&self, bearer: Option<&str>) -> AppResult<Caller> {
        let caller = self.caller(bearer).await?;
        let age = OffsetDateTime::now_utc() - caller.auth.auth_time;
        // A session from before sign-in methods were recorded has none: never recent.
        if caller.auth.amr.is_empty() || age.whole_seconds() > self.reauth_seconds as i64 {
            return Err(AppError::ReauthenticationRequired);
        }
        Ok(caller)
    }

    /// Changes the password of the signed-in user. The current password is checked exactly as `login`
    /// checks one (same hashing queue, same lockout: three wrong ones lock password sign-in of the
    /// phone, as three wrong logins would). Afterwards every other session of the user is revoked (the
    /// caller's stays), and the phone's pending code and registration tokens are ended.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn change_password(
        &self,
        bearer: Option<&str>,
        current: &Password,
        new: &Password,
        client: &str,
    ) -> AppResult<PasswordChanged> {
        // Refused before any other work when the hashes could not start in time (as `login`).
        self.hasher.check_capacity()?;
        let caller = self.caller(bearer).await?;
        let phone = caller.phone();
        let reservation = self.lockout.reserve(&phone, client).await?;
        let outcome = async {
            let stored = self.users.password_hash(caller.user.id).await?;
            self.hasher.verify(current, stored.as_deref()).await
        }
        .await;
        match outcome {
            Ok(true) => {
                self.lockout.clear(&phone, Some(&reservation)).await?;
            }
            Ok(false) => {
                let locked = self.lockout.record_failure(&phone, &reservation).await?;
                self.audit
                    .record(
                        AuditRow::new("password_change_failed")
                            .phone(&phone)
                            .user(caller.user.id)
                            .session(caller.session_id),
                    )
                    .await;
                return Err(if locked {
                    self.audit.record(AuditRow::new("locked").phone(&phone)).await;
                    AppError::AccountLocked {
                        retry_after_seconds: self.lockout.lock_seconds(),
                    }
                } else {
                    AppError::InvalidCredentials
                });
            }
            Err(e) => {
                // The attempt never got an answer (queue full, store down): it must not count.
                let _ = self.lockout.release(&phone, &reservation).await;
                return Err(e);
            }
        }
        let hash = self.hasher.hash(new).await?;
        // Pending proofs of the phone end with the old password (supabase/auth#1489): a code or a
        // registration token obtained before the change is worth nothing after it.
        self.otp.revoke(&phone).await?;
        self.registration.revoke_all(&phone).await?;
        let audit = AuditRow::new("password_changed")
            .phone(&phone)
            .user(caller.user.id)
            .session(caller.session_id);
        // The new hash, the other sessions' revocation and the event: one transaction.
        let revoked = self
            .users
            .set_password_revoking(
                caller.user.id,
                &hash,
                Some(caller.session_id),
                "password_changed",
                audit,
            )
            .await?
            .ok_or(AppError::Unauthenticated)?;
        Ok(PasswordChanged {
            revoked_sessions: revoked,
        })
    }

    /// Forgotten password: the phone's SMS code (from `generateCode`, with all its budgets and
    /// attempt caps) sets a new password. Lifts the password lock, revokes every session, and signs
    /// the user in. Until the code is right the answers are those of `verifyUser` (INVALID_CODE,
    /// TOO_MANY_ATTEMPTS, RATE_LIMITED), whatever the phone; with the right code, a phone without an
    /// account gets INVALID_CREDENTIALS (its holder would learn as much from `verifyUser`).
    #[tracing::instrument(level = "debug", skip(self, code, new))]
    pub async fn reset_password(
        &self,
        phone: &PhoneNumber,
        code: &OtpCode,
        new: &Password,
        client: &str,
        device: &Device,
    ) -> AppResult<SignedIn> {
        // Before the code is used up: a full hashing queue must not cost the user their code.
        self.hasher.check_capacity()?;
        let consumed = self.code_checked(phone, self.otp.consume(phone, code, client).await)?;
        let outcome = async {
            let Some(user) = self.users.find_by_phone(phone).await? else {
                return Err(AppError::InvalidCredentials);
            };
            let hash = self.hasher.hash(new).await?;
            // The code proves the phone, as a sign-in by code does: the lock goes.
            if self.lockout.clear(phone, None).await? {
                self.audit
                    .record(
                        AuditRow::new("unlocked")
                            .phone(phone)
                            .user(user.id)
                            .detail(serde_json::json!({ "by": "password_reset" })),
                    )
                    .await;
            }
            self.registration.revoke_all(phone).await?;
            let audit = AuditRow::new("password_reset").phone(phone).user(user.id);
            if self
                .users
                .set_password_revoking(user.id, &hash, None, "password_reset", audit)
                .await?
                .is_none()
            {
                // Deleted meanwhile: as if it never existed.
                return Err(AppError::InvalidCredentials);
            }
            self.sign_in(user, Amr::Sms, device).await
        }
        .await;
        self.give_back_unless_final(phone, code, &consumed, &outcome)
            .await;
        outcome
    }

    /// Sends a code to the number the signed-in user wants to move to, with every budget of
    /// `generateCode` applied to that number. Needs a recent sign-in. Whether the number has an
    /// account is not said here: only to whoever proves to hold it (`confirm_phone_change`).
    #[tracing::instrument(level = "debug", skip(self, bearer))]
    pub async fn request_phone_change(
        &self,
        bearer: Option<&str>,
        new_phone: &PhoneNumber,
        client: &str,
    ) -> AppResult<CodeSent> {
        let caller = self.recent_caller(bearer).await?;
        if caller.user.phone == new_phone.e164() {
            return Err(AppError::bad_input(
                "newPhone",
                "SAME_PHONE",
                "This is already the phone number of the account.",
            ));
        }
        let issued = self.otp.issue(new_phone, client).await?;
        self.phone_changes.start(new_phone, caller.user.id).await?;
        Ok(CodeSent {
            expires_in_seconds: issued.expires_in_seconds,
            resend_in_seconds: issued.resend_in_seconds,
        })
    }

    /// Moves the signed-in user to `new_phone`, given the code sent there by `request_phone_change`
    /// of this same user. PHONE_ALREADY_REGISTERED only once the code is proven; the unique
    /// constraint decides a race with a sign-up or another change. Sessions stay; the new number
    /// starts with no password lock or pending registration; the old number gets a notice by SMS.
    #[tracing::instrument(level = "debug", skip(self, bearer, code))]
    pub async fn confirm_phone_change(
        &self,
        bearer: Option<&str>,
        new_phone: &PhoneNumber,
        code: &OtpCode,
        client: &str,
    ) -> AppResult<User> {
        let caller = self.recent_caller(bearer).await?;
        // Not this user's pending change: the code, whoever holds it, is not for them. Nothing is
        // counted or consumed: no code is checked.
        if !self
            .phone_changes
            .is_pending_for(new_phone, caller.user.id)
            .await?
        {
            return Err(AppError::InvalidCode);
        }
        let consumed = self.code_checked(new_phone, self.otp.consume(new_phone, code, client).await)?;
        let moved = async {
            // The new number starts clean: a password lock left by someone else's attempts on it is
            // not the account's. (Its pending registration tokens are left alone: the unique
            // constraint, not a revocation racing it, decides between this change and a sign-up of
            // the number.)
            self.lockout.clear(new_phone, None).await?;
            let audit = AuditRow::new("phone_changed")
                .phone(new_phone)
                .session(caller.session_id)
                .detail(serde_json::json!({
                    "from": crate::ops::logging::mask_phone(&caller.user.phone)
                }));
            self.users
                .change_phone(caller.user.id, new_phone, audit)
                .await?
                .ok_or(AppError::Unauthenticated)
        }
        .await;
        self.give_back_unless_final(new_phone, code, &consumed, &moved)
            .await;
        let old = moved?;
        // After the commit: best effort (the change is done whatever happens to these).
        if let Err(e) = self.phone_changes.finish(new_phone, caller.user.id).await {
            tracing::warn!(error = ?e, "phone change: could not end the pending change (it expires)");
        }
        match self.notices.append_notice(&old, Notice::PhoneChanged).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("phone change: the SMS outbox is full; the old number gets no notice")
            }
            Err(e) => tracing::warn!(error = ?e, "phone change: could not queue the old number's notice"),
        }
        Ok(User {
            phone: new_phone.e164().to_owned(),
            ..caller.user
        })
    }

    /// The signed-in user's live sessions.
    pub async fn my_sessions(&self, bearer: Option<&str>) -> AppResult<MySessions> {
        let caller = self.caller(bearer).await?;
        Ok(MySessions {
            current: caller.session_id,
            sessions: self.sessions.list_live(caller.user.id).await?,
        })
    }

    /// Ends one of the signed-in user's sessions (the current one too, like `logout`). Any id that is
    /// not one of their live sessions, another user's included, is NOT_FOUND.
    #[tracing::instrument(level = "debug", skip(self, bearer))]
    pub async fn revoke_session(&self, bearer: Option<&str>, session_id: Uuid) -> AppResult<()> {
        let caller = self.caller(bearer).await?;
        let audit = AuditRow::new("session_revoked")
            .phone_e164(&caller.user.phone)
            .detail(serde_json::json!({ "current": session_id == caller.session_id }));
        if self
            .sessions
            .revoke_own(session_id, caller.user.id, audit)
            .await?
        {
            Ok(())
        } else {
            Err(AppError::NotFound)
        }
    }

    /// Deletes the signed-in user's account: the user row, its sessions and refresh tokens (by
    /// cascade), and the phone's pending state in Redis (code, password lock, registration tokens).
    /// The phone's send and failure budgets stay until their window ends. Needs a recent sign-in.
    /// Returns the deleted user's id.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn delete_account(&self, bearer: Option<&str>) -> AppResult<Uuid> {
        let caller = self.recent_caller(bearer).await?;
        let phone = caller.phone();
        self.otp.revoke(&phone).await?;
        self.lockout.clear(&phone, None).await?;
        self.registration.revoke_all(&phone).await?;
        let audit = AuditRow::new("account_deleted")
            .phone(&phone)
            .session(caller.session_id);
        self.users
            .delete(caller.user.id, audit)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        Ok(caller.user.id)
    }

    /// Records a code check (as `verify_user` does) and passes its result on.
    fn code_checked(&self, phone: &PhoneNumber, checked: AppResult<Consumed>) -> AppResult<Consumed> {
        let event = match &checked {
            Ok(_) => Some("code_verified"),
            Err(AppError::InvalidCode) => Some("code_check_failed"),
            Err(AppError::TooManyAttempts) => Some("code_burnt"),
            Err(_) => None,
        };
        if let Some(event) = event {
            self.audit.record_bulk(|| AuditRow::new(event).phone(phone));
        }
        checked
    }

    /// Gives a checked code back when what it paid for did not happen (a store failed after the
    /// check), so that a retry with the same code works. Not when the answer is final: the phone has
    /// no account (INVALID_CREDENTIALS), or another account has the number (PHONE_ALREADY_REGISTERED).
    async fn give_back_unless_final<T>(
        &self,
        phone: &PhoneNumber,
        code: &OtpCode,
        consumed: &Consumed,
        outcome: &AppResult<T>,
    ) {
        match outcome {
            Ok(_) | Err(AppError::InvalidCredentials | AppError::PhoneAlreadyRegistered) => {}
            Err(_) => match self.otp.restore(phone, code, consumed).await {
                Ok(true) => {}
                Ok(false) => tracing::info!("a consumed code was not given back: newer code, or expired"),
                Err(e) => tracing::warn!(error = ?e, "could not give back a consumed code"),
            },
        }
    }
}
