//! The Zuul intermediate-registry steps.
//!
//! The roles write Zuul's variables to a JSON file; these functions read it
//! and move images between the buildset registry (BR) and the intermediate
//! registry (IR) directly: the BR's certificate and credentials come from the
//! `buildset_registry` dict, so no tunnel and no write to `/etc/docker` is
//! needed.
//!
//! - pull: every artifact with `metadata.type == "container_image"` is copied
//!   (all platforms) from its `url` into the BR as
//!   `<repository without a leading docker.io/>:<metadata.tag>`. When several
//!   artifacts name the same destination, the last one in Zuul's order wins
//!   (see [`pull_intermediate`]). With [`PullMethod::Lazy`] nothing is
//!   copied: the BR is told which image stands behind each name and fetches
//!   blobs when a client pulls them (see the `lazy` module).
//! - push: every `<BR>/<repository>:<tag>` is copied to
//!   `<IR>/<repository>:<build>_<tag>`, and the artifacts are returned in the
//!   shape `zuul_return` expects.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Deserializer};
use speculum_oci::{RepositoryName, Tag};

use crate::auth::Credentials;
use crate::copy::{CopyOptions, CopyReport, Endpoint, NoProgress, PlatformSelection, copy};
use crate::error::{Error, Result};
use crate::reference::{ImageRef, RegistryRef, host_port};
use crate::registry::{Registry, RegistryOptions};

mod lazy;

pub use lazy::{Registered, SourceGrant, lazy_registration};

/// How many copies of one step run at once.
pub const PARALLEL_COPIES: usize = 4;

fn port<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u16, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| serde::de::Error::custom("invalid port")),
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom("invalid port")),
        _ => Err(serde::de::Error::custom("port must be a number")),
    }
}

/// A registry's connection info, as Zuul passes it.
#[derive(Clone, Deserialize)]
pub struct RegistryInfo {
    /// Host name or IP literal (IPv6 without brackets is fine).
    pub host: String,
    /// Port.
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM text of a certificate to trust as CA for this registry.
    #[serde(default)]
    pub cert: Option<String>,
    /// Plain HTTP (tests on loopback).
    #[serde(default)]
    pub insecure: Option<bool>,
}

impl std::fmt::Debug for RegistryInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RegistryInfo {
    /// `host:port`, IPv6 bracketed.
    pub fn address(&self) -> String {
        host_port(
            self.host.trim_start_matches('[').trim_end_matches(']'),
            self.port,
        )
    }

    /// A client for this registry.
    pub fn client(&self) -> Result<Registry> {
        let credentials = match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(Credentials::new(u, p)),
            _ => None,
        };
        let ca_pems = self
            .cert
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect();
        Registry::new(
            &self.address(),
            RegistryOptions {
                credentials,
                ca_pems,
                insecure: self.insecure.unwrap_or(false),
                certs_dirs: None,
                attempts: None,
                token: None,
            },
        )
    }
}

/// The pull step's input.
#[derive(Debug, Deserialize)]
pub struct PullVars {
    /// The buildset registry.
    pub buildset_registry: RegistryInfo,
    /// The intermediate registry.
    pub intermediate_registry: RegistryInfo,
    /// `zuul.artifacts`.
    #[serde(default)]
    pub artifacts: Vec<serde_json::Value>,
}

/// One image to push.
#[derive(Debug, Deserialize)]
pub struct ImageSpec {
    /// The repository (full name, e.g. `quay.io/org/app` or `docker.io/org/app`).
    pub repository: String,
    /// Tags, `["latest"]` when absent.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// The push step's input.
#[derive(Debug, Deserialize)]
pub struct PushVars {
    /// The buildset registry.
    pub buildset_registry: RegistryInfo,
    /// The intermediate registry.
    pub intermediate_registry: RegistryInfo,
    /// `container_images` / `docker_images`.
    #[serde(default)]
    pub images: Vec<ImageSpec>,
    /// `zuul.build`.
    pub build: String,
}

/// Read a vars file.
pub fn read_vars<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::input(format!("{}: invalid vars file: {e}", path.display())))
}

