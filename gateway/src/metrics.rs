//! Prometheus metrics at `GET /metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the HTTP request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template (`/v1/conversations/{id}`), never the raw
    /// path, so ids don't explode the cardinality.
    pub route: String,
    pub status: u16,
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub ws_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub ws_frames_out: Counter<u64, AtomicU64>,
    pub ws_frames_in: Counter<u64, AtomicU64>,
    pub ws_slow_consumers: Counter<u64, AtomicU64>,
    /// 1 while the live path's probe comes back in time (ws::hub).
    pub live_path_up: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub live_path_heals: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        let ws_connections = Gauge::default();
        registry.register("ws_connections", "Open WebSockets", ws_connections.clone());
        let ws_frames_out = Counter::default();
        registry.register(
            "ws_frames_out",
            "WebSocket frames sent",
            ws_frames_out.clone(),
        );
        let ws_frames_in = Counter::default();
        registry.register(
            "ws_frames_in",
            "WebSocket frames received",
            ws_frames_in.clone(),
        );
        let ws_slow_consumers = Counter::default();
        registry.register(
            "ws_slow_consumers",
            "WebSockets closed because their outbound queue was full",
            ws_slow_consumers.clone(),
        );
        let live_path_up = Gauge::default();
        registry.register(
            "live_path_up",
            "1 while a probe published to Redis reaches the WebSocket dispatch in time",
            live_path_up.clone(),
        );
        let live_path_heals = Counter::default();
        registry.register(
            "live_path_heals",
            "Times the live path was re-subscribed after missed probes",
            live_path_heals.clone(),
        );
        Self {
            registry,
            live_path_up,
            live_path_heals,
            http_requests,
            ws_connections,
            ws_frames_out,
            ws_frames_in,
            ws_slow_consumers,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
