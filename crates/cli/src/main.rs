//! `speculum`: copy, tag, promote, delete-tag, clean, inspect and tags for
//! container images, and the Zuul intermediate-registry steps. Argument
//! parsing and output only; the work is in `speculum-client`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};
use speculum_client as sc;
use speculum_client::{Endpoint, ImageRef, RegistryRef};

mod progress;
mod zuul;

use zuul::ZuulCommand;

/// Move container images between registries and OCI layouts, and gate them with Zuul.
#[derive(Parser)]
#[command(name = "speculum", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Access to one registry.
#[derive(Args, Clone, Default)]
struct Access {
    /// USER:PASSWORD for the registry (else auth files are consulted).
    #[arg(long, env = "SPECULUM_CREDS", hide_env_values = true)]
    creds: Option<String>,
    /// A CA certificate (PEM) to trust for the registry.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Plain HTTP instead of HTTPS (loopback test registries).
    #[arg(long)]
    insecure: bool,
}

/// Where credentials and certificates are looked up.
#[derive(Args, Clone, Default)]
struct Lookup {
    /// An auth file to read (default: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json).
    #[arg(long = "authfile", global = true)]
    authfile: Option<PathBuf>,
    /// A certs.d directory holding <host:port>/ca.crt (default: the docker and podman ones).
    #[arg(long = "certs-dir", global = true)]
    certs_dirs: Vec<PathBuf>,
}

/// The SaaS tag APIs.
#[derive(Args, Clone)]
struct TagApiArgs {
    /// Which API deletes tags: auto (Docker Hub for docker.io, Quay for quay.io, else OCI), oci, dockerhub, quay.
    #[arg(long, default_value = "auto")]
    api: sc::TagApi,
    /// Docker Hub API base URL.
    #[arg(long, env = "SPECULUM_HUB_URL", default_value = sc::HUB_URL)]
    hub_url: String,
    /// Quay API base URL (default: https://<registry>).
    #[arg(long, env = "SPECULUM_QUAY_URL")]
    quay_url: Option<String>,
    /// Quay application token (repo:write).
    #[arg(long, env = "QUAY_API_TOKEN", hide_env_values = true)]
    quay_token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Copy an image (or an index with --all) between registries and OCI layouts.
    Copy {
        /// Source: [docker://]REGISTRY/REPO[:TAG][@DIGEST] or oci:DIR[:TAG].
        src: String,
        /// Destination, same forms.
        dst: String,
        /// Copy every platform of an index, and the index.
        #[arg(long, conflicts_with = "platform")]
        all: bool,
        /// Copy one platform of an index: os/arch[/variant] (default: this machine's).
        #[arg(long)]
        platform: Option<sc::PlatformSpec>,
        /// USER:PASSWORD for the source.
        #[arg(long, env = "SPECULUM_SRC_CREDS", hide_env_values = true)]
        src_creds: Option<String>,
        /// USER:PASSWORD for the destination.
        #[arg(long, env = "SPECULUM_DEST_CREDS", hide_env_values = true)]
        dest_creds: Option<String>,
        /// USER:PASSWORD for both sides (when a side has none of its own).
        #[arg(long, env = "SPECULUM_CREDS", hide_env_values = true)]
        creds: Option<String>,
        /// CA certificate (PEM) for the source registry.
        #[arg(long)]
        src_ca: Option<PathBuf>,
        /// CA certificate (PEM) for the destination registry.
        #[arg(long)]
        dest_ca: Option<PathBuf>,
        /// CA certificate (PEM) for both registries.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Plain HTTP to the source.
        #[arg(long)]
        src_insecure: bool,
        /// Plain HTTP to the destination.
        #[arg(long)]
        dest_insecure: bool,
        /// Plain HTTP to both.
        #[arg(long)]
        insecure: bool,
        /// Blobs moved at once.
        #[arg(long, default_value_t = 6)]
        parallel: usize,
        /// Upload in PATCH chunks of this many bytes instead of one streamed PUT.
        #[arg(long)]
        chunk_size: Option<usize>,
        /// Attempts per request or blob on connection errors, 5xx and 429.
        #[arg(long, default_value_t = 4)]
        retries: u32,
        /// Print a JSON summary (digests, bytes moved, bytes skipped).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        lookup: Lookup,
    },
    /// Tag an image under more tags in its repository (moves only the manifest).
    Tag {
        /// The image: REGISTRY/REPO:TAG or @DIGEST.
        src: String,
        /// New tags.
        #[arg(required = true)]
        tags: Vec<String>,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        lookup: Lookup,
    },
    /// Tag REPO:FROM as each --to tag, then delete the FROM tag.
    Promote {
        /// The repository: REGISTRY/REPO.
        repo: String,
        /// The temporary tag.
        #[arg(long)]
        from: String,
        /// The final tags.
        #[arg(long, required = true, num_args = 1..)]
        to: Vec<String>,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        api: TagApiArgs,
        #[command(flatten)]
        lookup: Lookup,
    },
    /// Delete one tag, never other tags on the same digest.
    DeleteTag {
        /// REGISTRY/REPO:TAG.
        reference: String,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        api: TagApiArgs,
        #[command(flatten)]
        lookup: Lookup,
    },
    /// Delete the tags matching --match that are older than --older-than.
    Clean {
        /// The repository: REGISTRY/REPO.
        repo: String,
        /// Regular expression the tags must match, e.g. '^change_.*$'.
        #[arg(long = "match")]
        pattern: String,
        /// Minimum age, e.g. 86400s, 24h, 2days.
        #[arg(long)]
        older_than: humantime::Duration,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        api: TagApiArgs,
        #[command(flatten)]
        lookup: Lookup,
    },
    /// Show an image's digest, media type, platforms, layers and sizes.
    Inspect {
        /// REGISTRY/REPO[:TAG][@DIGEST] or oci:DIR[:TAG].
        reference: String,
        /// Print the manifest bytes as stored.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        lookup: Lookup,
    },
    /// List a repository's tags.
    Tags {
        /// REGISTRY/REPO.
        repo: String,
        /// Print a JSON list.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: Access,
        #[command(flatten)]
        lookup: Lookup,
    },
    /// The Zuul intermediate-registry steps.
    #[command(subcommand)]
    Zuul(ZuulCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow!("cannot start the runtime: {e}")),
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "speculum: error: {e:#}");
    if zuul::is_lazy_refusal(e) {
        return ExitCode::from(zuul::LAZY_REFUSED);
    }
    ExitCode::FAILURE
}

