//! What PostgreSQL holds, in this process: users, sessions, refresh tokens, the audit trail. Each call
//! is one transaction under the lock, with the answers of the SQL it stands for (`users.rs`,
//! `sessions.rs`): the unique phone, the cascade from a user to its sessions and tokens, the rollback
//! of a refresh whose session is no longer live, an audit event written only with its change.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::PhoneNumber;
use crate::error::{AppError, AppResult};
use crate::services::audit::AuditRow;
use crate::services::sessions::{Rotated, SessionAuth, SessionInfo, SessionRow, SessionStorage};
use crate::services::users::{User, UserStorage};

/// Audit events kept at most (the oldest go first): a development server's trail, bounded so a
/// load test cannot grow it without end. `AUDIT_RETENTION_DAYS` applies too (the hourly purge).
const AUDIT_MAX: usize = 100_000;

#[derive(Default)]
pub struct Db {
    state: Mutex<Sql>,
}

#[derive(Default)]
struct Sql {
    users: HashMap<Uuid, UserRow>,
    /// The unique index on `users.phone`.
    by_phone: HashMap<String, Uuid>,
    sessions: HashMap<Uuid, SessionRec>,
    /// Refresh tokens by SHA-256: their session, and whether used.
    tokens: HashMap<Vec<u8>, (Uuid, bool)>,
    audit: VecDeque<AuditRow>,
}

struct UserRow {
    user: User,
    password_hash: String,
}

struct SessionRec {
    id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    auth: SessionAuth,
    user_agent: Option<String>,
    ip: Option<String>,
    last_used_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
    /// Kept as PostgreSQL keeps `revoked_reason` (the operator commands read it there).
    _revoked_reason: Option<String>,
    /// Its refresh tokens (deleted with it).
    tokens: Vec<Vec<u8>>,
}

impl SessionRec {
    fn live(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }

    fn revoke(&mut self, now: OffsetDateTime, reason: &str) {
        self.revoked_at = Some(now);
        self._revoked_reason = Some(reason.to_owned());
    }
}

/// `now()` as PostgreSQL stores it (microseconds).
fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

impl Sql {
    fn audit(&mut self, row: AuditRow) {
        if self.audit.len() >= AUDIT_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(row);
    }

    fn delete_session(&mut self, id: Uuid) {
        if let Some(s) = self.sessions.remove(&id) {
            for t in s.tokens {
                self.tokens.remove(&t);
            }
        }
    }
}

impl Db {
    fn lock(&self) -> MutexGuard<'_, Sql> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn audit_insert(&self, rows: &[AuditRow]) {
        let mut sql = self.lock();
        for row in rows {
            sql.audit(row.clone());
        }
    }

    pub(crate) fn audit_purge(&self, days: u32) -> u64 {
        let cutoff = OffsetDateTime::now_utc() - time::Duration::days(i64::from(days));
        let mut sql = self.lock();
        let before = sql.audit.len();
        sql.audit.retain(|r| r.at >= cutoff);
        (before - sql.audit.len()) as u64
    }

    /// The events kept, oldest first (tests; the operator's `admin audit` reads PostgreSQL).
    pub fn audit_events(&self) -> Vec<AuditRow> {
        let mut rows: Vec<AuditRow> = self.lock().audit.iter().cloned().collect();
        // As `order by at`: queued events are written a little after the change they follow.
        rows.sort_by_key(|r| r.at);
        rows
    }

    /// Inspection for tests, as their SQL asks it of PostgreSQL: every account's phone (sorted).
    pub fn phones(&self) -> Vec<String> {
        let mut phones: Vec<String> = self.lock().by_phone.keys().cloned().collect();
        phones.sort();
        phones
    }

    /// A phone's stored password hash (tests).
    pub fn password_hash_of(&self, phone: &str) -> Option<String> {
        let sql = self.lock();
        let id = sql.by_phone.get(phone)?;
        Some(sql.users.get(id)?.password_hash.clone())
    }

    /// Sessions stored, and those not revoked (tests).
    pub fn session_counts(&self) -> (i64, i64) {
        let sql = self.lock();
        let unrevoked = sql.sessions.values().filter(|s| s.revoked_at.is_none()).count();
        (sql.sessions.len() as i64, unrevoked as i64)
    }

    /// Refresh tokens stored, and those used (tests).
    pub fn refresh_token_counts(&self) -> (i64, i64) {
        let sql = self.lock();
        let used = sql.tokens.values().filter(|(_, used)| *used).count();
        (sql.tokens.len() as i64, used as i64)
    }
}

impl UserStorage for Db {
    async fn find_by_phone(&self, phone: &PhoneNumber) -> AppResult<Option<User>> {
        let sql = self.lock();
        Ok(sql
            .by_phone
            .get(phone.e164())
            .and_then(|id| sql.users.get(id))
            .map(|u| u.user.clone()))
    }

