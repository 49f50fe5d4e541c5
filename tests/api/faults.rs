//! Faults of the stores and the network: no fault turns into a lockout, a lost code or token, or a
//! wrong error code. Each test stalls, kills or stops a server of its own (a private `redis-server`,
//! a throwaway PostgreSQL cluster), never the shared ones, and every server is stopped on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::private_redis::{DEBUGGABLE, PrivateRedis};

/// Runs `redis-cli` against a private server (never the shared one).
fn redis_cli(server: &PrivateRedis, args: &[&str]) -> std::process::Child {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli is on PATH")
}

async fn zcard(app: &TestApp, what: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(app.key(&format!("{{{PHONE}}}:{what}")))
        .query_async(&mut app.redis().clone())
        .await
        .unwrap()
}

async fn exists(app: &TestApp, what: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(app.key(&format!("{{{PHONE}}}:{what}")))
        .query_async(&mut app.redis().clone())
        .await
        .unwrap()
}

/// The app on a private redis-server that a test may stall (`DEBUG SLEEP`), with a Redis timeout short
/// enough (300 ms) for a stall to outlast it.
async fn on_a_stallable_redis() -> (PrivateRedis, TestApp) {
    let redis = PrivateRedis::start(DEBUGGABLE);
    let url = redis.url.clone();
    let app = TestApp::spawn_with(|c| {
        c.stores.redis_url = Some(SecretString::from(url));
        c.stores.redis_timeout_ms = 300;
        c.stores.database_acquire_timeout_ms = 1000;
        c.hashing.hash_queue_timeout_ms = 3000;
    })
    .await;
    (redis, app)
}

