//! The bounds the service is compared with, measured in the same run: argon2id verifications per
//! second (one core, then all cores at once), and the baseline server (`loadgen baseline-server`), a
//! bare axum handler on the service's runtime and Redis client with two routes: baseline (1), one
//! EVALSHA of a two-command script; baseline (1b), the service's own `generateCode` script through
//! `OtpService::issue`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse as _, Response};
use phone_auth::config::Config;
use phone_auth::domain::{PhoneNumber, PhonePolicy};
use phone_auth::services::Keys;
use phone_auth::services::otp::{OtpService, TestNumbers};
use serde_json::{Value, json};

use crate::bodies::{PhoneGen, gen_body};
use crate::procs::{self, ChildGuard};
use crate::run::{Bench, measured};
use crate::servers::{Server, bench_settings};

/// argon2id verifications per second with the server's own hashing code (one reused memory block per
/// thread): 3 s on one thread, then 3 s on every core at once. The bound of `login`.
pub fn argon2_rates(bench: &mut Bench) -> anyhow::Result<()> {
    use phone_auth::services::password::{HashMemory, hash_with, verify_with};
    println!("baseline argon2: measuring one core's argon2id verifications/s (m=19456 t=2 p=1)");
    let phc = hash_with(&mut HashMemory::new(), b"loadgen argon2 probe password")?;
    let measure = |secs: f64| -> anyhow::Result<f64> {
        let mut memory = HashMemory::new();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            anyhow::ensure!(verify_with(&mut memory, b"loadgen argon2 probe password", &phc));
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    let single = measure(3.0)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parallel: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| measure(3.0))).collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().and_then(Result::ok).unwrap_or(0.0))
            .sum()
    });
    bench.argon2_single = Some(single);
    bench.argon2_parallel = Some(parallel);
    bench.note(
        "argon2",
        format!(
            "one core: {single:.1} verifications/s ({:.2} ms each); {threads} threads at once: {parallel:.1}/s in total",
            1000.0 / single
        ),
    );
    Ok(())
}

const BASELINE_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
";

#[derive(Clone)]
struct BaselineState {
    redis: phone_auth::services::redis_conn::RedisConn,
    script: Arc<redis::Script>,
    prefix: Arc<str>,
    counter: Arc<AtomicU64>,
    /// Baseline (1b): the service's own `generateCode` script, through `OtpService::issue`.
    otp: Arc<OtpService>,
    policy: Arc<PhonePolicy>,
}

fn graphql_error(message: &str, code: &str) -> Response {
    axum::Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })).into_response()
}

/// Baseline (1), `POST /graphql`: one EVALSHA (INCR + EXPIRE) on one of 10,000 keys; the body unread.
async fn baseline_handler(State(s): State<BaselineState>, _body: Bytes) -> Response {
    let n = s.counter.fetch_add(1, Ordering::Relaxed) % 10_000;
    let result: redis::RedisResult<i64> = s
        .script
        .key(format!("{}baseline:{n}", s.prefix))
        .arg(60)
        .invoke_async(&mut s.redis.clone())
        .await;
    match result {
        Ok(v) => axum::Json(json!({ "data": { "n": v } })).into_response(),
        Err(_) => graphql_error("redis", "SERVICE_UNAVAILABLE"),
    }
}

/// Baseline (1b), `POST /issue`: the body's `variables.p` parsed as JSON and as a phone number, then
/// `OtpService::issue` (the same one-script Redis work as `generateCode`: HMAC, budgets, code, SMS
/// job). No GraphQL, no HTTP guards, no SMS workers: the floor of `generateCode` over HTTP.
async fn issue_handler(State(s): State<BaselineState>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return graphql_error("BAD_REQUEST", "BAD_REQUEST");
    };
    let Some(Ok(phone)) = request["variables"]["p"]
        .as_str()
        .map(|p| PhoneNumber::parse(p, &s.policy))
    else {
        return graphql_error("BAD_USER_INPUT", "BAD_USER_INPUT");
    };
    match s.otp.issue(&phone, "127.0.0.1").await {
        Ok(issued) => axum::Json(json!({ "data": { "generateCode": {
            "phone": phone.e164(),
            "expiresInSeconds": issued.expires_in_seconds,
            "resendInSeconds": issued.resend_in_seconds,
        } } }))
        .into_response(),
        Err(_) => graphql_error("ISSUE_FAILED", "ISSUE_FAILED"),
    }
}

