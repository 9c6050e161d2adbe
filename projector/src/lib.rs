//! Kafka to read models (issue: Read side). Not built yet.
//!
//! This crate is an empty placeholder in the workspace layout of
//! DESIGN.md; it exposes nothing and runs nothing until its issue is done.
