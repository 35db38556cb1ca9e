//! The conformance suite that every backend (and every wrapper around one)
//! must pass, run through the [`Registry`] so that it checks the semantics
//! clients see, not just the backend's primitives.
//!
//! A backend's test is one macro call with an async expression that builds a
//! fresh registry and a guard to keep alive (a temporary directory, say):
//!
//! ```ignore
//! speculum_storage::conformance_tests!(async {
//!     let dir = tempfile::tempdir().unwrap();
//!     let registry = speculum_storage::Registry::filesystem(dir.path()).await.unwrap();
//!     (registry, dir)
//! });
//! ```
//!
//! After every case the suite checks that nothing is left behind: no upload
//! session and no scratch object ([`Backend::scratch`](crate::Backend::scratch)),
//! so a failed, cancelled or rejected operation must clean up after itself.
//!
//! Compiled for this crate's tests and, for other crates, with the
//! `conformance` feature; the macro expands to `#[tokio::test]` functions,
//! so the calling crate needs tokio with `macros` and `rt-multi-thread`.

// A test suite: a panic is how a case fails.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::json;
use speculum_oci::{Algorithm, Digest, ErrorCode, Reference, RepositoryName, media_type};

use crate::{
    BlobBody, BodyStream, ByteRange, Error, PruneOptions, Registry, Result, RetentionPolicy,
    RetentionRule, SCRATCH_MAX_AGE,
};

/// Define one `#[tokio::test]` per conformance case. `$make` is an async
/// expression returning `(Registry, guard)`; it is evaluated once per case.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            blob_monolithic,
            blob_chunked,
            blob_ranges,
            blob_empty,
            upload_ids_and_repos,
            upload_digest_mismatch_leaves_nothing,
            upload_cancel_leaves_nothing,
            upload_sha512,
            upload_survives_restart,
            upload_across_processes,
            upload_body_error,
            blob_mount_and_delete,
            concurrent_same_blob,
            big_blob_streaming,
            manifest_push_pull,
            manifest_missing_blobs_leave_nothing,
            manifest_invalid_leaves_nothing,
            manifest_tag_replaced_across_formats,
            manifest_index_requires_children,
            manifest_delete,
            concurrent_tag_updates,
            tags_pagination,
            catalog_pagination,
            referrers,
            enumeration,
            garbage_collection,
            retention_expires_old_matching_tags,
            retention_first_sight_of_legacy_tags,
            prune_keeps_reachable_images,
            prune_grace_period,
            prune_dry_run_changes_nothing,
            prune_during_pushes,
            blob_times,
            collector_lock_is_exclusive,
            prune_beside_another_process,
            upload_sessions_bounded_per_owner
        );
        $crate::conformance_tests!(@fixture_cases $make;
            stale_scratch_removed_young_kept
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (registry, _guard) = $make.await;
                $crate::conformance::$case(&registry).await;
                $crate::conformance::assert_clean(&registry).await;
            }
        )*
    };
    // Cases that also need the guard, a [`Fixture`](crate::conformance::Fixture).
    (@fixture_cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (registry, guard) = $make.await;
                $crate::conformance::$case(&registry, &guard).await;
                $crate::conformance::assert_clean(&registry).await;
            }
        )*
    };
}

/// What a backend's test keeps alive beside its registry (a temporary
/// directory, say), and what it can do that no registry operation does:
/// leave behind what only a crash leaves.
pub trait Fixture {
    /// Leave a scratch object last written at `modified`, as a crash in
    /// the middle of a write would: a file, or with `staging` a directory
    /// with a file in it (an upload session being created). Returns its
    /// name as [`Backend::scratch`](crate::Backend::scratch) lists it;
    /// `None` (the default) for a backend whose scratch dies with it.
    fn plant_scratch(&self, staging: bool, modified: SystemTime) -> Option<String> {
        let _ = (staging, modified);
        None
    }
}

/// A backend with nothing that outlives a crash (memory).
impl Fixture for () {}

// ---- helpers ------------------------------------------------------------

/// Assert that no upload session or scratch object is left.
pub async fn assert_clean(registry: &Registry) {
    let uploads = registry.uploads().await.unwrap();
    assert!(
        uploads.is_empty(),
        "upload sessions left behind: {uploads:?}"
    );
    let scratch = registry.backend().scratch().await.unwrap();
    assert!(
        scratch.is_empty(),
        "scratch objects left behind: {scratch:?}"
    );
}

pub fn repo(name: &str) -> RepositoryName {
    name.parse().unwrap()
}

pub fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

/// A body of several chunks.
pub fn chunks<I, B>(parts: I) -> BodyStream
where
    I: IntoIterator<Item = B>,
    B: Into<Bytes>,
{
    let parts: Vec<std::io::Result<Bytes>> = parts.into_iter().map(|p| Ok(p.into())).collect();
    Box::pin(futures_util::stream::iter(parts))
}

pub fn body(data: impl Into<Bytes>) -> BodyStream {
    crate::body_from_bytes(data)
}

/// The spec code of a failed result; panics on success or an internal error.
#[track_caller]
pub fn code<T: Debug>(r: Result<T>) -> ErrorCode {
    match r {
        Err(Error::Client { code, .. }) => code,
        other => panic!("expected a client error, got {other:?}"),
    }
}

/// The detail of a failed result's client error.
#[track_caller]
pub fn detail<T: Debug>(r: Result<T>) -> serde_json::Value {
    match r {
        Err(Error::Client {
            detail: Some(d), ..
        }) => d,
        other => panic!("expected a client error with detail, got {other:?}"),
    }
}

pub async fn read_all(mut blob: BlobBody) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = blob.reader.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Push `data` into `repo` in one call; returns its digest.
pub async fn push_blob(registry: &Registry, repo: &RepositoryName, data: &[u8]) -> Digest {
    let digest = Digest::sha256(data);
    let size = registry
        .put_blob(repo, &digest, body(data.to_vec()))
        .await
        .unwrap();
    assert_eq!(size, data.len() as u64);
    digest
}

/// An image manifest JSON of `media` over `config` and `layers` (digest, size).
pub fn image_manifest(
    media: &str,
    config: (&Digest, usize),
    layers: &[(&Digest, usize)],
) -> serde_json::Value {
    let (config_type, layer_type) = if media == media_type::DOCKER_MANIFEST_V2 {
        (media_type::DOCKER_CONFIG, media_type::DOCKER_LAYER_GZIP)
    } else {
        (media_type::OCI_CONFIG, media_type::OCI_LAYER_GZIP)
    };
    json!({
        "schemaVersion": 2,
        "mediaType": media,
        "config": {"mediaType": config_type, "digest": config.0, "size": config.1},
        "layers": layers
            .iter()
            .map(|(d, s)| json!({"mediaType": layer_type, "digest": d, "size": s}))
            .collect::<Vec<_>>(),
    })
}

/// A page of `items`.
pub fn pg(items: &[&str], more: bool) -> crate::Page {
    crate::Page {
        items: items.iter().map(|s| s.to_string()).collect(),
        more,
    }
}

fn bytes_of(v: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap())
}

/// Push a small image (config + one layer, both made from `seed`) to
/// `repo:tag`; returns the manifest digest.
pub async fn push_image(
    registry: &Registry,
    repo: &RepositoryName,
    tag: &str,
    seed: &str,
    media: &str,
) -> Digest {
    let config = format!("{{\"seed\":\"{seed}\"}}");
    let layer = format!("layer of {seed}");
    let c = push_blob(registry, repo, config.as_bytes()).await;
    let l = push_blob(registry, repo, layer.as_bytes()).await;
    let m = image_manifest(media, (&c, config.len()), &[(&l, layer.len())]);
    let put = registry
        .put_manifest(repo, &reference(tag), Some(media), bytes_of(&m))
        .await
        .unwrap();
    put.digest
}

