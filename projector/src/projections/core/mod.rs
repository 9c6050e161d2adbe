//! The core read model; this step only moves the file (to `store.rs`, its
//! largest piece after the split that follows).

mod store;

pub use self::store::{Core, NAME};
