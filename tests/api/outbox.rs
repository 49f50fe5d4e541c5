//! SMS delivery through the Redis Streams outbox, against a local HTTP stub standing in for the
//! webhook receiver and for Twilio's API.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;
use crate::stub::{Reply, Stub};

const SECRET_B64: &str = "c2VjcmV0LWtleS1mb3Itc21zLXdlYmhvb2stdGVzdHM=";

fn webhook(stub: &Stub) -> impl FnOnce(&mut phone_auth::config::Config) + '_ {
    move |c| {
        c.sms.sms_provider = phone_auth::config::SmsProvider::Webhook;
        c.sms.sms_webhook_url = Some(stub.url("/sms"));
        c.sms.sms_webhook_secret = Some(SecretString::from(format!("whsec_{SECRET_B64}")));
        c.sms.sms_backoff_base_ms = 10;
        c.sms.sms_backoff_max_ms = 40;
        c.sms.sms_http_timeout_ms = 2000;
        c.sms.sms_claim_idle_ms = 3000;
        c.sms.sms_webotp_domain = Some("app.example.com".into());
        c.sms.sms_app_name = "Acme".into();
    }
}

async fn dead_letters(app: &TestApp) -> Vec<std::collections::HashMap<String, String>> {
    if let Some((memory, _)) = &app.embedded {
        return memory.dead_letters();
    }
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(app.key("sms:dead"))
        .arg("-")
        .arg("+")
        .query_async(&mut app.redis().clone())
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            e.map
                .keys()
                .map(|k| (k.clone(), e.get::<String>(k).unwrap_or_default()))
                .collect()
        })
        .collect()
}

/// `command key` on a key of this test, answering an integer (TTL, XLEN, DEL).
async fn on_key(app: &TestApp, command: &str, key: &str) -> i64 {
    redis::cmd(command)
        .arg(app.key(key))
        .query_async(&mut app.redis().clone())
        .await
        .unwrap()
}

/// TTL of `sms:outbox` or `sms:dead`, on either backend.
async fn ttl(app: &TestApp, key: &str) -> i64 {
    if let Some((memory, _)) = &app.embedded {
        let (outbox, dead) = memory.outbox_ttls();
        return if key == "sms:dead" { dead } else { outbox };
    }
    on_key(app, "TTL", key).await
}

/// XLEN of `sms:outbox` or `sms:dead`, on either backend.
async fn xlen(app: &TestApp, stream: &str) -> i64 {
    if app.embedded.is_some() {
        let (depth, dead) = app.outbox.depth().await.unwrap();
        return if stream == "sms:dead" { dead } else { depth } as i64;
    }
    on_key(app, "XLEN", stream).await
}

/// A delivered message: right body, Standard Webhooks signature, idempotency key, sent once.
#[tokio::test]
async fn webhook_delivers_a_signed_message_once() {
    let stub = Stub::start([]).await;
    let app = TestApp::spawn_with_provider(webhook(&stub), false).await;
    let r = app.generate_code(PHONE).await;
    assert!(r["errors"].is_null(), "{r}");
    let got = stub.wait_for(1).await;
    let req = &got[0];
    let json: Value = serde_json::from_str(&req.body).unwrap();
    let code = json["code"].as_str().unwrap();
    assert_eq!(json["to"], PHONE);
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(
        json["body"].as_str().unwrap(),
        format!(
            "Acme: your code is {code}. It expires in 5 minutes. Do not share it.\n\n@app.example.com #{code}"
        )
    );
    let id = json["messageId"].as_str().unwrap();
    assert_eq!(req.headers["webhook-id"], id);
    let ts: u64 = req.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET_B64)
        .unwrap();
    let expected = phone_auth::services::sms::WebhookSender::signature(&key, id, ts, req.body.as_bytes());
    assert_eq!(req.headers["webhook-signature"], expected.as_str());
    // The code works, and nothing was sent twice.
    let v = app.verify(PHONE, code).await;
    assert!(v["errors"].is_null(), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stub.received().len(), 1);
    assert_eq!(
        xlen(&app, "sms:outbox").await,
        0,
        "the code left Redis with the message"
    );
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 1);
}

