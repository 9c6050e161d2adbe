//! The projections Messenger ships.
//!
//! - [`core`]: the read model query-service serves (users, conversations,
//!   members, history, per-user lists with unread counts, read markers).
//!   Its applied events are also the ones fanned out on Redis.
//! - [`messages_per_user_day`]: an analyst's projection, the worked
//!   example of docs/projections.md.

pub mod core;
pub mod messages_per_user_day;

use crate::projection::Registry;

/// Every projection of this build, in application order. To add one:
/// implement [`crate::projection::Projection`] in a module beside these and
/// register it here.
#[allow(clippy::expect_used)] // names and tables are fixed at compile time; the test below proves them unique
pub fn builtin() -> Registry {
    let mut registry = Registry::empty();
    registry.register(core::Core).expect("core registers first");
    registry
        .register(messages_per_user_day::MessagesPerUserDay)
        .expect("messages_per_user_day has its own name and table");
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_holds_core_and_the_analyst_example() {
        let r = builtin();
        let names: Vec<_> = r.all().iter().map(|p| p.name()).collect();
        assert_eq!(names, ["core", "messages_per_user_day"]);
    }
}
