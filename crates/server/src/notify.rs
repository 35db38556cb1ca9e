//! Webhooks: tell deployment tools about pushes, promotions, deletes and
//! mounts.
//!
//! Handlers report what they did to the [`Notifier`]; for every configured
//! endpoint whose filters accept the event, it is written to that endpoint's
//! queue on disk before the handler returns (see the `queue` module), and a
//! background task per endpoint POSTs the queue in order, retrying with
//! exponential backoff. A receiver that is down gets everything once it is
//! back; a registry restart resumes the pending files. Delivery is
//! at-least-once: a crash between a receiver's answer and the removal of the
//! file sends it again, with the same `X-Speculum-Delivery` id.
//!
//! A webhook never fails a registry request: a queue that cannot be written
//! is logged (error) and the request still succeeds.
//!
//! Events:
//! - `push`: a manifest pushed, by tag (target `tag` set) or by digest. A
//!   promotion (`speculum tag`/`promote`: an existing manifest pushed under a
//!   new tag) is a push of that tag.
//! - `delete`: a manifest deleted by digest (target `digest`) or a tag
//!   deleted (target `tag`).
//! - `mount`: a blob mounted from another repository (`fromRepository`).
//!
//! Formats: `distribution` sends the registry:2 envelope; `dockerhub` sends
//! Docker Hub's payload for pushes by tag (see [`Format`]). Docker Hub-style
//! receivers (such as Aria Automation Pipelines' Docker trigger) check a
//! secret token in the hook URL's query string: put it in `url`. With a
//! `secret`, every request also carries `X-Speculum-Signature:
//! sha256=<hex HMAC-SHA256 of the body>`.

mod config;
mod deliver;
mod event;
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, Method};
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;

pub use config::{Endpoint, EndpointConfig, Format, HeaderValues, WebhookSettings, WebhooksConfig};
pub use deliver::{SIGNATURE_HEADER, signature};
pub use event::{Action, Event, RequestInfo, Target};

use crate::auth::Identity;
use crate::metrics::Exposition;
use event::Source;
use queue::Queue;

/// How long [`Notifier::shutdown`] waits for an attempt in flight.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A webhook failure that stops startup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A bad `webhooks` key.
    #[error("{key}: {message}")]
    Config {
        /// The key, as `webhooks.endpoints[0].url`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The queue directory cannot be used.
    #[error("webhook queue {path}: {source}")]
    Queue {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An endpoint's HTTP client cannot be built.
    #[error("webhook endpoint {0}")]
    Tls(String),
}

/// What the notifier needs to know about the registry it runs in.
#[derive(Debug, Clone, Default)]
pub struct NotifierOptions {
    /// The registry's public URL (`https://registry.example.org:5000`), used
    /// in the payloads' `url` fields. Unset: `https://<Host of the request>`.
    pub public_url: Option<String>,
    /// `host:port` the registry serves on (distribution's `source.addr`).
    pub source_addr: String,
    /// Whether pulls need credentials (Docker Hub's `is_private`).
    pub private: bool,
}

/// One endpoint's counters, as [`Notifier::stats`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    /// The endpoint's name.
    pub name: String,
    /// Deliveries the receiver accepted.
    pub sent: u64,
    /// Failed attempts (each retry that fails counts).
    pub failed: u64,
    /// Deliveries waiting in the queue (including the one being sent).
    pub pending: u64,
    /// Deliveries given up on (`max-retries`) or unreadable, moved to `dead/`.
    pub abandoned: u64,
}

/// A metric family: name, type, help, and the value it takes from the stats.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&EndpointStats) -> u64,
);

/// An endpoint at run time: its settings, queue and counters.
pub(crate) struct EndpointState {
    endpoint: Endpoint,
    queue: Queue,
    wake: Notify,
    sent: AtomicU64,
    failed: AtomicU64,
    pending: AtomicU64,
    abandoned: AtomicU64,
}

