//! Configuration plumbing shared by every service's `Config`: parsing for
//! embedding (tests, benchmarks) the way a binary does, the one reading of
//! extra Kafka options, and the setting groups that several services
//! flatten into their own `Config` under the platform-wide `MESSENGER_*`
//! names.

use std::path::PathBuf;

/// Parses `C` from an argument list (the first item is the program name)
/// and the environment, exactly as a binary that flattens `C` would.
pub fn parse_from<C, I, T>(args: I) -> Result<C, clap::Error>
where
    C: clap::Args + clap::FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = C::augment_args(clap::Command::new("messenger").no_binary_name(false));
    let matches = command.try_get_matches_from(args)?;
    C::from_arg_matches(&matches)
}

/// Extra librdkafka properties given as `key=value` entries: trimmed,
/// blank entries skipped, and an entry without `=` refused (a typo in a
/// TLS or SASL setting must not be dropped silently).
pub fn kafka_options(entries: &[String]) -> Result<Vec<(&str, &str)>, String> {
    entries
        .iter()
        .filter(|o| !o.trim().is_empty())
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("kafka option {o:?} is not key=value"))
        })
        .collect()
}

/// Environment names a service renamed, `(old, new)`, still honoured for
/// one release: where `old` is set and `new` is not, `new` takes its value
/// and a warning names both. Call it at the start of `main`, after
/// [`crate::telemetry::init`] and before any thread starts (it sets
/// environment variables), then parse the `Config`.
pub fn accept_renamed_env(renamed: &[(&str, &str)]) {
    for (old, new) in renamed {
        let Some(value) = std::env::var_os(old) else {
            continue;
        };
        if std::env::var_os(new).is_some() {
            tracing::warn!(old, new, "both set: {old} is ignored, {new} applies");
        } else {
            tracing::warn!(
                old,
                new,
                "{old} is deprecated and will be removed: use {new}"
            );
            std::env::set_var(new, value);
        }
    }
}

/// Where the dev PKI (or an operator's) lives: `<dir>/ca.pem` and one
/// `<name>.pem` / `<name>.key` pair per service.
#[derive(Debug, Clone, clap::Args)]
pub struct PkiArgs {
    /// Directory with `ca.pem` and this service's certificate and key.
    #[arg(long, env = "MESSENGER_PKI_DIR", default_value = ".dev/pki")]
    pub pki_dir: PathBuf,
}

/// The Kafka cluster and the events topic.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka (or tansu / Redpanda) bootstrap servers.
    #[arg(
        long,
        env = "MESSENGER_KAFKA_BROKERS",
        default_value = "127.0.0.1:59092"
    )]
    pub kafka_brokers: String,
    /// Topic the outbox relay publishes every event to.
    #[arg(
        long,
        env = "MESSENGER_EVENTS_TOPIC",
        default_value = "messenger.events"
    )]
    pub events_topic: String,
}

/// Redis and the prefix of every key and channel (see [`crate::keys`]).
/// `Debug` is hand-written: the URL may carry a password.
#[derive(Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL.
    #[arg(
        long,
        env = "MESSENGER_REDIS_URL",
        default_value = "redis://127.0.0.1:56379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "MESSENGER_REDIS_PREFIX", default_value = "msg")]
    pub redis_prefix: String,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis_prefix", &self.redis_prefix)
            .finish_non_exhaustive()
    }
}

/// The gRPC server options shared by command-service, query-service and
/// notifier.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcArgs {
    /// Serve gRPC server reflection (for grpcurl and the like). Off by
    /// default: it tells any caller holding a certificate the whole API.
    #[arg(long, env = "MESSENGER_GRPC_REFLECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub grpc_reflection: bool,
    /// Client-certificate names (DNS SAN or common name) that may call the
    /// user-facing RPCs and assert the acting user (`x-user-id`): the
    /// gateways. Every other certificate of the CA is refused
    /// (`PERMISSION_DENIED`) except for health and reflection.
    #[arg(
        long,
        env = "MESSENGER_GRPC_GATEWAY_NAMES",
        value_delimiter = ',',
        default_value = "gateway"
    )]
    pub grpc_gateway_names: Vec<String>,
    /// Client-certificate names that may call operator RPCs (role grants).
    #[arg(
        long,
        env = "MESSENGER_GRPC_OPERATOR_NAMES",
        value_delimiter = ',',
        default_value = "operator"
    )]
    pub grpc_operator_names: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args)]
    struct Sample {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[arg(long, value_delimiter = ',')]
        kafka_option: Vec<String>,
    }

    #[test]
    fn a_renamed_variable_still_applies_unless_the_new_one_is_set() {
        let (old, new) = ("MESSENGER_TEST_OLD_NAME_1", "MESSENGER_TEST_NEW_NAME_1");
        std::env::set_var(old, "7");
        accept_renamed_env(&[(old, new)]);
        assert_eq!(std::env::var(new).as_deref(), Ok("7"));
        std::env::set_var(old, "8");
        accept_renamed_env(&[(old, new)]);
        assert_eq!(std::env::var(new).as_deref(), Ok("7"), "the new name wins");
        accept_renamed_env(&[("MESSENGER_TEST_UNSET_NAME", "MESSENGER_TEST_UNSET_NEW")]);
        assert!(std::env::var_os("MESSENGER_TEST_UNSET_NEW").is_none());
    }

    #[test]
    fn parses_flattened_groups_and_refuses_malformed_kafka_options() {
        let s: Sample = parse_from([
            "x",
            "--kafka-brokers",
            "k:1",
            "--kafka-option",
            "a=1, ,b = 2",
        ])
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.kafka.kafka_brokers, "k:1");
        assert_eq!(
            kafka_options(&s.kafka_option),
            Ok(vec![("a", "1"), ("b", "2")])
        );
        assert!(kafka_options(&["nokey".into()]).is_err());
    }
}
