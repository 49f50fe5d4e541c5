//! Where log lines go: stdout, in batches, written by a thread of its own.
//!
//! Why not a `write` per line: at 15,000 requests a second the access line's `write(2)` on the request
//! path cost more than the line's formatting. Why not a channel to a writer thread (tracing-appender's
//! `non_blocking`): waking that thread for every line cost about as much again in context switches
//! (measured in docs/BENCHMARKS.md, session 5). Here a line is appended to a shared buffer under a
//! mutex (a copy, no wake-up); the writer thread wakes every `FLUSH_EVERY` and writes what piled up
//! in one call.
//!
//! Nothing is dropped: past `HIGH_WATER` bytes the thread that logs writes the batch out itself
//! (backpressure, as a blocked stdout always gave). Lines stay in order: every write to stdout holds
//! `out`, and takes the buffer while holding it. At exit the guard writes what is left; a process
//! that aborts may lose its last `FLUSH_EVERY` of lines.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a line may wait in memory: short enough for someone tailing the log, long enough that a
/// busy server writes thousands of lines per call.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// What a batch buffer starts with: 20 ms of access lines at 20,000 requests a second (~250 bytes
/// each), so a busy server's buffer is not grown (copied) while lines are appended under the lock.
const BATCH_CAPACITY: usize = 128 * 1024;
/// Buffered bytes past which the logging thread flushes itself (about 3,000 access lines).
const HIGH_WATER: usize = 1 << 20;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Held for every write to stdout, and while taking `pending` for it: batches go out in order.
    /// With it, the buffer that goes back into `pending` next time (two buffers take turns: no
    /// allocation, and no fresh pages to fault in, per batch).
    out: Mutex<(std::io::Stdout, Vec<u8>)>,
    /// No flusher thread could be started: every line is written as it comes.
    direct: AtomicBool,
}

impl Shared {
    fn flush(&self) {
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let (out, spare) = &mut *guard;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_empty() {
                return;
            }
            spare.clear();
            std::mem::swap(&mut *pending, spare);
        }
        // A log that cannot be written (a closed pipe) must not take the service down.
        let _ = out.write_all(spare);
        let _ = out.flush();
        // A burst's huge buffer is not kept for good.
        if spare.capacity() > 8 * BATCH_CAPACITY {
            *spare = Vec::with_capacity(BATCH_CAPACITY);
        }
    }
}

/// The `MakeWriter` of the subscriber.
#[derive(Clone)]
pub struct BatchedStdout(Arc<Shared>);

/// Keep it until exit: dropping it writes what is buffered.
pub struct FlushGuard(Arc<Shared>);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// The writer and its guard; starts the thread that flushes every `FLUSH_EVERY`.
pub fn batched_stdout() -> (BatchedStdout, FlushGuard) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Vec::with_capacity(BATCH_CAPACITY)),
        out: Mutex::new((std::io::stdout(), Vec::with_capacity(BATCH_CAPACITY))),
        direct: AtomicBool::new(false),
    });
    let flusher = Arc::downgrade(&shared);
    let started = std::thread::Builder::new()
        .name("phone-auth-log".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                match flusher.upgrade() {
                    Some(shared) => shared.flush(),
                    None => return,
                }
            }
        });
    if started.is_err() {
        shared.direct.store(true, Ordering::Relaxed);
    }
    (BatchedStdout(shared.clone()), FlushGuard(shared))
}

impl BatchedStdout {
    /// Appends one whole line (or several): the access line's way in, without a `Line` handle.
    pub fn append(&self, bytes: &[u8]) {
        self.0.append(bytes);
    }
}

impl Shared {
    fn append(&self, bytes: &[u8]) {
        let len = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.extend_from_slice(bytes);
            pending.len()
        };
        if len >= HIGH_WATER || self.direct.load(Ordering::Relaxed) {
            self.flush();
        }
    }
}

/// One formatted event (tracing-subscriber writes each event with one `write_all`).
pub struct Line(Arc<Shared>);

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_in_order_until_flushed() {
        let (writer, guard) = batched_stdout();
        for i in 0..3 {
            let mut line = tracing_subscriber::fmt::MakeWriter::make_writer(&writer);
            line.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        let pending = writer.0.pending.lock().unwrap().clone();
        // Unless the flusher already ran, all three wait in order.
        if !pending.is_empty() {
            assert_eq!(String::from_utf8(pending).unwrap(), "line 0\nline 1\nline 2\n");
        }
        drop(guard);
        assert!(writer.0.pending.lock().unwrap().is_empty(), "the guard flushes");
    }
}
