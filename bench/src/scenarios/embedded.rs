//! generate-code and login against the service on its embedded backend (started with no
//! DATABASE_URL and no REDIS_URL: every store in the server's memory). Its users cannot be seeded
//! through SQL, so they sign up through the API first (test numbers: fixed code, no SMS), one per
//! client, with the seed password.

use std::sync::Arc;

use anyhow::Context as _;

use crate::bodies::{TEST_CODE, gen_body, register_body_with, verify_body};
use crate::client;
use crate::run::Bench;
use crate::scenarios::{accounts, codes};
use crate::seed::{SEED_PASSWORD, seed_phone};
use crate::servers::{Server, start_server_on, stop_server};

pub async fn embedded_phase(bench: &mut Bench) -> anyhow::Result<()> {
    if !bench.wants("generate-code") && !bench.wants("login") {
        return Ok(());
    }
    let server = start_server_on(bench, "embedded", &[], true).await?;
    let result = scenarios(bench, &server).await;
    stop_server(bench, server).await;
    result
}

async fn scenarios(bench: &mut Bench, server: &Server) -> anyhow::Result<()> {
    if bench.wants("generate-code") {
        codes::generate_code_as(bench, server, "generate-code (embedded)").await?;
    }
    if bench.wants("login") {
        let started = std::time::Instant::now();
        let phones = sign_up(server, bench.args.clients as u64).await?;
        bench.note(
            "seed",
            format!(
                "embedded server: signed up {} users through the API in {:.2} s",
                phones.len(),
                started.elapsed().as_secs_f64()
            ),
        );
        let clients = bench.args.clients;
        accounts::login_scenario(bench, server, "login (embedded)", Arc::new(phones), clients, &[]).await?;
    }
    Ok(())
}

/// Signs up `n` seed phones (SMS test numbers) with the seed password: generateCode, verifyUser with
/// the fixed code, register.
async fn sign_up(server: &Server, n: u64) -> anyhow::Result<Vec<String>> {
    let mut conn = client::Conn::new(server.addr);
    let mut phones = Vec::new();
    for i in 0..n {
        let phone = seed_phone(i);
        let call = |e: String| anyhow::anyhow!("sign-up of {phone}: {e}");
        conn.post_json("/graphql", gen_body(&phone), None)
            .await
            .map_err(|e| call(e.to_string()))?;
        let (_, verified) = conn
            .post_json("/graphql", verify_body(&phone, TEST_CODE), None)
            .await
            .map_err(|e| call(e.to_string()))?;
        let token = verified["data"]["verifyUser"]["registrationToken"]
            .as_str()
            .with_context(|| format!("verifyUser of {phone}: {verified}"))?
            .to_owned();
        let (_, registered) = conn
            .post_json("/graphql", register_body_with(&token, SEED_PASSWORD), None)
            .await
            .map_err(|e| call(e.to_string()))?;
        anyhow::ensure!(
            registered["errors"].is_null(),
            "register of {phone}: {registered}"
        );
        phones.push(phone);
    }
    Ok(phones)
}
