//! One background task per endpoint: send the queue's deliveries in order,
//! retrying each with exponential backoff until the receiver accepts it.
//!
//! 2xx and 3xx answers count as delivered (redirects are not followed); any
//! other status, a timeout or a connection error is a failed attempt. A
//! delivery is removed from disk only after it was accepted, so a crash in
//! between sends it again: receivers may see a delivery twice and can tell by
//! its `X-Speculum-Delivery` id.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::watch;

use super::EndpointState;
use super::NotifyError;
use super::config::{Endpoint, Format};
use super::event::{
    DISTRIBUTION_EVENTS_MEDIA_TYPE, Event, Source, distribution_body, dockerhub_body,
};
use super::queue::Queue;

/// The header carrying the body's HMAC-SHA256 when a secret is set.
pub const SIGNATURE_HEADER: &str = "x-speculum-signature";
/// The header carrying the event's id, the same on every attempt.
pub const DELIVERY_HEADER: &str = "x-speculum-delivery";
/// The header carrying the event's action.
pub const EVENT_HEADER: &str = "x-speculum-event";

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::new(),
    }
}

/// The HTTP client for one endpoint: system roots plus its `ca`, its
/// timeout, no redirects.
pub(crate) fn client(endpoint: &Endpoint) -> Result<reqwest::Client, NotifyError> {
    speculum_client::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("speculum-registry/", env!("CARGO_PKG_VERSION")))
        .timeout(endpoint.timeout)
        .connect_timeout(endpoint.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &endpoint.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            NotifyError::Tls(format!("{}: invalid CA certificate: {e}", endpoint.name))
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| {
        NotifyError::Tls(format!(
            "{}: cannot build the HTTP client: {e}",
            endpoint.name
        ))
    })
}

/// The body and content type `event` is sent as, `None` when the format
/// cannot carry it.
pub(crate) fn render(
    format: Format,
    event: &Event,
    source: &Source,
) -> Option<(Vec<u8>, &'static str)> {
    let (value, content_type) = match format {
        Format::Distribution => (
            distribution_body(event, source),
            DISTRIBUTION_EVENTS_MEDIA_TYPE,
        ),
        Format::Dockerhub => (dockerhub_body(event, source)?, "application/json"),
    };
    serde_json::to_vec(&value)
        .ok()
        .map(|body| (body, content_type))
}

/// Why an attempt failed, for the log.
enum Failure {
    Status(u16),
    Transport(reqwest::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "the receiver answered {s}"),
            Failure::Transport(e) => write!(f, "{e}"),
        }
    }
}

async fn attempt(
    endpoint: &Endpoint,
    client: &reqwest::Client,
    event: &Event,
    body: Vec<u8>,
    content_type: &'static str,
) -> Result<(), Failure> {
    let mut request = client
        .post(endpoint.url.clone())
        .headers(endpoint.headers.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
        .header(EVENT_HEADER, event.action.as_str());
    if let Ok(id) = HeaderValue::from_str(&event.id) {
        request = request.header(DELIVERY_HEADER, id);
    }
    if let Some(secret) = &endpoint.secret {
        request = request.header(SIGNATURE_HEADER, signature(secret, &body));
    }
    // reqwest errors name the URL, which may carry a token: drop it.
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Transport(e.without_url()))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(Failure::Status(status.as_u16()))
    }
}

/// Run a blocking queue operation off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Wait `d`, or less if the notifier stops. `false` means it stopped.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// Deliver `state`'s queue until `stop` fires (or its sender goes away).
pub(crate) async fn run(
    state: Arc<EndpointState>,
    client: reqwest::Client,
    source: Arc<Source>,
    mut stop: watch::Receiver<bool>,
) {
    let name = state.endpoint.name.clone();
    loop {
        let queue = Arc::clone(&state);
        let files = match blocking(move || queue.queue.list()).await {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(endpoint = %name, error = %e, "cannot list the webhook queue");
                if !pause(Duration::from_secs(5), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        if files.is_empty() {
            tokio::select! {
                () = state.wake.notified() => continue,
                _ = stop.changed() => return,
            }
        }
        for file in files {
            if !deliver(&state, &client, &source, file, &mut stop).await {
                return;
            }
        }
    }
}

/// Take a file off the queue's pending count, moving it to `dead/` or
/// removing it.
async fn settle(state: &Arc<EndpointState>, file: PathBuf, bury: bool) {
    let s = Arc::clone(state);
    let path = file.clone();
    let done = if bury {
        blocking(move || s.queue.bury(&path).map(|_| ())).await
    } else {
        blocking(move || s.queue.remove(&path)).await
    };
    if let Err(e) = done {
        tracing::error!(endpoint = %state.endpoint.name, file = %file.display(), error = %e,
            "cannot update the webhook queue");
    }
    decrement(state);
}

pub(crate) fn decrement(state: &EndpointState) {
    let _ = state
        .pending
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            Some(n.saturating_sub(1))
        });
}

/// Deliver one file, retrying until it is accepted or given up on. `false`
/// means the notifier is stopping (the file stays queued).
async fn deliver(
    state: &Arc<EndpointState>,
    client: &reqwest::Client,
    source: &Source,
    file: PathBuf,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let endpoint = &state.endpoint;
    let path = file.clone();
    let event = match blocking(move || Queue::load(&path)).await {
        Ok(event) => event,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
        Err(e) => {
            tracing::error!(endpoint = %endpoint.name, file = %file.display(), error = %e,
                "unreadable webhook delivery moved to dead/");
            state.abandoned.fetch_add(1, Ordering::Relaxed);
            settle(state, file, true).await;
            return true;
        }
    };
    let Some((body, content_type)) = render(endpoint.format, &event, source) else {
        tracing::debug!(endpoint = %endpoint.name, id = %event.id, "event not sent in this format");
        settle(state, file, false).await;
        return true;
    };
    let mut failures: u32 = 0;
    loop {
        let result = tokio::select! {
            r = attempt(endpoint, client, &event, body.clone(), content_type) => r,
            _ = stop.changed() => return false,
        };
        let failure = match result {
            Ok(()) => {
                tracing::debug!(endpoint = %endpoint.name, id = %event.id, "webhook delivered");
                state.sent.fetch_add(1, Ordering::Relaxed);
                settle(state, file, false).await;
                return true;
            }
            Err(failure) => failure,
        };
        state.failed.fetch_add(1, Ordering::Relaxed);
        failures = failures.saturating_add(1);
        if endpoint.max_retries.is_some_and(|max| failures > max) {
            tracing::error!(endpoint = %endpoint.name, id = %event.id, attempts = failures,
                error = %failure, "webhook delivery given up, moved to dead/");
            state.abandoned.fetch_add(1, Ordering::Relaxed);
            settle(state, file, true).await;
            return true;
        }
        let delay = endpoint.delay(failures);
        tracing::warn!(endpoint = %endpoint.name, id = %event.id, attempt = failures,
            retry_in = ?delay, error = %failure, "webhook delivery failed");
        if !pause(delay, stop).await {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
