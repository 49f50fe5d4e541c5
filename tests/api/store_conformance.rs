//! The two backends' decisions side by side: the same calls, in the same order, go to the Redis
//! scripts and to the embedded backend, and must get the same answers: statuses, counts and phones
//! exactly, waits and timestamps to within the moments between the two calls. The rest of the suite
//! compares them through the API (`TEST_BACKEND=embedded`); this compares each store's raw answers,
//! including the refusals the API folds into one error code.

use phone_auth::domain::PhoneNumber;
use phone_auth::services::Keys;
use phone_auth::services::embedded::Memory;
use phone_auth::services::lockout::{LockoutSettings, LockoutStore, Lockouts, RedisLockout};
use phone_auth::services::otp::{CodeStore, Codes, Consumed, IssueRequest, OtpSettings, RedisCodes};
use phone_auth::services::outbox::{Appender, CodeCipher, OutboxQueue, RedisOutbox};
use phone_auth::services::phone_change::{PhoneChangeStore, PhoneChangeStores, RedisPhoneChanges};
use phone_auth::services::registration::{RedisRegistrations, RegistrationStore, Registrations};

use crate::helpers::{drop_test_stores, redis_url, test_config};

/// Milliseconds two answers may differ by where they are waits or timestamps.
const SLACK_MS: i64 = 250;

/// Same length; the first `exact` values equal; the rest within `SLACK_MS`.
fn agree(step: &str, real: &[i64], embedded: &[i64], exact: usize) {
    assert_eq!(real.len(), embedded.len(), "{step}: {real:?} vs {embedded:?}");
    for (i, (r, e)) in real.iter().zip(embedded).enumerate() {
        if i < exact {
            assert_eq!(r, e, "{step}: value {i}: {real:?} vs {embedded:?}");
        } else {
            assert!(
                (r - e).abs() <= SLACK_MS,
                "{step}: value {i}: {real:?} vs {embedded:?}"
            );
        }
    }
}

struct Pair<T> {
    real: T,
    embedded: T,
}

struct Backends {
    prefix: String,
    codes: Pair<Codes>,
    lockout: Pair<Lockouts>,
    registrations: Pair<Registrations>,
    changes: Pair<PhoneChangeStores>,
    appenders: Pair<Appender>,
}

impl Drop for Backends {
    fn drop(&mut self) {
        drop_test_stores("phone_auth_test_none", Some(&self.prefix));
    }
}

async fn backends() -> Backends {
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let keys = Keys::new(prefix.clone());
    // The single Redis on every pass: this compares the scripts with the embedded backend, on the
    // key layout of one primary (the cluster pass runs the same decisions through the API).
    let target = phone_auth::services::redis_conn::RedisTarget::Single(redis_url());
    let redis = target
        .connect(std::time::Duration::from_secs(30), 2)
        .await
        .unwrap();
    let memory = Memory::start(keys.clone());
    let cipher = CodeCipher::from_secret(b"conformance-secret-conformance-secret");
    let appender = |queue| Appender::new(format!("{prefix}sms:outbox"), 100, 3600, cipher.clone(), queue);
    Backends {
        codes: Pair {
            real: Codes::Redis(RedisCodes::new(redis.clone(), keys.clone())),
            embedded: Codes::Embedded(memory.clone()),
        },
        lockout: Pair {
            real: Lockouts::Redis(RedisLockout::new(redis.clone(), keys.clone())),
            embedded: Lockouts::Embedded(memory.clone()),
        },
        registrations: Pair {
            real: Registrations::Redis(RedisRegistrations::new(redis.clone(), keys.clone())),
            embedded: Registrations::Embedded(memory.clone()),
        },
        changes: Pair {
            real: PhoneChangeStores::Redis(RedisPhoneChanges::new(redis.clone(), keys.clone())),
            embedded: PhoneChangeStores::Embedded(memory.clone()),
        },
        appenders: Pair {
            real: appender(OutboxQueue::Redis(
                RedisOutbox::connect(&target, &keys).await.unwrap(),
            )),
            embedded: appender(OutboxQueue::Embedded(memory)),
        },
        prefix,
    }
}