fn strip_docker_io(repo: &str) -> &str {
    repo.strip_prefix("docker.io/").unwrap_or(repo)
}

fn repo_name(s: &str) -> Result<RepositoryName> {
    s.parse()
        .map_err(|e: speculum_oci::Error| Error::input(format!("invalid repository {s:?}: {e}")))
}

fn tag_name(s: &str) -> Result<Tag> {
    s.parse()
        .map_err(|e: speculum_oci::Error| Error::input(format!("invalid tag {s:?}: {e}")))
}

/// One failed copy of a step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepFailure {
    /// The image that failed.
    pub image: String,
    /// Why.
    pub error: String,
}

/// An artifact the pull step did not copy because a later artifact names the
/// same destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Superseded {
    /// The destination in the BR, `<repository>:<tag>`.
    pub destination: String,
    /// The skipped artifact's `url`.
    pub url: String,
    /// The `url` of the artifact that was copied instead.
    pub by: String,
}

/// How the pull step brings the images of the changes ahead into the BR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullMethod {
    /// Copy every image, all blobs, before the first job runs.
    #[default]
    Copy,
    /// Tell the BR which image stands behind each name (manifests only);
    /// it fetches blobs from the IR when a client pulls them.
    Lazy,
}

impl std::str::FromStr for PullMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<PullMethod> {
        match s {
            "copy" => Ok(PullMethod::Copy),
            "lazy" => Ok(PullMethod::Lazy),
            other => Err(Error::input(format!(
                "unknown pull method {other:?} (copy or lazy)"
            ))),
        }
    }
}

/// What a step did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StepReport {
    /// Pull only: the method that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<PullMethod>,
    /// The copies that succeeded, in the order they were planned.
    pub copies: Vec<CopyReport>,
    /// Lazy pull only: the images the BR now serves, in Zuul's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub registered: Vec<Registered>,
    /// Lazy pull only: how the BR reaches each IR (never the token itself).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceGrant>,
    /// The copies (or registrations) that failed.
    pub failures: Vec<StepFailure>,
    /// Pull only: artifacts skipped because a later one names the same destination.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<Superseded>,
}

impl StepReport {
    /// An error naming every failed image, if any failed.
    pub fn error(&self) -> Option<Error> {
        if self.failures.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.image, f.error))
            .collect();
        Some(Error::InvalidInput(parts.join("; ")))
    }
}

/// A copy and its place in the plan.
type PlannedCopy = (usize, Endpoint, Endpoint);

/// Run the copies, [`PARALLEL_COPIES`] repositories at a time.
///
/// Copies into one destination repository run one after the other: side by
/// side they would upload the same blobs twice at once, which some
/// registries (distribution) answer by refusing the second manifest as
/// referring to an unknown blob; one after the other, the second copy finds
/// the blobs there and moves only its manifest. The report keeps the
/// planned order.
async fn run_copies(jobs: Vec<(Endpoint, Endpoint)>) -> StepReport {
    let opts = CopyOptions {
        platforms: PlatformSelection::All,
        ..CopyOptions::default()
    };
    let mut groups: Vec<(String, Vec<PlannedCopy>)> = Vec::new();
    for (i, (src, dst)) in jobs.into_iter().enumerate() {
        let key = match dst.image() {
            ImageRef::Registry(r) => r.repository_string(),
            other => other.to_string(),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push((i, src, dst)),
            None => groups.push((key, vec![(i, src, dst)])),
        }
    }
    let mut results: Vec<(usize, String, Result<CopyReport>)> = futures_util::stream::iter(groups)
        .map(|(_, group)| {
            let opts = opts.clone();
            async move {
                let mut done = Vec::new();
                for (i, src, dst) in group {
                    let name = src.image().to_string();
                    let r = copy(&src, &dst, &opts, Arc::new(NoProgress)).await;
                    done.push((i, name, r));
                }
                done
            }
        })
        .buffer_unordered(PARALLEL_COPIES)
        .flat_map(futures_util::stream::iter)
        .collect()
        .await;
    results.sort_by_key(|(i, _, _)| *i);
    let results = results.into_iter().map(|(_, name, r)| (name, r));
    let mut report = StepReport::default();
    for (image, r) in results {
        match r {
            Ok(c) => report.copies.push(c),
            Err(e) => report.failures.push(StepFailure {
                image,
                error: e.to_string(),
            }),
        }
    }
    report
}