/// Deterministic pseudo-random bytes for chunk `i` of a big blob.
fn chunk_data(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---- blobs --------------------------------------------------------------

pub async fn blob_monolithic(registry: &Registry) {
    let r = repo("conf/mono");
    let data = b"hello, blob";
    let digest = push_blob(registry, &r, data).await;
    assert_eq!(
        registry.stat_blob(&r, &digest).await.unwrap(),
        data.len() as u64
    );
    let blob = registry.read_blob(&r, &digest, None).await.unwrap();
    assert_eq!((blob.size, blob.start, blob.end), (11, 0, 10));
    assert_eq!(read_all(blob).await, data);

    // Visible only where it was pushed.
    let other = repo("conf/other");
    assert_eq!(
        code(registry.stat_blob(&other, &digest).await),
        ErrorCode::BlobUnknown
    );
    assert_eq!(
        code(registry.read_blob(&other, &digest, None).await),
        ErrorCode::BlobUnknown
    );

    // Pushing it again is fine; a wrong digest is refused and stores nothing.
    assert_eq!(push_blob(registry, &r, data).await, digest);
    let wrong = Digest::sha256(b"something else");
    assert_eq!(
        code(registry.put_blob(&r, &wrong, body(&data[..])).await),
        ErrorCode::DigestInvalid
    );
    assert_eq!(
        code(registry.stat_blob(&r, &wrong).await),
        ErrorCode::BlobUnknown
    );
    assert!(!registry.blobs().await.unwrap().contains(&wrong));
}

pub async fn blob_chunked(registry: &Registry) {
    let r = repo("conf/chunked");
    let id = registry.start_upload(&r).await.unwrap();
    assert_eq!(registry.upload_status(&r, &id).await.unwrap(), 0);
    assert_eq!(
        registry
            .append_upload(&r, &id, Some(0), chunks(["ab", "cd"]))
            .await
            .unwrap(),
        4
    );
    assert_eq!(registry.upload_status(&r, &id).await.unwrap(), 4);
    // Without Content-Range, a chunk is appended.
    assert_eq!(
        registry
            .append_upload(&r, &id, None, body("ef"))
            .await
            .unwrap(),
        6
    );
    // A chunk that does not start at the current size is refused and changes nothing.
    let e = registry.append_upload(&r, &id, Some(4), body("XX")).await;
    assert_eq!(
        detail(registry.append_upload(&r, &id, Some(9), body("XX")).await),
        json!({"size": 6})
    );
    assert_eq!(code(e), ErrorCode::RangeInvalid);
    assert_eq!(registry.upload_status(&r, &id).await.unwrap(), 6);
    assert_eq!(
        registry
            .append_upload(&r, &id, Some(6), body("gh"))
            .await
            .unwrap(),
        8
    );

    let digest = Digest::sha256(b"abcdefghij");
    let size = registry
        .finish_upload(&r, &id, &digest, Some(body("ij")))
        .await
        .unwrap();
    assert_eq!(size, 10);
    let blob = registry.read_blob(&r, &digest, None).await.unwrap();
    assert_eq!(read_all(blob).await, b"abcdefghij");
    // The session is gone.
    assert_eq!(
        code(registry.upload_status(&r, &id).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(
        code(registry.append_upload(&r, &id, None, body("x")).await),
        ErrorCode::BlobUploadUnknown
    );

    // Finishing with an empty final body (or none) works too.
    let id = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &id, Some(0), body("xyz"))
        .await
        .unwrap();
    let d = Digest::sha256(b"xyz");
    assert_eq!(
        registry
            .finish_upload(&r, &id, &d, Some(body("")))
            .await
            .unwrap(),
        3
    );
    let id = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &id, Some(0), body("xyz"))
        .await
        .unwrap();
    assert_eq!(registry.finish_upload(&r, &id, &d, None).await.unwrap(), 3);
}

pub async fn blob_ranges(registry: &Registry) {
    let r = repo("conf/ranges");
    let data: Vec<u8> = (0..=99).collect();
    let digest = push_blob(registry, &r, &data).await;
    let read = |start, end| registry.read_blob(&r, &digest, Some(ByteRange { start, end }));

    let b = read(10, Some(19)).await.unwrap();
    assert_eq!((b.size, b.start, b.end, b.len()), (100, 10, 19, 10));
    assert_eq!(read_all(b).await, &data[10..20]);
    let b = read(90, None).await.unwrap();
    assert_eq!((b.start, b.end), (90, 99));
    assert_eq!(read_all(b).await, &data[90..]);
    // An end past the last byte is clamped.
    let b = read(95, Some(1000)).await.unwrap();
    assert_eq!((b.start, b.end), (95, 99));
    assert_eq!(read_all(b).await, &data[95..]);
    let b = read(0, Some(0)).await.unwrap();
    assert_eq!(read_all(b).await, &data[..1]);
    let b = read(99, Some(99)).await.unwrap();
    assert_eq!(read_all(b).await, &data[99..]);

    for (start, end) in [
        (100, None),
        (100, Some(120)),
        (500, Some(600)),
        (20, Some(10)),
    ] {
        let e = read(start, end).await;
        assert_eq!(code(e), ErrorCode::RangeInvalid, "{start}-{end:?}");
    }
    assert_eq!(ErrorCode::RangeInvalid.status(), 416);
    assert_eq!(detail(read(100, None).await), json!({"size": 100}));
}

pub async fn blob_empty(registry: &Registry) {
    let r = repo("conf/empty");
    let digest = push_blob(registry, &r, b"").await;
    assert_eq!(registry.stat_blob(&r, &digest).await.unwrap(), 0);
    let b = registry.read_blob(&r, &digest, None).await.unwrap();
    assert_eq!((b.size, b.len()), (0, 0));
    assert!(read_all(b).await.is_empty());
    let e = registry
        .read_blob(
            &r,
            &digest,
            Some(ByteRange {
                start: 0,
                end: None,
            }),
        )
        .await;
    assert_eq!(code(e), ErrorCode::RangeInvalid);
}

// ---- uploads ------------------------------------------------------------

pub async fn upload_ids_and_repos(registry: &Registry) {
    let a = repo("conf/ids-a");
    let b = repo("conf/ids-b");
    let id = registry.start_upload(&a).await.unwrap();
    assert!(
        crate::UploadId::parse(&id).is_some(),
        "{id} is not a canonical uuid"
    );
    let d = Digest::sha256(b"x");

    // Another repository's session is unknown here.
    assert_eq!(
        code(registry.upload_status(&b, &id).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(
        code(registry.append_upload(&b, &id, None, body("x")).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(
        code(registry.finish_upload(&b, &id, &d, Some(body("x"))).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(
        code(registry.cancel_upload(&b, &id).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(registry.upload_status(&a, &id).await.unwrap(), 0);

    // Ids that are not ours, including path tricks.
    for bad in [
        "",
        ".",
        "..",
        "../../../etc/passwd",
        "../uploads",
        "%2e%2e",
        "0f4e3c2a-1111-4222-8333-444455556666",
        "0F4E3C2A-1111-4222-8333-444455556666",
        "0f4e3c2a111142228333444455556666",
    ] {
        assert_eq!(
            code(registry.upload_status(&a, bad).await),
            ErrorCode::BlobUploadUnknown,
            "{bad:?}"
        );
        assert_eq!(
            code(registry.append_upload(&a, bad, None, body("x")).await),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(
            code(registry.finish_upload(&a, bad, &d, None).await),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(
            code(registry.cancel_upload(&a, bad).await),
            ErrorCode::BlobUploadUnknown
        );
    }
    // Two sessions are independent.
    let id2 = registry.start_upload(&a).await.unwrap();
    assert_ne!(id, id2);
    registry
        .append_upload(&a, &id, None, body("one"))
        .await
        .unwrap();
    registry
        .append_upload(&a, &id2, None, body("two!"))
        .await
        .unwrap();
    assert_eq!(registry.upload_status(&a, &id).await.unwrap(), 3);
    assert_eq!(registry.upload_status(&a, &id2).await.unwrap(), 4);
    registry.cancel_upload(&a, &id).await.unwrap();
    registry.cancel_upload(&a, &id2).await.unwrap();
}

pub async fn upload_digest_mismatch_leaves_nothing(registry: &Registry) {
    let r = repo("conf/mismatch");
    let id = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &id, Some(0), body("some data"))
        .await
        .unwrap();
    let wrong = Digest::sha256(b"other data");
    let e = registry
        .finish_upload(&r, &id, &wrong, Some(body(" and more")))
        .await;
    let e = e.expect_err("digest mismatch accepted");
    assert_eq!(e.code(), Some(ErrorCode::DigestInvalid));
    assert_eq!(detail(Err::<(), _>(e))["digest"], json!(wrong));
    // The session is gone, nothing was stored or linked.
    assert_eq!(
        code(registry.upload_status(&r, &id).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(
        code(registry.stat_blob(&r, &wrong).await),
        ErrorCode::BlobUnknown
    );
    let right = Digest::sha256(b"some data and more");
    assert_eq!(
        code(registry.stat_blob(&r, &right).await),
        ErrorCode::BlobUnknown
    );
    assert!(registry.blobs().await.unwrap().is_empty());
    assert!(registry.linked_blobs(&r).await.unwrap().is_empty());

    // A wrong digest on a monolithic push leaves nothing either.
    assert_eq!(
        code(registry.put_blob(&r, &wrong, body("abc")).await),
        ErrorCode::DigestInvalid
    );
    assert!(registry.blobs().await.unwrap().is_empty());
}

pub async fn upload_cancel_leaves_nothing(registry: &Registry) {
    let r = repo("conf/cancel");
    let id = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &id, None, chunks(vec![vec![7u8; 100_000]; 3]))
        .await
        .unwrap();
    registry.cancel_upload(&r, &id).await.unwrap();
    assert_eq!(
        code(registry.upload_status(&r, &id).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(
        code(registry.cancel_upload(&r, &id).await),
        ErrorCode::BlobUploadUnknown
    );
    let d = Digest::sha256(&[7u8; 300_000]);
    assert_eq!(
        code(registry.finish_upload(&r, &id, &d, None).await),
        ErrorCode::BlobUploadUnknown
    );
    assert!(registry.blobs().await.unwrap().is_empty());
    // An upload never finished is still listed until cancelled or purged.
    let id = registry.start_upload(&r).await.unwrap();
    let uploads = registry.uploads().await.unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].0.as_str(), id);
    assert_eq!(uploads[0].1.repo, r);
    assert!(registry.purge_upload(&uploads[0].0).await.unwrap());
    assert!(!registry.purge_upload(&uploads[0].0).await.unwrap());
}

pub async fn upload_sha512(registry: &Registry) {
    let r = repo("conf/sha512");
    let id = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &id, None, body("abc"))
        .await
        .unwrap();
    let d = Digest::of(Algorithm::Sha512, b"abcdef");
    assert_eq!(
        registry
            .finish_upload(&r, &id, &d, Some(body("def")))
            .await
            .unwrap(),
        6
    );
    let b = registry.read_blob(&r, &d, None).await.unwrap();
    assert_eq!(read_all(b).await, b"abcdef");
    let d2 = Digest::of(Algorithm::Sha512, b"mono");
    assert_eq!(registry.put_blob(&r, &d2, body("mono")).await.unwrap(), 4);
}

/// A session outlives the registry value (a restart): its digest state is
/// recomputed from the stored bytes.
pub async fn upload_survives_restart(registry: &Registry) {
    let r = repo("conf/restart");
    let id = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &id, Some(0), body("before "))
        .await
        .unwrap();
    let restarted = Registry::with_backend(registry.backend().clone());
    assert_eq!(restarted.upload_status(&r, &id).await.unwrap(), 7);
    restarted
        .append_upload(&r, &id, Some(7), body("restart"))
        .await
        .unwrap();
    let d = Digest::sha256(b"before restart, after");
    assert_eq!(
        restarted
            .finish_upload(&r, &id, &d, Some(body(", after")))
            .await
            .unwrap(),
        21
    );
    let b = registry.read_blob(&r, &d, None).await.unwrap();
    assert_eq!(read_all(b).await, b"before restart, after");
}

/// Requests of one upload through two processes over one store (a load
/// balancer in front of several registries): each appends where the other
/// stopped, and the first one's digest state, which missed the other's
/// bytes, is not trusted at finish.
pub async fn upload_across_processes(registry: &Registry) {
    let r = repo("conf/two-processes");
    let other = Registry::with_backend(registry.backend().clone());
    let id = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &id, Some(0), body("one "))
        .await
        .unwrap();
    assert_eq!(
        other
            .append_upload(&r, &id, Some(4), body("two "))
            .await
            .unwrap(),
        8
    );
    registry
        .append_upload(&r, &id, Some(8), body("three "))
        .await
        .unwrap();
    let d = Digest::sha256(b"one two three four");
    assert_eq!(
        registry
            .finish_upload(&r, &id, &d, Some(body("four")))
            .await
            .unwrap(),
        18
    );
    let b = other.read_blob(&r, &d, None).await.unwrap();
    assert_eq!(read_all(b).await, b"one two three four");
}

/// A body that fails half-way keeps what was received, and the upload can go
/// on (the digest state is recomputed).
pub async fn upload_body_error(registry: &Registry) {
    let r = repo("conf/body-error");
    let id = registry.start_upload(&r).await.unwrap();
    let failing: BodyStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"good ")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
        Ok(Bytes::from_static(b"never")),
    ]));
    let e = registry.append_upload(&r, &id, None, failing).await;
    assert_eq!(code(e), ErrorCode::BlobUploadInvalid);
    assert_eq!(registry.upload_status(&r, &id).await.unwrap(), 5);
    let d = Digest::sha256(b"good data");
    assert_eq!(
        registry
            .finish_upload(&r, &id, &d, Some(body("data")))
            .await
            .unwrap(),
        9
    );

    // A monolithic push whose body fails leaves nothing.
    let failing: BodyStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"half")),
        Err(std::io::Error::other("boom")),
    ]));
    let d = Digest::sha256(b"half and half");
    assert_eq!(
        code(registry.put_blob(&r, &d, failing).await),
        ErrorCode::BlobUploadInvalid
    );
    assert_eq!(
        code(registry.stat_blob(&r, &d).await),
        ErrorCode::BlobUnknown
    );
}

