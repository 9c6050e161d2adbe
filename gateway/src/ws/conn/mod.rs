//! One WebSocket connection; this step only moves the file (to
//! `replay.rs`, its largest piece after the split that follows).

mod replay;

// `replay.rs` still names its neighbours as `super::…`.
use super::{frames, hub};

pub use self::replay::run;
