//! API.md's accounts endpoints; this step only moves the file (to
//! `auth.rs`, its largest piece after the split that follows).

mod auth;

pub use self::auth::*;
