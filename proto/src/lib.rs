//! gRPC contracts of Messenger, generated from `proto/` at build time.
//!
//! # Layout
//!
//! - [`command::v1`]: `CommandService`, every write (accounts, conversations,
//!   messages, read markers).
//! - [`query::v1`]: `QueryService`, every read (conversations, history,
//!   users, the audit log, the WebSocket replay).
//! - [`notifier::v1`]: `NotifierService`, push subscriptions and
//!   notification settings.
//! - [`meta`]: the metadata every call carries (caller, correlation id,
//!   error code and field) and the helpers that read and write it.
//! - [`FILE_DESCRIPTOR_SET`]: for gRPC server reflection.

pub mod meta;

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod command {
    pub mod v1 {
        tonic::include_proto!("messenger.command.v1");
    }
}

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod query {
    pub mod v1 {
        tonic::include_proto!("messenger.query.v1");
    }
}

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod notifier {
    pub mod v1 {
        tonic::include_proto!("messenger.notifier.v1");
    }
}

/// Encoded descriptors of every service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("messenger_descriptor");