pub async fn blob_mount_and_delete(registry: &Registry) {
    let a = repo("conf/mount-a");
    let b = repo("conf/mount-b");
    let c = repo("conf/mount-c");
    let digest = push_blob(registry, &a, b"shared layer").await;
    assert!(registry.mount_blob(&b, &a, &digest).await.unwrap());
    assert_eq!(registry.stat_blob(&b, &digest).await.unwrap(), 12);
    // Not in `from`, or unknown altogether: not mounted, nothing linked.
    assert!(
        !registry
            .mount_blob(&c, &repo("conf/nowhere"), &digest)
            .await
            .unwrap()
    );
    assert!(
        !registry
            .mount_blob(&c, &a, &Digest::sha256(b"unknown"))
            .await
            .unwrap()
    );
    assert_eq!(
        code(registry.stat_blob(&c, &digest).await),
        ErrorCode::BlobUnknown
    );

    // Deleting unlinks from one repository only.
    registry.delete_blob(&a, &digest).await.unwrap();
    assert_eq!(
        code(registry.stat_blob(&a, &digest).await),
        ErrorCode::BlobUnknown
    );
    assert_eq!(
        code(registry.delete_blob(&a, &digest).await),
        ErrorCode::BlobUnknown
    );
    assert_eq!(registry.stat_blob(&b, &digest).await.unwrap(), 12);
    // A repository that lost the link cannot be mounted from.
    assert!(!registry.mount_blob(&c, &a, &digest).await.unwrap());
    assert!(registry.mount_blob(&c, &b, &digest).await.unwrap());
}

pub async fn concurrent_same_blob(registry: &Registry) {
    let data: Vec<u8> = chunk_data(42, 3 * 1024 * 1024 + 17);
    let digest = Digest::sha256(&data);
    let data = Bytes::from(data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let registry = registry.clone();
        let data = data.clone();
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            // Half into one repository, half each into its own.
            let r = if i % 2 == 0 {
                repo("conf/race")
            } else {
                repo(&format!("conf/race-{i}"))
            };
            let parts: Vec<Bytes> = data.chunks(64 * 1024).map(|c| data.slice_ref(c)).collect();
            if i % 4 < 2 {
                registry.put_blob(&r, &digest, chunks(parts)).await
            } else {
                let id = registry.start_upload(&r).await?;
                let half = parts.len() / 2;
                registry
                    .append_upload(&r, &id, Some(0), chunks(parts[..half].to_vec()))
                    .await?;
                registry
                    .finish_upload(&r, &id, &digest, Some(chunks(parts[half..].to_vec())))
                    .await
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), data.len() as u64);
    }
    assert_eq!(registry.blobs().await.unwrap(), vec![digest.clone()]);
    for r in [
        "conf/race",
        "conf/race-1",
        "conf/race-3",
        "conf/race-5",
        "conf/race-7",
    ] {
        let b = registry.read_blob(&repo(r), &digest, None).await.unwrap();
        assert_eq!(read_all(b).await, data);
    }
}

/// 64 MiB fed in 1 MiB chunks generated on the fly, over two PATCHes and
/// the final PUT, then read back in full and by range.
pub async fn big_blob_streaming(registry: &Registry) {
    const CHUNK: usize = 1024 * 1024;
    const CHUNKS: u64 = 64;
    let r = repo("conf/big");
    let mut digester = Algorithm::Sha256.digester();
    for i in 0..CHUNKS {
        digester.update(&chunk_data(i, CHUNK));
    }
    let digest = digester.finish();
    let stream = |range: std::ops::Range<u64>| -> BodyStream {
        Box::pin(futures_util::stream::iter(range).map(|i| Ok(Bytes::from(chunk_data(i, CHUNK)))))
    };
    let id = registry.start_upload(&r).await.unwrap();
    let size = registry
        .append_upload(&r, &id, Some(0), stream(0..24))
        .await
        .unwrap();
    assert_eq!(size, 24 * CHUNK as u64);
    let size = registry
        .append_upload(&r, &id, Some(size), stream(24..48))
        .await
        .unwrap();
    assert_eq!(size, 48 * CHUNK as u64);
    let size = registry
        .finish_upload(&r, &id, &digest, Some(stream(48..CHUNKS)))
        .await
        .unwrap();
    assert_eq!(size, CHUNKS * CHUNK as u64);

    // Read back streaming, hashing as we go.
    let mut blob = registry.read_blob(&r, &digest, None).await.unwrap();
    assert_eq!(blob.len(), size);
    let mut check = Algorithm::Sha256.digester();
    let mut total = 0u64;
    while let Some(chunk) = blob.reader.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len() as u64;
        check.update(&chunk);
    }
    assert_eq!(total, size);
    assert_eq!(check.finish(), digest);

    // A range across a chunk boundary.
    let start = 10 * CHUNK as u64 - 5;
    let b = registry
        .read_blob(
            &r,
            &digest,
            Some(ByteRange {
                start,
                end: Some(start + 9),
            }),
        )
        .await
        .unwrap();
    let mut expected = chunk_data(9, CHUNK)[CHUNK - 5..].to_vec();
    expected.extend_from_slice(&chunk_data(10, CHUNK)[..5]);
    assert_eq!(read_all(b).await, expected);
}

// ---- manifests ----------------------------------------------------------

pub async fn manifest_push_pull(registry: &Registry) {
    let r = repo("conf/manifest");
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let c = push_blob(registry, &r, config).await;
    let l = push_blob(registry, &r, b"layer bytes").await;
    let m = image_manifest(media_type::OCI_MANIFEST, (&c, config.len()), &[(&l, 11)]);
    // Stored byte for byte: odd whitespace survives.
    let raw = Bytes::from(format!("{}\n\n", serde_json::to_string_pretty(&m).unwrap()));
    let digest = Digest::sha256(&raw);

    let put = registry
        .put_manifest(
            &r,
            &reference("v1"),
            Some(media_type::OCI_MANIFEST),
            raw.clone(),
        )
        .await
        .unwrap();
    assert_eq!(put.digest, digest);
    assert_eq!(put.info.media_type, media_type::OCI_MANIFEST);
    for by in [reference("v1"), Reference::Digest(digest.clone())] {
        let got = registry.get_manifest(&r, &by).await.unwrap();
        assert_eq!(got.bytes, raw);
        assert_eq!(got.digest, digest);
        assert_eq!(got.media_type, media_type::OCI_MANIFEST);
    }
    assert_eq!(
        registry.resolve(&r, &reference("v1")).await.unwrap(),
        Some(digest.clone())
    );

    // Push by digest (no tag), with the media type only in the body.
    let m2 = image_manifest(media_type::DOCKER_MANIFEST_V2, (&c, config.len()), &[]);
    let raw2 = bytes_of(&m2);
    let d2 = Digest::sha256(&raw2);
    let put = registry
        .put_manifest(&r, &Reference::Digest(d2.clone()), None, raw2.clone())
        .await
        .unwrap();
    assert_eq!(put.digest, d2);
    let got = registry
        .get_manifest(&r, &Reference::Digest(d2.clone()))
        .await
        .unwrap();
    assert_eq!(
        (got.bytes, got.media_type.as_str()),
        (raw2, media_type::DOCKER_MANIFEST_V2)
    );
    assert_eq!(
        registry.list_tags(&r, None, None).await.unwrap().items,
        ["v1"]
    );

    // Unknown references, and other repositories, are MANIFEST_UNKNOWN.
    assert_eq!(
        code(registry.get_manifest(&r, &reference("nope")).await),
        ErrorCode::ManifestUnknown
    );
    let unknown = Reference::Digest(Digest::sha256(b"nope"));
    assert_eq!(
        code(registry.get_manifest(&r, &unknown).await),
        ErrorCode::ManifestUnknown
    );
    let other = repo("conf/manifest-other");
    assert_eq!(
        code(registry.get_manifest(&other, &reference("v1")).await),
        ErrorCode::ManifestUnknown
    );
    let by_digest = Reference::Digest(digest);
    assert_eq!(
        code(registry.get_manifest(&other, &by_digest).await),
        ErrorCode::ManifestUnknown
    );
}

pub async fn manifest_missing_blobs_leave_nothing(registry: &Registry) {
    let r = repo("conf/missing");
    let elsewhere = repo("conf/missing-elsewhere");
    let config = b"{}";
    let c = push_blob(registry, &r, config).await;
    // The layer exists, but in another repository only.
    let l = push_blob(registry, &elsewhere, b"layer").await;
    let m = image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[(&l, 5)]);
    let raw = bytes_of(&m);
    let e = registry
        .put_manifest(
            &r,
            &reference("t"),
            Some(media_type::OCI_MANIFEST),
            raw.clone(),
        )
        .await;
    assert_eq!(
        detail(
            registry
                .put_manifest(&r, &reference("t"), None, raw.clone())
                .await
        ),
        json!({"digest": l})
    );
    assert_eq!(code(e), ErrorCode::ManifestBlobUnknown);
    // A layer with `urls` (non-distributable) need not be present.
    let mut foreign = m.clone();
    foreign["layers"][0]["urls"] = json!(["https://example.com/layer"]);
    registry
        .put_manifest(&r, &reference("foreign"), None, bytes_of(&foreign))
        .await
        .unwrap();
    registry
        .delete_manifest(&r, &Reference::Digest(Digest::sha256(&bytes_of(&foreign))))
        .await
        .unwrap();

    // Nothing of the rejected manifest was stored.
    let d = Digest::sha256(&raw);
    assert_eq!(
        code(registry.get_manifest(&r, &reference("t")).await),
        ErrorCode::ManifestUnknown
    );
    assert!(registry.manifests(&r).await.unwrap().is_empty());
    assert!(registry.tags(&r).await.unwrap().is_empty());
    assert!(!registry.blobs().await.unwrap().contains(&d));

    // Missing config.
    let m = image_manifest(media_type::OCI_MANIFEST, (&Digest::sha256(b"no"), 2), &[]);
    assert_eq!(
        code(
            registry
                .put_manifest(&r, &reference("t"), None, bytes_of(&m))
                .await
        ),
        ErrorCode::ManifestBlobUnknown
    );
    // Once the layer is mounted, the push works.
    assert!(registry.mount_blob(&r, &elsewhere, &l).await.unwrap());
    registry
        .put_manifest(&r, &reference("t"), None, raw)
        .await
        .unwrap();
}

pub async fn manifest_invalid_leaves_nothing(registry: &Registry) {
    let r = repo("conf/invalid");
    let c = push_blob(registry, &r, b"{}").await;
    let good = bytes_of(&image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[]));
    let blobs_before = registry.blobs().await.unwrap();
    let t = reference("t");

    assert_eq!(
        code(
            registry
                .put_manifest(&r, &t, None, Bytes::from_static(b"not json"))
                .await
        ),
        ErrorCode::ManifestInvalid
    );
    assert_eq!(
        code(
            registry
                .put_manifest(&r, &t, None, Bytes::from_static(b"[]"))
                .await
        ),
        ErrorCode::ManifestInvalid
    );
    // Unsupported media type: MANIFEST_INVALID, and the message names it.
    let e = registry
        .put_manifest(&r, &t, Some("text/plain"), good.clone())
        .await;
    match e {
        Err(Error::Client { code, message, .. }) => {
            assert_eq!(code, ErrorCode::ManifestInvalid);
            assert!(message.contains("text/plain"), "{message}");
        }
        other => panic!("text/plain manifest: {other:?}"),
    }
    // Content type and body disagree.
    let e = registry
        .put_manifest(&r, &t, Some(media_type::DOCKER_MANIFEST_V2), good.clone())
        .await;
    assert_eq!(code(e), ErrorCode::ManifestInvalid);
    // Docker schema 1 is not supported.
    let e = registry
        .put_manifest(
            &r,
            &t,
            Some(media_type::DOCKER_MANIFEST_V1_SIGNED),
            good.clone(),
        )
        .await;
    assert_eq!(code(e), ErrorCode::ManifestInvalid);
    // Pushed by a digest that is not its own.
    let wrong = Reference::Digest(Digest::sha256(b"other"));
    assert_eq!(
        code(registry.put_manifest(&r, &wrong, None, good.clone()).await),
        ErrorCode::DigestInvalid
    );
    // A blob whose size is misstated.
    let lying = bytes_of(&image_manifest(media_type::OCI_MANIFEST, (&c, 3), &[]));
    assert_eq!(
        code(registry.put_manifest(&r, &t, None, lying).await),
        ErrorCode::ManifestInvalid
    );

    assert_eq!(registry.blobs().await.unwrap(), blobs_before);
    assert!(registry.manifests(&r).await.unwrap().is_empty());
    assert!(registry.tags(&r).await.unwrap().is_empty());
    assert_eq!(
        registry.catalog(None, None).await.unwrap().items,
        Vec::<String>::new()
    );

    // Pushed by its own sha512 digest: fine.
    let d512 = Digest::of(Algorithm::Sha512, &good);
    let put = registry
        .put_manifest(&r, &Reference::Digest(d512.clone()), None, good.clone())
        .await
        .unwrap();
    assert_eq!(put.digest, d512);
    assert_eq!(
        registry
            .get_manifest(&r, &Reference::Digest(d512))
            .await
            .unwrap()
            .bytes,
        good
    );
}