/// One worker hands the jobs it read to a slow provider concurrently, and finishes them: each is
/// delivered once and leaves the outbox.
#[tokio::test]
async fn a_worker_delivers_its_jobs_concurrently() {
    let stub = Stub::start(std::iter::repeat_n(Reply::Slow(400), 9)).await;
    let configure = webhook(&stub);
    let app = TestApp::spawn_with_provider(
        |c| {
            configure(c);
            c.sms.sms_workers = 1;
        },
        false,
    )
    .await;
    for i in 0..9 {
        // Not `generate_code`, which waits for each delivery.
        let r = app.request_code(&format!("+165025306{i:02}")).await;
        assert!(r["errors"].is_null(), "{r}");
    }
    let got = stub.wait_for(9).await;
    app.wait_outbox_empty().await;
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 9, "each job sent once");
    assert!(
        stub.max_in_flight() >= 2,
        "one worker sent {} message(s) at a time",
        stub.max_in_flight()
    );
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 9);
    assert_eq!(xlen(&app, "sms:outbox").await, 0);
    if let Some((memory, _)) = &app.embedded {
        assert_eq!(memory.pending_jobs(), 0, "every job acknowledged");
        return;
    }
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(app.key("sms:outbox"))
        .arg(phone_auth::services::outbox::GROUP)
        .query_async(&mut app.redis().clone())
        .await
        .unwrap();
    assert!(
        matches!(&pending, redis::Value::Array(a) if a.first() == Some(&redis::Value::Int(0))),
        "every job acknowledged: {pending:?}"
    );
}

/// A 500 is retried with backoff and then delivered, with the same idempotency key each time.
#[tokio::test]
async fn server_errors_are_retried_then_delivered() {
    let stub = Stub::start([Reply::Status(500), Reply::Status(503)]).await;
    let app = TestApp::spawn_with_provider(webhook(&stub), false).await;
    app.generate_code(PHONE).await;
    let got = stub.wait_for(3).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    app.wait_outbox_empty().await;
    assert_eq!(app.outbox.stats.retried.load(Ordering::Relaxed), 2);
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 1);
    assert!(dead_letters(&app).await.is_empty());
}

/// A 4xx cannot be fixed by retrying: dead-lettered at once, with its reason and without the code.
#[tokio::test]
async fn client_errors_go_to_the_dead_letter_stream() {
    let stub = Stub::start([Reply::Status(400)]).await;
    let app = TestApp::spawn_with_provider(webhook(&stub), false).await;
    app.generate_code(PHONE).await;
    let code = serde_json::from_str::<Value>(&stub.received()[0].body).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let dead = dead_letters(&app).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["to"], PHONE);
    assert!(dead[0]["reason"].contains("400"), "{dead:?}");
    assert!(
        !format!("{dead:?}").contains(&code),
        "a dead letter never holds the code"
    );
    assert_eq!(stub.received().len(), 1, "not retried");
    assert_eq!(xlen(&app, "sms:outbox").await, 0);
    // Both streams expire: the outbox twice a code's lifetime (at least an hour) after its last
    // job, dead letters 7 days after the last one.
    let outbox_ttl = ttl(&app, "sms:outbox").await;
    assert!((3500..=3600).contains(&outbox_ttl), "outbox TTL {outbox_ttl}");
    let dead_ttl = ttl(&app, "sms:dead").await;
    assert!(
        (7 * 86400 - 100..=7 * 86400).contains(&dead_ttl),
        "dead letter TTL {dead_ttl}"
    );
}

