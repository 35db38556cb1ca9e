//! Fixture images written as OCI image layouts: seeded random layers, a real config, OCI or
//! Docker v2s2 media types, single images and two-platform indexes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use serde_json::json;
use speculum_oci::{Digest, media_type as mt};

use crate::layout::{self, HashWriter};
use crate::tools::{BUSYBOX_PATH, require_busybox};

/// Which family of media types an image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// OCI image manifest, config and layers (and an OCI index for several platforms).
    Oci,
    /// Docker v2 schema 2 manifest, config and layers (and a Docker manifest list), as
    /// `skopeo copy --format v2s2` writes them into a layout.
    DockerV2S2,
}

impl ImageFormat {
    fn manifest(self) -> &'static str {
        match self {
            ImageFormat::Oci => mt::OCI_MANIFEST,
            ImageFormat::DockerV2S2 => mt::DOCKER_MANIFEST_V2,
        }
    }

    fn index(self) -> &'static str {
        match self {
            ImageFormat::Oci => mt::OCI_INDEX,
            ImageFormat::DockerV2S2 => mt::DOCKER_MANIFEST_LIST,
        }
    }

    fn config(self) -> &'static str {
        match self {
            ImageFormat::Oci => mt::OCI_CONFIG,
            ImageFormat::DockerV2S2 => mt::DOCKER_CONFIG,
        }
    }

    fn layer(self) -> &'static str {
        match self {
            ImageFormat::Oci => mt::OCI_LAYER_GZIP,
            ImageFormat::DockerV2S2 => mt::DOCKER_LAYER_GZIP,
        }
    }
}

/// What an image fixture holds. Build one with [`ImageSpec::new`] and the setters, then
/// [`ImageSpec::write_layout`]. The same spec always gives the same digests.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Uncompressed size of the random data in each layer, bottom layer first.
    pub layer_sizes: Vec<u64>,
    /// Seed of the random layer data.
    pub seed: u64,
    /// Media types to use.
    pub format: ImageFormat,
    /// Add a bottom layer with a static busybox at `/bin/busybox` (and `/bin/sh` and a few
    /// applet links), so that `RUN` steps and `run` work.
    pub busybox: bool,
    /// The config's `Cmd`.
    pub cmd: Vec<String>,
    /// The config's `created` time (RFC 3339).
    pub created: String,
    /// The config's `architecture`.
    pub architecture: String,
    /// The config's `os`.
    pub os: String,
}

impl ImageSpec {
    /// An OCI image with one layer of random data per entry of `layer_sizes` (bytes), seed 0,
    /// `linux/amd64`, `Cmd ["/bin/sh"]`, created 2024-01-01T00:00:00Z.
    pub fn new(layer_sizes: &[u64]) -> Self {
        ImageSpec {
            layer_sizes: layer_sizes.to_vec(),
            seed: 0,
            format: ImageFormat::Oci,
            busybox: false,
            cmd: vec!["/bin/sh".to_owned()],
            created: "2024-01-01T00:00:00Z".to_owned(),
            architecture: "amd64".to_owned(),
            os: "linux".to_owned(),
        }
    }

