//! The checks the report prints: the targets, judged on the rows of this run, and the audit of
//! the TTLs of every key a server wrote (kinds of keys named by the service's own `Keys::kind`).

use std::collections::BTreeMap;

use phone_auth::services::Keys;

use crate::procs::redis_conn;
use crate::run::Bench;
use crate::scenarios::users::users_label;
use crate::servers::HASH_QUEUE_TIMEOUT_MS;

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

/// The target lines, in the report's order.
pub fn targets(bench: &Bench) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(code_targets(bench));
    out.extend(login(bench));
    out.extend(me_under_login(bench));
    out.extend(login_500(bench));
    out.extend(users(bench));
    out.push(no_unexpected_errors(bench));
    out.extend(ttl(bench));
    out
}

/// generate-code and verify-wrong against the bare axum + EVALSHA baseline.
fn code_targets(bench: &Bench) -> Vec<String> {
    let mut out = Vec::new();
    let base = bench.row("baseline-redis", "evalsha");
    for (scenario, op) in [
        ("generate-code", "generateCode"),
        ("verify-wrong", "verifyUser(wrong)"),
    ] {
        if let (Some(b), Some(r)) = (base, bench.row(scenario, op)) {
            let ratio = r.rps / b.rps;
            out.push(format!(
                "{scenario}: {:.0} req/s = {:.0}% of the bare axum + EVALSHA baseline ({:.0} req/s), target >= 50%: {}; p99 {:.2} ms, target < 10 ms: {}",
                r.rps,
                ratio * 100.0,
                b.rps,
                verdict(ratio >= 0.5),
                r.p99,
                verdict(r.p99 < 10.0)
            ));
        }
    }
    if let (Some(b), Some(r)) = (
        bench.row("baseline-issue", "generateCode-script"),
        bench.row("generate-code", "generateCode"),
    ) {
        out.push(format!(
            "(diagnostic, no target) generate-code: {:.0} req/s = {:.0}% of baseline (1b), a bare axum handler running the same generateCode script ({:.0} req/s, no GraphQL, no SMS workers)",
            r.rps,
            r.rps / b.rps * 100.0,
            b.rps
        ));
    }
    out
}

/// login against one core's argon2 rate times the server's hash slots.
fn login(bench: &Bench) -> Option<String> {
    let single = bench.argon2_single?;
    let r = bench.row("login", "login")?;
    let bound = single * bench.hash_slots as f64;
    Some(format!(
        "login: {:.1} req/s = {:.0}% of the argon2 bound ({single:.1}/s per core x {} hash slots = {bound:.1}/s), target >= 85%: {}{}",
        r.rps,
        r.rps / bound * 100.0,
        bench.hash_slots,
        verdict(r.rps >= 0.85 * bound),
        bench
            .argon2_parallel
            .map(|p| format!(
                " ({:.0}% of the {p:.1}/s measured with all cores hashing at once)",
                r.rps / p * 100.0
            ))
            .unwrap_or_default()
    ))
}

fn me_under_login(bench: &Bench) -> Option<String> {
    let alone = bench.row("me-probe-alone", "me")?;
    let under = bench.row("me-probe-under-login", "me")?;
    Some(format!(
        "me p99 while login saturates the hash pool: {:.2} ms vs {:.2} ms alone = {:.1}x, target <= 2x: {}",
        under.p99,
        alone.p99,
        under.p99 / alone.p99.max(1e-9),
        verdict(under.p99 <= 2.0 * alone.p99)
    ))
}

fn login_500(bench: &Bench) -> Option<String> {
    let r = bench.row("login-500", "login")?;
    let unavailable_max = r.error_max_ms.get("SERVICE_UNAVAILABLE").copied();
    let fast = unavailable_max.is_none_or(|m| m <= HASH_QUEUE_TIMEOUT_MS as f64 + 500.0);
    let rss_ok = r.peak_rss_mib.is_some_and(|m| m < 150.0);
    Some(format!(
        "login-500: unexpected errors {} ({}), refusals: {} (slowest {} ms; fast = within HASH_QUEUE_TIMEOUT_MS {} + 500 ms: {}), peak RSS {} MiB (< 150: {}): {}",
        r.unexpected,
        r.errors,
        r.expected,
        unavailable_max.map_or("-".into(), |m| format!("{m:.0}")),
        HASH_QUEUE_TIMEOUT_MS,
        verdict(fast),
        r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
        verdict(rss_ok),
        verdict(r.unexpected == 0 && fast && rss_ok)
    ))
}

