//! Hostile requests: every one gets its expected status and code, none gets a 5xx, refused documents
//! run no resolver, and the server still answers afterwards.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const GENERATE: &str = "mutation($p: String!) { generateCode(phone: $p) { phone } }";
const VERIFY: &str = "mutation($p: String!, $c: String!) { verifyUser(phone: $p, code: $c) { phone } }";
const LOGIN: &str = "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { accessToken } }";
const REGISTER: &str = "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }";

/// One hostile request and what it must get.
struct Case {
    name: String,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    authorization: Option<Vec<u8>>,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    status: u16,
    /// `errors[0].extensions.code`; None: no error at all; Some("*"): any body (status only).
    code: Option<&'static str>,
    /// Whether it may run resolvers (accepted documents) or must run none (refused).
    runs: bool,
}

fn gql(name: impl Into<String>, query: &str, variables: Value, code: Option<&'static str>) -> Case {
    Case {
        name: name.into(),
        content_type: Some("application/json"),
        accept: None,
        authorization: None,
        method: "POST",
        path: "/graphql".into(),
        body: json!({ "query": query, "variables": variables })
            .to_string()
            .into_bytes(),
        status: 200,
        code,
        runs: true,
    }
}

fn refused(name: impl Into<String>, query: &str, code: &'static str) -> Case {
    Case {
        runs: false,
        ..gql(name, query, json!({}), Some(code))
    }
}

fn raw(
    name: &str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name: name.into(),
        content_type,
        accept: None,
        authorization: None,
        method: "POST",
        path: "/graphql".into(),
        body: body.into(),
        status,
        code: Some(code),
        runs: false,
    }
}

fn bad_phone(name: &str, phone: impl Into<String>) -> Case {
    gql(
        format!("phone: {name}"),
        GENERATE,
        json!({ "p": phone.into() }),
        Some("BAD_USER_INPUT"),
    )
}

fn bad_code(name: &str, code: impl Into<String>) -> Case {
    gql(
        format!("code: {name}"),
        VERIFY,
        json!({ "p": "+16502530009", "c": code.into() }),
        Some("BAD_USER_INPUT"),
    )
}

fn with_auth(name: &str, value: impl Into<Vec<u8>>, query: &str, code: Option<&'static str>) -> Case {
    Case {
        authorization: Some(value.into()),
        ..gql(name, query, json!({}), code)
    }
}

