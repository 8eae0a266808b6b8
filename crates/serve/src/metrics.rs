//! The server's Prometheus metrics (`GET /metrics`, text format): runs by endpoint and status,
//! request latency, queue depth, busy workers, refused requests.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The labels of a finished run.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    endpoint: String,
    status: String,
}

/// The label of a request's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

/// The label of a refused request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub(crate) struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    refused: Family<ReasonLabels, Counter>,
    /// Set from the pool's count when the metrics are read.
    pub(crate) queue_depth: Gauge,
    pub(crate) workers_busy: Gauge,
}

impl Metrics {
    pub(crate) fn new(workers: usize) -> Self {
        let mut registry = Registry::default();
        let runs = Family::<RunLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        let queue_depth = Gauge::default();
        let workers_busy = Gauge::default();
        let workers_total = Gauge::<i64>::default();
        workers_total.set(workers as i64);
        registry.register(
            "coe_runs",
            "Programs run, by endpoint and outcome status",
            runs.clone(),
        );
        registry.register(
            "coe_request_duration_seconds",
            "Time from a request's arrival to its reply, by endpoint",
            latency.clone(),
        );
        registry.register(
            "coe_refused_requests",
            "Requests refused before running, by reason",
            refused.clone(),
        );
        registry.register(
            "coe_queue_depth",
            "Runs waiting for a sandbox worker",
            queue_depth.clone(),
        );
        registry.register(
            "coe_workers_busy",
            "Sandbox workers running a program",
            workers_busy.clone(),
        );
        registry.register("coe_workers", "Sandbox workers", workers_total);
        Self {
            registry,
            runs,
            latency,
            refused,
            queue_depth,
            workers_busy,
        }
    }

    pub(crate) fn run(&self, endpoint: &str, status: &str) {
        self.runs
            .get_or_create(&RunLabels {
                endpoint: endpoint.into(),
                status: status.into(),
            })
            .inc();
    }

    pub(crate) fn latency(&self, endpoint: &str, seconds: f64) {
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.into(),
            })
            .observe(seconds);
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The metrics in Prometheus' text format.
    pub(crate) fn text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