/// One copy of the pull step: a `container_image` artifact and where it
/// lands in the BR.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PullCopy {
    /// The artifact's `url`, as written.
    url: String,
    /// The image in the IR.
    source: RegistryRef,
    /// The repository in the BR (without a leading `docker.io/`).
    repository: RepositoryName,
    /// The tag in the BR.
    tag: Tag,
}

impl PullCopy {
    fn destination(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// What the pull step copies, and what it skips.
#[derive(Debug, Default, PartialEq, Eq)]
struct PullPlan {
    /// One copy per destination, in Zuul's order of the artifacts copied.
    copies: Vec<PullCopy>,
    /// The artifacts that a later one overrides.
    superseded: Vec<Superseded>,
}

/// Plan the pull step from `zuul.artifacts`.
///
/// Zuul lists the artifacts of the changes ahead farthest first and nearest
/// last, then those of this buildset's parent jobs; applied in that order,
/// the nearest change's image is the one a destination tag ends up with.
/// Copying them concurrently would let an older image win a race for the
/// same tag, so only the last artifact per destination `repository:tag` is
/// kept: every copy left has its own destination, and they can run in any
/// order. The earlier ones would only have been overwritten.
fn plan_pull(artifacts: &[serde_json::Value]) -> Result<PullPlan> {
    let mut parsed = Vec::new();
    for a in artifacts {
        let meta = a.get("metadata");
        if meta.and_then(|m| m.get("type")).and_then(|t| t.as_str()) != Some("container_image") {
            continue;
        }
        let field = |v: Option<&serde_json::Value>, k: &str| -> Result<String> {
            v.and_then(|m| m.get(k))
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::input(format!(
                        "artifact {} has no {k}",
                        a.get("name").unwrap_or(&serde_json::Value::Null)
                    ))
                })
        };
        let url = field(Some(a), "url")?;
        let repository = field(meta, "repository")?;
        let tag = field(meta, "tag")?;
        parsed.push(PullCopy {
            source: url.parse()?,
            url,
            repository: repo_name(strip_docker_io(&repository))?,
            tag: tag_name(&tag)?,
        });
    }
    // The index of the last artifact for each destination (a later insert
    // replaces an earlier one).
    let key = |c: &PullCopy| (c.repository.clone(), c.tag.clone());
    let last: HashMap<(RepositoryName, Tag), usize> = parsed
        .iter()
        .enumerate()
        .map(|(i, c)| (key(c), i))
        .collect();
    let mut plan = PullPlan::default();
    for (i, c) in parsed.iter().enumerate() {
        match last
            .get(&key(c))
            .and_then(|&w| parsed.get(w).filter(|_| w != i))
        {
            Some(winner) => plan.superseded.push(Superseded {
                destination: c.destination(),
                url: c.url.clone(),
                by: winner.url.clone(),
            }),
            None => plan.copies.push(c.clone()),
        }
    }
    Ok(plan)
}

/// Bring the artifacts of the changes ahead from the IR into the BR, by
/// `method`.
///
/// Each destination tag gets the image of the last artifact in Zuul's
/// order that names it, and the earlier ones are reported as superseded,
/// neither copied nor registered.
pub async fn pull_intermediate(vars: &PullVars, method: PullMethod) -> Result<StepReport> {
    let plan = plan_pull(&vars.artifacts)?;
    for s in &plan.superseded {
        tracing::info!(destination = %s.destination, url = %s.url, by = %s.by, "artifact superseded by a later one");
    }
    let mut report = match method {
        PullMethod::Copy => copy_plan(vars, plan.copies).await?,
        PullMethod::Lazy => lazy::register(vars, &plan.copies).await?,
    };
    report.method = Some(method);
    report.superseded = plan.superseded;
    Ok(report)
}