fn init_tracing(cli: &Cli) {
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn out(bytes: &[u8]) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(bytes)?;
    o.flush()?;
    Ok(())
}

fn out_json(v: &impl serde::Serialize) -> Result<()> {
    let mut s = serde_json::to_vec_pretty(v)?;
    s.push(b'\n');
    out(&s)
}

/// The auth files to read: `--authfile`, else the default ones.
fn auth_files(lookup: &Lookup) -> Vec<PathBuf> {
    match &lookup.authfile {
        Some(f) => vec![f.clone()],
        None => sc::default_auth_files(),
    }
}

/// Build a client for `r`'s registry from flags, env, auth files and certs.d.
fn registry_for(
    r: &RegistryRef,
    creds: Option<&str>,
    ca: &[&PathBuf],
    insecure: bool,
    lookup: &Lookup,
) -> Result<Arc<sc::Registry>> {
    let credentials = match creds {
        Some(c) => Some(sc::Credentials::parse(c).context("--creds")?),
        None => sc::lookup_credentials(
            &auth_files(lookup),
            &r.registry,
            Some(r.repository.as_str()),
        )?,
    };
    let mut ca_pems = Vec::new();
    for f in ca {
        ca_pems.push(sc::read_ca_file(f)?);
    }
    let certs_dirs = (!lookup.certs_dirs.is_empty()).then(|| lookup.certs_dirs.clone());
    Ok(Arc::new(sc::Registry::new(
        &r.registry,
        sc::RegistryOptions {
            credentials,
            ca_pems,
            insecure,
            certs_dirs,
            attempts: None,
            token: None,
        },
    )?))
}

/// [`registry_for`] with one registry's `--creds`, `--ca` and `--insecure`.
fn access_registry(r: &RegistryRef, access: &Access, lookup: &Lookup) -> Result<Arc<sc::Registry>> {
    registry_for(
        r,
        access.creds.as_deref(),
        &access.ca.iter().collect::<Vec<_>>(),
        access.insecure,
        lookup,
    )
}

fn registry_ref(s: &str) -> Result<RegistryRef> {
    match s.parse::<ImageRef>()? {
        ImageRef::Registry(r) => Ok(r),
        ImageRef::Layout(_) => Err(anyhow!(
            "{s}: expected a registry reference, not an OCI layout"
        )),
    }
}

fn endpoint(
    r: ImageRef,
    creds: Option<&str>,
    ca: &[&PathBuf],
    insecure: bool,
    lookup: &Lookup,
) -> Result<Endpoint> {
    Ok(match r {
        ImageRef::Registry(r) => {
            Endpoint::registry(registry_for(&r, creds, ca, insecure, lookup)?, r)
        }
        ImageRef::Layout(l) => Endpoint::layout(l),
    })
}