/// A tag names one digest: re-pushing it in another format replaces it
/// (zuul-registry kept one manifest per media type per tag).
pub async fn manifest_tag_replaced_across_formats(registry: &Registry) {
    let r = repo("conf/retag");
    let docker = push_image(registry, &r, "t", "a", media_type::DOCKER_MANIFEST_V2).await;
    let got = registry.get_manifest(&r, &reference("t")).await.unwrap();
    assert_eq!(
        (got.digest, got.media_type.as_str()),
        (docker.clone(), media_type::DOCKER_MANIFEST_V2)
    );
    let oci = push_image(registry, &r, "t", "b", media_type::OCI_MANIFEST).await;
    let got = registry.get_manifest(&r, &reference("t")).await.unwrap();
    assert_eq!(
        (got.digest, got.media_type.as_str()),
        (oci, media_type::OCI_MANIFEST)
    );
    assert_eq!(
        registry.list_tags(&r, None, None).await.unwrap().items,
        ["t"]
    );
    // The old manifest is still there by digest, untagged.
    assert!(
        registry
            .get_manifest(&r, &Reference::Digest(docker))
            .await
            .is_ok()
    );
}

pub async fn manifest_index_requires_children(registry: &Registry) {
    let r = repo("conf/index");
    let child = {
        let c = push_blob(registry, &r, b"{\"os\":\"linux\"}").await;
        bytes_of(&image_manifest(media_type::OCI_MANIFEST, (&c, 14), &[]))
    };
    let child_digest = Digest::sha256(&child);
    let index = bytes_of(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [{
            "mediaType": media_type::OCI_MANIFEST,
            "digest": child_digest,
            "size": child.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }));
    let e = registry
        .put_manifest(&r, &reference("multi"), None, index.clone())
        .await;
    assert_eq!(
        detail(
            registry
                .put_manifest(&r, &reference("multi"), None, index.clone())
                .await
        ),
        json!({"digest": child_digest})
    );
    assert_eq!(code(e), ErrorCode::ManifestBlobUnknown);
    assert!(registry.manifests(&r).await.unwrap().is_empty());

    registry
        .put_manifest(&r, &Reference::Digest(child_digest.clone()), None, child)
        .await
        .unwrap();
    let put = registry
        .put_manifest(&r, &reference("multi"), None, index.clone())
        .await
        .unwrap();
    let got = registry
        .get_manifest(&r, &reference("multi"))
        .await
        .unwrap();
    assert_eq!(
        (got.bytes, got.media_type.as_str(), got.digest),
        (index, media_type::OCI_INDEX, put.digest)
    );
    // The child is not visible from another repository.
    let other = repo("conf/index-other");
    let index2 = bytes_of(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST_LIST,
        "manifests": [{"mediaType": media_type::OCI_MANIFEST, "digest": child_digest, "size": 1}],
    }));
    let e = registry
        .put_manifest(&other, &reference("multi"), None, index2)
        .await;
    assert_eq!(code(e), ErrorCode::ManifestBlobUnknown);
}

pub async fn manifest_delete(registry: &Registry) {
    let r = repo("conf/delete");
    let a = push_image(registry, &r, "a1", "a", media_type::OCI_MANIFEST).await;
    registry
        .get_manifest(&r, &Reference::Digest(a.clone()))
        .await
        .unwrap();
    let raw_a = registry
        .get_manifest(&r, &reference("a1"))
        .await
        .unwrap()
        .bytes;
    registry
        .put_manifest(&r, &reference("a2"), None, raw_a.clone())
        .await
        .unwrap();
    let b = push_image(registry, &r, "b1", "b", media_type::OCI_MANIFEST).await;
    assert_eq!(
        registry.list_tags(&r, None, None).await.unwrap().items,
        ["a1", "a2", "b1"]
    );

    // By tag: only the tag goes.
    registry
        .delete_manifest(&r, &reference("a2"))
        .await
        .unwrap();
    assert_eq!(
        code(registry.get_manifest(&r, &reference("a2")).await),
        ErrorCode::ManifestUnknown
    );
    assert_eq!(
        registry
            .get_manifest(&r, &reference("a1"))
            .await
            .unwrap()
            .digest,
        a
    );
    assert_eq!(
        code(registry.delete_manifest(&r, &reference("a2")).await),
        ErrorCode::ManifestUnknown
    );
    registry
        .put_manifest(&r, &reference("a2"), None, raw_a)
        .await
        .unwrap();

    // By digest: the manifest and every tag pointing at it.
    registry
        .delete_manifest(&r, &Reference::Digest(a.clone()))
        .await
        .unwrap();
    for gone in [
        reference("a1"),
        reference("a2"),
        Reference::Digest(a.clone()),
    ] {
        assert_eq!(
            code(registry.get_manifest(&r, &gone).await),
            ErrorCode::ManifestUnknown
        );
    }
    assert_eq!(
        registry.list_tags(&r, None, None).await.unwrap().items,
        ["b1"]
    );
    assert_eq!(
        registry
            .get_manifest(&r, &reference("b1"))
            .await
            .unwrap()
            .digest,
        b
    );
    assert_eq!(
        code(registry.delete_manifest(&r, &Reference::Digest(a)).await),
        ErrorCode::ManifestUnknown
    );
    assert_eq!(
        code(registry.delete_manifest(&r, &reference("never")).await),
        ErrorCode::ManifestUnknown
    );
    let other = repo("conf/delete-other");
    assert_eq!(
        code(
            registry
                .delete_manifest(&other, &Reference::Digest(b))
                .await
        ),
        ErrorCode::ManifestUnknown
    );
}

pub async fn concurrent_tag_updates(registry: &Registry) {
    let r = repo("conf/tag-race");
    let c = push_blob(registry, &r, b"{}").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let registry = registry.clone();
        let r = r.clone();
        let m = image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[]);
        let mut m = m;
        m["annotations"] = json!({"n": i.to_string()});
        tasks.push(tokio::spawn(async move {
            registry
                .put_manifest(&r, &reference("latest"), None, bytes_of(&m))
                .await
                .map(|p| p.digest)
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.unwrap().unwrap());
    }
    let got = registry
        .get_manifest(&r, &reference("latest"))
        .await
        .unwrap();
    assert!(digests.contains(&got.digest));
    assert_eq!(Digest::sha256(&got.bytes), got.digest);
    assert_eq!(
        registry.list_tags(&r, None, None).await.unwrap().items,
        ["latest"]
    );
    assert_eq!(registry.manifests(&r).await.unwrap().len(), 8);
}

// ---- listings -----------------------------------------------------------

pub async fn tags_pagination(registry: &Registry) {
    let r = repo("conf/tags");
    assert_eq!(
        code(registry.list_tags(&r, None, None).await),
        ErrorCode::NameUnknown
    );
    // Blob links alone make the repository known (with no tags).
    let c = push_blob(registry, &r, b"{}").await;
    let empty = registry.list_tags(&r, None, None).await.unwrap();
    assert_eq!((empty.items.len(), empty.more), (0, false));

    let raw = bytes_of(&image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[]));
    for tag in ["v2", "A", "v10", "latest", "v1", "_x"] {
        registry
            .put_manifest(&r, &reference(tag), None, raw.clone())
            .await
            .unwrap();
    }
    let all = ["A", "_x", "latest", "v1", "v10", "v2"];
    let list = |last: Option<&'static str>, n: Option<usize>| registry.list_tags(&r, last, n);
    let page = list(None, None).await.unwrap();
    assert_eq!(page, pg(&all[..], false));
    let page = list(None, Some(2)).await.unwrap();
    assert_eq!(page, pg(&all[..2], true));
    let page = list(Some("_x"), Some(2)).await.unwrap();
    assert_eq!(page, pg(&all[2..4], true));
    let page = list(Some("v1"), Some(2)).await.unwrap();
    assert_eq!(page, pg(&all[4..], false));
    let page = list(Some("v1"), Some(10)).await.unwrap();
    assert_eq!(page, pg(&all[4..], false));
    let page = list(Some("latest"), None).await.unwrap();
    assert_eq!(page.items.as_slice(), &all[3..]);
    let page = list(None, Some(0)).await.unwrap();
    assert_eq!((page.items.len(), page.more), (0, false));
    let page = list(Some("zzz"), None).await.unwrap();
    assert_eq!((page.items.len(), page.more), (0, false));
    // `last` need not be an existing tag.
    let page = list(Some("b"), Some(1)).await.unwrap();
    assert_eq!(page, pg(&all[2..3], true));
    // Walk all pages.
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let page = registry
            .list_tags(&r, last.as_deref(), Some(4))
            .await
            .unwrap();
        seen.extend(page.items.iter().cloned());
        last = page.items.last().cloned();
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, all);
}

pub async fn catalog_pagination(registry: &Registry) {
    assert_eq!(
        registry.catalog(None, None).await.unwrap(),
        crate::Page {
            items: vec![],
            more: false
        }
    );
    for name in [
        "zeta/app",
        "alpha",
        "quay.io/org/app",
        "alpha/nested",
        "mid",
    ] {
        push_image(registry, &repo(name), "v1", name, media_type::OCI_MANIFEST).await;
    }
    // A repository with blobs only is not in the catalog.
    push_blob(registry, &repo("blobs/only"), b"data").await;
    let all = [
        "alpha",
        "alpha/nested",
        "mid",
        "quay.io/org/app",
        "zeta/app",
    ];
    let page = registry.catalog(None, None).await.unwrap();
    assert_eq!(page, pg(&all[..], false));
    let page = registry.catalog(None, Some(2)).await.unwrap();
    assert_eq!(page, pg(&all[..2], true));
    let page = registry
        .catalog(Some("alpha/nested"), Some(2))
        .await
        .unwrap();
    assert_eq!(page, pg(&all[2..4], true));
    let page = registry
        .catalog(Some("quay.io/org/app"), Some(2))
        .await
        .unwrap();
    assert_eq!(page, pg(&all[4..], false));
    let page = registry.catalog(None, Some(0)).await.unwrap();
    assert_eq!((page.items.len(), page.more), (0, false));

    // A repository whose last manifest is deleted leaves the catalog.
    let d = registry
        .resolve(&repo("mid"), &reference("v1"))
        .await
        .unwrap()
        .unwrap();
    registry
        .delete_manifest(&repo("mid"), &Reference::Digest(d))
        .await
        .unwrap();
    let page = registry.catalog(None, None).await.unwrap();
    assert_eq!(
        page.items,
        ["alpha", "alpha/nested", "quay.io/org/app", "zeta/app"]
    );
}

