//! Prometheus metrics in the text exposition format, without a metrics
//! library: counters are atomics or a small locked map, and `/metrics`
//! writes them with [`Exposition`].
//!
//! Other parts of the server (webhooks, upstreams) export their own figures
//! by registering a collector with [`Metrics::register`]: a closure called
//! on every scrape that writes its families into the same [`Exposition`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A collector: writes extra metric families on every scrape.
pub type Collector = Box<dyn Fn(&mut Exposition) + Send + Sync>;

/// The registry's metrics. Cheap to share (`Arc` it).
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    uploads_in_flight: AtomicU64,
    gc_runs: AtomicU64,
    gc_failures: AtomicU64,
    gc_blobs_removed: AtomicU64,
    gc_bytes_freed: AtomicU64,
    gc_tags_deleted: AtomicU64,
    gc_last_success: AtomicU64,
    storage: Mutex<Option<StorageFigures>>,
    collectors: RwLock<Vec<Collector>>,
}

/// Storage figures, as last measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageFigures {
    /// Blobs stored.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Upload sessions open.
    pub upload_sessions: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Count one request to `route` (a fixed label such as `manifest`)
    /// answered with `status`.
    pub fn record_request(&self, route: &'static str, method: &str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route, method.to_string(), status)).or_insert(0) += 1;
        }
    }

    /// The counter of request body bytes received.
    pub(crate) fn bytes_in(&self) -> &AtomicU64 {
        &self.bytes_in
    }

    /// The counter of response body bytes sent.
    pub(crate) fn bytes_out(&self) -> &AtomicU64 {
        &self.bytes_out
    }

    /// The gauge of upload requests in progress.
    pub(crate) fn uploads_in_flight(&self) -> &AtomicU64 {
        &self.uploads_in_flight
    }

    /// Record a garbage collection run.
    pub fn record_gc(&self, ok: Option<(u64, u64, u64)>, now_unix: u64) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        match ok {
            Some((tags, blobs, bytes)) => {
                self.gc_tags_deleted.fetch_add(tags, Ordering::Relaxed);
                self.gc_blobs_removed.fetch_add(blobs, Ordering::Relaxed);
                self.gc_bytes_freed.fetch_add(bytes, Ordering::Relaxed);
                self.gc_last_success.store(now_unix, Ordering::Relaxed);
            }
            None => {
                self.gc_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Set the storage figures shown until the next measurement.
    pub fn set_storage(&self, figures: StorageFigures) {
        if let Ok(mut s) = self.storage.lock() {
            *s = Some(figures);
        }
    }

    /// Register a collector called on every scrape.
    pub fn register(&self, collector: impl Fn(&mut Exposition) + Send + Sync + 'static) {
        if let Ok(mut c) = self.collectors.write() {
            c.push(Box::new(collector));
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        out.family(
            "speculum_http_requests_total",
            "counter",
            "HTTP requests answered, by route, method and status.",
        );
        if let Ok(map) = self.requests.lock() {
            for ((route, method, status), n) in map.iter() {
                out.sample(
                    "speculum_http_requests_total",
                    &[
                        ("route", route),
                        ("method", method),
                        ("status", &status.to_string()),
                    ],
                    *n,
                );
            }
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.counter(
            "speculum_http_request_bytes_total",
            "Request body bytes received.",
            load(&self.bytes_in),
        );
        out.counter(
            "speculum_http_response_bytes_total",
            "Response body bytes sent.",
            load(&self.bytes_out),
        );
        out.gauge(
            "speculum_upload_requests_in_flight",
            "Upload requests (POST, PATCH, PUT of blob data) in progress.",
            load(&self.uploads_in_flight),
        );
        let storage = self.storage.lock().ok().and_then(|s| *s);
        if let Some(s) = storage {
            out.gauge("speculum_storage_blobs", "Blobs in storage.", s.blobs);
            out.gauge(
                "speculum_storage_bytes",
                "Bytes held by blobs in storage.",
                s.bytes,
            );
            out.gauge(
                "speculum_upload_sessions",
                "Upload sessions open in storage.",
                s.upload_sessions,
            );
        }
        out.counter(
            "speculum_gc_runs_total",
            "Garbage collection runs.",
            load(&self.gc_runs),
        );
        out.counter(
            "speculum_gc_failures_total",
            "Garbage collection runs that failed.",
            load(&self.gc_failures),
        );
        out.counter(
            "speculum_gc_tags_deleted_total",
            "Tags deleted by retention.",
            load(&self.gc_tags_deleted),
        );
        out.counter(
            "speculum_gc_blobs_removed_total",
            "Blobs removed by garbage collection.",
            load(&self.gc_blobs_removed),
        );
        out.counter(
            "speculum_gc_bytes_freed_total",
            "Bytes freed by garbage collection.",
            load(&self.gc_bytes_freed),
        );
        out.gauge(
            "speculum_gc_last_success_timestamp_seconds",
            "When garbage collection last succeeded (Unix time; 0: never).",
            load(&self.gc_last_success),
        );
        if let Ok(collectors) = self.collectors.read() {
            for c in collectors.iter() {
                c(&mut out);
            }
        }
        out.finish()
    }
}

/// A writer of the Prometheus text exposition format.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Start a family: `# HELP` and `# TYPE` lines. `kind` is `counter`,
    /// `gauge` or `untyped`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of the current family, with labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::new();
        m.record_request("manifest", "GET", 200);
        m.record_request("manifest", "GET", 200);
        m.bytes_in().fetch_add(5, Ordering::Relaxed);
        m.register(|out| {
            out.family("speculum_webhook_sent_total", "counter", "Sent.");
            out.sample("speculum_webhook_sent_total", &[("endpoint", "a\"b")], 3);
        });
        let text = m.render();
        assert!(
            text.contains(
                "speculum_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("speculum_http_request_bytes_total 5"));
        assert!(text.contains("speculum_webhook_sent_total{endpoint=\"a\\\"b\"} 3"));
        assert!(text.contains("# TYPE speculum_upload_requests_in_flight gauge"));
    }
}