fn tag_list(tags: &[String]) -> Result<Vec<speculum_oci::Tag>> {
    tags.iter()
        .map(|t| t.parse().map_err(|e| anyhow!("invalid tag {t:?}: {e}")))
        .collect()
}

struct Saas {
    hub: Option<sc::DockerHub>,
    quay: Option<sc::Quay>,
}

/// The clients a tag deletion may go through, owned: the registry, and the
/// Docker Hub or Quay API client when `--api` resolves to that API.
struct OwnedTagClients {
    registry: Arc<sc::Registry>,
    saas: Saas,
    api: sc::TagApi,
}

impl OwnedTagClients {
    fn borrow(&self) -> sc::TagClients<'_> {
        sc::TagClients {
            registry: &self.registry,
            hub: self.saas.hub.as_ref(),
            quay: self.saas.quay.as_ref(),
            api: self.api,
        }
    }
}

/// The registry client (from `access`), then the SaaS clients, for `r`.
fn tag_clients(
    r: &RegistryRef,
    access: &Access,
    api: &TagApiArgs,
    lookup: &Lookup,
) -> Result<OwnedTagClients> {
    let registry = access_registry(r, access, lookup)?;
    let saas = saas(r, api, access, lookup)?;
    Ok(OwnedTagClients {
        registry,
        saas,
        api: api.api,
    })
}

fn saas(r: &RegistryRef, api: &TagApiArgs, access: &Access, lookup: &Lookup) -> Result<Saas> {
    let resolved = api.api.resolve(r);
    let http = || sc::http_client(&[]);
    let hub = if resolved == sc::TagApi::DockerHub {
        let creds = match &access.creds {
            Some(c) => Some(sc::Credentials::parse(c)?),
            None => sc::lookup_credentials(
                &auth_files(lookup),
                sc::DOCKER_HUB,
                Some(r.repository.as_str()),
            )?,
        };
        Some(sc::DockerHub::new(&api.hub_url, http()?, creds)?)
    } else {
        None
    };
    let quay = if resolved == sc::TagApi::Quay {
        let base = api
            .quay_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", r.registry));
        Some(sc::Quay::new(&base, http()?, api.quay_token.clone())?)
    } else {
        None
    };
    Ok(Saas { hub, quay })
}