pub async fn referrers(registry: &Registry) {
    let r = repo("conf/referrers");
    // The subject need not exist.
    let subject_bytes = b"a subject that was never pushed";
    let subject = Digest::sha256(subject_bytes);
    assert!(
        registry
            .referrers(&r, &subject, None)
            .await
            .unwrap()
            .is_empty()
    );

    let empty = push_blob(registry, &r, b"{}").await;
    let sig = push_blob(registry, &r, b"signature").await;
    let artifact = |artifact_type: &str, layer: &Digest, n: usize| {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": media_type::OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": n}],
            "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": subject, "size": subject_bytes.len()},
            "annotations": {"org.example.kind": artifact_type},
        })
    };
    let sig_manifest = bytes_of(&artifact("application/vnd.example.sig", &sig, 9));
    let sbom_manifest = bytes_of(&artifact("application/vnd.example.sbom", &sig, 9));
    let s = registry
        .put_manifest(
            &r,
            &Reference::Digest(Digest::sha256(&sig_manifest)),
            None,
            sig_manifest.clone(),
        )
        .await
        .unwrap();
    assert_eq!(s.info.subject.as_ref().map(|d| &d.digest), Some(&subject));
    let b = registry
        .put_manifest(&r, &reference("sbom"), None, sbom_manifest.clone())
        .await
        .unwrap();

    let mut all = registry.referrers(&r, &subject, None).await.unwrap();
    all.sort_by(|x, y| x.digest.cmp(&y.digest));
    let mut expected = vec![
        s.info
            .referrer_descriptor(s.digest.clone(), sig_manifest.len() as u64),
        b.info
            .referrer_descriptor(b.digest.clone(), sbom_manifest.len() as u64),
    ];
    expected.sort_by(|x, y| x.digest.cmp(&y.digest));
    assert_eq!(all, expected);
    assert_eq!(all[0].media_type, media_type::OCI_MANIFEST);
    assert!(all.iter().all(|d| d.annotations.is_some()));

    let only = registry
        .referrers(&r, &subject, Some("application/vnd.example.sbom"))
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].digest, b.digest);
    assert!(
        registry
            .referrers(&r, &subject, Some("application/none"))
            .await
            .unwrap()
            .is_empty()
    );
    // Per repository.
    assert!(
        registry
            .referrers(&repo("conf/referrers-other"), &subject, None)
            .await
            .unwrap()
            .is_empty()
    );

    // Deleting a referrer by digest removes its record; by tag does not.
    registry
        .delete_manifest(&r, &reference("sbom"))
        .await
        .unwrap();
    assert_eq!(
        registry.referrers(&r, &subject, None).await.unwrap().len(),
        2
    );
    registry
        .delete_manifest(&r, &Reference::Digest(s.digest.clone()))
        .await
        .unwrap();
    let left = registry.referrers(&r, &subject, None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].digest, b.digest);
}

pub async fn enumeration(registry: &Registry) {
    let a = repo("conf/enum-a");
    let b = repo("conf/enum-b");
    let m = push_image(registry, &a, "v1", "x", media_type::OCI_MANIFEST).await;
    let blob = push_blob(registry, &b, b"only a blob").await;
    let id = registry.start_upload(&b).await.unwrap();

    assert_eq!(
        registry.repositories().await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        registry.tags(&a).await.unwrap(),
        vec![("v1".to_string(), m.clone())]
    );
    assert_eq!(registry.manifests(&a).await.unwrap(), vec![m.clone()]);
    assert!(registry.manifests(&b).await.unwrap().is_empty());
    assert_eq!(registry.linked_blobs(&a).await.unwrap().len(), 2);
    assert_eq!(registry.linked_blobs(&b).await.unwrap(), vec![blob.clone()]);
    let blobs = registry.blobs().await.unwrap();
    assert_eq!(blobs.len(), 4, "config, layer, manifest, blob: {blobs:?}");
    assert!(blobs.contains(&m) && blobs.contains(&blob));
    let uploads = registry.uploads().await.unwrap();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].0.as_str(), id);
    assert!(registry.repository_exists(&b).await.unwrap());
    assert!(
        !registry
            .repository_exists(&repo("conf/enum-none"))
            .await
            .unwrap()
    );
    registry.cancel_upload(&b, &id).await.unwrap();
}

pub async fn garbage_collection(registry: &Registry) {
    use crate::GcOptions;

    let a = repo("conf/gc-a");
    let b = repo("conf/gc-b");
    let kept = push_image(registry, &a, "kept", "kept", media_type::OCI_MANIFEST).await;
    let gone = push_image(registry, &a, "gone", "gone", media_type::DOCKER_MANIFEST_V2).await;
    let gone_blobs: Vec<Digest> = {
        let m = registry.get_manifest(&a, &reference("gone")).await.unwrap();
        let info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes).unwrap();
        info.blobs().map(|d| d.digest.clone()).collect()
    };
    let orphan = push_blob(registry, &b, b"orphan").await;
    registry.delete_blob(&b, &orphan).await.unwrap();
    let unreferenced = push_blob(registry, &b, b"pushed, manifest still to come").await;
    let upload = registry.start_upload(&a).await.unwrap();
    registry
        .append_upload(&a, &upload, None, body("in flight"))
        .await
        .unwrap();
    let all_before = registry.blobs().await.unwrap();

    // A dry run reports and removes nothing.
    let dry = GcOptions {
        upload_max_age: Duration::ZERO,
        dry_run: true,
        ..GcOptions::default()
    };
    let report = registry.collect_garbage(&dry).await.unwrap();
    assert_eq!(report.blobs_removed, vec![orphan.clone()]);
    assert_eq!(report.bytes_freed, 6);
    assert_eq!(report.uploads_removed.len(), 1);
    assert_eq!(registry.blobs().await.unwrap(), all_before);
    assert_eq!(registry.upload_status(&a, &upload).await.unwrap(), 9);

    // Defaults: only the unlinked, unreferenced blob goes; young uploads stay.
    let report = registry
        .collect_garbage(&GcOptions::default())
        .await
        .unwrap();
    assert_eq!(report.blobs_removed, vec![orphan.clone()]);
    assert!(report.uploads_removed.is_empty() && report.links_removed.is_empty());
    assert_eq!(registry.upload_status(&a, &upload).await.unwrap(), 9);
    assert_eq!(registry.stat_blob(&b, &unreferenced).await.unwrap(), 30);
    assert!(!registry.blobs().await.unwrap().contains(&orphan));

    // Delete a manifest, expire unreferenced links: its blobs go, the other
    // image stays whole.
    registry
        .delete_manifest(&a, &Reference::Digest(gone.clone()))
        .await
        .unwrap();
    let opts = GcOptions {
        upload_max_age: Duration::ZERO,
        unreferenced_link_max_age: Some(Duration::ZERO),
        ..GcOptions::default()
    };
    let report = registry.collect_garbage(&opts).await.unwrap();
    let mut expected: Vec<Digest> = gone_blobs.clone();
    expected.push(gone);
    expected.push(unreferenced.clone());
    expected.sort();
    assert_eq!(report.blobs_removed, expected);
    assert_eq!(report.links_removed.len(), 3);
    assert_eq!(report.uploads_removed.len(), 1);
    assert_eq!(
        code(registry.upload_status(&a, &upload).await),
        ErrorCode::BlobUploadUnknown
    );
    assert_eq!(
        code(registry.stat_blob(&b, &unreferenced).await),
        ErrorCode::BlobUnknown
    );
    let m = registry.get_manifest(&a, &reference("kept")).await.unwrap();
    assert_eq!(m.digest, kept);
    let info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes).unwrap();
    for blob in info.blobs() {
        let body = registry.read_blob(&a, &blob.digest, None).await.unwrap();
        assert_eq!(read_all(body).await.len() as u64, blob.size);
    }
    assert_eq!(registry.blobs().await.unwrap().len(), 3);
    // Nothing more to do.
    let report = registry.collect_garbage(&opts).await.unwrap();
    assert_eq!(report.summary().blobs_removed, 0);
    assert_eq!(report.summary().links_removed, 0);
    assert_eq!(report.summary().uploads_removed, 0);
    assert_eq!(report.blobs_kept, 3);
}

// ---- retention and prune ------------------------------------------------

const BUILD: &str = "0123456789abcdef0123456789abcdef";
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Make the registry's clock stand still at `t`.
fn freeze(registry: &Registry, t: SystemTime) {
    registry.set_clock(move || t);
}

/// Push a manifest by digest (untagged); returns its digest and size.
pub async fn push_untagged(
    registry: &Registry,
    repo: &RepositoryName,
    manifest: &serde_json::Value,
) -> (Digest, usize) {
    let bytes = bytes_of(manifest);
    let digest = Digest::sha256(&bytes);
    registry
        .put_manifest(
            repo,
            &Reference::Digest(digest.clone()),
            None,
            bytes.clone(),
        )
        .await
        .unwrap();
    (digest, bytes.len())
}

/// An image manifest over a config and one layer pushed from `seed`.
async fn image_of(
    registry: &Registry,
    repo: &RepositoryName,
    seed: &str,
    media: &str,
) -> serde_json::Value {
    let config = format!("{{\"seed\":\"{seed}\"}}");
    let layer = format!("layer of {seed}");
    let c = push_blob(registry, repo, config.as_bytes()).await;
    let l = push_blob(registry, repo, layer.as_bytes()).await;
    image_manifest(media, (&c, config.len()), &[(&l, layer.len())])
}

/// Check that the manifest `digest` of `repo` is there and complete: every
/// blob it references readable in full, every child manifest complete.
pub async fn assert_complete(registry: &Registry, repo: &RepositoryName, digest: &Digest) {
    let m = registry
        .get_manifest(repo, &Reference::Digest(digest.clone()))
        .await
        .unwrap_or_else(|e| panic!("{repo}@{digest}: {e}"));
    let info = speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes).unwrap();
    for blob in info.blobs() {
        let body = registry
            .read_blob(repo, &blob.digest, None)
            .await
            .unwrap_or_else(|e| panic!("{repo}@{digest} needs {}: {e}", blob.digest));
        assert_eq!(read_all(body).await.len() as u64, blob.size);
    }
    for child in &info.manifests {
        Box::pin(assert_complete(registry, repo, &child.digest)).await;
    }
}

/// Every manifest of every repository is complete.
pub async fn assert_store_consistent(registry: &Registry) {
    for repo in registry.repositories().await.unwrap() {
        for digest in registry.manifests(&repo).await.unwrap() {
            assert_complete(registry, &repo, &digest).await;
        }
        for tag in registry.tags_detailed(&repo).await.unwrap() {
            assert!(
                registry
                    .manifests(&repo)
                    .await
                    .unwrap()
                    .contains(&tag.digest),
                "{repo}:{} dangles",
                tag.name
            );
        }
    }
}

/// Everything a prune may change, to compare before and after.
async fn snapshot(registry: &Registry) -> Vec<String> {
    let mut out = Vec::new();
    for repo in registry.repositories().await.unwrap() {
        for t in registry.tags_detailed(&repo).await.unwrap() {
            out.push(format!("{repo}:{}={}@{:?}", t.name, t.digest, t.pushed_at));
        }
        for m in registry.manifests(&repo).await.unwrap() {
            out.push(format!("{repo}@{m}"));
        }
        for b in registry.linked_blobs(&repo).await.unwrap() {
            out.push(format!("{repo}/{b}"));
        }
    }
    for b in registry.blobs().await.unwrap() {
        out.push(b.to_string());
    }
    out
}

