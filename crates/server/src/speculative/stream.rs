//! A blob passed through to the client that asked for it while it is
//! being stored.
//!
//! The bytes from the intermediate registry go to storage, which checks
//! them against the digest only once it has them all. The client gets each
//! chunk when storage takes the next one, and the last chunk only once
//! storage has accepted the whole blob; on a mismatch (or a broken
//! download) its body ends with an error instead, short of its
//! `Content-Length`. So a client never receives a complete body whose
//! content does not match its digest, even one that does not check.
//!
//! A client that stops reading for [`STALL`] is detached (its body is cut),
//! and storing goes on at the remote's pace for the requests that follow:
//! they wait for this download rather than start their own.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use speculum_storage::BodyStream;
use tokio::sync::{Mutex, mpsc};

/// How many chunks may wait for the client.
const CHANNEL_CHUNKS: usize = 16;
/// How long the client may leave a chunk unread before it is detached.
const STALL: Duration = Duration::from_secs(30);

/// The client's side of the tee.
struct ClientSide {
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    /// The chunk held back until the one after it (or the verdict) comes.
    last: Option<Bytes>,
}

impl ClientSide {
    async fn pass(&mut self, chunk: Bytes) {
        if let Some(previous) = self.last.replace(chunk) {
            self.send(Ok(previous)).await;
        }
    }

    async fn send(&mut self, item: io::Result<Bytes>) {
        let Some(tx) = &self.tx else {
            return;
        };
        if !matches!(tokio::time::timeout(STALL, tx.send(item)).await, Ok(Ok(()))) {
            tracing::debug!(
                "the client stopped reading a passed-through blob; it is stored without it"
            );
            self.tx = None;
        }
    }
}

/// Ends the client's body once storage has decided.
pub(crate) struct Finish {
    client: Arc<Mutex<ClientSide>>,
}

impl Finish {
    /// Storage accepted the blob (`Ok`): the last chunk goes out and the
    /// body ends; or it did not: the body ends with an error.
    pub(crate) async fn done(self, outcome: Result<(), String>) {
        let mut client = self.client.lock().await;
        match outcome {
            Ok(()) => {
                if let Some(last) = client.last.take() {
                    client.send(Ok(last)).await;
                }
            }
            Err(why) => {
                client.last = None;
                client.send(Err(io::Error::other(why))).await;
            }
        }
        client.tx = None;
    }
}

/// Split `source` into the stream storage reads and the body the client
/// reads; [`Finish::done`] ends the latter.
pub(crate) fn tee(source: BodyStream) -> (BodyStream, BodyStream, Finish) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let client = Arc::new(Mutex::new(ClientSide {
        tx: Some(tx),
        last: None,
    }));
    let to_storage = futures_util::stream::unfold(
        (source, client.clone()),
        |(mut source, client)| async move {
            let item = source.next().await?;
            if let Ok(chunk) = &item {
                client.lock().await.pass(chunk.clone()).await;
            }
            Some((item, (source, client)))
        },
    );
    let to_client = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (Box::pin(to_storage), Box::pin(to_client), Finish { client })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BodyStream {
        let items: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn drain(mut s: BodyStream) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => return (out, false),
            }
        }
        (out, true)
    }

    #[tokio::test]
    async fn the_last_chunk_waits_for_the_verdict() {
        for verdict in [Ok(()), Err("digest mismatch".to_string())] {
            let (storage, client, finish) = tee(chunks(&[b"ab", b"cd", b"ef"]));
            let reader = tokio::spawn(drain(client));
            let (stored, ok) = drain(storage).await;
            assert_eq!((stored.as_slice(), ok), (&b"abcdef"[..], true));
            let accepted = verdict.is_ok();
            finish.done(verdict).await;
            let (seen, ended_well) = reader.await.unwrap();
            if accepted {
                assert_eq!((seen.as_slice(), ended_well), (&b"abcdef"[..], true));
            } else {
                assert_eq!((seen.as_slice(), ended_well), (&b"abcd"[..], false));
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_goes_away_does_not_stop_storing() {
        let (storage, client, finish) = tee(chunks(&[&b"a"[..]; 64]));
        drop(client);
        let (stored, ok) = drain(storage).await;
        assert_eq!((stored.len(), ok), (64, true));
        finish.done(Ok(())).await;
    }
}