/// The outbox stream expires when the service is idle; the workers then recreate it (with its group
/// and a TTL), and the next code is delivered as usual.
#[tokio::test]
async fn an_expired_outbox_is_recreated() {
    crate::real_stores_only!("deletes the Redis stream and its consumer group");
    let stub = Stub::start([]).await;
    let app = TestApp::spawn_with_provider(webhook(&stub), false).await;
    assert!(ttl(&app, "sms:outbox").await > 0, "created with a TTL");
    // What the TTL lapsing does: the key goes, with its consumer group.
    on_key(&app, "DEL", "sms:outbox").await;
    // The workers notice (their blocking read fails with NOGROUP) and recreate it.
    let mut recreated = false;
    for _ in 0..100 {
        if ttl(&app, "sms:outbox").await > 0 {
            recreated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recreated, "the outbox was not recreated");
    app.generate_code(PHONE).await;
    assert_eq!(stub.received().len(), 1);
    assert_eq!(xlen(&app, "sms:outbox").await, 0);
}

/// Always failing: after the last attempt, dead-lettered.
#[tokio::test]
async fn out_of_retries_is_dead_lettered() {
    let stub = Stub::start([Reply::Status(503); 10]).await;
    let app = TestApp::spawn_with_provider(
        |c| {
            webhook(&stub)(c);
            c.sms.sms_max_attempts = Some(3);
        },
        false,
    )
    .await;
    app.generate_code(PHONE).await;
    let dead = dead_letters(&app).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["reason"].contains("after 3 attempts"), "{dead:?}");
    assert_eq!(stub.received().len(), 3);
}

/// A worker killed mid-delivery: its job stays pending and another worker claims and delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_delivered_by_another() {
    let stub = Stub::start([Reply::Hang]).await;
    let app = TestApp::spawn_with_provider(
        |c| {
            webhook(&stub)(c);
            c.sms.sms_workers = 0;
            c.sms.sms_http_timeout_ms = 5000;
            c.sms.sms_backoff_max_ms = 10;
            c.sms.sms_claim_idle_ms = 5100;
        },
        false,
    )
    .await;
    let first = tokio::spawn(app.outbox.clone().run_worker("first".into()));
    let r = app
        .gql(
            "mutation { generateCode(phone: \"+16502530000\") { phone } }",
            serde_json::json!({}),
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    stub.wait_for(1).await;
    first.abort();
    let _ = first.await;
    assert_eq!(
        xlen(&app, "sms:outbox").await,
        1,
        "the job is still there, pending"
    );
    let _second = tokio::spawn(app.outbox.clone().run_worker("second".into()));
    let got = stub.wait_for(2).await;
    app.wait_outbox_empty().await;
    assert_eq!(
        got[0].headers["webhook-id"], got[1].headers["webhook-id"],
        "same idempotency key"
    );
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 1);
}

/// Twilio: the Messages endpoint, basic auth, form fields, idempotency header.
#[tokio::test]
async fn twilio_request_shape() {
    let stub = Stub::start([Reply::Status(201)]).await;
    let app = TestApp::spawn_with_provider(
        |c| {
            c.sms.sms_provider = phone_auth::config::SmsProvider::Twilio;
            c.sms.twilio_base_url = stub.url("");
            c.sms.twilio_account_sid = Some("AC123".into());
            c.sms.twilio_auth_token = Some(SecretString::from("tok"));
            c.sms.twilio_from = Some("+15005550006".into());
        },
        false,
    )
    .await;
    app.generate_code(PHONE).await;
    let req = &stub.wait_for(1).await[0];
    assert_eq!(req.path, "/2010-04-01/Accounts/AC123/Messages.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("AC123:tok");
    assert_eq!(req.headers["authorization"], format!("Basic {auth}").as_str());
    assert!(req.headers["I-Twilio-Idempotency-Token"].to_str().unwrap().len() >= 32);
    let form: std::collections::HashMap<String, String> = url_decode(&req.body);
    assert_eq!(form["To"], PHONE);
    assert_eq!(form["From"], "+15005550006");
    assert!(form["Body"].contains("your code is"), "{form:?}");
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 1);
}

