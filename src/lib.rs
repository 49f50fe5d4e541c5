//! phone-auth: phone-number authentication as a GraphQL API.
//!
//! Layout: `domain` (values that can only be built valid), `services` (one concern each: OTP codes,
//! lockout, users, sessions, tokens, SMS), `graphql` (thin resolvers, error codes, document limits),
//! `http` (the edge: routes, server loop, client address), `app` (wiring), `config`, `random` (OS
//! randomness and opaque tokens).

pub mod admin;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod http;
pub mod ops;
pub mod random;
pub mod services;