    async fn find_credentials(&self, phone: &PhoneNumber) -> AppResult<Option<(User, String)>> {
        let sql = self.lock();
        Ok(sql
            .by_phone
            .get(phone.e164())
            .and_then(|id| sql.users.get(id))
            .map(|u| (u.user.clone(), u.password_hash.clone())))
    }

    async fn create(
        &self,
        id: Uuid,
        phone: &PhoneNumber,
        password_hash: &str,
        first_name: Option<&str>,
        last_name: Option<&str>,
    ) -> AppResult<User> {
        let mut sql = self.lock();
        if let Some(&owner) = sql.by_phone.get(phone.e164()) {
            // on conflict (phone) do update ... where users.id = excluded.id
            if owner != id {
                return Err(AppError::PhoneAlreadyRegistered);
            }
            let row = sql.users.get_mut(&id).ok_or_else(|| {
                AppError::Internal(anyhow::anyhow!("embedded store: phone index without its user"))
            })?;
            row.password_hash = password_hash.to_owned();
            row.user.first_name = first_name.map(str::to_owned);
            row.user.last_name = last_name.map(str::to_owned);
            return Ok(row.user.clone());
        }
        if sql.users.contains_key(&id) {
            // The primary key: PostgreSQL fails the statement.
            return Err(AppError::Internal(anyhow::anyhow!(
                "embedded store: duplicate user id"
            )));
        }
        let user = User {
            id,
            phone: phone.e164().to_owned(),
            first_name: first_name.map(str::to_owned),
            last_name: last_name.map(str::to_owned),
            created_at: now(),
        };
        sql.users.insert(
            id,
            UserRow {
                user: user.clone(),
                password_hash: password_hash.to_owned(),
            },
        );
        sql.by_phone.insert(user.phone.clone(), id);
        sql.audit(AuditRow::new("signed_up").phone(phone).user(id));
        Ok(user)
    }

    async fn find_by_ids(&self, ids: &[Uuid]) -> AppResult<Vec<User>> {
        let sql = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| sql.users.get(id))
            .map(|u| u.user.clone())
            .collect())
    }

    async fn password_hash(&self, id: Uuid) -> AppResult<Option<String>> {
        Ok(self.lock().users.get(&id).map(|u| u.password_hash.clone()))
    }

    async fn set_password_revoking(
        &self,
        id: Uuid,
        password_hash: &str,
        keep: Option<Uuid>,
        reason: &str,
        audit: AuditRow,
    ) -> AppResult<Option<u64>> {
        let mut sql = self.lock();
        let Some(user) = sql.users.get_mut(&id) else {
            return Ok(None);
        };
        user.password_hash = password_hash.to_owned();
        let at = now();
        let mut revoked = 0u64;
        for s in sql.sessions.values_mut() {
            if s.user_id == id && s.revoked_at.is_none() && Some(s.id) != keep {
                s.revoke(at, reason);
                revoked += 1;
            }
        }
        sql.audit(audit.detail(serde_json::json!({ "revokedSessions": revoked })));
        Ok(Some(revoked))
    }

    async fn change_phone(
        &self,
        id: Uuid,
        new_phone: &PhoneNumber,
        audit: AuditRow,
    ) -> AppResult<Option<String>> {
        let mut sql = self.lock();
        let Some(old) = sql.users.get(&id).map(|u| u.user.phone.clone()) else {
            return Ok(None);
        };
        match sql.by_phone.get(new_phone.e164()) {
            Some(&owner) if owner != id => return Err(AppError::PhoneAlreadyRegistered),
            _ => {}
        }
        sql.by_phone.remove(&old);
        sql.by_phone.insert(new_phone.e164().to_owned(), id);
        if let Some(u) = sql.users.get_mut(&id) {
            u.user.phone = new_phone.e164().to_owned();
        }
        sql.audit(audit.user(id));
        Ok(Some(old))
    }

    async fn delete(&self, id: Uuid, audit: AuditRow) -> AppResult<Option<String>> {
        let mut sql = self.lock();
        let Some(row) = sql.users.remove(&id) else {
            return Ok(None);
        };
        sql.by_phone.remove(&row.user.phone);
        let sessions: Vec<Uuid> = sql
            .sessions
            .values()
            .filter(|s| s.user_id == id)
            .map(|s| s.id)
            .collect();
        for s in sessions {
            sql.delete_session(s);
        }
        sql.audit(audit.user(id));
        Ok(Some(row.user.phone))
    }
}

impl SessionStorage for Db {
    async fn insert(&self, row: &SessionRow<'_>, audit: AuditRow) -> AppResult<()> {
        let mut sql = self.lock();
        if !sql.users.contains_key(&row.user_id) {
            // The foreign key: PostgreSQL fails the statement.
            return Err(AppError::Internal(anyhow::anyhow!(
                "embedded store: a session for a user that does not exist"
            )));
        }
        sql.sessions.insert(
            row.session_id,
            SessionRec {
                id: row.session_id,
                user_id: row.user_id,
                created_at: now(),
                expires_at: row.expires_at,
                auth: row.auth.clone(),
                user_agent: row.device.user_agent.clone(),
                ip: row.device.ip.clone(),
                last_used_at: None,
                revoked_at: None,
                _revoked_reason: None,
                tokens: vec![row.token_hash.to_vec()],
            },
        );
        sql.tokens
            .insert(row.token_hash.to_vec(), (row.session_id, false));
        sql.audit(audit);
        Ok(())
    }

