//! Child processes (the server under test, the baseline server, a private redis-server), how they are
//! started (under a wrapper such as valgrind, loopback only), and what /proc says about them: peak RSS,
//! CPU time, per-thread run-queue waits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::Conn;

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<ChildGuard> {
        let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Exited already? (A server that dies during a run is a finding, not a hang.)
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// `program`, or `wrapper... program` when a wrapper (valgrind, perf) is given.
pub fn wrapped(wrapper: &str, program: &std::ffi::OsStr) -> Command {
    let mut parts = wrapper.split_whitespace();
    match parts.next() {
        None => Command::new(program),
        Some(first) => {
            let mut c = Command::new(first);
            c.args(parts).arg(program);
            c
        }
    }
}

/// How long a server may take to answer its first health check (much longer under a wrapper).
pub fn ready_within(wrapper: &str) -> Duration {
    if wrapper.trim().is_empty() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    }
}

/// Is the wrapper callgrind (whose instrumentation loadgen switches on per measured window)?
pub fn callgrind(wrapper: &str) -> bool {
    wrapper.contains("callgrind")
}

/// `callgrind_control ARGS PID` (quietly).
pub fn callgrind_control(args: &[&str], pid: u32) {
    let _ = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Refuses a URL whose host is not this machine's loopback.
pub fn ensure_loopback(url: &str, what: &str) -> anyhow::Result<()> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    let ok = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        ok,
        "{what} must be on this machine's loopback (127.0.0.1), not {host:?}"
    );
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bind 0, read, release).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `GET path` answers 200, or the child exits, or `within` passes.
pub async fn wait_http_ok(
    child: &mut ChildGuard,
    addr: SocketAddr,
    path: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.exited() {
            anyhow::bail!("{} exited during start ({status})", child.name);
        }
        let mut conn = Conn::new(addr);
        if let Ok(200) = conn.get(path).await {
            return Ok(());
        }
        if Instant::now() > until {
            anyhow::bail!("{} did not answer 200 on {path} within {within:?}", child.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private redis-server on a free port, no persistence.
pub async fn start_redis(dir: &Path) -> anyhow::Result<(ChildGuard, String)> {
    for _ in 0..5 {
        let port = free_port()?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(dir);
        let mut child = ChildGuard::spawn("redis-server", command, &dir.join("redis.log"))?;
        let url = format!("redis://127.0.0.1:{port}");
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && child.exited().is_none() {
            if let Ok(client) = redis::Client::open(url.as_str())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return Ok((child, url));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    anyhow::bail!("could not start redis-server (is it on PATH?)")
}

pub async fn redis_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

fn status_field_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident set size since start or since the last `reset_peak_rss`, KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field_kib(pid, "VmHWM:")
}

/// Resets VmHWM to the current RSS (Linux: `echo 5 > /proc/PID/clear_refs`). False if not allowed.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User + system CPU time of a process (all its threads, exited ones included), milliseconds.
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after "state".
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) * 10)
}

/// CPU time (ms) of every PostgreSQL process on this machine (postmaster, backends, writers): what
/// the audit rows and the other statements cost the server beside ours. A backend that exits between
/// two readings takes its time with it; the benchmark's connections live for the whole run.
pub fn postgres_cpu_ms() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "postgres") {
            total += cpu_ms(pid).unwrap_or(0);
        }
    }
    Some(total)
}

/// Busy CPU time (ms) of the whole machine, all cores (`/proc/stat`: everything but idle and iowait).
pub fn machine_busy_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy * 10)
}

/// Minor page faults of a process since start (all threads).
pub fn minor_faults(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// CPU and run-queue wait per thread (from /proc/PID/task/*/schedstat), nanoseconds, by thread id.
#[derive(Clone, Debug, Default)]
pub struct ThreadTimes {
    pub by_tid: BTreeMap<u32, (String, u64, u64)>,
}

pub fn thread_times(pid: u32) -> ThreadTimes {
    let mut out = ThreadTimes::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let path: PathBuf = entry.path();
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let sched = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut parts = sched.split_whitespace().map(|s| s.parse::<u64>().unwrap_or(0));
        let run = parts.next().unwrap_or(0);
        let wait = parts.next().unwrap_or(0);
        out.by_tid.insert(tid, (name, run, wait));
    }
    out
}

/// Per-thread CPU and run-queue wait during a run, largest CPU first: (name, cpu ms, wait ms).
pub fn thread_deltas(before: &ThreadTimes, after: &ThreadTimes) -> Vec<(String, f64, f64)> {
    let mut out: Vec<(String, f64, f64)> = after
        .by_tid
        .iter()
        .map(|(tid, (name, run, wait))| {
            let (r0, w0) = before.by_tid.get(tid).map_or((0, 0), |(_, r, w)| (*r, *w));
            (
                format!("{name}/{tid}"),
                run.saturating_sub(r0) as f64 / 1e6,
                wait.saturating_sub(w0) as f64 / 1e6,
            )
        })
        .filter(|(_, cpu, wait)| *cpu > 0.5 || *wait > 0.5)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

#[cfg(test)]
mod tests {
    use super::ensure_loopback;

    #[test]
    fn only_loopback_urls_are_accepted() {
        for url in [
            "postgres://postgres@127.0.0.1:5432",
            "redis://localhost:6379",
            "redis://[::1]:6379/0",
            "redis://:secret@127.0.0.2",
        ] {
            assert!(ensure_loopback(url, "url").is_ok(), "{url}");
        }
        for url in [
            "postgres://postgres@10.0.0.1:5432",
            "redis://db.example.com:6379",
            "redis://[2001:db8::1]:6379",
            "postgres://127.0.0.1@db.example.com/x",
        ] {
            assert!(ensure_loopback(url, "url").is_err(), "{url}");
        }
    }
}