fn phone(e164: &str) -> PhoneNumber {
    PhoneNumber::from_trusted_e164(e164.to_owned())
}

#[tokio::test]
async fn code_decisions_agree() {
    crate::real_stores_only!("compares the embedded backend with Redis itself");
    let b = backends().await;
    let mut config = test_config();
    config.otp.otp_max_attempts = 3;
    config.otp.otp_resend_cooldown_seconds = 0;
    config.otp.otp_max_sends_per_window = 3;
    config.otp.otp_max_failures_per_window = 5;
    config.ip.ip_max_code_requests = 10;
    config.ip.ip_max_code_checks = 13;
    config.sms.sms_max_per_hour = 2;
    let s: OtpSettings = (&config).into();
    let (p1, p2) = (phone("+16502530001"), phone("+16502530002"));
    let issue = async |step: &str, p: &PhoneNumber, send_id: &str, mac: &str, sms: bool| {
        let req = IssueRequest {
            phone: p,
            client: "10.0.0.1",
            mac: mac.to_owned(),
            send_id,
            queued_at_ms: 1,
            sealed: "sealed",
            sms,
        };
        let real = b.codes.real.issue(&req, &s, &b.appenders.real).await.unwrap();
        let embedded = b
            .codes
            .embedded
            .issue(&req, &s, &b.appenders.embedded)
            .await
            .unwrap();
        agree(step, &[real.0, real.1], &[embedded.0, embedded.1], 1);
        real.0
    };
    assert_eq!(issue("first", &p1, "s1", "mac-a", true).await, 0);
    assert_eq!(issue("the same send again", &p1, "s1", "mac-a", true).await, 0);
    assert_eq!(issue("second sms", &p1, "s2", "mac-b", true).await, 0);
    assert_eq!(issue("service budget", &p1, "s3", "mac-c", true).await, 4);
    assert_eq!(issue("a test number, no sms", &p1, "s4", "mac-d", false).await, 0);
    assert_eq!(issue("phone budget", &p1, "s5", "mac-e", false).await, 2);

    // Both answers: a consumed code's timestamps are each backend's own.
    let check2 = async |step: &str, p: &PhoneNumber, mac: &str| {
        let real = b.codes.real.check(p, "10.0.0.1", mac, &s).await.unwrap();
        let embedded = b.codes.embedded.check(p, "10.0.0.1", mac, &s).await.unwrap();
        // Status, wait (ms); for a consumed code then its tries (exact), expiry and newest send
        // (timestamps).
        agree(step, &real, &embedded, 1);
        if real.len() == 5 {
            assert_eq!(real[2], embedded[2], "{step}: tries");
        }
        (real, embedded)
    };
    let check = async |step: &str, p: &PhoneNumber, mac: &str| check2(step, p, mac).await.0;
    assert_eq!(check("wrong 1", &p1, "nope").await, [1, 0]);
    assert_eq!(check("wrong 2", &p1, "nope").await, [1, 0]);
    assert_eq!(check("wrong 3 burns", &p1, "nope").await, [2, 0]);
    assert_eq!(check("burnt", &p1, "mac-d").await, [1, 0]);
    assert_eq!(issue("p2", &p2, "t1", "mac-x", false).await, 0);
    assert_eq!(check("p2 wrong", &p2, "nope").await, [1, 0]);
    let consumed = check2("p2 right", &p2, "mac-x").await;
    assert_eq!(
        (consumed.0[0], consumed.0[2]),
        (0, 1),
        "consumed after one wrong try"
    );
    let given_back = |c: &[i64], newer: i64| Consumed {
        tries: c[2],
        expires_at_ms: c[3],
        newest_send: c[4] - newer,
    };
    let restore = async |step: &str, newer: i64| {
        let real = b
            .codes
            .real
            .restore(&p2, "mac-x", &given_back(&consumed.0, newer))
            .await
            .unwrap();
        let embedded = b
            .codes
            .embedded
            .restore(&p2, "mac-x", &given_back(&consumed.1, newer))
            .await
            .unwrap();
        assert_eq!(real, embedded, "{step}");
        real
    };
    assert!(restore("restore", 0).await);
    assert!(!restore("restore twice", 0).await);
    assert_eq!(
        check("restored, with its tries", &p2, "mac-x").await[..3],
        [0, 0, 1]
    );
    assert!(!restore("a newer code was sent", 1).await);
    // Failures count while a code is pending, across codes: three burn p3's first code, two more
    // on its second, and the window is full.
    let p3 = phone("+16502530005");
    assert_eq!(issue("p3", &p3, "u1", "mac-y", false).await, 0);
    for n in 1..=3 {
        assert_eq!(
            check(&format!("p3 wrong {n}"), &p3, "nope").await[0],
            if n < 3 { 1 } else { 2 }
        );
    }
    assert_eq!(issue("p3 again", &p3, "u2", "mac-z", false).await, 0);
    assert_eq!(check("p3 wrong 4", &p3, "nope").await, [1, 0]);
    assert_eq!(check("p3 wrong 5", &p3, "nope").await, [1, 0]);
    assert_eq!(
        check("failure budget", &p3, "mac-z").await[0],
        3,
        "even the right code"
    );
    // The IP's thirteenth check was the last.
    assert_eq!(check("ip budget", &p2, "nope").await[0], 4);
    // Eight code requests from the address so far (not the rerun): two more fit in its ten.
    let p4 = phone("+16502530006");
    assert_eq!(issue("ninth request", &p4, "v1", "mac-1", false).await, 0);
    assert_eq!(issue("tenth request", &p4, "v2", "mac-2", false).await, 0);
    assert_eq!(issue("ip budget", &p4, "v3", "mac-3", false).await, 3);
    b.codes.real.revoke(&p2).await.unwrap();
    b.codes.embedded.revoke(&p2).await.unwrap();
}

