//! The README's first command on a machine with only Rust: the real binary started with no store URL
//! at all runs on its embedded backend, says so, and serves the whole README flow (generateCode, the
//! code from the development SMS log, verifyUser, register, login, me, logout).
//!
//! To prove it needs no server, the flow runs inside a network namespace of its own (`unshare -n`,
//! root), where nothing listens: PostgreSQL's and Redis's ports refuse connections there. Where a
//! namespace cannot be made, the flow runs plainly and says so.

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::{BIN, free_port};

const PHONE: &str = "+16502530777";
const INNER: &str = "embedded_binary::readme_flow_on_the_embedded_default";
/// Set by the outer test when the inner one runs in its own network namespace.
const ISOLATED: &str = "PHONE_AUTH_TEST_ISOLATED_NETNS";

#[tokio::test]
async fn the_readme_flow_runs_with_no_store_installed() {
    let exe = std::env::current_exe().unwrap();
    let can_isolate = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can_isolate {
        eprintln!("no network namespace here (unshare -n failed): the flow runs without isolation");
        readme_flow(false).await;
        return;
    }
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        .args(["--exact", INNER, "--ignored", "--nocapture", "--test-threads=1"])
        .env(ISOLATED, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the isolated flow failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the isolated flow did not run:\n{text}"
    );
}

/// Run by `the_readme_flow_runs_with_no_store_installed` inside its network namespace.
#[tokio::test]
#[ignore = "run inside a network namespace by the_readme_flow_runs_with_no_store_installed"]
async fn readme_flow_on_the_embedded_default() {
    readme_flow(std::env::var_os(ISOLATED).is_some()).await;
}

async fn readme_flow(isolated: bool) {
    if isolated {
        for port in [5432, 6379] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "something listens on {port} in the namespace"
            );
        }
    }
    let port = free_port();
    // Nothing but the address: no APP_ENV, no store URL, no secret (as `cargo run --release`).
    let mut child = Command::new(BIN)
        .env_clear()
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
    for pipe in [out, err] {
        let sink = log.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        }));
    }
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let start = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the service exited ({status}):\n{}", log.lock().unwrap());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the service did not start:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gql = |query: &'static str, variables: Value, token: Option<String>| {
        let client = client.clone();
        let url = format!("{base}/graphql");
        async move {
            let mut req = client
                .post(url)
                .json(&json!({ "query": query, "variables": variables }));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap().json::<Value>().await.unwrap()
        }
    };

    let ready: Value = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({ "store": "embedded" }));
    let page = client
        .get(format!("{base}/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "GraphiQL is served");
    assert!(page.text().await.unwrap().contains("graphiql"));

    let sent = gql(
        "mutation($p: String!) { generateCode(phone: $p) { phone } }",
        json!({ "p": PHONE }),
        None,
    )
    .await;
    assert!(sent["errors"].is_null(), "{sent}");
    // The development SMS sender writes the message to the log: read the code there, as the README
    // tells a developer to.
    let code = {
        let start = Instant::now();
        loop {
            let found = log
                .lock()
                .unwrap()
                .lines()
                .filter(|l| l.contains("development SMS sender") && l.contains(PHONE))
                .find_map(|l| six_digits(&l[l.find("body")?..]));
            if let Some(code) = found {
                break code;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no code in the log:\n{}",
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let verified = gql(
        "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { registrationToken } }",
        json!({ "p": PHONE, "c": code }),
        None,
    )
    .await;
    let token = verified["data"]["verifyUser"]["registrationToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{verified}"))
        .to_owned();
    let registered = gql(
        "mutation($i: RegisterInput!) { register(input: $i) { accessToken user { phone } } }",
        json!({ "i": { "registrationToken": token, "password": "violet-anchor-1987", "firstName": "Ada" } }),
        None,
    )
    .await;
    assert_eq!(
        registered["data"]["register"]["user"]["phone"], PHONE,
        "{registered}"
    );
    let login = gql(
        "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { accessToken } }",
        json!({ "p": PHONE, "w": "violet-anchor-1987" }),
        None,
    )
    .await;
    let access = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    let me = gql("{ me { phone firstName } }", json!({}), Some(access.clone())).await;
    assert_eq!(me["data"]["me"], json!({ "phone": PHONE, "firstName": "Ada" }));
    let out = gql(
        "mutation { logout { revokedSessions } }",
        json!({}),
        Some(access.clone()),
    )
    .await;
    assert_eq!(out["data"]["logout"]["revokedSessions"], 1, "{out}");
    assert!(gql("{ me { phone } }", json!({}), Some(access)).await["data"]["me"].is_null());

    let _ = child.kill();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    let log = log.lock().unwrap();
    assert!(log.contains("EMBEDDED backend"), "no banner:\n{log}");
    assert!(
        log.contains("LOST when it exits"),
        "the banner says what is lost:\n{log}"
    );
    assert!(
        log.contains(&format!("GraphiQL:  http://127.0.0.1:{port}/graphql")),
        "the banner says where GraphiQL is:\n{log}"
    );
}

/// The first run of exactly six digits in a line.
fn six_digits(line: &str) -> Option<String> {
    let bytes = line.as_bytes();
    (0..bytes.len().saturating_sub(5)).find_map(|i| {
        let run = &bytes[i..i + 6];
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + 6);
        (run.iter().all(u8::is_ascii_digit)
            && !before.is_some_and(|b| b.is_ascii_digit())
            && !after.is_some_and(u8::is_ascii_digit))
        .then(|| String::from_utf8_lossy(run).into_owned())
    })
}

/// A production start with no store URL is refused, saying which settings are missing and why,
/// before anything listens.
#[test]
fn production_refuses_the_embedded_backend() {
    let key = Command::new(BIN).arg("generate-key").output().unwrap();
    let key = String::from_utf8(key.stdout).unwrap().trim().to_owned();
    let out = Command::new(BIN)
        .env_clear()
        .env("APP_ENV", "production")
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("OTP_HMAC_SECRET", "x".repeat(32))
        .env("JWT_SIGNING_KEYS", key)
        .env("JWT_ISSUER", "https://auth.example.com")
        .env("SMS_PROVIDER", "webhook")
        .env("SMS_WEBHOOK_URL", "https://sms.example/hook")
        .env("SMS_WEBHOOK_SECRET", "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("APP_ENV=production needs DATABASE_URL and REDIS_URL"),
        "{text}"
    );
    assert!(
        !text.contains("EMBEDDED backend"),
        "no banner: it never started\n{text}"
    );
}
