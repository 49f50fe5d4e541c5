/// `schema.graphql` is generated from the code (`phone-auth print-schema`); this fails when it drifts.
#[test]
fn committed_schema_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql exists");
    let generated = phone_auth::graphql::sdl();
    assert!(
        committed == generated,
        "schema.graphql is stale: run `cargo run -- print-schema > schema.graphql`"
    );
}

/// Every error code the service can return is documented in the schema and the README.
#[test]
fn every_error_code_is_documented() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let sdl = phone_auth::graphql::sdl();
    for code in [
        "BAD_USER_INPUT",
        "INVALID_CODE",
        "TOO_MANY_ATTEMPTS",
        "RATE_LIMITED",
        "INVALID_CREDENTIALS",
        "ACCOUNT_LOCKED",
        "INVALID_TOKEN",
        "PHONE_ALREADY_REGISTERED",
        "UNAUTHENTICATED",
        "REAUTHENTICATION_REQUIRED",
        "NOT_FOUND",
        "SERVICE_UNAVAILABLE",
        "INTERNAL_SERVER_ERROR",
    ] {
        assert!(sdl.contains(code), "{code} not in the schema");
        assert!(readme.contains(&format!("`{code}`")), "{code} not in the README");
    }
}
