//! Running it in production: Prometheus metrics (`metrics`), logging and request ids (`logging`).
//! Audit events are a service (`services::audit`: they own a table); admin commands are `crate::admin`.

pub mod logging;
pub mod metrics;