async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Copy {
            src,
            dst,
            all,
            platform,
            src_creds,
            dest_creds,
            creds,
            src_ca,
            dest_ca,
            ca,
            src_insecure,
            dest_insecure,
            insecure,
            parallel,
            chunk_size,
            retries,
            json,
            lookup,
        } => {
            let (s, d): (ImageRef, ImageRef) = (src.parse()?, dst.parse()?);
            let sca: Vec<&PathBuf> = src_ca.iter().chain(ca.iter()).collect();
            let dca: Vec<&PathBuf> = dest_ca.iter().chain(ca.iter()).collect();
            let se = endpoint(
                s,
                src_creds.as_deref().or(creds.as_deref()),
                &sca,
                src_insecure || insecure,
                &lookup,
            )
            .with_context(|| src.clone())?;
            let de = endpoint(
                d,
                dest_creds.as_deref().or(creds.as_deref()),
                &dca,
                dest_insecure || insecure,
                &lookup,
            )
            .with_context(|| dst.clone())?;
            let platforms = match (all, platform) {
                (true, _) => sc::PlatformSelection::All,
                (false, Some(p)) => sc::PlatformSelection::One(p),
                (false, None) => sc::PlatformSelection::Native,
            };
            let opts = sc::CopyOptions {
                platforms,
                parallel,
                chunk_size,
                attempts: retries,
            };
            let bars = progress::Bars::new(!json && std::io::stderr().is_terminal());
            let report = sc::copy(&se, &de, &opts, bars.clone())
                .await
                .with_context(|| format!("copying {} to {}", se.image(), de.image()))?;
            bars.clear();
            if json {
                out_json(&report)?;
            } else {
                let msg = format!(
                    "copied {} to {} ({}): {} bytes copied, {} mounted, {} skipped\n",
                    report.source,
                    report.destination,
                    report.digest,
                    report.bytes_copied,
                    report.bytes_mounted,
                    report.bytes_skipped
                );
                let _ = std::io::stderr().write_all(msg.as_bytes());
            }
        }
        Command::Tag {
            src,
            tags,
            access,
            lookup,
        } => {
            let r = registry_ref(&src)?;
            let reg = access_registry(&r, &access, &lookup)?;
            let digest = sc::tag(&reg, &r, &tag_list(&tags)?)
                .await
                .with_context(|| r.to_string())?;
            out(format!("{digest}\n").as_bytes())?;
        }
        Command::Promote {
            repo,
            from,
            to,
            access,
            api,
            lookup,
        } => {
            let r = sc::parse_repository(&repo)?;
            let clients = tag_clients(&r, &access, &api, &lookup)?;
            let from_t: speculum_oci::Tag = from
                .parse()
                .map_err(|e| anyhow!("invalid tag {from:?}: {e}"))?;
            let digest = sc::promote(&clients.borrow(), &r, &from_t, &tag_list(&to)?)
                .await
                .with_context(|| format!("promoting {}:{from}", r))?;
            out(format!("{digest}\n").as_bytes())?;
        }
        Command::DeleteTag {
            reference,
            access,
            api,
            lookup,
        } => {
            let r = registry_ref(&reference)?;
            let tag = r
                .tag
                .clone()
                .ok_or_else(|| anyhow!("{reference}: delete-tag needs a tag"))?;
            if r.digest.is_some() {
                return Err(anyhow!("{reference}: delete-tag takes a tag, not a digest"));
            }
            let clients = tag_clients(&r, &access, &api, &lookup)?;
            sc::delete_tag(&clients.borrow(), &r, tag.as_str())
                .await
                .with_context(|| r.to_string())?;
        }
        Command::Clean {
            repo,
            pattern,
            older_than,
            dry_run,
            json,
            access,
            api,
            lookup,
        } => {
            let r = sc::parse_repository(&repo)?;
            let pattern = regex::Regex::new(&pattern)
                .with_context(|| format!("invalid --match {pattern:?}"))?;
            let clients = tag_clients(&r, &access, &api, &lookup)?;
            let opts = sc::CleanOptions {
                pattern,
                older_than: older_than.into(),
                dry_run,
                now: time::OffsetDateTime::now_utc(),
            };
            let report = sc::clean(&clients.borrow(), &r, &opts)
                .await
                .with_context(|| r.to_string())?;
            if json {
                out_json(&report)?;
            } else {
                let mut text = String::new();
                for t in &report.tags {
                    let age = t
                        .age_seconds
                        .map(|a| format!("{a}s"))
                        .unwrap_or_else(|| "?".into());
                    text.push_str(&format!("{}\t{age}\t{}\n", t.tag, t.result));
                }
                out(text.as_bytes())?;
            }
            if report.failed > 0 {
                return Err(anyhow!("{r}: {} tag deletion(s) failed", report.failed));
            }
        }
        Command::Inspect {
            reference,
            raw,
            json,
            access,
            lookup,
        } => {
            let ir: ImageRef = reference.parse()?;
            let ep = endpoint(
                ir,
                access.creds.as_deref(),
                &access.ca.iter().collect::<Vec<_>>(),
                access.insecure,
                &lookup,
            )?;
            let (report, bytes) = sc::inspect(&ep)
                .await
                .with_context(|| ep.image().to_string())?;
            if raw {
                out(&bytes)?;
            } else if json {
                out_json(&report)?;
            } else {
                out(human_inspect(&report).as_bytes())?;
            }
        }
        Command::Tags {
            repo,
            json,
            access,
            lookup,
        } => {
            let r = sc::parse_repository(&repo)?;
            let reg = access_registry(&r, &access, &lookup)?;
            let tags = reg
                .list_tags(&r.repository)
                .await
                .with_context(|| r.to_string())?;
            if json {
                out_json(&tags)?;
            } else {
                out(tags
                    .iter()
                    .map(|t| format!("{t}\n"))
                    .collect::<String>()
                    .as_bytes())?;
            }
        }
        Command::Zuul(cmd) => zuul::run(cmd).await?,
    }
    Ok(())
}

fn human_inspect(r: &sc::InspectReport) -> String {
    let mut s = format!(
        "Name:       {}\nDigest:     {}\nMediaType:  {}\n",
        r.name, r.digest, r.media_type
    );
    if let Some(p) = &r.platform {
        s.push_str(&format!("Platform:   {p}\n"));
    }
    if let Some(c) = &r.created {
        s.push_str(&format!("Created:    {c}\n"));
    }
    if !r.manifests.is_empty() {
        s.push_str("Manifests:\n");
        for m in &r.manifests {
            let p = m
                .platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "  {p:<16} {} {} ({} bytes)\n",
                m.digest, m.media_type, m.size
            ));
        }
    }
    if let Some(c) = &r.config {
        s.push_str(&format!("Config:     {} ({} bytes)\n", c.digest, c.size));
    }
    if !r.layers.is_empty() {
        s.push_str("Layers:\n");
        for l in &r.layers {
            s.push_str(&format!(
                "  {} {} ({} bytes)\n",
                l.digest, l.media_type, l.size
            ));
        }
        s.push_str(&format!("Size:       {} bytes\n", r.size));
    }
    s
}