impl EndpointState {
    fn wants(&self, event: &Event) -> bool {
        let e = &self.endpoint;
        let t = &event.target;
        e.events.contains(&event.action)
            && e.repositories
                .as_ref()
                .is_none_or(|r| r.is_match(&t.repository))
            && e.tags
                .as_ref()
                .is_none_or(|r| t.tag.as_deref().is_some_and(|tag| r.is_match(tag)))
            && (e.format != Format::Dockerhub || (event.action == Action::Push && t.tag.is_some()))
    }
}

/// Sends webhooks. Cheap to clone; the delivery tasks stop when the last
/// clone is dropped or [`Notifier::shutdown`] is called, and pending
/// deliveries stay on disk for the next start.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Arc<EndpointState>>,
    options: NotifierOptions,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field(
                "endpoints",
                &self
                    .inner
                    .endpoints
                    .iter()
                    .map(|e| e.endpoint.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::disabled()
    }
}

impl Notifier {
    /// A notifier with no endpoints: every report is a no-op.
    pub fn disabled() -> Notifier {
        let (stop, _) = watch::channel(false);
        Notifier {
            inner: Arc::new(Inner {
                endpoints: Vec::new(),
                options: NotifierOptions::default(),
                stop,
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Open every endpoint's queue (resuming what it holds) and start its
    /// delivery task. Must be called within a Tokio runtime.
    pub fn start(
        settings: WebhookSettings,
        options: NotifierOptions,
    ) -> Result<Notifier, NotifyError> {
        let (stop, _) = watch::channel(false);
        let source = Arc::new(Source {
            addr: options.source_addr.clone(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            private: options.private,
        });
        let mut endpoints = Vec::with_capacity(settings.endpoints.len());
        let mut work = Vec::with_capacity(settings.endpoints.len());
        for endpoint in settings.endpoints {
            let dir = settings.queue_dir.join(&endpoint.name);
            let (queue, pending) = Queue::open(dir.clone())
                .map_err(|source| NotifyError::Queue { path: dir, source })?;
            let client = deliver::client(&endpoint)?;
            if pending > 0 {
                tracing::info!(endpoint = %endpoint.name, pending, "resuming webhook deliveries");
            }
            let state = Arc::new(EndpointState {
                endpoint,
                queue,
                wake: Notify::new(),
                sent: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                pending: AtomicU64::new(pending),
                abandoned: AtomicU64::new(0),
            });
            endpoints.push(Arc::clone(&state));
            work.push((state, client));
        }
        let tasks = work
            .into_iter()
            .map(|(state, client)| {
                tokio::spawn(deliver::run(
                    state,
                    client,
                    Arc::clone(&source),
                    stop.subscribe(),
                ))
            })
            .collect();
        tracing::info!(endpoints = endpoints.len(), "webhooks started");
        Ok(Notifier {
            inner: Arc::new(Inner {
                endpoints,
                options,
                stop,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Whether any endpoint wants events of this kind.
    pub fn wants(&self, action: Action) -> bool {
        self.inner
            .endpoints
            .iter()
            .any(|e| e.endpoint.events.contains(&action))
    }

    /// Queue `event` for every endpoint that wants it, durably, and wake
    /// their delivery tasks. Never fails: a queue that cannot be written is
    /// logged.
    pub async fn publish(&self, event: Event) {
        let targets: Vec<Arc<EndpointState>> = self
            .inner
            .endpoints
            .iter()
            .filter(|e| e.wants(&event))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        for t in &targets {
            // Counted before the file exists, so the delivery task can
            // never take it off the count first.
            t.pending.fetch_add(1, Ordering::SeqCst);
        }
        let event = Arc::new(event);
        let writes = {
            let targets = targets.clone();
            let event = Arc::clone(&event);
            tokio::task::spawn_blocking(move || {
                targets
                    .iter()
                    .map(|t| t.queue.push(&event).map(|_| ()))
                    .collect::<Vec<_>>()
            })
            .await
        };
        let writes: Vec<std::io::Result<()>> = match writes {
            Ok(w) => w,
            Err(e) => targets
                .iter()
                .map(|_| Err(std::io::Error::other(e.to_string())))
                .collect(),
        };
        for (t, written) in targets.iter().zip(writes) {
            match written {
                Ok(()) => t.wake.notify_one(),
                Err(e) => {
                    deliver::decrement(t);
                    tracing::error!(endpoint = %t.endpoint.name, id = %event.id, error = %e,
                        "cannot queue a webhook delivery; it is lost");
                }
            }
        }
    }

    /// Every endpoint's counters.
    pub fn stats(&self) -> Vec<EndpointStats> {
        self.inner
            .endpoints
            .iter()
            .map(|e| EndpointStats {
                name: e.endpoint.name.clone(),
                sent: e.sent.load(Ordering::Relaxed),
                failed: e.failed.load(Ordering::Relaxed),
                pending: e.pending.load(Ordering::SeqCst),
                abandoned: e.abandoned.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The counters in the Prometheus text format (what [`Notifier::export`]
    /// writes). Empty when no endpoint is configured.
    pub fn metrics_text(&self) -> String {
        let mut out = Exposition::default();
        self.export(&mut out);
        out.finish()
    }

    /// Write the counters into a `/metrics` exposition: sent, failed
    /// attempts, pending and abandoned, by endpoint. Nothing when no
    /// endpoint is configured.
    pub fn export(&self, out: &mut Exposition) {
        let stats = self.stats();
        if stats.is_empty() {
            return;
        }
        let families: [Family; 4] = [
            (
                "speculum_webhook_sent_total",
                "counter",
                "Webhook deliveries accepted by the endpoint.",
                |s| s.sent,
            ),
            (
                "speculum_webhook_failed_total",
                "counter",
                "Failed webhook delivery attempts.",
                |s| s.failed,
            ),
            (
                "speculum_webhook_pending",
                "gauge",
                "Webhook deliveries waiting in the queue.",
                |s| s.pending,
            ),
            (
                "speculum_webhook_abandoned_total",
                "counter",
                "Webhook deliveries given up on and moved to dead/.",
                |s| s.abandoned,
            ),
        ];
        for (name, kind, help, value) in families {
            out.family(name, kind, help);
            for s in &stats {
                out.sample(name, &[("endpoint", &s.name)], value(s));
            }
        }
    }

    /// Stop the delivery tasks, giving an attempt in flight a few seconds to
    /// finish. Pending deliveries stay queued for the next start.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().await);
        for task in tasks {
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await.is_err() {
                tracing::warn!("a webhook delivery task did not stop in time");
            }
        }
    }

    /// The URL of `path` (`/v2/...`) on this registry.
    fn url(&self, request: &RequestInfo, path: &str) -> String {
        match &self.inner.options.public_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None if !request.host.is_empty() => format!("https://{}{path}", request.host),
            None => format!("https://{}{path}", self.inner.options.source_addr),
        }
    }

    /// Report a manifest push (by `tag` when given).
    pub(crate) async fn manifest_pushed(
        &self,
        origin: Origin,
        repository: &str,
        tag: Option<&str>,
        digest: &str,
        media_type: &str,
        size: u64,
    ) {
        if !self.wants(Action::Push) {
            return;
        }
        let url = self.url(
            &origin.request,
            &format!("/v2/{repository}/manifests/{digest}"),
        );
        let target = Target {
            repository: repository.to_string(),
            media_type: Some(media_type.to_string()),
            digest: Some(digest.to_string()),
            size: Some(size),
            tag: tag.map(String::from),
            url: Some(url),
            from_repository: None,
        };
        self.publish(origin.event(Action::Push, target)).await;
    }

    /// Report a manifest deleted by `digest`, or a `tag` deleted.
    pub(crate) async fn manifest_deleted(
        &self,
        origin: Origin,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) {
        if !self.wants(Action::Delete) {
            return;
        }
        let target = Target {
            repository: repository.to_string(),
            digest: digest.map(String::from),
            tag: tag.map(String::from),
            ..Target::default()
        };
        self.publish(origin.event(Action::Delete, target)).await;
    }

    /// Report a blob mounted into `repository` from `from`.
    pub(crate) async fn blob_mounted(
        &self,
        origin: Origin,
        repository: &str,
        from: &str,
        digest: &str,
        size: Option<u64>,
    ) {
        if !self.wants(Action::Mount) {
            return;
        }
        let url = self.url(&origin.request, &format!("/v2/{repository}/blobs/{digest}"));
        let target = Target {
            repository: repository.to_string(),
            media_type: Some("application/octet-stream".to_string()),
            digest: Some(digest.to_string()),
            size,
            tag: None,
            url: Some(url),
            from_repository: Some(from.to_string()),
        };
        self.publish(origin.event(Action::Mount, target)).await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The tasks also stop when the sender goes away; abort them so none
        // outlives the notifier by an attempt.
        let _ = self.stop.send(true);
        if let Ok(tasks) = self.tasks.try_lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

/// Who caused an event, and with which request.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    request: RequestInfo,
    actor: Option<String>,
}

impl Origin {
    /// From a handler's request and the identity it was authorized as.
    pub(crate) fn new(method: &Method, headers: &HeaderMap, identity: &Identity) -> Origin {
        let actor = match identity {
            Identity::User(name) => Some(name.clone()),
            _ => None,
        };
        Origin {
            request: RequestInfo::new(method, headers, None),
            actor,
        }
    }

    fn event(self, action: Action, target: Target) -> Event {
        Event::new(action, target, self.request, self.actor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings(dir: &Path, endpoints: serde_json::Value) -> WebhookSettings {
        let raw: WebhooksConfig =
            serde_json::from_value(serde_json::json!({ "endpoints": endpoints })).unwrap();
        raw.settings(dir, dir).unwrap()
    }

    fn push(repo: &str, tag: Option<&str>) -> Event {
        Event::new(
            Action::Push,
            Target {
                repository: repo.into(),
                tag: tag.map(String::from),
                ..Target::default()
            },
            RequestInfo::default(),
            None,
        )
    }

    #[tokio::test]
    async fn filters_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        // Port 9 (discard) on loopback: nothing listens, every attempt fails.
        let s = settings(
            dir.path(),
            serde_json::json!([
                {"name": "all", "url": "http://127.0.0.1:9/", "events": ["push", "delete"],
                 "backoff": "1h"},
                {"name": "hub", "url": "http://127.0.0.1:9/", "format": "dockerhub",
                 "repositories": "org/.*", "tags": "v[0-9]+", "backoff": "1h"},
            ]),
        );
        let n = Notifier::start(s, NotifierOptions::default()).unwrap();
        n.publish(push("org/app", Some("v1"))).await;
        n.publish(push("org/app", Some("latest"))).await;
        n.publish(push("org/app", None)).await;
        n.publish(push("other/app", Some("v2"))).await;
        let mount = Event::new(
            Action::Mount,
            Target::default(),
            RequestInfo::default(),
            None,
        );
        n.publish(mount).await;
        let stats = n.stats();
        assert_eq!(stats[0].pending, 4, "{stats:?}");
        assert_eq!(stats[1].pending, 1, "{stats:?}");
        let text = n.metrics_text();
        assert!(
            text.contains("speculum_webhook_pending{endpoint=\"all\"} 4"),
            "{text}"
        );
        assert!(text.contains("# TYPE speculum_webhook_sent_total counter"));
        n.shutdown().await;
        // Pending deliveries; the queue's `.lock` is not one.
        let pending = std::fs::read_dir(dir.path().join("_webhooks/all"))
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(pending, 4);
        assert!(Notifier::disabled().metrics_text().is_empty());
    }
}
