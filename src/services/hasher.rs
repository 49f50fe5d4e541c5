//! Password hashing: argon2id with m = 19456 KiB, t = 2, p = 1, the first of OWASP's Password Storage
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

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::TryRng;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

use crate::domain::Password;
use crate::error::{AppError, AppResult};

pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
const SALT_LEN: usize = 16;
const MAX_STORED_M_COST_KIB: u32 = 256 * 1024;
const MAX_STORED_T_COST: u32 = 16;
const OUTPUT_LEN: usize = 32;

fn params() -> Params {
    Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN)).expect("constant argon2 parameters are valid")
}

/// The memory one argon2 computation works in, kept by its thread from one hash to the next (argon2
/// writes every block before reading it, so nothing of a previous hash is ever read).
pub struct HashMemory(Vec<Block>);

impl HashMemory {
    pub fn new() -> Self {
        HashMemory(Vec::new())
    }

    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let n = params.block_count();
        if self.0.len() < n {
            self.0.resize(n, Block::default());
        }
        &mut self.0[..n]
    }

    /// After a hash with more memory than ours (a stored hash of other parameters), give it back.
    fn shrink_to_default(&mut self) {
        let ours = params().block_count();
        if self.0.len() > ours {
            self.0.truncate(ours);
            self.0.shrink_to_fit();
        }
    }
}

impl Default for HashMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// A new PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) with a fresh random salt.
pub fn hash_with(memory: &mut HashMemory, password: &[u8]) -> anyhow::Result<String> {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| anyhow::anyhow!("os rng: {e}"))?;
    let params = params();
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, memory.blocks(&params))
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (with the parameters stored in it, so hashes made
/// with other argon2 parameters still verify). A malformed string never matches.
pub fn verify_with(memory: &mut HashMemory, password: &[u8], stored: &str) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = phc.version.map_or(Ok(Version::default()), Version::try_from) else {
        return false;
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    // Parameters come from our own database, but a corrupted row must not make a thread allocate
    // gigabytes or hash for hours: over 256 MiB (13x ours) or 16 passes (8x ours) is refused.
    if params.m_cost() > MAX_STORED_M_COST_KIB || params.t_cost() > MAX_STORED_T_COST {
        tracing::error!(
            m_cost = params.m_cost(),
            t_cost = params.t_cost(),
            "a stored password hash asks for too much memory or time"
        );
        return false;
    }
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt,
        &mut out,
        memory.blocks(&params),
    );
    computed.is_ok() && constant_time_eq(&out, expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

struct Queued {
    job: Job,
    /// QUEUED, then STARTED (a thread took it) or ABANDONED (its requester stopped waiting, or it
    /// waited past the timeout): whichever happens first, decided by one compare-and-swap.
    state: Arc<AtomicU8>,
    enqueued: Instant,
}

/// How many recent hash durations the estimate is the median of: enough that a hash preempted for a
/// moment does not move it (a moving average did, and refused sign-ins that would have waited half a
/// second under the mixed load), few enough to follow a lasting change within a few hashes.
const RECENT: usize = 15;

/// See `Shared::wait_limit`.
const MIN_WAIT: Duration = Duration::from_millis(100);

/// What the async side reads is atomics only, and it hands jobs over through a channel whose
/// sender takes no lock: a hashing thread (at low priority, often preempted) never holds a lock that
/// an async worker waits for. The receiving end and the duration samples are shared by the hashing
/// threads alone.
struct Shared {
    threads: usize,
    queue_timeout: Duration,
    /// How long an admitted job may wait before a thread takes it: `queue_timeout`, but at least
    /// `MIN_WAIT`, so that a job admitted to a free thread is not refused for the moment that thread
    /// takes to wake up (it runs at low priority).
    wait_limit: Duration,
    /// Jobs queued or running.
    pending: AtomicUsize,
    /// One hash's duration (microseconds), for admission: the median of the recent ones.
    hash_micros: AtomicU64,
    computed: AtomicU64,
    refused: AtomicU64,
    /// When the last "refused" warning was logged (ms since `started`), to log at most one a second.
    last_warning_ms: AtomicU64,
    started: Instant,
}

/// The hashing threads' side: the jobs' receiving end and the last durations (a ring).
struct WorkerSide {
    jobs: Mutex<Receiver<Queued>>,
    recent: Mutex<([u64; RECENT], usize)>,
}

impl Shared {
    /// How long a job would wait for a thread with `ahead` jobs queued or running before it: zero
    /// while a thread is free, otherwise one hash time per round of `threads` jobs.
    fn estimated_wait(&self, ahead: usize) -> Duration {
        let rounds = (ahead / self.threads) as u64;
        Duration::from_micros(rounds * self.hash_micros.load(Ordering::Relaxed))
    }

    fn refusal(&self, ahead: usize) -> AppError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                queued = ahead,
                threads = self.threads,
                refused_since_start = self.refused.load(Ordering::Relaxed),
                "password hashing is saturated: refusing sign-ins (SERVICE_UNAVAILABLE)"
            );
        }
        AppError::Overloaded {
            retry_after_seconds: self.estimated_wait(ahead).as_secs().max(1),
        }
    }

    /// Records one hash's duration; the estimate becomes the median of the recent ones.
    fn record(&self, side: &WorkerSide, took: Duration) {
        let sample = (took.as_micros().min(u128::from(u32::MAX)) as u64).max(1);
        let mut recent = side.recent.lock().unwrap_or_else(|e| e.into_inner());
        let (ring, next) = &mut *recent;
        ring[*next] = sample;
        *next = (*next + 1) % RECENT;
        let mut sorted = *ring;
        sorted.sort_unstable();
        self.hash_micros.store(sorted[RECENT / 2], Ordering::Relaxed);
    }
}