/// The IR's connection info for an artifact's registry: the artifact's
/// host and port, with the IR's credentials and certificate.
fn ir_info_for(vars: &PullVars, registry: &str) -> Result<RegistryInfo> {
    let mut info = vars.intermediate_registry.clone();
    let (h, p) = split_host_port(registry)?;
    info.host = h;
    info.port = p;
    Ok(info)
}

/// Copy the planned images, blobs and distinct destinations in parallel.
async fn copy_plan(vars: &PullVars, copies: Vec<PullCopy>) -> Result<StepReport> {
    let br = Arc::new(vars.buildset_registry.client()?);
    let mut irs: Vec<Arc<Registry>> = Vec::new();
    let mut jobs = Vec::new();
    for c in copies {
        tracing::info!(destination = %c.destination(), url = %c.url, "pulling artifact");
        let reg = match irs.iter().find(|r| r.name() == c.source.registry) {
            Some(r) => r.clone(),
            None => {
                let r = Arc::new(ir_info_for(vars, &c.source.registry)?.client()?);
                irs.push(r.clone());
                r
            }
        };
        let dst = RegistryRef::new(br.name(), c.repository, Some(c.tag));
        jobs.push((
            Endpoint::registry(reg, c.source),
            Endpoint::registry(br.clone(), dst),
        ));
    }
    Ok(run_copies(jobs).await)
}

fn split_host_port(registry: &str) -> Result<(String, u16)> {
    let bad = || Error::input(format!("artifact registry {registry:?} has no port"));
    let (h, p) = if let Some(rest) = registry.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h.to_string(), p)
    } else {
        let (h, p) = registry.rsplit_once(':').ok_or_else(bad)?;
        (h.to_string(), p)
    };
    Ok((h, p.parse().map_err(|_| bad())?))
}