/// login and verifyUser latency with the large user table against the small one.
fn users(bench: &Bench) -> Vec<String> {
    let (small, large) = (
        users_label(bench.args.users_small),
        users_label(bench.args.users_large),
    );
    let mut out = Vec::new();
    for (kind, op) in [("login", "login"), ("verify", "verifyUser(registered)")] {
        let a = bench.row(&format!("{kind}-{small}-users"), op);
        let b = bench.row(&format!("{kind}-{large}-users"), op);
        if let (Some(a), Some(b)) = (a, b) {
            let r50 = b.p50 / a.p50.max(1e-9);
            let r99 = b.p99 / a.p99.max(1e-9);
            out.push(format!(
                "{op} with {large} vs {small} users: p50 {:.2} vs {:.2} ms ({r50:.2}x), p99 {:.2} vs {:.2} ms ({r99:.2}x), req/s {:.0} vs {:.0}; target <= 1.2x: {}",
                b.p50,
                a.p50,
                b.p99,
                a.p99,
                b.rps,
                a.rps,
                verdict(r50 <= 1.2 && r99 <= 1.2)
            ));
        }
    }
    out
}

fn no_unexpected_errors(bench: &Bench) -> String {
    let with_errors: Vec<String> = bench
        .rows
        .iter()
        .filter(|r| r.unexpected > 0 && !(r.scenario == "login-500" && r.op == "login"))
        .map(|r| format!("{}/{} ({})", r.scenario, r.op, r.errors))
        .collect();
    format!(
        "zero unexpected errors in every scenario: {}{}",
        verdict(with_errors.is_empty()),
        if with_errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", with_errors.join("; "))
        }
    )
}

fn ttl(bench: &Bench) -> Option<String> {
    let notes = bench.notes.get("ttl")?;
    let missed = notes.iter().any(|l| l.starts_with("MISSED"));
    Some(format!("every key has a TTL: {}", verdict(!missed)))
}

/// Keys of one kind: how many, and their shortest and longest TTL.
struct Kind {
    count: u64,
    min_ttl: i64,
    max_ttl: i64,
}

/// Scans every key of `prefix`: how many of each kind, and how many have no TTL (noted under "ttl").
pub async fn ttl_check(bench: &mut Bench, prefix: &str) -> anyhow::Result<()> {
    let keys = Keys::new(prefix);
    let mut conn = redis_conn(&bench.redis_url).await?;
    let mut cursor: u64 = 0;
    let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
    let mut no_ttl_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    loop {
        let (next, names): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(2000)
            .query_async(&mut conn)
            .await?;
        if !names.is_empty() {
            let mut pipe = redis::pipe();
            for k in &names {
                pipe.cmd("TTL").arg(k);
            }
            let ttls: Vec<i64> = pipe.query_async(&mut conn).await?;
            for (k, ttl) in names.iter().zip(ttls) {
                total += 1;
                let kind = keys.kind(k).unwrap_or_else(|| k.clone());
                if ttl == -1 {
                    *no_ttl_kinds.entry(kind.clone()).or_default() += 1;
                }
                let e = kinds.entry(kind).or_insert(Kind {
                    count: 0,
                    min_ttl: i64::MAX,
                    max_ttl: i64::MIN,
                });
                e.count += 1;
                e.min_ttl = e.min_ttl.min(ttl);
                e.max_ttl = e.max_ttl.max(ttl);
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let without_ttl: u64 = no_ttl_kinds.values().sum();
    let detail: Vec<String> = kinds
        .iter()
        .map(|(k, e)| format!("`{k}` {} (TTL {}..{} s)", e.count, e.min_ttl, e.max_ttl))
        .collect();
    bench.note(
        "ttl",
        format!(
            "prefix {prefix}: {total} keys, {without_ttl} without a TTL; kinds: {}",
            detail.join(", ")
        ),
    );
    if without_ttl > 0 {
        let which: Vec<String> = no_ttl_kinds.iter().map(|(k, n)| format!("`{k}` {n}")).collect();
        bench.note(
            "ttl",
            format!("MISSED: {without_ttl} keys have no TTL: {}", which.join(", ")),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use phone_auth::domain::{PhoneNumber, PhonePolicy};
    use phone_auth::services::Keys;

    #[test]
    fn key_kinds_come_from_the_service_key_names() {
        let keys = Keys::new("bench:1:main:");
        let phone = PhoneNumber::parse("+16502530000", &PhonePolicy::default()).unwrap();
        let kind = |key: &str| keys.kind(key);
        assert_eq!(kind(&keys.phone(&phone, "otp")).as_deref(), Some("{phone}:otp"));
        assert_eq!(
            kind(&keys.other("ip:2001:db8::/64:code_requests")).as_deref(),
            Some("ip:<addr>:code_requests")
        );
        assert_eq!(kind(&keys.other("reg:00ff")).as_deref(), Some("reg:<sha256>"));
        assert_eq!(kind(&keys.other("sms:outbox")).as_deref(), Some("sms:outbox"));
        assert_eq!(kind("bench:1:users:sms:outbox"), None);
    }
}