fn options(retention: RetentionPolicy, now: SystemTime) -> PruneOptions {
    let mut o = PruneOptions::new(retention);
    o.now = Some(now);
    o
}

pub async fn retention_expires_old_matching_tags(registry: &Registry) {
    let r = repo("conf/retention");
    let other = repo("conf/retention-other");
    let now = SystemTime::now();
    let old_tag = format!("{BUILD}_old");
    let young_tag = format!("{BUILD}_young");

    freeze(registry, now - 3 * DAY);
    let old = push_image(registry, &r, &old_tag, "old", media_type::OCI_MANIFEST).await;
    let latest = push_image(registry, &r, "latest", "latest", media_type::OCI_MANIFEST).await;
    let other_old = push_image(
        registry,
        &other,
        &old_tag,
        "o",
        media_type::DOCKER_MANIFEST_V2,
    )
    .await;
    freeze(registry, now - HOUR);
    let young = push_image(registry, &r, &young_tag, "young", media_type::OCI_MANIFEST).await;
    registry.set_clock(SystemTime::now);

    let tags = registry.tags_detailed(&r).await.unwrap();
    let times: Vec<_> = tags
        .iter()
        .map(|t| (t.name.as_str(), t.pushed_at))
        .collect();
    let secs = |t: SystemTime| {
        UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap().as_secs())
    };
    assert_eq!(
        times,
        vec![
            (old_tag.as_str(), Some(secs(now - 3 * DAY))),
            (young_tag.as_str(), Some(secs(now - HOUR))),
            ("latest", Some(secs(now - 3 * DAY))),
        ]
    );

    // Only in conf/retention, only intermediate tags, only older than a day.
    let rule = RetentionRule::new("conf/retention", RetentionRule::INTERMEDIATE_TAGS, DAY).unwrap();
    let report = registry
        .prune(&options(RetentionPolicy::new(vec![rule]), now))
        .await
        .unwrap();
    assert_eq!(report.tags_deleted.len(), 1);
    assert_eq!(
        (
            report.tags_deleted[0].repository.as_str(),
            report.tags_deleted[0].tag.as_str()
        ),
        ("conf/retention", old_tag.as_str())
    );
    assert_eq!(report.tags_deleted[0].digest, old);
    assert_eq!(report.manifests_deleted.len(), 1);
    assert_eq!(report.manifests_deleted[0].digest, old);
    assert_eq!(report.blobs_removed.len(), 3, "config, layer, manifest");
    let names: Vec<String> = registry
        .tags(&r)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(names, vec![young_tag.clone(), "latest".to_string()]);
    assert_eq!(
        registry.tags(&other).await.unwrap(),
        vec![(old_tag.clone(), other_old.clone())]
    );
    for (repo, digest) in [(&r, &latest), (&r, &young), (&other, &other_old)] {
        assert_complete(registry, repo, digest).await;
    }
    assert_store_consistent(registry).await;

    // The default rule covers every repository; a day later the young tag
    // is old too.
    let report = registry
        .prune(&options(
            RetentionPolicy::intermediate_registry(DAY),
            now + DAY,
        ))
        .await
        .unwrap();
    let mut deleted: Vec<String> = report
        .tags_deleted
        .iter()
        .map(|t| format!("{}:{}", t.repository, t.tag))
        .collect();
    deleted.sort();
    assert_eq!(
        deleted,
        vec![
            format!("conf/retention-other:{old_tag}"),
            format!("conf/retention:{young_tag}")
        ]
    );
    assert_eq!(
        registry.tags(&r).await.unwrap(),
        vec![("latest".to_string(), latest.clone())]
    );
    assert!(registry.tags(&other).await.unwrap().is_empty());
    assert_complete(registry, &r, &latest).await;
    assert_store_consistent(registry).await;
}

/// A tag written without a push time (an older store) is stamped when
/// first seen and expires only after its age counted from then.
pub async fn retention_first_sight_of_legacy_tags(registry: &Registry) {
    let r = repo("conf/legacy");
    let now = SystemTime::now();
    freeze(registry, now - 10 * DAY);
    let m = push_image(registry, &r, "v1", "legacy", media_type::OCI_MANIFEST).await;
    let tag = format!("{BUILD}_legacy");
    registry
        .backend()
        .put(crate::Table::Tags(&r), &tag, Bytes::from(m.to_string()))
        .await
        .unwrap();
    registry.set_clock(move || now);
    let infos = registry.tags_detailed(&r).await.unwrap();
    assert_eq!(infos[0].name, tag);
    assert_eq!(infos[0].pushed_at, None);
    assert_eq!(infos[0].digest, m);

    let policy = RetentionPolicy::intermediate_registry(Duration::ZERO);
    // A dry run neither deletes nor stamps it.
    let mut dry = options(policy.clone(), now);
    dry.dry_run = true;
    let report = registry.prune(&dry).await.unwrap();
    assert!(report.tags_deleted.is_empty());
    assert_eq!(registry.tags_detailed(&r).await.unwrap()[0].pushed_at, None);
    // A real run stamps it with `now`, and keeps it.
    let report = registry.prune(&options(policy.clone(), now)).await.unwrap();
    assert!(report.tags_deleted.is_empty() && report.blobs_removed.is_empty());
    let stamped = registry.tags_detailed(&r).await.unwrap()[0]
        .pushed_at
        .unwrap();
    assert!(stamped <= now && now.duration_since(stamped).unwrap() < Duration::from_secs(2));
    // It expires by its age from then on.
    let policy = RetentionPolicy::intermediate_registry(DAY);
    let report = registry
        .prune(&options(policy.clone(), now + HOUR))
        .await
        .unwrap();
    assert!(report.tags_deleted.is_empty());
    let report = registry
        .prune(&options(policy, now + 2 * DAY))
        .await
        .unwrap();
    assert_eq!(report.tags_deleted.len(), 1);
    assert!(report.manifests_deleted.is_empty(), "v1 still points at it");
    assert_complete(registry, &r, &m).await;
}

/// Everything reachable from a tag survives, in every manifest format: an
/// OCI index and a Docker manifest list with their (untagged) children, an
/// artifact (and an artifact of the artifact) whose subject is tagged. An
/// old untagged image and its referrer go, but not a layer it shares.
pub async fn prune_keeps_reachable_images(registry: &Registry) {
    let r = repo("conf/reachable");
    let now = SystemTime::now();
    freeze(registry, now - 3 * DAY);

    // OCI index over two OCI images.
    let a = image_of(registry, &r, "index-amd64", media_type::OCI_MANIFEST).await;
    let b = image_of(registry, &r, "index-arm64", media_type::OCI_MANIFEST).await;
    let (a, a_size) = push_untagged(registry, &r, &a).await;
    let (b, b_size) = push_untagged(registry, &r, &b).await;
    let index = |media: &str, children: &[(&Digest, usize, &str)]| {
        json!({
            "schemaVersion": 2,
            "mediaType": media,
            "manifests": children.iter().map(|(d, s, m)| json!({
                "mediaType": m, "digest": d, "size": s,
                "platform": {"architecture": "amd64", "os": "linux"},
            })).collect::<Vec<_>>(),
        })
    };
    let oci_index = bytes_of(&index(
        media_type::OCI_INDEX,
        &[
            (&a, a_size, media_type::OCI_MANIFEST),
            (&b, b_size, media_type::OCI_MANIFEST),
        ],
    ));
    let oci_index = registry
        .put_manifest(&r, &reference("index"), None, oci_index)
        .await
        .unwrap()
        .digest;

    // Docker manifest list over two Docker images.
    let c = image_of(registry, &r, "list-amd64", media_type::DOCKER_MANIFEST_V2).await;
    let d = image_of(registry, &r, "list-arm64", media_type::DOCKER_MANIFEST_V2).await;
    let (c, c_size) = push_untagged(registry, &r, &c).await;
    let (d, d_size) = push_untagged(registry, &r, &d).await;
    let list = bytes_of(&index(
        media_type::DOCKER_MANIFEST_LIST,
        &[
            (&c, c_size, media_type::DOCKER_MANIFEST_V2),
            (&d, d_size, media_type::DOCKER_MANIFEST_V2),
        ],
    ));
    let list = registry
        .put_manifest(&r, &reference("list"), None, list)
        .await
        .unwrap()
        .digest;

    // A tagged image with a signature, and a signature of the signature.
    let signed = push_image(registry, &r, "signed", "signed", media_type::OCI_MANIFEST).await;
    let signed_size = registry
        .get_manifest(&r, &reference("signed"))
        .await
        .unwrap()
        .bytes
        .len();
    let empty = push_blob(registry, &r, b"{}").await;
    let artifact = |layer: &Digest, n: usize, subject: &Digest, size: usize| {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": media_type::OCI_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": n}],
            "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": subject, "size": size},
        })
    };
    let sig_layer = push_blob(registry, &r, b"signature of signed").await;
    let (sig, sig_size) = push_untagged(
        registry,
        &r,
        &artifact(&sig_layer, 19, &signed, signed_size),
    )
    .await;
    let sig2_layer = push_blob(registry, &r, b"signature of signature").await;
    let (sig2, _) = push_untagged(registry, &r, &artifact(&sig2_layer, 22, &sig, sig_size)).await;

    // An old untagged image sharing a layer with the index's first image,
    // and its own signature.
    let a_info = {
        let m = registry
            .get_manifest(&r, &Reference::Digest(a.clone()))
            .await
            .unwrap();
        speculum_oci::manifest::parse(Some(&m.media_type), &m.bytes).unwrap()
    };
    let shared = &a_info.layers[0];
    let junk_config = push_blob(registry, &r, b"{\"junk\":1}").await;
    let junk = image_manifest(
        media_type::OCI_MANIFEST,
        (&junk_config, 10),
        &[(&shared.digest, shared.size as usize)],
    );
    let (junk, junk_size) = push_untagged(registry, &r, &junk).await;
    let junk_sig_layer = push_blob(registry, &r, b"signature of junk").await;
    let (junk_sig, _) = push_untagged(
        registry,
        &r,
        &artifact(&junk_sig_layer, 17, &junk, junk_size),
    )
    .await;
    registry.set_clock(SystemTime::now);

    let report = registry
        .prune(&options(RetentionPolicy::intermediate_registry(DAY), now))
        .await
        .unwrap();
    assert!(report.tags_deleted.is_empty());
    let mut gone: Vec<&Digest> = report.manifests_deleted.iter().map(|m| &m.digest).collect();
    gone.sort();
    let mut expected = vec![&junk, &junk_sig];
    expected.sort();
    assert_eq!(gone, expected);
    let mut removed = vec![junk.clone(), junk_sig.clone(), junk_config, junk_sig_layer];
    removed.sort();
    assert_eq!(report.blobs_removed, removed);
    assert!(report.bytes_freed > 0);

    for digest in [&oci_index, &list, &signed, &sig, &sig2, &a, &b, &c, &d] {
        assert_complete(registry, &r, digest).await;
    }
    let refs = registry.referrers(&r, &signed, None).await.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, sig);
    assert!(
        registry
            .referrers(&r, &junk, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        code(
            registry
                .get_manifest(&r, &Reference::Digest(junk.clone()))
                .await
        ),
        ErrorCode::ManifestUnknown
    );
    assert_store_consistent(registry).await;

    // Nothing more to do; deleting the index's tag frees it and its children.
    let again = registry
        .prune(&options(RetentionPolicy::default(), now))
        .await
        .unwrap();
    assert!(again.blobs_removed.is_empty() && again.manifests_deleted.is_empty());
    registry
        .delete_manifest(&r, &reference("index"))
        .await
        .unwrap();
    // Past the grace period of the links that reading the blobs renewed.
    let report = registry
        .prune(&options(
            RetentionPolicy::default(),
            SystemTime::now() + 2 * HOUR,
        ))
        .await
        .unwrap();
    let mut gone: Vec<&Digest> = report.manifests_deleted.iter().map(|m| &m.digest).collect();
    gone.sort();
    let mut expected = vec![&oci_index, &a, &b];
    expected.sort();
    assert_eq!(gone, expected);
    // index + 2 manifests + 2 configs + 2 layers.
    assert_eq!(report.blobs_removed.len(), 7);
    for digest in [&list, &signed, &sig, &sig2] {
        assert_complete(registry, &r, digest).await;
    }
    assert_store_consistent(registry).await;
}

