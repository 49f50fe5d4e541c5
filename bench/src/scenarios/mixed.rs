//! mixed: every client draws each step at random: 35% `me`, 25% `generateCode`, 20% wrong
//! `verifyUser` (for a code it asked for), 10% `login`, 10% the sign-up flow. Each step is recorded
//! under its own operation and as `mixed(all)`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::bodies::{PhoneGen, WRONG_CODE, gen_body, login_body, me_body, share, verify_body};
use crate::client::{Client, Rng};
use crate::run::{Bench, measured};
use crate::scenarios::accounts::sign_up_flow;
use crate::seed::SEED_PASSWORD;
use crate::servers::Server;

pub async fn mixed(
    bench: &mut Bench,
    server: &Server,
    tokens: Arc<Vec<String>>,
    users: Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let clients = bench.args.clients;
    let codes = PhoneGen::new("+1212");
    let signups = PhoneGen::new("+16508");
    measured(bench, server, "mixed", clients, move |c| {
        let client = MixedClient {
            token: tokens[c.id % tokens.len()].clone(),
            logins: share(&users, c.id, clients),
            next_login: 0,
            codes: codes.clone(),
            signups: signups.clone(),
            rng: Rng::new(c.id as u64 + 7),
            pending: VecDeque::new(),
            me: me_body(),
        };
        client.run(c)
    })
    .await
}

/// One mixed client's state.
struct MixedClient {
    token: String,
    /// Its share of the seeded phones, used in turn.
    logins: Vec<String>,
    next_login: usize,
    codes: Arc<PhoneGen>,
    signups: Arc<PhoneGen>,
    rng: Rng,
    /// Phones it asked a code for, and the wrong tries each has had (at most 4).
    pending: VecDeque<(String, u8)>,
    me: String,
}

impl MixedClient {
    async fn run(mut self, mut c: Client) -> Client {
        while c.limits.next() {
            let start = Instant::now();
            let Some(ok) = self.step(&mut c).await else {
                break;
            };
            c.record_flow("mixed(all)", start, ok);
        }
        c
    }

    /// One random step; whether it succeeded, None when a phone range is used up.
    async fn step(&mut self, c: &mut Client) -> Option<bool> {
        let roll = self.rng.below(100);
        if roll < 35 {
            return Some(c.gql("me", self.me.clone(), Some(&self.token), &[]).await.ok());
        }
        if roll < 80 && (roll < 60 || self.pending.is_empty()) {
            return self.generate_code(c).await;
        }
        if roll < 80 {
            return Some(self.wrong_code(c).await);
        }
        if roll < 90 && !self.logins.is_empty() {
            return Some(self.login(c).await);
        }
        let p = self.signups.next()?;
        Some(sign_up_flow(c, &p, "signUp").await)
    }

    async fn generate_code(&mut self, c: &mut Client) -> Option<bool> {
        let p = self.codes.next()?;
        let ok = c.gql("generateCode", gen_body(&p), None, &[]).await.ok();
        if ok {
            self.pending.push_back((p, 0));
        }
        Some(ok)
    }

    /// A wrong code for the oldest pending phone (INVALID_CODE is the success here). `step` asks a
    /// code instead when none is pending.
    async fn wrong_code(&mut self, c: &mut Client) -> bool {
        let Some((p, tries)) = self.pending.pop_front() else {
            return false;
        };
        let a = c
            .gql(
                "verifyUser(wrong)",
                verify_body(&p, WRONG_CODE),
                None,
                &["INVALID_CODE"],
            )
            .await;
        if tries + 1 < 4 {
            self.pending.push_back((p, tries + 1));
        }
        a.code.as_deref() == Some("INVALID_CODE")
    }

    async fn login(&mut self, c: &mut Client) -> bool {
        let phone = &self.logins[self.next_login % self.logins.len()];
        self.next_login += 1;
        c.gql("login", login_body(phone, SEED_PASSWORD), None, &[])
            .await
            .ok()
    }
}