fn url_decode(body: &str) -> std::collections::HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let bytes = v.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            (k.to_owned(), String::from_utf8(out).unwrap())
        })
        .collect()
}

/// Under a burst with no worker, the outbox stops at its cap: the rest are refused (no code stored
/// without a job), nothing is trimmed.
#[tokio::test]
async fn the_outbox_stays_bounded_under_a_burst() {
    let app = TestApp::spawn_with(|c| {
        c.sms.sms_workers = 0;
        c.sms.sms_outbox_max_len = 5;
    })
    .await;
    let mut refused = 0;
    for i in 0..20 {
        let r = app.request_code(&format!("+165025305{i:02}")).await;
        if code(&r) == Some("SERVICE_UNAVAILABLE") {
            refused += 1;
        } else {
            assert!(r["errors"].is_null(), "{r}");
        }
    }
    assert_eq!(refused, 15);
    assert_eq!(xlen(&app, "sms:outbox").await, 5);
    let codes = app
        .keys_with_ttl()
        .await
        .into_iter()
        .filter(|(k, _)| k.ends_with(":otp"))
        .count();
    assert_eq!(codes, 5, "a refused request stored no code");
}

/// A job older than the code's lifetime is dropped, not sent.
#[tokio::test]
async fn a_job_older_than_its_code_is_dropped() {
    let stub = Stub::start([]).await;
    let app = TestApp::spawn_with_provider(
        |c| {
            webhook(&stub)(c);
            c.sms.sms_workers = 0;
            c.otp.otp_ttl_seconds = 1;
        },
        false,
    )
    .await;
    app.gql(
        "mutation { generateCode(phone: \"+16502530000\") { phone } }",
        serde_json::json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _worker = tokio::spawn(app.outbox.clone().run_worker("late".into()));
    app.wait_outbox_empty().await;
    assert_eq!(app.outbox.stats.expired.load(Ordering::Relaxed), 1);
    assert!(stub.received().is_empty(), "an expired code is not sent");
    assert_eq!(dead_letters(&app).await[0]["reason"], "expired");
}

/// Every field of every entry of a stream of this test, as strings (Redis may hand a field such as
/// "123456" back as an integer: compare what it says, whatever its type).
async fn stream_fields(app: &TestApp, stream: &str) -> Vec<Vec<(String, String)>> {
    if let Some((memory, _)) = &app.embedded {
        assert_eq!(stream, "sms:outbox");
        return memory.queued_jobs();
    }
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(app.key(stream))
        .arg("-")
        .arg("+")
        .query_async(&mut app.redis().clone())
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|e| {
            e.map
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                        redis::Value::SimpleString(s) => s.clone(),
                        redis::Value::Int(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (k.clone(), text)
                })
                .collect()
        })
        .collect()
}

/// While its SMS waits for delivery, the code is in Redis only sealed: no field of the job holds it,
/// in any form. The worker opens it and the provider gets the right code.
#[tokio::test]
async fn a_queued_job_holds_no_code_in_clear() {
    let app = TestApp::spawn_with(|c| c.sms.sms_workers = 0).await;
    let r = app.request_code(PHONE).await;
    assert!(r["errors"].is_null(), "{r}");
    let queued = stream_fields(&app, "sms:outbox").await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let fields: Vec<&str> = queued[0].iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        fields.contains(&"sealed") && !fields.contains(&"code"),
        "{fields:?}"
    );

    let _worker = tokio::spawn(app.outbox.clone().run_worker("after".into()));
    app.wait_outbox_empty().await;
    let code = app.last_code(PHONE);
    for (name, value) in &queued[0] {
        assert!(
            !value.contains(&code),
            "the queued job's field {name} = {value:?} holds the code {code}"
        );
    }
    let v = app.verify(PHONE, &code).await;
    assert!(v["errors"].is_null(), "the delivered code is the stored one: {v}");
}