#[tokio::test]
async fn lockout_decisions_agree() {
    crate::real_stores_only!("compares the embedded backend with Redis itself");
    let b = backends().await;
    let mut config = test_config();
    config.lockout.lockout_max_failures = 3;
    config.ip.ip_max_password_attempts = 9;
    let s: LockoutSettings = (&config).into();
    let p = phone("+16502530003");
    let lease = 60_000;
    let reserve = async |step: &str, id: &str| {
        let real = b
            .lockout
            .real
            .reserve(&p, "10.0.0.2", id, &s, lease)
            .await
            .unwrap();
        let embedded = b
            .lockout
            .embedded
            .reserve(&p, "10.0.0.2", id, &s, lease)
            .await
            .unwrap();
        agree(step, &[real.0, real.1], &[embedded.0, embedded.1], 1);
        real.0
    };
    let fail = async |step: &str, id: &str| {
        let real = b.lockout.real.fail(&p, id, &s).await.unwrap();
        assert_eq!(real, b.lockout.embedded.fail(&p, id, &s).await.unwrap(), "{step}");
        real
    };
    assert_eq!(reserve("a", "a").await, 0);
    assert_eq!(reserve("a again", "a").await, 0);
    assert_eq!(reserve("b", "b").await, 0);
    assert_eq!(reserve("c", "c").await, 0);
    assert_eq!(reserve("d: the limit is in flight", "d").await, 2);
    assert!(!fail("a fails", "a").await);
    assert!(!fail("b fails", "b").await);
    b.lockout.real.release(&p, "c").await.unwrap();
    b.lockout.embedded.release(&p, "c").await.unwrap();
    assert_eq!(reserve("e after c's release", "e").await, 0);
    assert!(fail("e fails: locked", "e").await);
    assert_eq!(reserve("f: locked", "f").await, 1);
    let pttl = (
        b.lockout.real.lock_pttl(&p).await.unwrap(),
        b.lockout.embedded.lock_pttl(&p).await.unwrap(),
    );
    agree("lock pttl", &[pttl.0], &[pttl.1], 0);
    assert!(pttl.0 > 3_500_000, "{pttl:?}");
    let clear = async |step: &str, id: Option<&str>| {
        let real = b.lockout.real.clear(&p, id).await.unwrap();
        assert_eq!(real, b.lockout.embedded.clear(&p, id).await.unwrap(), "{step}");
        real
    };
    assert!(clear("lifted", None).await);
    assert_eq!(reserve("g after the lift", "g").await, 0);
    assert!(!clear("g succeeds", Some("g")).await);
    // Every reservation that reached the address's budget counted (a, b, c, d, e, g: not the rerun
    // of a, nor f, refused for the lock before the budget): three more fit in its nine.
    let mut i = 0;
    let refused = loop {
        i += 1;
        let id = format!("h{i}");
        let status = reserve(&format!("budget {i}"), &id).await;
        b.lockout.real.release(&p, &id).await.unwrap();
        b.lockout.embedded.release(&p, &id).await.unwrap();
        if status != 0 || i > 20 {
            break status;
        }
    };
    assert_eq!((refused, i), (3, 4), "the address's budget ends the run");
}

