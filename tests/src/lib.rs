//! End-to-end tests of Messenger against the real stack: the harness that
//! starts services in-process against fresh databases and topics, the
//! suites under `tests/`, and the load and benchmark tools built on them.
//! The SMTP sink they read mail from is its own crate (`tools/smtp-sink`).

pub mod gateway_support;
pub mod harness;
pub mod kafka;
pub mod load;
pub mod notifier_support;
pub mod plot;
pub mod projector_support;
pub mod query_support;
pub mod running;
pub use smtp_sink;