fn worker(shared: Arc<Shared>, side: Arc<WorkerSide>, nice: u8) {
    lower_priority(nice);
    let mut memory = HashMemory::new();
    loop {
        // Poisoning cannot leave the receiver inconsistent; go on with it.
        let received = side.jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        // Every sender is gone: the hasher was dropped and the queue is drained.
        let Ok(queued) = received else { return };
        // Too old (its requester has been answered or is about to be), or abandoned: dropped unrun,
        // which answers a requester still waiting with SERVICE_UNAVAILABLE.
        let next = if queued.enqueued.elapsed() > shared.wait_limit {
            ABANDONED
        } else {
            STARTED
        };
        let won = queued
            .state
            .compare_exchange(QUEUED, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won && next == STARTED {
            let start = Instant::now();
            shared.computed.fetch_add(1, Ordering::Relaxed);
            let job = queued.job;
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut memory)));
            if ran.is_err() {
                // Not reachable from input we know of; the requester gets SERVICE_UNAVAILABLE and
                // the thread goes on with fresh memory.
                tracing::error!("a password hashing job panicked");
                memory = HashMemory::new();
            }
            shared.record(&side, start.elapsed());
            memory.shrink_to_default();
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: the nice value is per thread, and
/// `setpriority(PRIO_PROCESS, tid)` sets it for that thread only, setpriority(2)). Elsewhere, or if
/// refused, the thread keeps its priority.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid and setpriority take and return plain integers; no memory is shared or handed
    // over, and the thread id is the calling thread's own.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, libc::c_int::from(nice))
    };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not lower the priority of a password hashing thread"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: u8) {}

