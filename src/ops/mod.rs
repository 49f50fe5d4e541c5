//! Running it in production: Prometheus metrics (`metrics`), logging and request ids (`logging`),
//! log lines written in batches (`log_writer`).
//! Audit events are a service (`services::audit`: they own a table); admin commands are `crate::admin`.

pub mod log_writer;
pub mod logging;
pub mod metrics;
