//! Test fixtures for speculum. Dev-only: every function here may panic, with a message that
//! says what went wrong and how to fix it, because a failing fixture is a failing test.
//!
//! - [`ImageSpec`] and [`IndexSpec`] write images as OCI image layouts on disk (no daemon
//!   involved): real tar+gzip layers of seeded random data, a complete image config, OCI or
//!   Docker v2s2 media types, optionally a static busybox so `RUN` steps work. Clients read them
//!   as `oci:DIR:TAG` ([`Image::oci_ref`]).
//! - [`BuildsetRegistry`] runs the `speculum-registry buildset` binary on loopback and
//!   [`Distribution`] runs Debian's `docker-registry` (the reference registry); both stop on
//!   drop. [`Dockerd`] runs a private Docker daemon (vfs storage, no bridge) for one test.
//! - [`S3Store`] runs a real S3 object store on loopback, once per test process: OpenStack
//!   Swift with s3api (three replicas; the default) or Ceph radosgw (strict S3), from
//!   `scripts/stores/`; tests isolate by [`S3Store::fresh_bucket`].
//! - [`Haproxy`] runs Debian's `haproxy` on loopback in front of several registry processes:
//!   round robin per request, health checks on `GET /v2/`, refused connections redispatched.
//! - [`http`] sends raw HTTP/1.0 requests, whole or stopped half way.
//! - [`require_tool`] fails loudly, naming the Debian package, when a client is missing: a
//!   missing tool is a test failure, never a silent skip. [`run`] runs a command with a
//!   timeout and captures its output.
//!
//! ```no_run
//! use speculum_testkit::{BuildsetOptions, BuildsetRegistry, ImageSpec, require_tool, run_ok};
//! use std::process::Command;
//!
//! require_tool("skopeo");
//! let dir = tempfile::tempdir().unwrap();
//! let image = ImageSpec::new(&[1 << 20, 2 << 20]).seed(7).write_layout(dir.path(), "v1");
//! let registry = BuildsetRegistry::start(BuildsetOptions::new(speculum_testkit::workspace_binary("speculum-registry")));
//! run_ok(Command::new("skopeo").args(["--insecure-policy", "copy", "--dest-cert-dir"])
//!     .arg(registry.cert_dir())
//!     .args(["--dest-creds", &registry.creds(), &image.oci_ref(), &registry.docker_ref("test/img:v1")]));
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod distribution;
mod docker;
mod haproxy;
pub mod http;
mod image;
mod layout;
mod process;
mod registry;
mod stores;
mod tools;

pub use distribution::{Distribution, DistributionOptions};
pub use docker::{Dockerd, DockerdOptions};
pub use haproxy::Haproxy;
pub use image::{ChildImage, Image, ImageFormat, ImageIndex, ImageSpec, IndexSpec, random_bytes};
pub use layout::{LayoutManifest, layout_manifest};
pub use process::{CmdOutput, DEFAULT_TIMEOUT, run, run_ok};
pub use registry::{BuildsetOptions, BuildsetRegistry, RegistryInfo};
pub use stores::S3Store;
pub use tools::{
    BUSYBOX_PATH, SelfSigned, free_port, require_busybox, require_tool, self_signed_cert,
    workspace_binary,
};
