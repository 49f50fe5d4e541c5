//! The hashing threads and their admission: a job is queued only if it can start within the queue
//! timeout (estimated from measured hash times), and the requester bounds its own wait.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{AppError, AppResult};
use crate::services::password::phc::HashMemory;

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
    jobs: flume::Receiver<Queued>,
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
        metrics::counter!(crate::ops::metrics::HASH_REFUSALS).increment(1);
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

    /// How long a hash that a thread took in time may run before its requester gives up: the longest
    /// of `queue_timeout`, 1 s and ten hash times (see `Pool::run`).
    fn grace(&self) -> Duration {
        let hash_time = Duration::from_micros(self.hash_micros.load(Ordering::Relaxed));
        self.queue_timeout.max(Duration::from_secs(1)).max(hash_time * 10)
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
        let received = side.jobs.recv();
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
            metrics::histogram!(crate::ops::metrics::HASH_WAIT)
                .record(queued.enqueued.elapsed().as_secs_f64());
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
        let left = shared.pending.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!(crate::ops::metrics::HASH_QUEUE_DEPTH).set(left as f64);
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

pub struct Pool {
    shared: Arc<Shared>,
    jobs: flume::Sender<Queued>,
}

impl Pool {
    /// Starts `concurrency` hashing threads at nice value `nice`. `queue_timeout`: the longest a
    /// request may wait for one. `first_hash`: one hash's measured duration, the first estimate.
    pub fn new(
        concurrency: usize,
        queue_timeout: Duration,
        nice: u8,
        first_hash: Duration,
    ) -> anyhow::Result<Self> {
        let first_hash = first_hash.as_micros().clamp(1, u128::from(u32::MAX)) as u64;
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
        let (jobs, received) = flume::unbounded();
        let side = Arc::new(WorkerSide {
            jobs: received,
            recent: Mutex::new(([first_hash; RECENT], 0)),
        });
        for i in 0..threads {
            let (shared, side) = (shared.clone(), side.clone());
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(shared, side, nice))?;
        }
        Ok(Pool { shared, jobs })
    }

    /// Hashes computed or verified since start: lets tests prove that refused attempts cost no hash.
    pub fn hashes_computed(&self) -> u64 {
        self.shared.computed.load(Ordering::Relaxed)
    }

    /// Requests refused because the queue could not serve them in time.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// The longest a requester waits for a hash, as `run` bounds it with the current estimate: the
    /// wait for a thread (`wait_limit`) plus the grace a started hash gets.
    pub fn longest_wait(&self) -> Duration {
        self.shared.wait_limit + self.shared.grace()
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
        metrics::gauge!(crate::ops::metrics::HASH_QUEUE_DEPTH).set((ahead + 1) as f64);
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
            metrics::counter!(crate::ops::metrics::HASH_REFUSALS).increment(1);
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
        match tokio::time::timeout(shared.grace(), rx).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) | Err(_) => Err(overloaded()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

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
        let hasher = Arc::new(Pool::new(1, Duration::from_secs(10), 10, Duration::from_millis(10)).unwrap());
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
        let hasher =
            Arc::new(Pool::new(1, Duration::from_millis(20), 10, Duration::from_millis(10)).unwrap());
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