/// A job sealed under another key (OTP_HMAC_SECRET rotated while it waited) cannot be opened: it is
/// dead-lettered with its reason, and nothing is sent.
#[tokio::test]
async fn a_job_sealed_under_another_key_is_dead_lettered() {
    crate::real_stores_only!("a second outbox process on the same Redis (phone-auth worker)");
    let app = TestApp::spawn_with(|c| c.sms.sms_workers = 0).await;
    let r = app.request_code(PHONE).await;
    assert!(r["errors"].is_null(), "{r}");

    let mut rotated = test_config();
    rotated.stores.redis_key_prefix = app.prefix.clone();
    let secret = secrecy::SecretSlice::from(b"a-rotated-secret-a-rotated-secret-!".to_vec());
    let sender = std::sync::Arc::new(phone_auth::services::sms::TestSender::default());
    let outbox = std::sync::Arc::new(
        phone_auth::app::build_outbox(&rotated, sender.clone(), &secret)
            .await
            .unwrap(),
    );
    let _worker = tokio::spawn(outbox.clone().run_worker("rotated".into()));
    app.wait_outbox_empty().await;
    assert_eq!(sender.count(PHONE), 0, "nothing sent");
    assert_eq!(outbox.stats.dead.load(Ordering::Relaxed), 1);
    assert_eq!(outbox.stats.delivered.load(Ordering::Relaxed), 0);
    let dead = dead_letters(&app).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["reason"].contains("undecryptable"), "{dead:?}");
    assert_eq!(dead[0]["to"], PHONE);
}

/// Short delivery settings for the outage tests: a code lives `ttl` seconds, retries back off from
/// 100 ms up to 1 s, and no attempt count is set (the code's lifetime bounds the retries).
fn outage(stub: &Stub, ttl: u64) -> impl FnOnce(&mut phone_auth::config::Config) + '_ {
    move |c| {
        webhook(stub)(c);
        c.otp.otp_ttl_seconds = ttl;
        c.sms.sms_backoff_base_ms = 100;
        c.sms.sms_backoff_max_ms = 1000;
        c.sms.sms_claim_idle_ms = 5000;
    }
}

/// The provider answers 503 for 4 s, well within a code's 30 s: every job is delivered once, none
/// dead-lettered, and jobs queued while others wait out their backoff are tried at once, not after.
#[tokio::test]
async fn a_provider_outage_within_the_codes_lifetime_loses_nothing() {
    let stub = Stub::start([]).await;
    let app = TestApp::spawn_with_provider(
        |c| {
            outage(&stub, 30)(c);
            c.sms.sms_workers = 1;
        },
        false,
    )
    .await;
    stub.fail_for(Duration::from_secs(4), 503);
    let phones: Vec<String> = (0..10).map(|i| format!("+165025307{i:02}")).collect();
    for phone in &phones[..6] {
        let r = app.request_code(phone).await;
        assert!(r["errors"].is_null(), "{r}");
    }
    // The first six are now retrying; four more arrive meanwhile.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut asked = Vec::new();
    for phone in &phones[6..] {
        asked.push((phone.clone(), std::time::Instant::now()));
        let r = app.request_code(phone).await;
        assert!(r["errors"].is_null(), "{r}");
    }
    app.wait_outbox_empty().await;
    let got = stub.received();
    for phone in &phones {
        let to_phone: Vec<_> = got
            .iter()
            .filter(|r| serde_json::from_str::<Value>(&r.body).unwrap()["to"] == phone.as_str())
            .collect();
        let delivered = to_phone.iter().filter(|r| r.status == 200).count();
        assert_eq!(
            delivered,
            1,
            "{phone}: {} tries, {delivered} delivered",
            to_phone.len()
        );
        assert!(
            to_phone[0].status == 503,
            "{phone} was first tried during the outage"
        );
    }
    for (phone, at) in asked {
        let first = got
            .iter()
            .find(|r| serde_json::from_str::<Value>(&r.body).unwrap()["to"] == phone.as_str())
            .unwrap();
        let waited = first.at.duration_since(at);
        assert!(
            waited < Duration::from_millis(1500),
            "{phone} waited {waited:?} for its first try: behind the others' backoff"
        );
    }
    assert!(dead_letters(&app).await.is_empty(), "none dead-lettered");
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 10);
    assert_eq!(app.outbox.stats.dead.load(Ordering::Relaxed), 0);
    assert_eq!(app.outbox.stats.expired.load(Ordering::Relaxed), 0);
}

