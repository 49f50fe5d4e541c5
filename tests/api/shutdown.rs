//! Shutdown: on SIGTERM the real binary drains (`/readyz` 503 while requests are still served, on
//! existing keep-alive connections too), then closes and exits 0; detached flows are waited for.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// The real binary, killed (and its database dropped) when dropped.
struct Binary {
    child: Child,
    db: String,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop_test_stores(&self.db, None);
    }
}

/// One HTTP/1.1 GET on `stream` (kept open): the status and the lower-cased head.
fn get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "connection closed: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head)
}

fn connect(port: u16) -> Option<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Some(stream)
}

fn readyz(port: u16) -> Option<u16> {
    Some(get(&mut connect(port)?, "/readyz").0)
}

#[test]
fn sigterm_drains_then_exits_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = format!("phone_auth_test_{id}");
    let child = Command::new(env!("CARGO_BIN_EXE_phone-auth"))
        .env("APP_ENV", "test")
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", format!("{}/{db}", server_url()))
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_PREFIX", format!("test:{id}:"))
        .env("OTP_HMAC_SECRET", "test-secret-test-secret-test-secret!")
        .env("SHUTDOWN_DRAIN_SECONDS", "2")
        .env("SMS_WORKERS", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut binary = Binary { child, db };

    let started = Instant::now();
    while readyz(port) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the binary did not become ready"
        );
        assert!(binary.child.try_wait().unwrap().is_none(), "the binary exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A keep-alive connection, idle when the signal comes.
    let mut idle = connect(port).unwrap();
    let (status, head) = get(&mut idle, "/healthz");
    assert_eq!(status, 200);
    assert!(!head.contains("connection: close"), "{head}");

    let term = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &binary.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    loop {
        let status = readyz(port).expect("the listener stays open while draining");
        if status == 503 {
            break;
        }
        assert!(term.elapsed() < Duration::from_secs(1), "/readyz still {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Served on the idle keep-alive connection, which is then told to close.
    let (status, head) = get(&mut idle, "/healthz");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        term.elapsed() < Duration::from_secs(2),
        "checked within the drain"
    );

    let exit = loop {
        if let Some(exit) = binary.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            term.elapsed() < Duration::from_secs(20),
            "the binary did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(
        term.elapsed() >= Duration::from_secs(2),
        "exited after {:?}, before the drain ended",
        term.elapsed()
    );
}

/// A detached flow whose request went away still runs to its end, and shutdown waits for it.
#[tokio::test]
async fn shutdown_waits_for_detached_flows() {
    crate::real_stores_only!(
        "runs the binary on the real stores; the binary on the embedded backend has its own test (embedded_binary::the_readme_flow_runs_with_no_store_installed)"
    );
    let app = TestApp::spawn().await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let auth = app.auth.clone();
    let request = tokio::spawn(async move {
        auth.detached(move |_| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    request.abort(); // the client went away
    assert_eq!(app.auth.detached_running(), 1);
    assert!(
        !app.auth.wait_detached(Duration::from_millis(100)).await,
        "bounded: gives up while the flow runs"
    );
    assert!(app.auth.wait_detached(Duration::from_secs(5)).await);
    assert!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        "the flow ran to its end"
    );
    assert_eq!(app.auth.detached_running(), 0);
}
