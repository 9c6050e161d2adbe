//! End-to-end tests of Messenger against the real stack, and the pieces of the dev stack they need.

pub mod gateway_support;
pub mod harness;
pub mod kafka;
pub mod load;
pub mod notifier_support;
pub mod plot;
pub mod projector_support;
pub mod query_support;
pub mod smtp_sink;