/// `loadgen baseline-server`: the same runtime (tokio multi-thread, default workers), the same Redis
/// client (one ConnectionManager, same timeouts) as the service, and nothing else.
pub fn baseline_server(listen: SocketAddr, redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    procs::ensure_loopback(redis_url, "--redis-url")?;
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the baseline server listens on loopback only"
    );
    let config = Config::defaults();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let target = phone_auth::services::redis_conn::RedisTarget::Single(redis_url.to_owned());
        let redis = target
            .connect(Duration::from_millis(config.stores.redis_timeout_ms), 2)
            .await?;
        let secret = phone_auth::random::random_bytes::<32>()?.to_vec();
        // The service's own generateCode settings (`Config::defaults()` reads the environment, which
        // `run_baseline` sets to the service's under the benchmark) and its own outbox appender.
        let keys = Keys::new(prefix);
        let appender = phone_auth::services::outbox::Appender::new(
            phone_auth::services::outbox::Outbox::stream_key(&keys),
            config.sms.sms_outbox_max_len,
            phone_auth::services::outbox::outbox_ttl_seconds(config.otp.otp_ttl_seconds),
            phone_auth::services::outbox::CodeCipher::from_secret(&secret),
            phone_auth::services::outbox::OutboxQueue::Redis(
                phone_auth::services::outbox::RedisOutbox::connect(&target, &keys).await?,
            ),
        );
        let otp = OtpService::new(
            phone_auth::services::otp::Codes::Redis(phone_auth::services::otp::RedisCodes::new(
                redis.clone(),
                keys,
            )),
            secrecy::SecretSlice::from(secret),
            (&config).into(),
            TestNumbers::default(),
            appender,
        );
        let state = BaselineState {
            redis,
            script: Arc::new(redis::Script::new(BASELINE_LUA)),
            prefix: prefix.into(),
            counter: Arc::new(AtomicU64::new(0)),
            otp: Arc::new(otp),
            policy: Arc::new(PhonePolicy::default()),
        };
        let router = axum::Router::new()
            .route("/graphql", axum::routing::post(baseline_handler))
            .route("/issue", axum::routing::post(issue_handler))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router).await?;
        anyhow::Ok(())
    })
}

/// Starts this program as the baseline server, with the service's benchmark settings as its only
/// environment (PATH aside), and measures baseline (1), then (1b) when generate-code is selected.
pub async fn run_baseline(bench: &mut Bench) -> anyhow::Result<()> {
    let port = procs::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let prefix = format!("bench:{}:baseline:", bench.run_id);
    let exe = std::env::current_exe()?;
    let mut command = procs::wrapped(&bench.args.server_wrapper, exe.as_os_str());
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(bench_settings());
    command
        .arg("baseline-server")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--redis-url")
        .arg(&bench.redis_url)
        .arg("--prefix")
        .arg(&prefix);
    let log = bench.work_dir.join("baseline-server.log");
    let mut guard = ChildGuard::spawn("baseline-server", command, &log)?;
    procs::wait_http_ok(
        &mut guard,
        addr,
        "/healthz",
        procs::ready_within(&bench.args.server_wrapper),
    )
    .await?;
    let mut server = Server {
        guard,
        addr,
        name: "baseline".into(),
        prefix,
        cluster: false,
    };
    let clients = bench.args.clients;
    let redis_cpu0 = bench.redis_pid.and_then(procs::cpu_ms);
    measured(bench, &server, "baseline-redis", clients, |mut c| async move {
        let body = gen_body("+14155550100");
        while c.limits.next() {
            c.gql("evalsha", body.clone(), None, &[]).await;
        }
        c
    })
    .await?;
    note_redis_cpu(bench, "baseline-redis", "evalsha", redis_cpu0);
    if bench.wants("generate-code") {
        let redis_cpu0 = bench.redis_pid.and_then(procs::cpu_ms);
        let numbers = PhoneGen::new("+1415");
        measured(bench, &server, "baseline-issue", clients, move |mut c| {
            let numbers = numbers.clone();
            async move {
                while c.limits.next() {
                    let Some(p) = numbers.next() else { break };
                    c.post_to("/issue", "generateCode-script", gen_body(&p), None, &[])
                        .await;
                }
                c
            }
        })
        .await?;
        note_redis_cpu(bench, "baseline-issue", "generateCode-script", redis_cpu0);
    }
    server.guard.stop(Duration::from_secs(5));
    Ok(())
}

/// redis-server's CPU per request of a scenario, warm-up included, as a note.
fn note_redis_cpu(bench: &mut Bench, scenario: &str, op: &str, before: Option<u64>) {
    let after = bench.redis_pid.and_then(procs::cpu_ms);
    let Some(requests) = bench.row(scenario, op).map(|r| r.requests) else {
        return;
    };
    if let (Some(a), Some(b)) = (before, after)
        && requests > 0
    {
        let per = (b.saturating_sub(a)) as f64 * 1000.0 / requests as f64;
        bench.note(
            "redis-cpu",
            format!("{scenario}/{op}: redis-server CPU {per:.1} us per request (warm-up included)"),
        );
    }
}
