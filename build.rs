//! `sqlx::migrate!` (src/app.rs) embeds migrations/ when the crate is compiled. Cargo does not know
//! that: without this line a new or edited migration leaves the binary as it was (the sqlx docs'
//! advice for `migrate!` on stable Rust).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
