//! The REST endpoints, one module per API.md section.

pub mod accounts;
pub mod chat;
pub mod health;
pub mod notifications;
