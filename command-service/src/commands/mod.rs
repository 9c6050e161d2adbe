//! The application service; this step only moves the file (to
//! `accounts.rs`, its largest piece after the split that follows).

mod accounts;

pub use self::accounts::*;