pub struct PasswordHasher {
    shared: Arc<Shared>,
    jobs: Sender<Queued>,
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    /// Starts `concurrency` hashing threads at nice value `nice`. `queue_timeout`: the longest a
    /// request may wait for one.
    pub fn new(concurrency: usize, queue_timeout: Duration, nice: u8) -> anyhow::Result<Self> {
        let start = Instant::now();
        let dummy = hash_with(&mut HashMemory::new(), b"dummy password that no account has")?;
        let first_hash = (start.elapsed().as_micros().max(1)) as u64;
        let threads = concurrency.max(1);
        let shared = Arc::new(Shared {
            threads,
            queue_timeout,
            wait_limit: queue_timeout.max(MIN_WAIT),
            pending: AtomicUsize::new(0),
            hash_micros: AtomicU64::new(first_hash),
            computed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            started: Instant::now(),
        });
        let (jobs, received) = mpsc::channel();
        let side = Arc::new(WorkerSide {
            jobs: Mutex::new(received),
            recent: Mutex::new(([first_hash; RECENT], 0)),
        });
        for i in 0..threads {
            let (shared, side) = (shared.clone(), side.clone());
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(shared, side, nice))?;
        }
        Ok(PasswordHasher {
            shared,
            jobs,
            dummy_hash: dummy.into(),
        })
    }

    /// Hashes computed or verified since start: lets tests prove that refused attempts cost no hash.
    pub fn hashes_computed(&self) -> u64 {
        self.shared.computed.load(Ordering::Relaxed)
    }

    /// Requests refused because the queue could not serve them in time.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Refuses at once when a hash asked for now could not start within the queue timeout. Lets a flow
    /// refuse before doing any other work; `run` checks again when it queues.
    pub fn check_capacity(&self) -> AppResult<()> {
        let ahead = self.shared.pending.load(Ordering::Acquire);
        if self.shared.estimated_wait(ahead) <= self.shared.queue_timeout {
            Ok(())
        } else {
            Err(self.shared.refusal(ahead))
        }
    }

    /// Runs `work` on a hashing thread, with that thread's memory.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> AppResult<T> {
        let shared = &self.shared;
        let queue_timeout = shared.queue_timeout;
        let ahead = shared.pending.fetch_add(1, Ordering::AcqRel);
        if shared.estimated_wait(ahead) > queue_timeout {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(shared.refusal(ahead));
        }
        let (tx, mut rx) = oneshot::channel::<T>();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let queued = Queued {
            job: Box::new(move |memory| {
                let _ = tx.send(work(memory));
            }),
            state: state.clone(),
            enqueued: Instant::now(),
        };
        if self.jobs.send(queued).is_err() {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(AppError::Unavailable(anyhow::anyhow!(
                "password hashing has stopped"
            )));
        }
        let overloaded = || {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            AppError::Overloaded {
                retry_after_seconds: queue_timeout.as_secs().max(1),
            }
        };
        // The wait is bounded here, not by the threads: starved of CPU, they might take a job late.
        match tokio::time::timeout(shared.wait_limit, &mut rx).await {
            Ok(Ok(out)) => return Ok(out),
            // Dropped unrun by a thread (too old), or its job panicked.
            Ok(Err(_)) => return Err(overloaded()),
            Err(_) => {}
        }
        match state.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire) {
            // Abandoned now, or already by a thread that found it too old.
            Ok(_) | Err(ABANDONED) => return Err(overloaded()),
            Err(_) => {}
        }
        // A thread took it in time: the hash is running, and normally answers within a hash time. A
        // thread starved of CPU (a host busy with other processes) could take much longer: the
        // requester gives up after the longest of `queue_timeout`, 1 s and ten hash times. The hash
        // finishes unobserved; its flow sees SERVICE_UNAVAILABLE (a login releases its reserved
        // attempt, a registration keeps its token).
        let hash_time = Duration::from_micros(shared.hash_micros.load(Ordering::Relaxed));
        let grace = queue_timeout.max(Duration::from_secs(1)).max(hash_time * 10);
        match tokio::time::timeout(grace, rx).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) | Err(_) => Err(overloaded()),
        }
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a fresh random salt.
    pub async fn hash(&self, password: &Password) -> AppResult<String> {
        let pw = SecretString::from(password.expose().to_owned());
        self.run(move |memory| hash_with(memory, pw.expose_secret().as_bytes()))
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
            .run(move |memory| verify_with(memory, pw.expose_secret().as_bytes(), &phc))
            .await?;
        Ok(ok && exists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher as _, PasswordVerifier as _};
    use std::sync::Condvar;

    #[test]
    fn our_hashes_and_the_crates_hashes_verify_each_other() {
        let mut memory = HashMemory::new();
        let ours = hash_with(&mut memory, b"correct horse").unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{ours}");
        let crate_ctx = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        crate_ctx
            .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
            .unwrap();
        assert!(
            crate_ctx
                .verify_password(b"correct horsf", &PasswordHash::new(&ours).unwrap())
                .is_err()
        );

        let theirs = crate_ctx.hash_password(b"battery staple").unwrap().to_string();
        assert!(verify_with(&mut memory, b"battery staple", &theirs));
        assert!(!verify_with(&mut memory, b"battery stapl", &theirs));
        // Memory reused after a hash of other parameters: still right.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password(b"x")
        .unwrap()
        .to_string();
        assert!(verify_with(&mut memory, b"x", &small));
        assert!(verify_with(&mut memory, b"battery staple", &theirs));
    }

    #[test]
    fn malformed_stored_hashes_never_match() {
        let mut memory = HashMemory::new();
        for stored in [
            "",
            "$argon2id$",
            "plain",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$",
            // 1 GiB of memory, or a million passes: refused before anything is allocated or run.
            "$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE",
            "$argon2id$v=19$m=19456,t=1000000,p=1$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE",
        ] {
            assert!(!verify_with(&mut memory, b"", stored), "{stored}");
        }
        assert!(memory.0.is_empty(), "no memory was allocated for any of them");
    }

    /// Jobs that block until released, so the test decides when the threads are busy.
    fn blocker(gate: &Arc<(Mutex<bool>, Condvar)>) -> impl FnOnce(&mut HashMemory) + Send + 'static {
        let gate = gate.clone();
        move |_| {
            let (open, cv) = &*gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_the_queued_jobs_still_run() {
        let hasher = Arc::new(PasswordHasher::new(1, Duration::from_secs(10), 10).unwrap());
        // Admission believes a hash takes 4 s. One thread: the first job starts at once, the second and
        // third would wait 4 and 8 s (within 10), a fourth 12 s: refused without waiting.
        hasher.shared.hash_micros.store(4_000_000, Ordering::Relaxed);
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (h, job) = (hasher.clone(), blocker(&gate));
            tasks.push(tokio::spawn(async move { h.run(job).await }));
        }
        for _ in 0..5_000 {
            if hasher.shared.pending.load(Ordering::Acquire) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let refused = hasher.run(|_| ()).await;
        assert!(matches!(refused, Err(AppError::Overloaded { .. })), "{refused:?}");
        assert!(hasher.check_capacity().is_err());
        assert_eq!(hasher.refused(), 2);
        {
            let (open, cv) = &*gate;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(hasher.hashes_computed(), 3);
        assert!(hasher.check_capacity().is_ok());
    }

    #[tokio::test]
    async fn a_job_that_waited_past_the_timeout_is_refused_then_not_run() {
        let hasher = Arc::new(PasswordHasher::new(1, Duration::from_millis(20), 10).unwrap());
        hasher.shared.hash_micros.store(1, Ordering::Relaxed);
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let first = {
            let (h, job) = (hasher.clone(), blocker(&gate));
            tokio::spawn(async move { h.run(job).await })
        };
        let second = {
            let h = hasher.clone();
            tokio::spawn(async move { h.run(|_| ()).await })
        };
        // Refused after the timeout although the only thread is still blocked: the requester's wait is
        // bounded whatever the threads do.
        let second = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("refused without waiting for the thread")
            .unwrap();
        assert!(matches!(second, Err(AppError::Overloaded { .. })), "{second:?}");
        {
            let (open, cv) = &*gate;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        first.await.unwrap().unwrap();
        // The abandoned job is skipped when the thread reaches it.
        for _ in 0..200 {
            if hasher.shared.pending.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(hasher.hashes_computed(), 1);
        assert_eq!(hasher.refused(), 1);
    }
}