    /// Sets the seed of the random layer data.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the media types.
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }

    /// Adds (or not) a static busybox as the bottom layer.
    pub fn busybox(mut self, busybox: bool) -> Self {
        self.busybox = busybox;
        self
    }

    /// Sets the config's `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Sets the config's `created` time (RFC 3339).
    pub fn created(mut self, created: &str) -> Self {
        self.created = created.to_owned();
        self
    }

    /// Sets the config's `os` and `architecture`.
    pub fn platform(mut self, os: &str, architecture: &str) -> Self {
        self.os = os.to_owned();
        self.architecture = architecture.to_owned();
        self
    }

    /// Writes the image into the OCI layout `dir` (created if needed; other tags there are
    /// kept) under `tag`.
    /// A Docker v2s2 image must be alone in its layout: see [`Image::oci_ref`].
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Image {
        layout::init(dir);
        check_docker_alone(dir, self.format, tag);
        let child = self.write_blobs(dir);
        layout::set_tag(
            dir,
            tag,
            self.format.manifest(),
            &child.manifest,
            child.manifest_size,
        );
        Image {
            layout: dir.to_path_buf(),
            tag: tag.to_owned(),
            media_type: self.format.manifest(),
            manifest: child.manifest,
            manifest_size: child.manifest_size,
            config: child.config,
            layers: child.layers,
            diff_ids: child.diff_ids,
        }
    }

    /// Writes layers, config and manifest blobs, without tagging the manifest.
    fn write_blobs(&self, dir: &Path) -> ChildImage {
        let mut layers = Vec::new();
        if self.busybox {
            require_busybox();
            layers.push(write_layer(dir, append_busybox));
        }
        for (i, size) in self.layer_sizes.iter().enumerate() {
            let seed = self.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            layers.push(write_layer(dir, |tar| append_random(tar, i, *size, seed)));
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        let history: Vec<_> = layers
            .iter()
            .enumerate()
            .map(|(i, _)| json!({"created": self.created, "created_by": format!("speculum-testkit layer {i}")}))
            .collect();
        let config = json!({
            "created": self.created,
            "architecture": self.architecture,
            "os": self.os,
            "config": {
                "Cmd": self.cmd,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let (config_digest, config_size) =
            layout::write_blob(dir, &serde_json::to_vec(&config).unwrap());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.format.manifest(),
            "config": {
                "mediaType": self.format.config(),
                "digest": config_digest.to_string(),
                "size": config_size,
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": self.format.layer(),
                "digest": l.digest.to_string(),
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let (manifest_digest, manifest_size) =
            layout::write_blob(dir, &serde_json::to_vec_pretty(&manifest).unwrap());
        ChildImage {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            manifest: manifest_digest,
            manifest_size,
            config: config_digest,
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
        }
    }
}

/// An image written into an OCI layout by [`ImageSpec::write_layout`].
#[derive(Debug, Clone)]
pub struct Image {
    /// The layout directory.
    pub layout: PathBuf,
    /// The tag in the layout.
    pub tag: String,
    /// Media type of the manifest.
    pub media_type: &'static str,
    /// Digest of the manifest.
    pub manifest: Digest,
    /// Size of the manifest in bytes.
    pub manifest_size: u64,
    /// Digest of the config blob.
    pub config: Digest,
    /// Digests of the compressed layers, bottom first (the busybox layer first if any).
    pub layers: Vec<Digest>,
    /// Digests of the uncompressed layer tars (the config's `rootfs.diff_ids`).
    pub diff_ids: Vec<Digest>,
}

impl Image {
    /// The image as a reference skopeo 1.9 can read: `oci:DIR:TAG` for OCI images; `oci:DIR`
    /// for Docker v2s2 images, because skopeo 1.9 skips `index.json` entries with Docker
    /// media types when it looks a tag up, but takes the only entry of a layout when no tag
    /// is given (write each Docker-format fixture into its own directory).
    pub fn oci_ref(&self) -> String {
        skopeo_ref(&self.layout, &self.tag, self.media_type)
    }

    /// `oci:DIR:TAG`, always with the tag.
    pub fn oci_ref_tagged(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }
}

fn skopeo_ref(layout: &Path, tag: &str, media_type: &str) -> String {
    if media_type == mt::OCI_MANIFEST || media_type == mt::OCI_INDEX {
        format!("oci:{}:{tag}", layout.display())
    } else {
        format!("oci:{}", layout.display())
    }
}

/// Panics if a Docker-format image would not be the only entry of its layout (see
/// [`Image::oci_ref`]).
fn check_docker_alone(dir: &Path, format: ImageFormat, tag: &str) {
    if format == ImageFormat::Oci {
        return;
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let others = index["manifests"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["annotations"][layout::REF_NAME] != tag)
                .count()
        })
        .unwrap_or(0);
    assert!(
        others == 0,
        "a Docker v2s2 fixture must be alone in its layout ({} already holds other tags): \
         skopeo 1.9 finds it only as `oci:DIR`",
        dir.display()
    );
}

/// One platform's image inside an [`ImageIndex`].
#[derive(Debug, Clone)]
pub struct ChildImage {
    /// The platform's `os`.
    pub os: String,
    /// The platform's `architecture`.
    pub architecture: String,
    /// Digest of the platform's manifest.
    pub manifest: Digest,
    /// Size of the platform's manifest in bytes.
    pub manifest_size: u64,
    /// Digest of the config blob.
    pub config: Digest,
    /// Digests of the compressed layers, bottom first.
    pub layers: Vec<Digest>,
    /// Digests of the uncompressed layer tars.
    pub diff_ids: Vec<Digest>,
}

/// A multi-platform image: one [`ImageSpec`] per platform, each with its own seed, under one
/// OCI index (or Docker manifest list for [`ImageFormat::DockerV2S2`]).
#[derive(Debug, Clone)]
pub struct IndexSpec {
    /// The base spec; `os`, `architecture` and `seed` are set per platform.
    pub base: ImageSpec,
    /// `(os, architecture)` of each platform.
    pub platforms: Vec<(String, String)>,
}

impl IndexSpec {
    /// Two platforms, `linux/amd64` and `linux/arm64`, each with layers of `layer_sizes`.
    pub fn new(layer_sizes: &[u64]) -> Self {
        IndexSpec {
            base: ImageSpec::new(layer_sizes),
            platforms: vec![
                ("linux".to_owned(), "amd64".to_owned()),
                ("linux".to_owned(), "arm64".to_owned()),
            ],
        }
    }

    /// Sets the media types.
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.base.format = format;
        self
    }

    /// Sets the base seed (each platform adds its position).
    pub fn seed(mut self, seed: u64) -> Self {
        self.base.seed = seed;
        self
    }

    /// Writes every platform's image and the index into the layout `dir`, tagging the index.
    /// A Docker manifest list must be alone in its layout: see [`Image::oci_ref`].
    pub fn write_layout(&self, dir: &Path, tag: &str) -> ImageIndex {
        layout::init(dir);
        check_docker_alone(dir, self.base.format, tag);
        let format = self.base.format;
        let children: Vec<ChildImage> = self
            .platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch))| {
                let spec = self
                    .base
                    .clone()
                    .platform(os, arch)
                    .seed(self.base.seed.wrapping_add(i as u64 * 7919));
                spec.write_blobs(dir)
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": format.index(),
            "manifests": children.iter().map(|c| json!({
                "mediaType": format.manifest(),
                "digest": c.manifest.to_string(),
                "size": c.manifest_size,
                "platform": {"architecture": c.architecture, "os": c.os},
            })).collect::<Vec<_>>(),
        });
        let (digest, size) = layout::write_blob(dir, &serde_json::to_vec_pretty(&index).unwrap());
        layout::set_tag(dir, tag, format.index(), &digest, size);
        ImageIndex {
            layout: dir.to_path_buf(),
            tag: tag.to_owned(),
            media_type: format.index(),
            index: digest,
            index_size: size,
            children,
        }
    }
}