    async fn rotate(&self, hash: &[u8], new_hash: &[u8]) -> AppResult<Option<Rotated>> {
        let mut sql = self.lock();
        let at = now();
        let Some(&(session_id, used)) = sql.tokens.get(hash) else {
            return Ok(None);
        };
        if used {
            // Reuse: revoke its session (if not already), with the event.
            let Some(s) = sql.sessions.get_mut(&session_id) else {
                return Ok(None);
            };
            if s.revoked_at.is_none() {
                s.revoke(at, "refresh_token_reuse");
                let user_id = s.user_id;
                let phone = sql.users.get(&user_id).map(|u| u.user.phone.clone());
                if let Some(phone) = phone {
                    sql.audit(
                        AuditRow::new("refresh_reuse_detected")
                            .phone_e164(&phone)
                            .user(user_id)
                            .session(session_id),
                    );
                }
                tracing::warn!(session_id = %session_id, "refresh token reused: session revoked");
            }
            return Ok(None);
        }
        // Not live: the transaction rolls back, the token stays unused.
        let Some(s) = sql.sessions.get_mut(&session_id).filter(|s| s.live(at)) else {
            return Ok(None);
        };
        s.last_used_at = Some(at);
        s.tokens.push(new_hash.to_vec());
        let (user_id, expires_at, auth) = (s.user_id, s.expires_at, s.auth.clone());
        let Some(user) = sql.users.get(&user_id).map(|u| u.user.clone()) else {
            return Ok(None);
        };
        sql.tokens.insert(hash.to_vec(), (session_id, true));
        sql.tokens.insert(new_hash.to_vec(), (session_id, false));
        sql.audit(
            AuditRow::new("token_refreshed")
                .user(user.id)
                .session(session_id)
                .phone_e164(&user.phone),
        );
        Ok(Some((user, session_id, expires_at, auth)))
    }

    async fn live_user(&self, session_id: Uuid, user_id: Uuid) -> AppResult<Option<User>> {
        Ok(SessionStorage::live_session(self, session_id, user_id)
            .await?
            .map(|(u, _)| u))
    }

    async fn purge_expired(&self) -> AppResult<u64> {
        let mut sql = self.lock();
        let cutoff = now() - time::Duration::days(1);
        let ended: Vec<Uuid> = sql
            .sessions
            .values()
            .filter(|s| s.expires_at < cutoff || s.revoked_at.is_some_and(|r| r < cutoff))
            .map(|s| s.id)
            .collect();
        for id in &ended {
            sql.delete_session(*id);
        }
        Ok(ended.len() as u64)
    }

    async fn revoke(&self, session_id: Uuid, user_id: Uuid, all: bool, audit: AuditRow) -> AppResult<u64> {
        let mut sql = self.lock();
        let (at, reason) = (now(), if all { "logout_all" } else { "logout" });
        let mut revoked = 0;
        for s in sql.sessions.values_mut() {
            if s.user_id == user_id && (all || s.id == session_id) && s.revoked_at.is_none() {
                s.revoke(at, reason);
                revoked += 1;
            }
        }
        if revoked > 0 {
            sql.audit(audit);
        }
        Ok(revoked)
    }

    async fn live_session(&self, session_id: Uuid, user_id: Uuid) -> AppResult<Option<(User, SessionAuth)>> {
        let sql = self.lock();
        let at = now();
        Ok(sql
            .sessions
            .get(&session_id)
            .filter(|s| s.user_id == user_id && s.live(at))
            .and_then(|s| Some((sql.users.get(&s.user_id)?.user.clone(), s.auth.clone()))))
    }

    async fn list_live(&self, user_id: Uuid) -> AppResult<Vec<SessionInfo>> {
        let sql = self.lock();
        let at = now();
        let mut out: Vec<SessionInfo> = sql
            .sessions
            .values()
            .filter(|s| s.user_id == user_id && s.live(at))
            .map(|s| SessionInfo {
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                user_agent: s.user_agent.clone(),
                ip: s.ip.clone(),
                auth_time: s.auth.auth_time,
                amr: s.auth.amr.clone(),
            })
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn revoke_own(&self, session_id: Uuid, user_id: Uuid, audit: AuditRow) -> AppResult<bool> {
        let mut sql = self.lock();
        let at = now();
        let Some(s) = sql
            .sessions
            .get_mut(&session_id)
            .filter(|s| s.user_id == user_id && s.live(at))
        else {
            return Ok(false);
        };
        s.revoke(at, "revoked_by_user");
        sql.audit(audit.session(session_id));
        Ok(true)
    }
}