/// Untagged manifests and unreferenced links stay for the grace period,
/// and an upload in progress stays for `upload_max_age`.
pub async fn prune_grace_period(registry: &Registry) {
    let r = repo("conf/grace");
    let now = SystemTime::now();
    freeze(registry, now - 2 * HOUR);
    let old = image_of(registry, &r, "old", media_type::DOCKER_MANIFEST_V2).await;
    let (old, _) = push_untagged(registry, &r, &old).await;
    let old_blob = push_blob(registry, &r, b"pushed long ago, never used").await;
    let headed = push_blob(registry, &r, b"pushed long ago, checked just now").await;
    freeze(registry, now - HOUR / 2);
    let young = image_of(registry, &r, "young", media_type::OCI_MANIFEST).await;
    let (young, _) = push_untagged(registry, &r, &young).await;
    let young_blob = push_blob(registry, &r, b"pushed, manifest still to come").await;
    registry.set_clock(SystemTime::now);
    let upload = registry.start_upload(&r).await.unwrap();
    registry
        .append_upload(&r, &upload, None, body("in flight"))
        .await
        .unwrap();
    // A client checks that the registry has a blob, to skip its upload:
    // that renews the link.
    assert_eq!(registry.stat_blob(&r, &headed).await.unwrap(), 33);

    let report = registry
        .prune(&options(RetentionPolicy::default(), now))
        .await
        .unwrap();
    assert_eq!(report.manifests_deleted.len(), 1);
    assert_eq!(report.manifests_deleted[0].digest, old);
    // The old manifest, its config and layer, the old unused blob.
    assert_eq!(report.blobs_removed.len(), 4);
    assert!(report.blobs_removed.contains(&old_blob));
    assert_eq!(report.links_removed.len(), 3, "config, layer, unused blob");
    assert!(report.uploads_removed.is_empty());
    assert_complete(registry, &r, &young).await;
    assert_eq!(registry.stat_blob(&r, &young_blob).await.unwrap(), 30);
    assert_eq!(registry.upload_status(&r, &upload).await.unwrap(), 9);
    assert_eq!(registry.stat_blob(&r, &headed).await.unwrap(), 33);
    assert_eq!(
        code(registry.stat_blob(&r, &old_blob).await),
        ErrorCode::BlobUnknown
    );

    // An hour later (than the links renewed by reading) the young ones are
    // old too; a day later the upload.
    let report = registry
        .prune(&options(
            RetentionPolicy::default(),
            now + HOUR + 10 * 60 * SECOND,
        ))
        .await
        .unwrap();
    assert_eq!(report.manifests_deleted.len(), 1);
    assert_eq!(report.manifests_deleted[0].digest, young);
    // Manifest, config, layer, the blob whose manifest never came, `headed`.
    assert_eq!(report.blobs_removed.len(), 5);
    assert_eq!(report.links_removed.len(), 4);
    assert!(report.uploads_removed.is_empty());
    let report = registry
        .prune(&options(RetentionPolicy::default(), now + DAY + HOUR))
        .await
        .unwrap();
    assert_eq!(report.uploads_removed.len(), 1);
    assert!(registry.blobs().await.unwrap().is_empty());
    assert!(registry.manifests(&r).await.unwrap().is_empty());
}

/// A dry run reports exactly what the real run then does, and changes
/// nothing (not even first-sight stamps).
pub async fn prune_dry_run_changes_nothing(registry: &Registry) {
    let r = repo("conf/dry-run");
    let now = SystemTime::now();
    freeze(registry, now - 3 * DAY);
    let expiring = format!("{BUILD}_expiring");
    push_image(
        registry,
        &r,
        &expiring,
        "expiring",
        media_type::OCI_MANIFEST,
    )
    .await;
    push_image(registry, &r, "kept", "kept", media_type::DOCKER_MANIFEST_V2).await;
    let (untagged, _) = {
        let m = image_of(registry, &r, "untagged", media_type::OCI_MANIFEST).await;
        push_untagged(registry, &r, &m).await
    };
    push_blob(registry, &r, b"unused").await;
    registry.set_clock(SystemTime::now);
    let upload = registry.start_upload(&r).await.unwrap();
    let before = snapshot(registry).await;

    let mut dry = options(RetentionPolicy::intermediate_registry(DAY), now + 2 * DAY);
    dry.dry_run = true;
    let planned = registry.prune(&dry).await.unwrap();
    assert!(planned.dry_run);
    assert_eq!(snapshot(registry).await, before);
    assert_eq!(registry.upload_status(&r, &upload).await.unwrap(), 0);
    let s = planned.summary();
    assert_eq!(
        (
            s.tags_deleted,
            s.manifests_deleted,
            s.links_removed,
            s.blobs_removed,
            s.uploads_removed
        ),
        (1, 2, 5, 7, 1)
    );
    assert!(
        planned
            .manifests_deleted
            .iter()
            .any(|m| m.digest == untagged)
    );

    let mut real = dry.clone();
    real.dry_run = false;
    let done = registry.prune(&real).await.unwrap();
    assert!(!done.dry_run);
    assert_eq!(done.tags_deleted, planned.tags_deleted);
    assert_eq!(done.manifests_deleted, planned.manifests_deleted);
    assert_eq!(done.links_removed, planned.links_removed);
    assert_eq!(done.blobs_removed, planned.blobs_removed);
    assert_eq!(done.bytes_freed, planned.bytes_freed);
    assert_eq!(done.blobs_kept, planned.blobs_kept);
    assert_eq!(done.uploads_removed, planned.uploads_removed);
    assert_eq!(registry.tags(&r).await.unwrap().len(), 1);
    assert_store_consistent(registry).await;

    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["tags_deleted"][0]["tag"], expiring.as_str());
    assert!(json["duration_seconds"].is_f64());
    let summary = serde_json::to_value(done.summary()).unwrap();
    assert_eq!(summary["blobs_removed"], 7);
}

/// Pushes running while prune runs again and again never lose a blob:
/// every image pushed is complete afterwards, and no manifest in the store
/// references a missing blob. Each image shares a base layer that was
/// linked long ago and is unreferenced until the image is pushed, so the
/// sweep and the push race for it: the push either lands first (and marks
/// the layer) or is refused with MANIFEST_BLOB_UNKNOWN, re-uploads the layer
/// and retries, as a client would.
pub async fn prune_during_pushes(registry: &Registry) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const IMAGES: usize = 30;
    const BASES: usize = 3;
    let r = repo("conf/concurrent");
    let now = SystemTime::now();
    freeze(registry, now - 2 * HOUR);
    let base = |i: usize| format!("base layer {i}").into_bytes();
    for i in 0..BASES {
        push_blob(registry, &r, &base(i)).await;
    }
    let old = image_of(registry, &r, "old", media_type::OCI_MANIFEST).await;
    push_untagged(registry, &r, &old).await;
    registry.set_clock(SystemTime::now);

    let done = Arc::new(AtomicBool::new(false));
    let pusher = {
        let registry = registry.clone();
        let r = r.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut pushed = Vec::new();
            let mut retries = 0;
            for i in 0..IMAGES {
                // A chunked upload, with GC free to run between chunks.
                let config = format!("{{\"image\":{i}}}");
                let id = registry.start_upload(&r).await.unwrap();
                registry
                    .append_upload(&r, &id, None, body(config[..4].to_string()))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
                let c = Digest::sha256(config.as_bytes());
                registry
                    .finish_upload(&r, &id, &c, Some(body(config[4..].to_string())))
                    .await
                    .unwrap();
                let layer = format!("layer {i}").repeat(50);
                let l = push_blob(&registry, &r, layer.as_bytes()).await;
                let b = base(i % BASES);
                let bd = Digest::sha256(&b);
                let media = if i % 2 == 0 {
                    media_type::OCI_MANIFEST
                } else {
                    media_type::DOCKER_MANIFEST_V2
                };
                let m = bytes_of(&image_manifest(
                    media,
                    (&c, config.len()),
                    &[(&bd, b.len()), (&l, layer.len())],
                ));
                let tag = reference(&format!("img-{i}"));
                let digest = loop {
                    match registry.put_manifest(&r, &tag, None, m.clone()).await {
                        Ok(put) => break put.digest,
                        Err(Error::Client {
                            code: ErrorCode::ManifestBlobUnknown,
                            detail,
                            ..
                        }) if detail == Some(json!({"digest": bd})) => {
                            retries += 1;
                            push_blob(&registry, &r, &b).await;
                        }
                        Err(e) => panic!("push {i}: {e:?}"),
                    }
                };
                pushed.push(digest);
                tokio::task::yield_now().await;
            }
            done.store(true, Ordering::SeqCst);
            (pushed, retries)
        })
    };
    let collector = {
        let registry = registry.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut runs = 0;
            let mut removed = 0;
            loop {
                let mut o = PruneOptions::new(RetentionPolicy::intermediate_registry(HOUR));
                o.dry_run = runs % 4 == 3;
                let report = registry.prune(&o).await.unwrap();
                if !o.dry_run {
                    removed += report.blobs_removed.len();
                }
                runs += 1;
                if done.load(Ordering::SeqCst) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            (runs, removed)
        })
    };
    let (pushed, _retries) = pusher.await.unwrap();
    let (runs, removed) = collector.await.unwrap();
    assert!(runs >= 2, "prune ran {runs} times");
    // The old image (manifest, config, layer) at least, and base layers
    // not yet needed when a prune ran.
    assert!(removed >= 3, "removed {removed}");
    for (i, digest) in pushed.iter().enumerate() {
        assert_eq!(
            registry
                .resolve(&r, &reference(&format!("img-{i}")))
                .await
                .unwrap()
                .as_ref(),
            Some(digest)
        );
        assert_complete(registry, &r, digest).await;
    }
    // And once more, with nothing in flight.
    registry
        .prune(&PruneOptions::new(RetentionPolicy::intermediate_registry(
            HOUR,
        )))
        .await
        .unwrap();
    for digest in &pushed {
        assert_complete(registry, &r, digest).await;
    }
    assert_store_consistent(registry).await;
}

