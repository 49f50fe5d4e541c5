//! phone-auth: phone-number authentication as a GraphQL API.
//!
//! Layout: `domain` (values that can only be built valid), `services` (one concern each: OTP codes,
//! lockout, users, sessions, tokens, SMS), `graphql` (thin resolvers), `http` (the edge), `app`
//! (wiring), `config`.

pub mod app;
pub mod client_ip;
pub mod config;
pub mod domain;
pub mod error;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod server;
pub mod services;
