//! GC figures on a filesystem store of a few hundred images.
//!
//! Builds a store in a temporary directory: 256 images in 16 repositories,
//! a mix of OCI manifests, Docker manifests, OCI indexes and Docker manifest
//! lists (two children each), small random layers of which some are shared
//! base layers, signatures (referrers) on every eighth image. Half the
//! images carry intermediate-registry tags (`<build>_latest`) pushed three
//! days ago, a quarter such tags pushed today, a quarter release tags; a few
//! uploads are abandoned. Then it runs a dry run and a real prune
//! (expiration one day, grace one hour, uploads older than three seconds)
//! while another task keeps pushing blobs, checks that every tag left is
//! complete, and prints the figures.
//!
//! ```text
//! cargo run --release -p speculum-storage --example gc_figures
//! ```

// Printing the figures is this program's purpose.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{Value, json};
use speculum_oci::{Digest, Reference, RepositoryName, manifest, media_type};
use speculum_storage::{PruneOptions, Registry, RetentionPolicy, body_from_bytes};

type Error = Box<dyn std::error::Error + Send + Sync>;

const IMAGES: usize = 256;
const REPOS: usize = 16;
const BASE_LAYERS: usize = 12;
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

async fn push_blob(
    registry: &Registry,
    repo: &RepositoryName,
    data: Vec<u8>,
) -> Result<(Digest, usize), Error> {
    let digest = Digest::sha256(&data);
    let len = data.len();
    registry
        .put_blob(repo, &digest, body_from_bytes(data))
        .await?;
    Ok((digest, len))
}

async fn push_manifest(
    registry: &Registry,
    repo: &RepositoryName,
    reference: Option<&str>,
    manifest: &Value,
) -> Result<(Digest, usize), Error> {
    let bytes = Bytes::from(serde_json::to_vec(manifest)?);
    let digest = Digest::sha256(&bytes);
    let reference = match reference {
        Some(tag) => tag.parse()?,
        None => Reference::Digest(digest.clone()),
    };
    registry
        .put_manifest(repo, &reference, None, bytes.clone())
        .await?;
    Ok((digest, bytes.len()))
}

/// Push one single-platform image (config, a shared base layer, one or two
/// own layers), under `tag` or untagged; returns its digest and size.
async fn push_single(
    registry: &Registry,
    repo: &RepositoryName,
    rng: &mut Rng,
    bases: &[Vec<u8>],
    docker: bool,
    tag: Option<&str>,
) -> Result<(Digest, usize), Error> {
    let (config_type, layer_type, media) = if docker {
        (
            media_type::DOCKER_CONFIG,
            media_type::DOCKER_LAYER_GZIP,
            media_type::DOCKER_MANIFEST_V2,
        )
    } else {
        (
            media_type::OCI_CONFIG,
            media_type::OCI_LAYER_GZIP,
            media_type::OCI_MANIFEST,
        )
    };
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{}}}",
        rng.next()
    );
    let config = push_blob(registry, repo, config.into_bytes()).await?;
    let base = bases[rng.below(bases.len() as u64) as usize].clone();
    let mut layers = vec![push_blob(registry, repo, base).await?];
    for _ in 0..1 + rng.below(2) {
        let len = 4096 + rng.below(28 * 1024) as usize;
        layers.push(push_blob(registry, repo, rng.bytes(len)).await?);
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media,
        "config": {"mediaType": config_type, "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, s)| json!({"mediaType": layer_type, "digest": d, "size": s})).collect::<Vec<_>>(),
    });
    push_manifest(registry, repo, tag, &m).await
}

/// Push image `i` (of whichever kind `i` selects) under `tag`; returns the
/// digest the tag points at.
async fn push_image(
    registry: &Registry,
    repo: &RepositoryName,
    rng: &mut Rng,
    bases: &[Vec<u8>],
    i: usize,
    tag: &str,
) -> Result<Digest, Error> {
    let top = match i % 4 {
        kind @ (0 | 1) => {
            push_single(registry, repo, rng, bases, kind == 1, Some(tag))
                .await?
                .0
        }
        kind => {
            let docker = kind == 3;
            let (index_type, child_type) = if docker {
                (
                    media_type::DOCKER_MANIFEST_LIST,
                    media_type::DOCKER_MANIFEST_V2,
                )
            } else {
                (media_type::OCI_INDEX, media_type::OCI_MANIFEST)
            };
            let mut children = Vec::new();
            for arch in ["amd64", "arm64"] {
                let (d, s) = push_single(registry, repo, rng, bases, docker, None).await?;
                children.push(json!({"mediaType": child_type, "digest": d, "size": s,
                    "platform": {"architecture": arch, "os": "linux"}}));
            }
            let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": children});
            push_manifest(registry, repo, Some(tag), &index).await?.0
        }
    };
    if i.is_multiple_of(8) {
        // A signature whose subject is the image.
        let subject = registry
            .get_manifest(repo, &Reference::Digest(top.clone()))
            .await?;
        let empty = push_blob(registry, repo, b"{}".to_vec()).await?;
        let sig = push_blob(registry, repo, rng.bytes(512)).await?;
        let artifact = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {"mediaType": media_type::OCI_EMPTY, "digest": empty.0, "size": empty.1},
            "layers": [{"mediaType": "application/octet-stream", "digest": sig.0, "size": sig.1}],
            "subject": {"mediaType": subject.media_type, "digest": top, "size": subject.bytes.len()},
        });
        push_manifest(registry, repo, None, &artifact).await?;
    }
    Ok(top)
}