/// Redis stalls past the client's timeout while a third login is being reserved: the reservation is
/// made after the client gave up, so its end is never recorded. Before leases it held the phone's
/// last attempt for good (every login, even with the right password, answered RATE_LIMITED, and each
/// refusal renewed it for an hour). Now it lapses after its lease, it never counts as a failure, and
/// a refusal extends nothing.
#[tokio::test]
async fn a_stalled_redis_does_not_lock_the_user_out() {
    crate::real_stores_only!("an outage of Redis (a private redis-server stalled)");
    let (redis, app) = on_a_stallable_redis().await;
    app.sign_up(PHONE, PASSWORD).await;
    for _ in 0..2 {
        assert_code(&app.login(PHONE, "wrong-password").await, "INVALID_CREDENTIALS");
    }
    let mut sleep = redis_cli(&redis, &["DEBUG", "SLEEP", "1.5"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stalled = app.login(PHONE, "wrong-password").await;
    assert_code(&stalled, "SERVICE_UNAVAILABLE");
    sleep.wait().unwrap();
    let stalled_at = Instant::now();

    // The stray reservation is in flight, not a failure. Its lease, at these settings 2 x 300 ms +
    // 1000 ms + 3000 ms + the hash grace (3 s, or ten hash times: app.rs), only ever runs down. (The
    // hash queue timeout is 3 s rather than less so that a busy test machine does not refuse hashes.)
    assert_eq!(zcard(&app, "pw_fails").await, 2);
    assert!(!exists(&app, "pw_lock").await);
    let pttl = || async {
        redis::cmd("PTTL")
            .arg(app.key(&format!("{{{PHONE}}}:pw_inflight")))
            .query_async::<i64>(&mut app.redis().clone())
            .await
            .unwrap()
    };
    let mut left = pttl().await;
    assert!(left > 0, "a reservation in flight: {left}");
    let lease = Duration::from_millis(left as u64);
    let signed_in = loop {
        let r = app.login(PHONE, PASSWORD).await;
        if r["errors"].is_null() {
            break stalled_at.elapsed();
        }
        assert_code(&r, "RATE_LIMITED");
        let now = pttl().await;
        assert!(now <= left, "a refusal extended the lease: {left} -> {now} ms");
        left = now;
        assert!(
            stalled_at.elapsed() < lease + Duration::from_secs(2),
            "still refused {:?} after the stall: {r}",
            stalled_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(signed_in <= lease + Duration::from_secs(2), "{signed_in:?}");
    // The success cleared the run: no failures, no lock, nothing in flight.
    assert_eq!(zcard(&app, "pw_fails").await, 0);
    assert_eq!(zcard(&app, "pw_inflight").await, 0);
    assert!(!exists(&app, "pw_lock").await);
    // A fresh run: two wrong passwords do not lock, the third does.
    for _ in 0..2 {
        assert_code(&app.login(PHONE, "wrong-password").await, "INVALID_CREDENTIALS");
    }
    assert_code(&app.login(PHONE, "wrong-password").await, "ACCOUNT_LOCKED");
}

/// A correct login stalled the same way leaves nothing that counts: after its lease, three wrong
/// passwords are needed to lock (not two).
#[tokio::test]
async fn a_stalled_correct_login_counts_for_nothing() {
    crate::real_stores_only!("an outage of Redis (a private redis-server stalled)");
    let (redis, app) = on_a_stallable_redis().await;
    app.sign_up(PHONE, PASSWORD).await;
    // One login first, so that the private server has the script (a stalled first EVALSHA would end
    // in NOSCRIPT, reserving nothing).
    assert!(app.login(PHONE, PASSWORD).await["errors"].is_null());
    let mut sleep = redis_cli(&redis, &["DEBUG", "SLEEP", "1.5"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_code(&app.login(PHONE, PASSWORD).await, "SERVICE_UNAVAILABLE");
    sleep.wait().unwrap();
    assert_eq!(
        zcard(&app, "pw_inflight").await,
        1,
        "the stalled reservation was made"
    );
    assert_eq!(zcard(&app, "pw_fails").await, 0);
    let left: i64 = redis::cmd("PTTL")
        .arg(app.key(&format!("{{{PHONE}}}:pw_inflight")))
        .query_async(&mut app.redis().clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64 + 100)).await;
    for _ in 0..2 {
        assert_code(&app.login(PHONE, "wrong-password").await, "INVALID_CREDENTIALS");
    }
    assert!(app.login(PHONE, PASSWORD).await["errors"].is_null());
}

/// A throwaway PostgreSQL cluster (initdb in a temporary directory), which a test may stop and start
/// again. Stopped (immediate mode) and deleted on drop. As root, its programs run as `postgres`
/// (PostgreSQL refuses to run as root).
struct PgServer {
    dir: PathBuf,
    port: u16,
}

impl PgServer {
    fn command(program: &str) -> Command {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let path = ["/usr/local/bin", "/usr/lib/postgresql/16/bin"]
            .iter()
            .map(|d| format!("{d}/{program}"))
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| program.to_owned());
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &path]);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(mut cmd: Command, what: &str) {
        let out = cmd.stdin(Stdio::null()).output().expect(what);
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> PgServer {
        let dir = std::env::temp_dir().join(format!("phone-auth-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .output();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let server = PgServer { dir, port };
        let mut initdb = Self::command("initdb");
        initdb.args([
            "-D",
            server.data().as_str(),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ]);
        Self::run(initdb, "initdb");
        server.resume();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/phone_auth_fault", self.port)
    }

    /// Starts (again) and waits until it accepts connections.
    fn resume(&self) {
        let mut start = Self::command("pg_ctl");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        start.args(["-D", &self.data(), "-o", &options, "-l"]);
        start.arg(self.dir.join("log"));
        start.args(["-w", "-t", "30", "start"]);
        Self::run(start, "pg_ctl start");
    }

    /// Stops at once (immediate mode: connections are cut, as in a crash).
    fn stop(&self) {
        let mut stop = Self::command("pg_ctl");
        stop.args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        Self::run(stop, "pg_ctl stop");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut stop = Self::command("pg_ctl");
        stop.args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn on_throwaway_pg(pg: &PgServer) -> impl FnOnce(&mut phone_auth::config::Config) + '_ {
    move |c| {
        c.stores.database_url = Some(SecretString::from(pg.url()));
        c.stores.database_acquire_timeout_ms = 1000;
    }
}

/// PostgreSQL is down when a right code is checked: the answer is SERVICE_UNAVAILABLE, and the code
/// is given back (same tries left), so once PostgreSQL is back the same code works. The same for a
/// registration token: register while PostgreSQL is down keeps the token.
#[tokio::test]
async fn a_postgres_outage_burns_neither_code_nor_token() {
    crate::real_stores_only!("an outage of PostgreSQL (a private server stopped)");
    let pg = PgServer::start();
    let app = TestApp::spawn_with(on_throwaway_pg(&pg)).await;
    app.generate_code(PHONE).await;
    let code = app.last_code(PHONE);
    // One wrong try first: the restored code keeps it.
    assert_code(&app.verify(PHONE, "000000").await, "INVALID_CODE");
    let before = app.redis_get_hash(&format!("{{{PHONE}}}:otp")).await;
    pg.stop();
    assert_code(&app.verify(PHONE, &code).await, "SERVICE_UNAVAILABLE");
    assert_eq!(app.redis_get_hash(&format!("{{{PHONE}}}:otp")).await, before);
    pg.resume();
    let v = app.verify(PHONE, &code).await;
    let token = v["data"]["verifyUser"]["registrationToken"]
        .as_str()
        .unwrap_or_else(|| panic!("the same code works after the outage: {v}"))
        .to_owned();

    pg.stop();
    assert_code(&app.register(&token, PASSWORD).await, "SERVICE_UNAVAILABLE");
    pg.resume();
    let r = app.register(&token, PASSWORD).await;
    assert!(
        r["errors"].is_null(),
        "the same token works after the outage: {r}"
    );
    assert_code(&app.register(&token, PASSWORD).await, "INVALID_TOKEN");
    let n: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A PostgreSQL that answers "not accepting connections" (SQLSTATE 57P03) is SERVICE_UNAVAILABLE,
/// not INTERNAL_SERVER_ERROR; and a registration whose account was created but whose session insert
/// failed completes as a sign-in when retried with the same token (same account, no second one).
#[tokio::test]
async fn a_failed_session_insert_is_completed_by_the_retry() {
    crate::real_stores_only!("a failing PostgreSQL statement");
    let app = TestApp::spawn().await;
    let token = app.registration_token(PHONE).await;
    sqlx::raw_sql(
        "create function refuse() returns trigger language plpgsql as $$
           begin raise exception 'the database system is not currently accepting connections'
                 using errcode = '57P03'; end $$;
         create trigger refuse before insert on sessions for each row execute function refuse();",
    )
    .execute(app.pg())
    .await
    .unwrap();
    assert_code(&app.register(&token, PASSWORD).await, "SERVICE_UNAVAILABLE");
    let created: Vec<uuid::Uuid> = sqlx::query_scalar("select id from users")
        .fetch_all(app.pg())
        .await
        .unwrap();
    assert_eq!(created.len(), 1, "the account was created");
    sqlx::raw_sql("drop trigger refuse on sessions")
        .execute(app.pg())
        .await
        .unwrap();

    let r = app.register(&token, "another-password-42").await;
    assert!(r["errors"].is_null(), "the retry signs in: {r}");
    assert_eq!(r["data"]["register"]["user"]["id"], created[0].to_string());
    let n: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(n, 1);
    // The account has the password the client last sent, and the token is used up now.
    assert!(app.login(PHONE, "another-password-42").await["errors"].is_null());
    assert_code(&app.register(&token, PASSWORD).await, "INVALID_TOKEN");
}

/// A body announced over MAX_BODY_BYTES is refused from the head, at once: not after the request
/// timeout (408) while the server waits for a body that never comes.
#[tokio::test]
async fn an_announced_oversized_body_is_refused_at_once() {
    let app = TestApp::spawn().await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.read(&mut head))
        .await
        .expect("answered within a second")
        .unwrap();
    let text = String::from_utf8_lossy(&head[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

/// The service's Redis connection is killed (CLIENT KILL on the private server): the next request
/// still succeeds. Its first command fails with a broken pipe (the connection was already closed) and
/// runs once more on the new connection. Checked for a login (reserve and outcome scripts), a
/// generateCode (issue script) and a correct login.
#[tokio::test]
async fn a_killed_redis_connection_costs_no_request() {
    crate::real_stores_only!("a killed Redis connection (CLIENT KILL)");
    let redis = PrivateRedis::start(DEBUGGABLE);
    let app = TestApp::spawn_with(|c| {
        c.stores.redis_url = Some(SecretString::from(redis.url.clone()));
        c.otp.otp_resend_cooldown_seconds = 0;
    })
    .await;
    app.sign_up(PHONE, PASSWORD).await;
    let kill = || async {
        assert!(
            redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "normal"])
                .wait()
                .unwrap()
                .success()
        );
        // Let the connection notice its end (it does while idle).
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    kill().await;
    assert_code(&app.login(PHONE, "wrong-password").await, "INVALID_CREDENTIALS");
    kill().await;
    let sent = app.request_code(PHONE).await;
    assert!(sent["errors"].is_null(), "{sent}");
    kill().await;
    let signed_in = app.login(PHONE, PASSWORD).await;
    assert!(signed_in["errors"].is_null(), "{signed_in}");
    // One code, one SMS job, however many runs.
    app.wait_outbox_empty().await;
    assert_eq!(app.sms.count(PHONE), 2, "the sign-up's code and this one");
}

/// SIGTERM while PostgreSQL is down: the audit writer cannot write the event queued by a
/// generateCode (which needs only Redis). Shutdown gives it its 5 s, then says how many events are
/// lost and exits 0: it neither hangs nor loses them silently.
#[tokio::test]
async fn shutdown_with_postgres_down_reports_the_audit_events_it_lost() {
    crate::real_stores_only!("a service process on a throwaway PostgreSQL, stopped");
    let pg = PgServer::start();
    let mut p = crate::process::Process::start(&[
        ("DATABASE_URL", pg.url()),
        ("SHUTDOWN_DRAIN_SECONDS", "0".into()),
        ("SMS_TEST_NUMBERS", "+16502530777:424242".into()),
    ])
    .await;
    pg.stop();
    let sent = p
        .gql(
            "mutation($p: String!) { generateCode(phone: $p) { expiresInSeconds } }",
            serde_json::json!({ "p": "+16502530777" }),
        )
        .await;
    assert!(sent["errors"].is_null(), "{sent}");
    let start = Instant::now();
    let status = p.terminate(Duration::from_secs(30)).await;
    let log = p.lines().join("\n");
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "did not wait for the writer:\n{log}"
    );
    let lost = p
        .lines()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not write its queued events"))
        })
        .unwrap_or_else(|| panic!("no line about the lost events:\n{log}"));
    assert_eq!(lost["level"], "ERROR", "{lost}");
    assert_eq!(lost["events"], 1, "{lost}");
}
