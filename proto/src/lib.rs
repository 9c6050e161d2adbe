//! gRPC contracts of Messenger, generated from `proto/` at build time.
//!
//! # Layout
//!
//! - [`command::v1`]: `CommandService`, every write (accounts, conversations,
//!   messages, read markers).
//! - [`FILE_DESCRIPTOR_SET`]: for gRPC server reflection.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

pub mod command {
    pub mod v1 {
        tonic::include_proto!("messenger.command.v1");
    }
}

/// Encoded descriptors of every service, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("messenger_descriptor");