/// Check that a manifest and everything under it can be read.
async fn check_complete(
    registry: &Registry,
    repo: &RepositoryName,
    digest: &Digest,
) -> Result<(), Error> {
    let m = registry
        .get_manifest(repo, &Reference::Digest(digest.clone()))
        .await?;
    let info = manifest::parse(Some(&m.media_type), &m.bytes)?;
    for blob in info.blobs() {
        let size = registry.stat_blob(repo, &blob.digest).await?;
        if size != blob.size {
            return Err(format!("{repo}@{digest}: blob {} has {size} bytes", blob.digest).into());
        }
    }
    for child in &info.manifests {
        Box::pin(check_complete(registry, repo, &child.digest)).await?;
    }
    Ok(())
}

async fn store_size(registry: &Registry) -> Result<(usize, u64), Error> {
    let blobs = registry.blobs().await?;
    let mut bytes = 0;
    for b in &blobs {
        bytes += registry.backend().blob_size(b).await?.unwrap_or(0);
    }
    Ok((blobs.len(), bytes))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let registry = Registry::filesystem(dir.path()).await?;
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let bases: Vec<Vec<u8>> = (0..BASE_LAYERS)
        .map(|_| {
            let len = 16 * 1024 + rng.below(48 * 1024) as usize;
            rng.bytes(len)
        })
        .collect();
    let repos: Vec<RepositoryName> = (0..REPOS)
        .map(|r| format!("org/app-{r}").parse())
        .collect::<Result<_, _>>()?;

    let real_now = SystemTime::now();
    let started = Instant::now();
    let mut expected_kept = Vec::new();
    for i in 0..IMAGES {
        let repo = &repos[i % REPOS];
        let build = format!("{:016x}{:016x}", rng.next(), rng.next());
        let (tag, pushed_at, kept) = match i % 4 {
            0 | 2 => (format!("{build}_latest"), real_now - 3 * DAY, false),
            1 => (format!("{build}_latest"), real_now, true),
            _ => (format!("v{i}"), real_now - 3 * DAY, true),
        };
        registry.set_clock(move || pushed_at);
        let digest = push_image(&registry, repo, &mut rng, &bases, i, &tag).await?;
        if kept {
            expected_kept.push((repo.clone(), tag, digest));
        }
    }
    registry.set_clock(SystemTime::now);
    for repo in repos.iter().take(4) {
        let id = registry.start_upload(repo).await?;
        registry
            .append_upload(repo, &id, None, body_from_bytes(rng.bytes(10_000)))
            .await?;
    }
    let built = started.elapsed();
    // Let the abandoned uploads age past `upload_max_age`, measuring how
    // long a blob push takes with no GC running, for comparison.
    let idle_until = Instant::now() + Duration::from_secs(4);
    let (mut idle_pushes, mut idle_worst) = (0u32, Duration::ZERO);
    let mut idle_rng = Rng(7);
    while Instant::now() < idle_until {
        let t = Instant::now();
        push_blob(&registry, &repos[1], idle_rng.bytes(1024)).await?;
        idle_worst = idle_worst.max(t.elapsed());
        idle_pushes += 1;
    }
    let (blobs_before, bytes_before) = store_size(&registry).await?;
    let mut manifests_before = 0;
    for repo in &repos {
        manifests_before += registry.manifests(repo).await?.len();
    }

    let mut options = PruneOptions::new(RetentionPolicy::intermediate_registry(DAY));
    options.grace_period = HOUR;
    options.upload_max_age = Duration::from_secs(3);
    options.dry_run = true;
    let dry = registry.prune(&options).await?;

    // A client pushing blobs while the real prune runs: how long it waits.
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let registry = registry.clone();
        let repo = repos[0].clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = Rng(42);
            let mut worst = Duration::ZERO;
            let mut pushes = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                push_blob(&registry, &repo, rng.bytes(1024)).await?;
                worst = worst.max(t.elapsed());
                pushes += 1;
            }
            Ok::<_, Error>((pushes, worst))
        })
    };
    options.dry_run = false;
    let report = registry.prune(&options).await?;
    stop.store(true, Ordering::SeqCst);
    let (pushes, worst) = pusher.await??;

    for (repo, tag, digest) in &expected_kept {
        let got = registry.resolve(repo, &tag.parse()?).await?;
        if got.as_ref() != Some(digest) {
            return Err(format!("{repo}:{tag} lost").into());
        }
        check_complete(&registry, repo, digest).await?;
    }
    let mut tags_after = 0;
    for repo in &repos {
        tags_after += registry.tags(repo).await?.len();
    }
    let (blobs_after, bytes_after) = store_size(&registry).await?;

    let s = report.summary();
    println!(
        "store: {IMAGES} images in {REPOS} repositories, built in {:.1} s",
        built.as_secs_f64()
    );
    println!("before: {blobs_before} blobs, {bytes_before} bytes, {manifests_before} manifests");
    println!("dry run: {}", dry.summary());
    println!("prune:   {s}");
    println!("  time taken:        {:.3} s", s.duration.as_secs_f64());
    println!("  tags deleted:      {}", s.tags_deleted);
    println!("  manifests deleted: {}", s.manifests_deleted);
    println!("  blobs kept:        {}", s.blobs_kept);
    println!("  blobs removed:     {}", s.blobs_removed);
    println!("  bytes freed:       {}", s.bytes_freed);
    println!("  uploads removed:   {}", s.uploads_removed);
    println!(
        "after: {blobs_after} blobs, {bytes_after} bytes, {tags_after} tags; all {} kept tags complete",
        expected_kept.len()
    );
    println!(
        "blob pushes: {idle_pushes} with no GC running, slowest {:.1} ms; \
         {pushes} during prune, slowest {:.1} ms",
        idle_worst.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    Ok(())
}