/// A multi-platform image written by [`IndexSpec::write_layout`].
#[derive(Debug, Clone)]
pub struct ImageIndex {
    /// The layout directory.
    pub layout: PathBuf,
    /// The tag in the layout.
    pub tag: String,
    /// Media type of the index (OCI index or Docker manifest list).
    pub media_type: &'static str,
    /// Digest of the index.
    pub index: Digest,
    /// Size of the index in bytes.
    pub index_size: u64,
    /// The platforms' images, in index order.
    pub children: Vec<ChildImage>,
}

impl ImageIndex {
    /// The index as a reference skopeo 1.9 can read (see [`Image::oci_ref`]).
    pub fn oci_ref(&self) -> String {
        skopeo_ref(&self.layout, &self.tag, self.media_type)
    }

    /// `oci:DIR:TAG`, always with the tag.
    pub fn oci_ref_tagged(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }
}

struct Layer {
    digest: Digest,
    size: u64,
    diff_id: Digest,
}

/// Streams a layer: tar → diff_id hash → gzip → digest hash → temporary file, renamed to its
/// digest. Memory use does not depend on the layer size.
fn write_layer(
    dir: &Path,
    fill: impl FnOnce(
        &mut tar::Builder<HashWriter<flate2::write::GzEncoder<HashWriter<BufWriter<File>>>>>,
    ) -> io::Result<()>,
) -> Layer {
    let tmp = tempfile::NamedTempFile::new_in(dir.join("blobs/sha256")).unwrap();
    let file = BufWriter::new(tmp.reopen().unwrap());
    // mtime 0 and no file name keep the gzip stream, and so the digest, deterministic.
    let gz = GzBuilder::new()
        .mtime(0)
        .write(HashWriter::new(file), Compression::fast());
    let mut tar = tar::Builder::new(HashWriter::new(gz));
    tar.mode(tar::HeaderMode::Deterministic);
    fill(&mut tar).expect("write layer tar");
    let uncompressed = tar.into_inner().expect("finish tar");
    let (gz, diff_id, _) = uncompressed.finish();
    let compressed = gz.finish().expect("finish gzip");
    let (mut file, digest, size) = compressed.finish();
    file.flush().unwrap();
    drop(file);
    tmp.persist(layout::blob_path(dir, &digest)).unwrap();
    Layer {
        digest,
        size,
        diff_id,
    }
}