fn cases() -> Vec<Case> {
    let mut c = Vec::new();

    // Phones.
    for (name, phone) in [
        ("16 digits", "+1234567890123456".to_owned()),
        ("30 KB", "1".repeat(30_000)),
        ("20 KB of spaces and digits", "+1 ".repeat(7000)),
        ("letters", "+1 800 FLOWERS".into()),
        ("all letters", "abcdefghij".into()),
        ("NUL", "+1650253\u{0}0000".into()),
        ("trailing NUL", "+16502530000\u{0}".into()),
        ("zero-width space", "+1650\u{200B}2530000".into()),
        ("zero-width joiner", "+1650\u{200D}2530000".into()),
        ("right-to-left override", "\u{202E}+16502530000".into()),
        ("BOM", "\u{FEFF}+16502530000".into()),
        ("++1", "++16502530000".into()),
        ("+ in the middle", "1+6502530000".into()),
        ("two pluses", "+1650+2530000".into()),
        ("empty", String::new()),
        ("only spaces", "     ".into()),
        ("only +", "+".into()),
        ("national without region", "6502530000".into()),
        ("extension", "+1 650 253 0000 ext. 12".into()),
        ("hash", "+16502530000#".into()),
        ("star", "*16502530000".into()),
        ("tel: URI", "tel:+16502530000".into()),
        ("RFC 3966 params", "+16502530000;ext=1".into()),
        ("newline", "+1650\n2530000".into()),
        ("tab", "+1650\t2530000".into()),
        ("emoji", "+1650253000😀".into()),
        ("superscript digits", "+¹⁶⁵⁰²⁵³⁰⁰⁰⁰".into()),
        ("Devanagari digits", "+१६५०२५३००००".into()),
        ("SQL", "'; drop table users; --".into()),
        ("HTML", "<script>alert(1)</script>".into()),
        ("percent-encoded", "%2B16502530000".into()),
        ("fictional 555", "+1 555 123 4567".into()),
        ("invalid country code", "+999 1234567".into()),
        ("country code 0", "+0 1234567".into()),
        ("too short", "+1 650".into()),
        ("US premium rate 900", "+1 900 253 0000".into()),
        ("US toll free 800", "+1 800 253 0000".into()),
        ("UK premium rate", "+44 909 879 0000".into()),
        ("negative", "-16502530000".into()),
        ("float", "1.6502530000e10".into()),
    ] {
        c.push(bad_phone(name, phone));
    }
    // Other digit scripts that are one number: accepted, and canonical.
    c.push(raw(
        "phone: 1 MB",
        Some("application/json"),
        json!({ "query": GENERATE, "variables": { "p": "1".repeat(1 << 20) } }).to_string(),
        413,
        "PAYLOAD_TOO_LARGE",
    ));
    c.push(gql(
        "phone: fullwidth digits",
        GENERATE,
        json!({ "p": "＋１６５０２５３０００１" }),
        None,
    ));
    c.push(gql(
        "phone: Arabic-Indic digits",
        GENERATE,
        json!({ "p": "+١٦٥٠٢٥٣٠٠٠٢" }),
        None,
    ));
    c.push(gql(
        "phone: Persian digits",
        GENERATE,
        json!({ "p": "+۱۶۵۰۲۵۳۰۰۰۳" }),
        None,
    ));
    // The wrong type for a variable: refused by async-graphql before any resolver.
    for (name, v) in [
        ("number", json!(16502530000u64)),
        ("object", json!({ "a": 1 })),
        ("array", json!(["+16502530000"])),
        ("null", Value::Null),
        ("bool", json!(true)),
    ] {
        let mut case = gql(
            format!("phone as {name}"),
            GENERATE,
            json!({ "p": v }),
            Some("GRAPHQL_VALIDATION_FAILED"),
        );
        case.runs = false;
        c.push(case);
    }

    // Codes (the phone has no code pending, so a well-formed code is INVALID_CODE).
    for (name, code) in [
        ("leading space", " 123456".to_owned()),
        ("inner space", "123 456".into()),
        ("trailing newline", "123456\n".into()),
        ("CRLF", "123456\r\n".into()),
        ("5 digits", "12345".into()),
        ("7 digits", "1234567".into()),
        ("10 KB", "1".repeat(10_240)),
        ("letters", "12345a".into()),
        ("hex", "0x1234".into()),
        ("empty", String::new()),
        ("negative", "-12345".into()),
        ("exponent", "1e5".into()),
        ("superscript", "¹²³⁴⁵⁶".into()),
        ("NUL", "12345\u{0}".into()),
        ("zero-width", "123\u{200B}456".into()),
        ("plus", "+12345".into()),
        ("SQL", "1' or '1'='1".into()),
    ] {
        c.push(bad_code(name, code));
    }
    c.push(gql(
        "code: fullwidth digits are a code",
        VERIFY,
        json!({ "p": "+16502530009", "c": "１２３４５６" }),
        Some("INVALID_CODE"),
    ));
    c.push(gql(
        "code: Arabic-Indic digits are a code",
        VERIFY,
        json!({ "p": "+16502530009", "c": "١٢٣٤٥٦" }),
        Some("INVALID_CODE"),
    ));
    c.push(gql(
        "code: bad phone first",
        VERIFY,
        json!({ "p": "++1", "c": "123456" }),
        Some("BAD_USER_INPUT"),
    ));

    // Passwords: refused before any hash.
    for (name, pw) in [
        ("7 code points", "密码密码密码密".to_owned()),
        ("7 ASCII", "abcdefg".into()),
        ("129 code points", "é".repeat(129)),
        ("empty", String::new()),
        ("600 bytes", "x".repeat(600)),
    ] {
        c.push(gql(
            format!("login password: {name}"),
            LOGIN,
            json!({ "p": "+16502530008", "w": pw }),
            Some("BAD_USER_INPUT"),
        ));
        c.push(gql(
            format!("register password: {name}"),
            REGISTER,
            json!({ "i": { "registrationToken": "x", "password": pw } }),
            Some("BAD_USER_INPUT"),
        ));
    }
    c.push(raw(
        "login password: 1 MB",
        Some("application/json"),
        json!({ "query": LOGIN, "variables": { "p": "+16502530008", "w": "x".repeat(1 << 20) } }).to_string(),
        413,
        "PAYLOAD_TOO_LARGE",
    ));
    c.push(gql(
        "register: names of control characters",
        REGISTER,
        json!({ "i": { "registrationToken": "x", "password": PASSWORD, "firstName": "\u{7}\u{8}" } }),
        Some("BAD_USER_INPUT"),
    ));
    c.push(gql(
        "register: garbage token",
        REGISTER,
        json!({ "i": { "registrationToken": "x".repeat(5000), "password": PASSWORD } }),
        Some("INVALID_TOKEN"),
    ));
    c.push(gql(
        "refresh: 10 KB token",
        "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken } }",
        json!({ "t": "x".repeat(10_240) }),
        Some("INVALID_TOKEN"),
    ));

    // Authorization headers: never a 5xx; `me` is null, logout is UNAUTHENTICATED.
    let long = format!("Bearer {}", "a".repeat(8 * 1024));
    for (name, value) in [
        ("garbage", b"garbage".to_vec()),
        ("Bearer garbage", b"Bearer garbage".to_vec()),
        ("Bearer three dots", b"Bearer a.b.c".to_vec()),
        ("8 KB", long.into_bytes()),
        ("non-ASCII", "Bearer тест".as_bytes().to_vec()),
        ("Latin-1 byte", b"Bearer \xe9t\xe9".to_vec()),
        ("Basic", b"Basic dXNlcjpwYXNz".to_vec()),
        ("empty Bearer", b"Bearer ".to_vec()),
        (
            "alg none",
            b"Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".to_vec(),
        ),
    ] {
        c.push(with_auth(
            &format!("auth {name}: me"),
            value.clone(),
            "{ me { id } }",
            None,
        ));
        c.push(with_auth(
            &format!("auth {name}: logout"),
            value,
            "mutation { logout { revokedSessions } }",
            Some("UNAUTHENTICATED"),
        ));
    }

    // The transport.
    let batch: Vec<Value> = (0..10).map(|_| json!({ "query": "{ me { id } }" })).collect();
    c.push(raw(
        "batch of 10",
        Some("application/json"),
        json!(batch).to_string(),
        400,
        "BATCH_NOT_SUPPORTED",
    ));
    c.push(raw(
        "batch of 1",
        Some("application/json"),
        "[{\"query\":\"{ __typename }\"}]",
        400,
        "BATCH_NOT_SUPPORTED",
    ));
    c.push(raw(
        "text/plain",
        Some("text/plain"),
        "{\"query\":\"{ __typename }\"}",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ));
    c.push(raw(
        "form",
        Some("application/x-www-form-urlencoded"),
        "query=%7B__typename%7D",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ));
    c.push(raw(
        "multipart",
        Some("multipart/form-data; boundary=x"),
        "--x--",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ));
    c.push(raw(
        "no content type",
        None,
        "{\"query\":\"{ __typename }\"}",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ));
    c.push(raw(
        "application/graphql",
        Some("application/graphql"),
        "{ __typename }",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ));
    c.push(raw(
        "broken JSON",
        Some("application/json"),
        "{\"query\": ",
        400,
        "BAD_REQUEST",
    ));
    c.push(raw(
        "invalid UTF-8",
        Some("application/json"),
        b"{\"query\": \"\xff\xfe\"}".to_vec(),
        400,
        "BAD_REQUEST",
    ));
    c.push(raw(
        "lone surrogate",
        Some("application/json"),
        "{\"query\": \"\\ud800\"}",
        400,
        "BAD_REQUEST",
    ));
    c.push(raw(
        "deeply nested variables",
        Some("application/json"),
        format!(
            "{{\"query\":\"{{ __typename }}\",\"variables\":{{\"a\":{}1{}}}}}",
            "[".repeat(3000),
            "]".repeat(3000)
        ),
        400,
        "BAD_REQUEST",
    ));
    c.push(raw(
        "query is a number",
        Some("application/json"),
        "{\"query\": 5}",
        400,
        "BAD_REQUEST",
    ));
    c.push(raw(
        "JSON null",
        Some("application/json"),
        "null",
        400,
        "BAD_REQUEST",
    ));
    c.push(raw(
        "empty body",
        Some("application/json"),
        "",
        400,
        "BAD_REQUEST",
    ));
    c.push(raw(
        "64 KB body",
        Some("application/json"),
        vec![b' '; 64 * 1024],
        413,
        "PAYLOAD_TOO_LARGE",
    ));
    c.push(Case {
        accept: Some("text/html"),
        ..raw(
            "Accept: text/html only",
            Some("application/json"),
            "{\"query\":\"{ __typename }\"}",
            406,
            "NOT_ACCEPTABLE",
        )
    });
    c.push(Case {
        method: "GET",
        path: "/graphql?query=mutation%7BgenerateCode(phone%3A%22%2B16502530000%22)%7Bphone%7D%7D".into(),
        ..raw("mutation by GET", None, "", 405, "METHOD_NOT_ALLOWED")
    });
    c.push(Case {
        method: "GET",
        path: "/graphql?query=%7B&variables=%7Bnope".into(),
        ..raw("GET with broken variables", None, "", 400, "BAD_REQUEST")
    });
    c.push(Case {
        method: "PUT",
        ..raw("PUT", Some("application/json"), "{}", 405, "*")
    });
    c.push(Case {
        method: "DELETE",
        ..raw("DELETE", None, "", 405, "*")
    });

    // Document limits and validation: refused before any resolver.
    let aliases = |n: usize, field: &str| (0..n).map(|i| format!("a{i}: {field} ")).collect::<String>();
    // Over the body limit already (see thousand_aliases_deep_queries_and_batches_run_no_resolver for
    // the same document under a raised limit, refused by the document guard).
    c.push(raw(
        "1,000 aliases of verifyUser",
        Some("application/json"),
        json!({ "query": format!("mutation {{ {} }}", aliases(1000, "verifyUser(phone: \"+16502530000\", code: \"123456\") { phone }")) }).to_string(),
        413,
        "PAYLOAD_TOO_LARGE",
    ));
    c.push(refused(
        "200 aliases of login",
        &format!(
            "mutation {{ {} }}",
            aliases(
                200,
                "login(phone: \"+16502530000\", password: \"password1\") { accessToken }"
            )
        ),
        "QUERY_LIMIT_EXCEEDED",
    ));
    c.push(refused(
        "16 aliases of me",
        &format!("{{ {} }}", aliases(16, "me { id }")),
        "QUERY_LIMIT_EXCEEDED",
    ));
    c.push(refused(
        "2 generateCode",
        "mutation { a: generateCode(phone: \"+16502530000\") { phone } b: generateCode(phone: \"+16502530001\") { phone } }",
        "QUERY_LIMIT_EXCEEDED",
    ));
    c.push(refused(
        "login and verifyUser",
        "mutation { login(phone: \"+16502530000\", password: \"password1\") { accessToken } verifyUser(phone: \"+16502530000\", code: \"123456\") { phone } }",
        "QUERY_LIMIT_EXCEEDED",
    ));
    c.push(refused(
        "auth mutation twice through a fragment",
        "mutation { ...F ...F } fragment F on Mutation { generateCode(phone: \"+16502530000\") { phone } }",
        "QUERY_LIMIT_EXCEEDED",
    ));
    // async-graphql's parser stops at 32 levels of nesting before our guard sees it.
    c.push(refused(
        "100-deep query",
        &format!("{{ {} id {} }}", "me { ".repeat(100), "} ".repeat(100)),
        "GRAPHQL_PARSE_FAILED",
    ));
    c.push(refused(
        "7-deep query",
        &format!("{{ {} id {} }}", "me { ".repeat(6), "} ".repeat(6)),
        "QUERY_LIMIT_EXCEEDED",
    ));
    c.push(refused(
        "100 nested inline fragments",
        &format!(
            "{{ {} __typename {} }}",
            "... on Query { ".repeat(100),
            "} ".repeat(100)
        ),
        "GRAPHQL_PARSE_FAILED",
    ));
    c.push(refused(
        "51 directives",
        &format!("{{ me {} {{ id }} }}", "@include(if: true) ".repeat(51)),
        "QUERY_LIMIT_EXCEEDED",
    ));
    c.push(refused(
        "fragment cycle",
        "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
        "QUERY_LIMIT_EXCEEDED",
    ));
    let mut bomb = String::from("{ ...F0 }");
    for i in 0..8 {
        bomb.push_str(&format!(
            " fragment F{i} on Query {{ {} }}",
            format!("...F{} ", i + 1).repeat(8)
        ));
    }
    bomb.push_str(" fragment F8 on Query { __typename me { id } }");
    c.push(refused("fragment bomb", &bomb, "QUERY_LIMIT_EXCEEDED"));
    c.push(refused("unknown field", "{ nope }", "GRAPHQL_VALIDATION_FAILED"));
    c.push(refused("syntax error", "{ me { ", "GRAPHQL_PARSE_FAILED"));
    c.push(refused(
        "missing argument",
        "mutation { generateCode { phone } }",
        "GRAPHQL_VALIDATION_FAILED",
    ));
    c.push(Case {
        status: 400,
        ..refused("empty document", "", "BAD_REQUEST")
    });
    c.push(refused(
        "subscription",
        "subscription { me { id } }",
        "GRAPHQL_VALIDATION_FAILED",
    ));
    c
}