#[tokio::test]
async fn registration_and_phone_change_decisions_agree() {
    crate::real_stores_only!("compares the embedded backend with Redis itself");
    let b = backends().await;
    let p = phone("+16502530004");
    let key = format!("{}reg:{}", b.prefix, "a".repeat(64));
    let other = format!("{}reg:{}", b.prefix, "b".repeat(64));
    for r in [&b.registrations.real, &b.registrations.embedded] {
        r.create(&key, &p, 600).await.unwrap();
        r.create(&other, &p, 600).await.unwrap();
    }
    for n in 1..=4 {
        let real = b.registrations.real.present(&key, 3).await.unwrap();
        let embedded = b.registrations.embedded.present(&key, 3).await.unwrap();
        assert_eq!(real, embedded, "presentation {n}");
        assert_eq!(real.is_some(), n <= 3, "presentation {n}");
    }
    let claim = async |step: &str, id: &str, user: &str| {
        let real = b.registrations.real.claim(&key, id, 30_000, user).await.unwrap();
        let embedded = b
            .registrations
            .embedded
            .claim(&key, id, 30_000, user)
            .await
            .unwrap();
        assert_eq!(real, embedded, "{step}");
        real
    };
    let first = claim("first claim", "c1", "u1").await.unwrap();
    assert_eq!(first, (p.e164().to_owned(), "u1".to_owned()));
    assert_eq!(claim("held by c1", "c2", "u2").await, None);
    assert_eq!(
        claim("c1 again", "c1", "u3").await,
        Some(first.clone()),
        "the account id stays"
    );
    for r in [&b.registrations.real, &b.registrations.embedded] {
        r.unclaim(&key, "c2").await.unwrap();
    }
    assert_eq!(claim("another's unclaim is nothing", "c2", "u2").await, None);
    for r in [&b.registrations.real, &b.registrations.embedded] {
        r.unclaim(&key, "c1").await.unwrap();
    }
    assert_eq!(claim("given back", "c2", "u2").await, Some(first));
    for r in [&b.registrations.real, &b.registrations.embedded] {
        r.finish(&key).await.unwrap();
    }
    assert_eq!(claim("finished", "c3", "u4").await, None);
    let revoked = (
        b.registrations.real.revoke_all(&p).await.unwrap(),
        b.registrations.embedded.revoke_all(&p).await.unwrap(),
    );
    assert_eq!(revoked, (1, 1), "the other token was still live");
    assert_eq!(
        (
            b.registrations.real.revoke_all(&p).await.unwrap(),
            b.registrations.embedded.revoke_all(&p).await.unwrap()
        ),
        (0, 0)
    );

    for c in [&b.changes.real, &b.changes.embedded] {
        c.start(&p, "user-1", 300).await.unwrap();
        c.finish(&p, "user-2").await.unwrap();
        assert_eq!(
            c.owner(&p).await.unwrap().as_deref(),
            Some("user-1"),
            "not user-2's to end"
        );
        c.finish(&p, "user-1").await.unwrap();
        assert_eq!(c.owner(&p).await.unwrap(), None);
    }
}
