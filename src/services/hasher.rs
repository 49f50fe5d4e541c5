//! Password hashing: argon2id with m = 19456 KiB, t = 2, p = 1, the first of OWASP's Password Storage
//! Cheat Sheet's equivalent argon2id settings. About 11 ms a hash on one core of this machine (release).
//!
//! Hashing is CPU bound, so it runs on tokio's blocking pool (`spawn_blocking`), never on the async
//! workers, and at most `concurrency` hashes run at once (default: the number of cores). A request
//! waits at most `queue_timeout` for a slot and is then refused with SERVICE_UNAVAILABLE: under a
//! flood of logins the service sheds load quickly instead of queueing without bound.
//!
//! Unknown users are verified against a dummy hash computed at start, so they cost the same time as a
//! wrong password for a real user.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::domain::Password;
use crate::error::{AppError, AppResult};

pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    dummy_hash: Arc<str>,
    /// Hashes computed or verified since start: lets tests prove that refused attempts cost no hash.
    computed: AtomicU64,
}

impl PasswordHasher {
    pub fn new(concurrency: usize, queue_timeout: Duration) -> anyhow::Result<Self> {
        let dummy = argon2()
            .hash_password(b"dummy password that no account has")
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        Ok(PasswordHasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout,
            dummy_hash: dummy.into(),
            computed: AtomicU64::new(0),
        })
    }

    pub fn hashes_computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> AppResult<T> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| AppError::Unavailable(anyhow::anyhow!("password hashing queue is full")))?
            .map_err(|e| AppError::Internal(e.into()))?;
        self.computed.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("hashing task: {e}")))
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a fresh random salt.
    pub async fn hash(&self, password: &Password) -> AppResult<String> {
        let pw = SecretString::from(password.expose().to_owned());
        self.run(move || {
            argon2()
                .hash_password(pw.expose_secret().as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| AppError::Internal(anyhow::anyhow!("argon2 hash: {e}")))
    }

    /// Verifies `password` against `stored`, or against the dummy hash when there is no account (and
    /// then answers false whatever happens), so both cases take the same time.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> AppResult<bool> {
        let pw = SecretString::from(password.expose().to_owned());
        let exists = stored.is_some();
        let phc: Arc<str> = match stored {
            Some(s) => s.into(),
            None => self.dummy_hash.clone(),
        };
        let ok = self
            .run(move || {
                argon2()
                    .verify_password(pw.expose_secret().as_bytes(), &*phc)
                    .is_ok()
            })
            .await?;
        Ok(ok && exists)
    }
}
