//! What the virtual clients send: the GraphQL documents and their request bodies, the codes and
//! passwords they use, and the phone numbers (fresh ranges checked with the server's own parser, and the
//! seeded users' phones).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use phone_auth::domain::{PhoneNumber, PhonePolicy};
use serde_json::json;

use crate::client::Rng;
use crate::seed;

const GENERATE: &str =
    "mutation($p: String!) { generateCode(phone: $p) { phone expiresInSeconds resendInSeconds } }";
const VERIFY: &str = "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { phone registered registrationToken auth { accessToken user { id } } } }";
const REGISTER: &str =
    "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken user { id } } }";
const LOGIN: &str = "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { accessToken refreshToken user { id } } }";
const ME: &str = "{ me { id phone firstName lastName createdAt } }";

/// The fixed code of every test number (SMS_TEST_NUMBERS), and a code that is never it.
pub const TEST_CODE: &str = "123456";
pub const WRONG_CODE: &str = "000000";
const SIGNUP_PASSWORD: &str = "loadgen-Password-1987!";

pub fn gen_body(phone: &str) -> String {
    json!({ "query": GENERATE, "variables": { "p": phone } }).to_string()
}

pub fn verify_body(phone: &str, code: &str) -> String {
    json!({ "query": VERIFY, "variables": { "p": phone, "c": code } }).to_string()
}

pub fn register_body(token: &str) -> String {
    json!({ "query": REGISTER, "variables": { "i": {
        "registrationToken": token, "password": SIGNUP_PASSWORD, "firstName": "Load", "lastName": "Gen" } } })
    .to_string()
}

/// A registration with `password` (the embedded phase signs its users up with the seed password).
pub fn register_body_with(token: &str, password: &str) -> String {
    json!({ "query": REGISTER, "variables": { "i": {
        "registrationToken": token, "password": password, "firstName": "Load", "lastName": "Gen" } } })
    .to_string()
}

pub fn login_body(phone: &str, password: &str) -> String {
    json!({ "query": LOGIN, "variables": { "p": phone, "w": password } }).to_string()
}

pub fn me_body() -> String {
    json!({ "query": ME }).to_string()
}

/// The cheapest GraphQL request: no store, no resolver of ours.
pub fn typename_body() -> String {
    json!({ "query": "{ __typename }" }).to_string()
}

/// Fresh valid US phone numbers: `prefix` (+1 and 3 or 4 more digits) followed by the digits that make
/// 11 in all, counting up (from exchange 200 when the prefix is an area code alone), skipping those
/// the server's own parser refuses, so that no request fails on BAD_USER_INPUT.
pub struct PhoneGen {
    prefix: &'static str,
    width: usize,
    next: AtomicU64,
    end: u64,
    policy: PhonePolicy,
}

impl PhoneGen {
    pub fn new(prefix: &'static str) -> Arc<PhoneGen> {
        let digits = prefix.chars().filter(char::is_ascii_digit).count();
        let width = 11usize.saturating_sub(digits);
        let start = if width == 7 { 2_000_000 } else { 0 };
        Arc::new(PhoneGen {
            prefix,
            width,
            next: AtomicU64::new(start),
            end: 10u64.pow(width as u32),
            policy: PhonePolicy::default(),
        })
    }

    pub fn next(&self) -> Option<String> {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.end {
                return None;
            }
            let phone = format!("{}{:0width$}", self.prefix, i, width = self.width);
            if PhoneNumber::parse(&phone, &self.policy).is_ok() {
                return Some(phone);
            }
        }
    }
}

fn valid(phone: &str) -> bool {
    PhoneNumber::parse(phone, &PhonePolicy::default()).is_ok()
}

/// Phones of seeded users 0..count that the server accepts: all of them when few, else a random sample.
pub fn seeded_phones(count: u64, sample: usize, seed: u64) -> Vec<String> {
    if count <= 20_000 {
        return (0..count).map(seed::seed_phone).filter(|p| valid(p)).collect();
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(sample);
    let mut seen = HashSet::new();
    while out.len() < sample {
        let i = rng.below(count);
        let p = seed::seed_phone(i);
        if seen.insert(i) && valid(&p) {
            out.push(p);
        }
    }
    out
}

/// Phones of `list` that client `id` of `clients` uses: disjoint between clients, so that no two
/// clients have attempts in flight for one phone (the lockout reserves at most 3 at once per phone).
pub fn share(list: &[String], id: usize, clients: usize) -> Vec<String> {
    list.iter().skip(id).step_by(clients.max(1)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_phones_are_valid_distinct_and_in_their_range() {
        let numbers = PhoneGen::new("+1415");
        let phones: Vec<String> = (0..50).filter_map(|_| numbers.next()).collect();
        assert_eq!(phones.len(), 50);
        assert!(
            phones
                .iter()
                .all(|p| p.starts_with("+1415") && p.len() == 12 && valid(p))
        );
        assert!(phones.windows(2).all(|w| w[0] < w[1]));
        // An area code alone starts at exchange 200.
        assert!(phones[0].as_str() >= "+14152000000");
    }

    #[test]
    fn clients_share_the_phones_without_overlap() {
        let list: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let shares: Vec<Vec<String>> = (0..3).map(|id| share(&list, id, 3)).collect();
        assert_eq!(shares[0], ["0", "3", "6", "9"]);
        assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), 10);
    }
}