/// A code that expires during the outage is dropped as expired once its next try would come too late,
/// and never sent.
#[tokio::test]
async fn a_code_that_expires_during_an_outage_is_dropped_not_sent() {
    let stub = Stub::start([]).await;
    let app = TestApp::spawn_with_provider(outage(&stub, 2), false).await;
    stub.fail_for(Duration::from_secs(4), 503);
    let r = app.request_code(PHONE).await;
    assert!(r["errors"].is_null(), "{r}");
    app.wait_outbox_empty().await;
    assert_eq!(app.outbox.stats.expired.load(Ordering::Relaxed), 1);
    assert_eq!(app.outbox.stats.dead.load(Ordering::Relaxed), 0);
    let dead = dead_letters(&app).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["reason"].starts_with("expired"), "{dead:?}");
    // Past the outage, still nothing was delivered.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = stub.received();
    assert!(got.len() >= 2, "retried while the code lived: {}", got.len());
    assert!(got.iter().all(|r| r.status == 503), "an expired code was sent");
    assert_eq!(app.outbox.stats.delivered.load(Ordering::Relaxed), 0);
}

/// Four outbox shards (`SMS_OUTBOX_SHARDS=4`): each phone's codes go to the stream its number hashes
/// to (on a cluster, the slot of its own keys), two workers read every shard, and each of 40 codes to
/// 40 phones is delivered exactly once; every shard ends empty with nothing pending, and its stream
/// has a TTL. On the embedded backend (one queue) the delivery part holds alike.
#[tokio::test]
async fn sharded_outbox_delivers_every_code_exactly_once() {
    const SHARDS: u32 = 4;
    let app = TestApp::spawn_with(|c| {
        c.sms.sms_outbox_shards = SHARDS;
        c.sms.sms_workers = 2;
    })
    .await;
    let phones: Vec<String> = (0..40).map(|i| format!("+165025310{i:02}")).collect();
    let answers = futures_util::future::join_all(phones.iter().map(|p| app.generate_code(p))).await;
    for answer in &answers {
        assert!(answer["errors"].is_null(), "{answer}");
    }
    app.wait_outbox_empty().await;
    // Wait for the last acknowledgements: the depth counts jobs read but not finished too.
    for phone in &phones {
        for _ in 0..200 {
            if app.sms.count(phone) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(app.sms.count(phone), 1, "{phone}: exactly one SMS");
    }
    crate::real_stores_only!("reads the shards' streams");
    let used: std::collections::BTreeSet<u32> = phones.iter().map(|p| app.keys.shard_of_e164(p)).collect();
    assert!(used.len() >= 3, "40 phones spread over the shards: {used:?}");
    let mut conn = app.redis().clone();
    for shard in 0..SHARDS {
        let stream = app.keys.shard(shard, "sms:outbox");
        let len: i64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 0, "{stream} drained");
        let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(phone_auth::services::outbox::GROUP)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(pending.count(), 0, "{stream}: nothing pending");
        let ttl: i64 = redis::cmd("TTL")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{stream} has a TTL ({ttl})");
    }
    if app.keys.cluster() {
        // Each phone's keys are in its shard's slot: the code's script touched one slot.
        let otp = app.key(&format!("{{{}}}:otp_sends", phones[0]));
        let shard = app.keys.shard_of_e164(&phones[0]);
        assert!(otp.contains(&format!("{{s{shard}}}")), "{otp}");
    }
}
