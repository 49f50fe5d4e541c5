//! Password hashing (the API: hash a new password, verify one against a stored hash or a dummy): argon2id with m = 19456 KiB, t = 2, p = 1, the first of OWASP's Password Storage
//! Cheat Sheet's equivalent argon2id settings. 11-33 ms a hash on one core of this machine (release),
//! depending on the day (the machine is shared).
//!
//! Hashing runs on a pool of its own threads (`concurrency` of them, default: the number of cores),
//! never on the async workers, and each thread owns one preallocated argon2 memory block that it
//! reuses. Three consequences, each measured in docs/BENCHMARKS.md:
//!
//! - Memory is bounded: `concurrency` x 19 MiB, whatever the load. Hashing on tokio's blocking pool
//!   allocated 19 MiB per hash, and glibc kept those blocks in per-thread arenas (721 MiB peak RSS
//!   under 500 concurrent logins).
//! - The threads run at a low CPU priority (nice 19 by default, `HASH_THREAD_NICE`): a request that
//!   only needs a few microseconds of CPU (`me`, `generateCode`) preempts a hash instead of waiting
//!   behind it, and hashing still gets a share when cheap requests alone would fill the CPU. (Linux's
//!   `SCHED_IDLE` gave hashing no share at all: under a mixed load, sign-ins were starved and refused.)
//! - Admission is decided at once: a job is queued only if the queue ahead of it can be served within
//!   `queue_timeout`, estimated from the measured hash time; otherwise the caller gets
//!   SERVICE_UNAVAILABLE (with retryAfterSeconds) immediately, before any other work, instead of
//!   after a wait. If the estimate was wrong (the threads were starved of CPU), the requester still
//!   stops waiting at `queue_timeout` and is refused; its job is skipped when a thread reaches it.
//!   A hash that started in time but runs starved gets the longest of `queue_timeout`, 1 s and ten
//!   hash times more. The wait is bounded by the requester, not by the threads.
//!
//! Unknown users are verified against a dummy hash computed at start, so they cost the same time as a
//! wrong password for a real user.
//!
//! Layers: `phc` (PHC strings, argon2 and its reusable memory), `pool` (the threads and admission),
//! and this module, the API the flows call.

mod phc;
mod pool;

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use crate::domain::Password;
use crate::error::{AppError, AppResult};

pub use phc::{HashMemory, M_COST_KIB, P_COST, T_COST, hash_with, verify_with};
use pool::Pool;

pub struct PasswordHasher {
    pool: Pool,
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    /// Starts `concurrency` hashing threads at nice value `nice`. `queue_timeout`: the longest a
    /// request may wait for one.
    pub fn new(concurrency: usize, queue_timeout: Duration, nice: u8) -> anyhow::Result<Self> {
        let start = Instant::now();
        let dummy = hash_with(&mut HashMemory::new(), b"dummy password that no account has")?;
        Ok(PasswordHasher {
            pool: Pool::new(concurrency, queue_timeout, nice, start.elapsed())?,
            dummy_hash: dummy.into(),
        })
    }

    /// Hashes computed or verified since start: lets tests prove that refused attempts cost no hash.
    pub fn hashes_computed(&self) -> u64 {
        self.pool.hashes_computed()
    }

    /// Requests refused because the queue could not serve them in time.
    pub fn refused(&self) -> u64 {
        self.pool.refused()
    }

    /// The longest a flow waits for one hash (queued, then running) before it is refused: with the
    /// default 2 s queue timeout and a hash under 100 ms, 4 s.
    pub fn longest_wait(&self) -> Duration {
        self.pool.longest_wait()
    }

    /// Refuses at once when a hash asked for now could not start within the queue timeout. Lets a flow
    /// refuse before doing any other work; the pool checks again when it queues.
    pub fn check_capacity(&self) -> AppResult<()> {
        self.pool.check_capacity()
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a fresh random salt.
    pub async fn hash(&self, password: &Password) -> AppResult<String> {
        let pw = SecretString::from(password.expose().to_owned());
        self.pool
            .run(move |memory| hash_with(memory, pw.expose_secret().as_bytes()))
            .await?
            .map_err(|e| AppError::Internal(e.context("argon2 hash")))
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
            .pool
            .run(move |memory| verify_with(memory, pw.expose_secret().as_bytes(), &phc))
            .await?;
        Ok(ok && exists)
    }
}