fn dir_header(mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    h.set_mtime(0);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str, mode: u32) -> io::Result<()> {
    let mut h = dir_header(mode);
    tar.append_data(&mut h, path, io::empty())
}

/// At most this many bytes per data file, so big layers hold several files.
const MAX_FILE: u64 = 16 << 20;

fn append_random<W: Write>(
    tar: &mut tar::Builder<W>,
    layer: usize,
    size: u64,
    seed: u64,
) -> io::Result<()> {
    append_dir(tar, "data/", 0o755)?;
    let base = format!("data/layer-{layer}/");
    append_dir(tar, &base, 0o755)?;
    let mut rng = SplitMix64(seed);
    let mut left = size;
    let mut part = 0;
    loop {
        let n = left.min(MAX_FILE);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(n);
        h.set_mtime(0);
        tar.append_data(
            &mut h,
            format!("{base}part-{part}.bin"),
            RandomReader {
                rng: &mut rng,
                left: n,
            },
        )?;
        left -= n;
        part += 1;
        if left == 0 {
            return Ok(());
        }
    }
}

/// Applets linked next to `/bin/busybox`.
const APPLETS: [&str; 12] = [
    "sh", "ls", "cat", "echo", "mkdir", "touch", "true", "test", "env", "id", "rm", "uname",
];

fn append_busybox<W: Write>(tar: &mut tar::Builder<W>) -> io::Result<()> {
    for (dir, mode) in [("bin/", 0o755), ("etc/", 0o755), ("tmp/", 0o1777)] {
        append_dir(tar, dir, mode)?;
    }
    let data = fs::read(BUSYBOX_PATH)?;
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    tar.append_data(&mut h, "bin/busybox", data.as_slice())?;
    for applet in APPLETS {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(())
}

/// A small, fast, seeded generator: its output does not compress, which is what layer data
/// needs to measure transfer rather than gzip.
/// `len` bytes that do not repeat, from `seed`: the data of test blobs and
/// objects (the same generator as image layers).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct RandomReader<'a> {
    rng: &'a mut SplitMix64,
    left: u64,
}

impl Read for RandomReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        let n = n - n % 8;
        let n = if n == 0 {
            (self.left as usize).min(buf.len())
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            let v = self.rng.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}