async fn send(app: &TestApp, case: &Case) -> (u16, Value) {
    let mut req = app
        .client
        .request(case.method.parse().unwrap(), app.url(&case.path))
        .body(case.body.clone());
    if let Some(ct) = case.content_type {
        req = req.header("content-type", ct);
    }
    if let Some(accept) = case.accept {
        req = req.header("accept", accept);
    }
    if let Some(auth) = &case.authorization {
        req = req.header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(auth).unwrap(),
        );
    }
    let res = req.send().await.expect("the server answers");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn hostile_requests_get_their_expected_answers() {
    let app = TestApp::spawn().await;
    let cases = cases();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let before = app.resolvers.get();
        let hashes = app.auth.hasher().hashes_computed();
        let (status, body) = send(&app, case).await;
        let got = body["errors"][0]["extensions"]["code"].as_str();
        let code_ok = match case.code {
            Some("*") => true,
            expected => got == expected,
        };
        if status >= 500 || status != case.status || !code_ok {
            let shown: String = body.to_string().chars().take(300).collect();
            failures.push(format!(
                "{}: got {status} {got:?}, want {} {:?}: {shown}",
                case.name, case.status, case.code
            ));
        }
        if !case.runs && app.resolvers.get() != before {
            failures.push(format!(
                "{}: a refused request ran {} resolvers",
                case.name,
                app.resolvers.get() - before
            ));
        }
        if app.auth.hasher().hashes_computed() != hashes {
            failures.push(format!("{}: computed a password hash", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Refused documents changed no counter: the only Redis keys are those of the accepted requests.
    for (key, ttl) in app.keys_with_ttl().await {
        assert!(ttl > 0, "{key} without TTL");
        assert!(!key.contains("{+16502530000}"), "a refused request touched {key}");
    }
    app.wait_outbox_empty().await;
    assert_eq!(app.sms.count("+16502530000"), 0);
    for e164 in ["+16502530001", "+16502530002", "+16502530003"] {
        assert_eq!(
            app.sms.count(e164),
            1,
            "{e164}: other digit scripts are the same number"
        );
    }
    // Still answering.
    assert_eq!(
        app.client.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert!(app.me(None).await["data"]["me"].is_null());
}

/// The three: 1,000 aliases (under a body limit raised so the document guard decides), a
/// 100-deep query and a batch of 10 each run zero resolvers and change no counter.
#[tokio::test]
async fn thousand_aliases_deep_queries_and_batches_run_no_resolver() {
    let app = TestApp::spawn_with(|c| c.http.max_body_bytes = 1 << 20).await;
    let aliases: String = (0..1000)
        .map(|i| format!("a{i}: verifyUser(phone: \"+16502530000\", code: \"{i:06}\") {{ phone }} "))
        .collect();
    let generate: String = (0..1000)
        .map(|i| format!("g{i}: generateCode(phone: \"+16502530000\") {{ phone }} "))
        .collect();
    let login: String = (0..1000)
        .map(|i| {
            format!("l{i}: login(phone: \"+16502530000\", password: \"guess-{i:04}\") {{ accessToken }} ")
        })
        .collect();
    let deep = format!("{{ {} id {} }}", "me { ".repeat(100), "} ".repeat(100));
    for (name, query) in [
        ("1,000 verifyUser", format!("mutation {{ {aliases} }}")),
        ("1,000 generateCode", format!("mutation {{ {generate} }}")),
        ("1,000 login", format!("mutation {{ {login} }}")),
        ("100 deep", deep),
    ] {
        let r = app.gql(&query, json!({})).await;
        assert!(
            matches!(
                code(&r),
                Some("QUERY_LIMIT_EXCEEDED" | "GRAPHQL_VALIDATION_FAILED" | "GRAPHQL_PARSE_FAILED")
            ),
            "{name}: {r}"
        );
    }
    let batch: Vec<Value> = (0..10)
        .map(
            |i| json!({ "query": LOGIN, "variables": { "p": "+16502530000", "w": format!("guess-{i:04}") } }),
        )
        .collect();
    let res = app
        .client
        .post(app.url("/graphql"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(app.resolvers.get(), 0, "no resolver ran");
    assert_eq!(app.auth.hasher().hashes_computed(), 0);
    assert_eq!(app.sms.count("+16502530000"), 0);
    assert!(app.keys_with_ttl().await.is_empty(), "no counter changed");
}

/// Per-IP budgets; X-Forwarded-For believed only from a trusted proxy.
#[tokio::test]
async fn per_ip_budgets_and_forwarded_for() {
    let app = TestApp::spawn_with(|c| {
        c.ip.ip_max_code_requests = 3;
        c.ip.ip_max_code_checks = 3;
        c.ip.ip_max_password_attempts = 3;
    })
    .await;
    for i in 0..3 {
        assert!(app.generate_code(&format!("+1650253010{i}")).await["errors"].is_null());
    }
    let r = app.generate_code("+16502530109").await;
    assert_code(&r, "RATE_LIMITED");
    assert!(
        r["errors"][0]["extensions"]["retryAfterSeconds"]
            .as_u64()
            .unwrap()
            <= 300
    );
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let forged = generate_forwarded(&app, "198.51.100.7", "+16502530108").await;
    assert_code(&forged, "RATE_LIMITED");

    for _ in 0..3 {
        assert_code(&app.verify("+16502530101", "000000").await, "INVALID_CODE");
    }
    assert_code(&app.verify("+16502530101", "000000").await, "RATE_LIMITED");
    for i in 0..3 {
        assert_code(
            &app.login(&format!("+1650253020{i}"), "wrong-password").await,
            "INVALID_CREDENTIALS",
        );
    }
    assert_code(&app.login("+16502530209", "wrong-password").await, "RATE_LIMITED");

    // Behind a trusted proxy, each forwarded client has its own budget.
    let proxied = TestApp::spawn_with(|c| {
        c.ip.ip_max_code_requests = 1;
        c.http.trusted_proxies = "127.0.0.1/32".into();
    })
    .await;
    for (i, client) in ["198.51.100.1", "198.51.100.2", "2001:db8::1"].iter().enumerate() {
        let r = generate_forwarded(&proxied, client, &format!("+1650253030{i}")).await;
        assert!(r["errors"].is_null(), "{client}: {r}");
    }
    let again = generate_forwarded(&proxied, "1.1.1.1, 198.51.100.1", "+16502530309").await;
    assert_code(&again, "RATE_LIMITED");
}

async fn generate_forwarded(app: &TestApp, forwarded_for: &str, phone: &str) -> Value {
    app.client
        .post(app.url("/graphql"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "query": GENERATE, "variables": { "p": phone } }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
}

/// The service-wide SMS budget and the country allow-list.
#[tokio::test]
async fn sms_budget_and_country_allow_list() {
    let app = TestApp::spawn_with(|c| {
        c.sms.sms_max_per_hour = 2;
        c.sms.sms_allowed_regions = "US,GB".into();
    })
    .await;
    assert!(app.generate_code("+16502530401").await["errors"].is_null());
    assert!(app.generate_code("+447400123456").await["errors"].is_null());
    assert_code(&app.generate_code("+16502530402").await, "RATE_LIMITED");
    // A refusal spends none of the budget, and stores no code.
    assert_eq!(app.get_key("sms:hour").await.as_deref(), Some("2"));
    assert!(
        !app.keys_with_ttl()
            .await
            .iter()
            .any(|(k, _)| k.contains("{+16502530402}")),
        "the refused phone has no key"
    );
    let r = app.generate_code("+989121234567").await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["reason"], "COUNTRY_NOT_ALLOWED");
}

/// A client trickling its request head is cut off; so is one trickling its body.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    let app = TestApp::spawn_with(|c| {
        c.http.header_read_timeout_seconds = 1;
        c.http.request_timeout_seconds = 1;
    })
    .await;
    let mut slow_head = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow_head
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow_head.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the server closed the connection within the header timeout"
    );

    let mut slow_body = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow_body
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(5), slow_body.read_to_end(&mut buf)).await;
    assert!(answered.is_ok(), "the server gave up on the slow body");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(
        app.client.get(app.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

/// In production, introspection, suggestions and GraphiQL are off.
#[tokio::test]
async fn production_hides_the_schema() {
    crate::real_stores_only!("APP_ENV=production refuses the embedded backend");
    let app = TestApp::spawn_with(|c| {
        c.app_env = phone_auth::config::AppEnv::Production;
        c.tokens.jwt_issuer = Some("https://auth.example.com".into());
        c.tokens.jwt_signing_keys = Some(
            phone_auth::services::tokens::SigningKey::generate()
                .unwrap()
                .to_config()
                .into(),
        );
    })
    .await;
    let r = app
        .gql(
            "{ __schema { types { name } } __type(name: \"User\") { name } }",
            json!({}),
        )
        .await;
    assert!(
        r["data"]["__schema"].is_null() && r["data"]["__type"].is_null(),
        "{r}"
    );
    let r = app.gql("{ mee { id } }", json!({})).await;
    assert!(!r.to_string().contains("Did you mean"), "{r}");
    let page = app.client.get(app.url("/graphql")).send().await.unwrap();
    assert_ne!(page.status(), 200);

    let dev = TestApp::spawn().await;
    let r = dev.gql("{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(r["data"]["__schema"]["queryType"]["name"], "Query");
}