/// A blob's own time: when it was stored, or the time it was given; the
/// registry stamps what it stores (again) with its clock.
pub async fn blob_times(registry: &Registry) {
    let be = registry.backend();
    let data = Bytes::from_static(b"a blob with a time");
    let d = Digest::sha256(&data);
    assert_eq!(be.blob_modified(&d).await.unwrap(), None);
    assert!(!be.touch_blob(&d, SystemTime::now()).await.unwrap());
    let before = SystemTime::now() - SECOND;
    be.write_blob(&d, data).await.unwrap();
    let stored = be.blob_modified(&d).await.unwrap().unwrap();
    assert!(
        stored >= before && stored <= SystemTime::now() + SECOND,
        "{stored:?}"
    );
    let past = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(be.touch_blob(&d, past).await.unwrap());
    assert_eq!(be.blob_modified(&d).await.unwrap(), Some(past));
    assert!(be.delete_blob(&d).await.unwrap());
    assert_eq!(be.blob_modified(&d).await.unwrap(), None);

    // Through the registry: an upload, then the same blob again later.
    let r = repo("conf/blob-times");
    let now = SystemTime::now();
    freeze(registry, now - DAY);
    let d = push_blob(registry, &r, b"stored twice").await;
    let first = be.blob_modified(&d).await.unwrap().unwrap();
    assert!(
        first.duration_since(now - DAY).unwrap_or_default() < 2 * SECOND,
        "{first:?}"
    );
    freeze(registry, now);
    push_blob(registry, &r, b"stored twice").await;
    let second = be.blob_modified(&d).await.unwrap().unwrap();
    assert!(
        second.duration_since(now).unwrap_or_default() < 2 * SECOND,
        "{second:?}"
    );
    // A manifest is a blob too.
    let m = push_image(registry, &r, "v1", "times", media_type::OCI_MANIFEST).await;
    assert!(be.blob_modified(&m).await.unwrap().unwrap() >= now - SECOND);
    registry.set_clock(SystemTime::now);
}

/// One garbage collector at a time, whichever registry (process) runs it:
/// a second prune fails with `CollectionRunning` and removes nothing; a dry
/// run needs no lock.
pub async fn collector_lock_is_exclusive(registry: &Registry) {
    let r = repo("conf/collector-lock");
    let now = SystemTime::now();
    freeze(registry, now - DAY);
    let unused = push_blob(registry, &r, b"unused for a day").await;
    registry.set_clock(SystemTime::now);
    let be = registry.backend();

    let held = be
        .try_lock_collector()
        .await
        .unwrap()
        .expect("the lock is free");
    assert!(be.try_lock_collector().await.unwrap().is_none());
    let result = registry.prune(&PruneOptions::default()).await;
    assert!(
        matches!(result, Err(Error::CollectionRunning)),
        "{result:?}"
    );
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("another garbage collection")
    );
    let dry = PruneOptions {
        dry_run: true,
        ..PruneOptions::default()
    };
    let planned = registry.prune(&dry).await.unwrap();
    assert_eq!(planned.blobs_removed, vec![unused.clone()]);
    // (Not stat_blob: reading the link would renew it.)
    assert!(registry.blobs().await.unwrap().contains(&unused));

    drop(held);
    let report = registry.prune(&PruneOptions::default()).await.unwrap();
    assert_eq!(report.blobs_removed, vec![unused]);
    // Released at the end of a run, failed or not.
    let again = be.try_lock_collector().await.unwrap();
    assert!(again.is_some());
}

/// A collector in another process (here: another `Registry` over the same
/// store, which shares none of this one's in-process locks) while pushes
/// go on: every acknowledged image stays whole, since the sweep reads each
/// item again (its push time, its link time, the blob's own time and
/// links) right before it removes it. What is old goes.
pub async fn prune_beside_another_process(registry: &Registry) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const IMAGES: usize = 40;
    let repos: Vec<RepositoryName> = (0..4).map(|i| repo(&format!("conf/beside-{i}"))).collect();
    let now = SystemTime::now();
    freeze(registry, now - 2 * HOUR);
    let mut old = Vec::new();
    for (i, r) in repos.iter().enumerate() {
        let m = image_of(registry, r, &format!("old {i}"), media_type::OCI_MANIFEST).await;
        old.push(push_untagged(registry, r, &m).await.0);
        // Pushed long ago, needed again now (its manifest comes below).
        push_blob(registry, r, format!("reused {i}").as_bytes()).await;
    }
    registry.set_clock(SystemTime::now);
    let collector = Registry::with_backend(registry.backend().clone());

    let done = Arc::new(AtomicBool::new(false));
    let pusher = {
        let registry = registry.clone();
        let repos = repos.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut pushed = Vec::new();
            for i in 0..IMAGES {
                let r = &repos[i % repos.len()];
                let digest = if i < repos.len() {
                    // A manifest over a blob linked long ago: a HEAD renews
                    // the link, as a client that skips the upload does (and
                    // one that finds it collected uploads it again).
                    let reused = format!("reused {i}");
                    let rd = Digest::sha256(reused.as_bytes());
                    if registry.stat_blob(r, &rd).await.is_err() {
                        push_blob(&registry, r, reused.as_bytes()).await;
                    }
                    let c = push_blob(&registry, r, b"{}").await;
                    let m =
                        image_manifest(media_type::OCI_MANIFEST, (&c, 2), &[(&rd, reused.len())]);
                    // The sweep and this push may still race for the old
                    // blob in the instant between its last check and its
                    // removal: then the push is refused, never acknowledged
                    // and lost, and the client uploads the blob again.
                    let tag = reference(&format!("reused-{i}"));
                    let mut tries = 0;
                    loop {
                        match registry.put_manifest(r, &tag, None, bytes_of(&m)).await {
                            Ok(put) => break put.digest,
                            Err(Error::Client {
                                code: ErrorCode::ManifestBlobUnknown,
                                ..
                            }) if tries < 5 => {
                                tries += 1;
                                push_blob(&registry, r, reused.as_bytes()).await;
                                push_blob(&registry, r, b"{}").await;
                            }
                            Err(e) => panic!("push {i}: {e:?}"),
                        }
                    }
                } else {
                    let tag = format!("img-{i}");
                    push_image(&registry, r, &tag, &tag, media_type::DOCKER_MANIFEST_V2).await
                };
                pushed.push((r.clone(), digest));
                tokio::task::yield_now().await;
            }
            done.store(true, Ordering::SeqCst);
            pushed
        })
    };
    let mut runs = 0;
    let mut removed = HashSet::new();
    loop {
        let report = collector.prune(&PruneOptions::default()).await.unwrap();
        removed.extend(report.manifests_deleted.into_iter().map(|m| m.digest));
        runs += 1;
        // (A pusher that panicked never says it is done.)
        if done.load(Ordering::SeqCst) || pusher.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let pushed = pusher.await.unwrap();
    assert!(runs >= 1);
    for (r, digest) in &pushed {
        assert_complete(registry, r, digest).await;
    }
    collector.prune(&PruneOptions::default()).await.unwrap();
    for (r, digest) in &pushed {
        assert_complete(registry, r, digest).await;
    }
    for digest in &old {
        assert!(removed.contains(digest), "{digest} was kept");
    }
    assert_store_consistent(registry).await;
}

/// Scratch that a crash left mid-write (a `tmp/` file, an upload session
/// half created) goes once it is older than [`SCRATCH_MAX_AGE`], in every
/// collection (a dry run lists it) and at start
/// ([`Registry::remove_stale_scratch`]); young scratch, which may be a
/// write in flight right now, stays whatever the registry's clock says.
pub async fn stale_scratch_removed_young_kept(registry: &Registry, fixture: &impl Fixture) {
    let be = registry.backend();
    let now = SystemTime::now();
    let old = now - SCRATCH_MAX_AGE - 60 * SECOND;
    let Some(stale_file) = fixture.plant_scratch(false, old) else {
        // Nothing outlives a crash: nothing to remove, nothing reported.
        assert!(
            registry
                .remove_stale_scratch(false)
                .await
                .unwrap()
                .is_empty()
        );
        let report = registry.prune(&PruneOptions::default()).await.unwrap();
        assert!(report.scratch_removed.is_empty());
        return;
    };
    let stale_dir = fixture.plant_scratch(true, old).unwrap();
    let young_file = fixture.plant_scratch(false, now - 60 * SECOND).unwrap();
    let young_dir = fixture.plant_scratch(true, now).unwrap();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let stale = sorted(vec![stale_file, stale_dir]);
    let young = sorted(vec![young_file, young_dir]);

    let dry = PruneOptions {
        dry_run: true,
        ..PruneOptions::default()
    };
    let planned = registry.prune(&dry).await.unwrap();
    assert_eq!(sorted(planned.scratch_removed), stale);
    assert_eq!(be.scratch().await.unwrap().len(), 4);

    // A clock far ahead (a simulation) does not make a live write stale.
    let ahead = PruneOptions {
        now: Some(now + DAY),
        ..PruneOptions::default()
    };
    let report = registry.prune(&ahead).await.unwrap();
    assert_eq!(sorted(report.scratch_removed.clone()), stale);
    assert_eq!(report.summary().scratch_removed, 2);
    assert_eq!(sorted(be.scratch().await.unwrap()), young);

    let again = fixture.plant_scratch(true, old).unwrap();
    assert_eq!(registry.remove_stale_scratch(false).await.unwrap(), [again]);
    assert_eq!(sorted(be.scratch().await.unwrap()), young);

    // Once old, the young ones go too (and leave the store clean).
    let removed = be.remove_scratch(now + SECOND, false).await.unwrap();
    assert_eq!(sorted(removed), young);
}

/// Each owner has at most `max_open` upload sessions open: past it, a new
/// one is `TOOMANYREQUESTS` and nothing is created; other owners are not
/// affected; a session finished, cancelled, removed for a wrong digest or
/// expired frees its slot.
pub async fn upload_sessions_bounded_per_owner(registry: &Registry) {
    let r = repo("conf/bounded");
    let start = |owner: &'static str| registry.start_upload_as(&r, owner, 3);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(start("alice").await.unwrap());
    }
    assert_eq!(code(start("alice").await), ErrorCode::TooManyRequests);
    assert_eq!(registry.uploads().await.unwrap().len(), 3);
    let bob = start("bob").await.unwrap();

    // Cancelled.
    registry.cancel_upload(&r, &open.remove(0)).await.unwrap();
    open.push(start("alice").await.unwrap());
    assert_eq!(code(start("alice").await), ErrorCode::TooManyRequests);
    // Finished.
    let d = Digest::sha256(b"done");
    let id = open.remove(0);
    registry
        .finish_upload(&r, &id, &d, Some(body("done")))
        .await
        .unwrap();
    open.push(start("alice").await.unwrap());
    // Wrong digest.
    let id = open.remove(0);
    let wrong = registry
        .finish_upload(&r, &id, &d, Some(body("other")))
        .await;
    assert_eq!(code(wrong), ErrorCode::DigestInvalid);
    open.push(start("alice").await.unwrap());
    // Expired.
    let id = open.remove(0);
    assert!(
        registry
            .purge_upload(&crate::UploadId::parse(&id).unwrap())
            .await
            .unwrap()
    );
    open.push(start("alice").await.unwrap());
    assert_eq!(code(start("alice").await), ErrorCode::TooManyRequests);

    for id in open.iter().chain([&bob]) {
        registry.cancel_upload(&r, id).await.unwrap();
    }
    registry.delete_blob(&r, &d).await.unwrap();
}