/// Copy this build's images from the BR to the IR; returns the report and the
/// `zuul_return` data.
pub async fn push_intermediate(vars: &PushVars) -> Result<(StepReport, serde_json::Value)> {
    if vars.build.is_empty()
        || !vars
            .build
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Error::input(format!("invalid build id {:?}", vars.build)));
    }
    let br = Arc::new(vars.buildset_registry.client()?);
    let ir = Arc::new(vars.intermediate_registry.client()?);
    let mut jobs = Vec::new();
    let mut artifacts = Vec::new();
    for image in &vars.images {
        let tags = image
            .tags
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| vec!["latest".to_string()]);
        for tag in tags {
            let src = RegistryRef::new(
                br.name(),
                repo_name(strip_docker_io(&image.repository))?,
                Some(tag_name(&tag)?),
            );
            let ir_tag = tag_name(&format!("{}_{tag}", vars.build))?;
            let dst = RegistryRef::new(
                ir.name(),
                repo_name(&image.repository)?,
                Some(ir_tag.clone()),
            );
            artifacts.push(serde_json::json!({
                "name": format!("{}:{tag}", image.repository),
                "url": format!("docker://{}/{}:{ir_tag}", ir.name(), image.repository),
                "metadata": {"type": "container_image", "repository": image.repository, "tag": tag},
            }));
            jobs.push((
                Endpoint::registry(br.clone(), src),
                Endpoint::registry(ir.clone(), dst),
            ));
        }
    }
    let report = run_copies(jobs).await;
    Ok((
        report,
        serde_json::json!({"zuul": {"artifacts": artifacts}}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str, url: &str, repository: &str, tag: &str) -> serde_json::Value {
        serde_json::json!({"name": name, "url": url,
            "metadata": {"type": "container_image", "repository": repository, "tag": tag}})
    }

    #[test]
    fn plan_pull_keeps_the_last_artifact_per_destination_in_order() {
        let farthest = "docker://ir:5000/docker.io/org/app:aaa_latest";
        let tool = "docker://ir:5000/quay.io/org/tool:aaa_v1";
        let nearest = "docker://ir:5000/org/app:bbb_latest";
        let parent = "docker://ir:5000/org/app:ccc_1.0";
        let artifacts = vec![
            artifact(
                "docker.io/org/app:latest",
                farthest,
                "docker.io/org/app",
                "latest",
            ),
            serde_json::json!({"name": "logs", "url": "https://logs.example/x", "metadata": {"type": "zuul_manifest"}}),
            artifact("quay.io/org/tool:v1", tool, "quay.io/org/tool", "v1"),
            serde_json::json!({"name": "no metadata", "url": "https://example/x"}),
            // docker.io/org/app and org/app are the same repository in the BR.
            artifact("org/app:latest", nearest, "org/app", "latest"),
            artifact("org/app:1.0", parent, "org/app", "1.0"),
        ];
        let plan = plan_pull(&artifacts).unwrap();
        let copies: Vec<(&str, String)> = plan
            .copies
            .iter()
            .map(|c| (c.url.as_str(), c.destination()))
            .collect();
        assert_eq!(
            copies,
            [
                (tool, "quay.io/org/tool:v1".to_string()),
                (nearest, "org/app:latest".to_string()),
                (parent, "org/app:1.0".to_string()),
            ]
        );
        assert_eq!(plan.copies[1].source.registry, "ir:5000");
        assert_eq!(
            plan.superseded,
            [Superseded {
                destination: "org/app:latest".into(),
                url: farthest.into(),
                by: nearest.into(),
            }]
        );

        // Three artifacts for one tag: only the last is copied.
        let three: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|b| {
                artifact(
                    "x",
                    &format!("docker://ir:5000/org/app:{b}_latest"),
                    "org/app",
                    "latest",
                )
            })
            .collect();
        let plan = plan_pull(&three).unwrap();
        assert_eq!(plan.copies.len(), 1);
        assert_eq!(plan.copies[0].url, "docker://ir:5000/org/app:c_latest");
        let skipped: Vec<_> = plan.superseded.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(
            skipped,
            [
                "docker://ir:5000/org/app:a_latest",
                "docker://ir:5000/org/app:b_latest"
            ]
        );
        assert!(plan.superseded.iter().all(|s| s.by.ends_with("c_latest")));

        // No container images: nothing to do.
        assert_eq!(plan_pull(&[]).unwrap(), PullPlan::default());
        // A container image artifact without a tag is an error that names it.
        let bad = [serde_json::json!({"name": "broken", "url": nearest,
            "metadata": {"type": "container_image", "repository": "org/app"}})];
        let e = plan_pull(&bad).unwrap_err().to_string();
        assert!(e.contains("broken") && e.contains("tag"), "{e}");
    }

    #[test]
    fn vars_and_addresses() {
        let v: PushVars = serde_json::from_str(
            r#"{"buildset_registry":{"host":"::1","port":"5000","username":"zuul","password":"secret","cert":""},
                "intermediate_registry":{"host":"ir.example","port":443,"username":"u","password":"p"},
                "images":[{"repository":"quay.io/org/app"}],"build":"abc123"}"#,
        )
        .unwrap();
        assert_eq!(v.buildset_registry.address(), "[::1]:5000");
        assert_eq!(v.intermediate_registry.address(), "ir.example:443");
        assert!(!format!("{v:?}").contains("secret"));
        assert_eq!(
            split_host_port("[::1]:5000").unwrap(),
            ("::1".to_string(), 5000)
        );
        assert_eq!(
            split_host_port("ir:5000").unwrap(),
            ("ir".to_string(), 5000)
        );
        assert!(split_host_port("ir").is_err());
        assert_eq!(strip_docker_io("docker.io/org/app"), "org/app");
    }
}
