//! `speculum-registry`: the speculum OCI registry.
//!
//! Argument parsing, logging and signals only; the registry itself lives in
//! `speculum-server`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use speculum_server::{
    BuildsetOptions, ConnectionLimits, RegistryInfo, RegistryServer, Settings, prune_options,
    run_prune, write_info_file,
};

/// The speculum container registry.
#[derive(Parser, Debug)]
#[command(name = "speculum-registry", version, about)]
struct Cli {
    /// Log format (default: the config's `log-format`, else text).
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an ephemeral buildset registry: temporary storage, a generated
    /// certificate, anonymous pull, push for one user with a random password.
    Buildset(Box<BuildsetArgs>),
    /// Run the long-lived intermediate registry from a YAML config file
    /// (zuul-registry's keys are accepted unchanged).
    Serve(ServeArgs),
    /// Apply the config's retention and collect garbage once, then report
    /// what was removed and the space freed.
    ///
    /// Safe beside a running `serve` on the same storage root: only one
    /// collection runs at a time (a lock on `<root>/gc.lock`; prune fails
    /// with exit code 1, removing nothing, while the server's scheduled
    /// collection or another prune runs), and nothing younger than the grace
    /// period (`gc.grace`) by its own time goes: a manifest pushed, a blob
    /// uploaded or linked, or a link renewed by a HEAD within it. A push must
    /// upload its blobs and its manifest within the grace period; keep it at
    /// least ten minutes.
    Prune(PruneArgs),
}

#[derive(Parser, Debug)]
struct ServeArgs {
    /// The YAML config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
}

#[derive(Parser, Debug)]
struct PruneArgs {
    /// The YAML config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,

    /// Only report what would be removed.
    #[arg(long)]
    dry_run: bool,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Parser, Debug)]
struct BuildsetArgs {
    /// Address and port to listen on (`[::]:5000` for every address; port 0
    /// picks a free port, reported in the info).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,

    /// A host name clients use; goes into the certificate (repeatable). The
    /// first one is the info's `host`.
    #[arg(long = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,

    /// An IP address clients use; goes into the certificate (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    ips: Vec<IpAddr>,

    /// Keep storage in this directory (otherwise a temporary directory,
    /// removed on exit).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,

    /// The user allowed to push.
    #[arg(long, default_value = "zuul")]
    username: String,

    /// Read the push password from this file (otherwise 32 random characters).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// Write the connection info JSON here (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    info_file: Option<PathBuf>,

    /// Serve plain HTTP instead of TLS (for tests, or behind a TLS proxy).
    #[arg(long)]
    insecure_http: bool,

    /// Close a connection whose request head takes longer than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          default_value = "30s")]
    header_timeout: Duration,

    /// Cut a request body that sends nothing for this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          default_value = "60s")]
    body_idle_timeout: Duration,

    /// Close a connection idle between requests for this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          default_value = "120s")]
    keep_alive_timeout: Duration,

    /// Serve at most this many connections at once; more wait to be
    /// accepted (default: from the open-file limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,

    /// Remove upload sessions started this long ago (`90s`, `30m`, `2h`):
    /// what a client abandoned. A buildset registry runs no garbage
    /// collection; this timer is its only cleanup.
    #[arg(
        long,
        value_name = "DURATION",
        env = "SPECULUM_BUILDSET_UPLOAD_EXPIRY",
        default_value = "1h",
        value_parser = parse_duration
    )]
    upload_expiry: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match speculum_server::config::parse_duration(text)? {
        d if d.is_zero() => Err("must be above zero".to_string()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    // Serve and prune read their config first: it may choose the log format.
    let config = match &cli.command {
        Command::Serve(ServeArgs { config }) | Command::Prune(PruneArgs { config, .. }) => {
            Some(Settings::load(config))
        }
        Command::Buildset(_) => None,
    };
    let from_config = match &config {
        Some(Ok(settings)) => match settings.log_format {
            speculum_server::LogFormat::Json => Some(LogFormat::Json),
            _ => Some(LogFormat::Text),
        },
        _ => None,
    };
    init_tracing(cli.log_format.or(from_config).unwrap_or(LogFormat::Text));
    let settings = match config {
        Some(Ok(settings)) => Some(settings),
        Some(Err(e)) => {
            tracing::error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    match run(cli, settings, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: escape codes would garble log files and
    // the journal, and break tools that parse the access log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Raise the soft open-file limit to the hard one, so that a thousand idle
/// clients cannot exhaust it (issue 9); the connection bound derives from
/// the figure logged here.
fn raise_fd_limit() {
    match speculum_server::fdlimit::raise() {
        (limit, None) => tracing::info!(limit, "open-file limit"),
        (limit, Some(e)) => {
            tracing::warn!(limit, error = %e, "cannot raise the open-file limit")
        }
    }
}

fn run(cli: Cli, settings: Option<Settings>, started: Instant) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if !matches!(cli.command, Command::Prune(_)) {
        raise_fd_limit();
    }
    match (cli.command, settings) {
        (Command::Buildset(args), _) => runtime.block_on(buildset(*args, started)),
        (Command::Serve(_), Some(settings)) => runtime.block_on(serve(settings, started)),
        (Command::Prune(args), Some(settings)) => runtime.block_on(prune(args, settings)),
        (_, None) => anyhow::bail!("no configuration loaded"),
    }
}

async fn serve(settings: Settings, started: Instant) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let server = RegistryServer::start(&settings)
        .await
        .with_context(|| format!("cannot start the registry ({})", settings.source_name()))?;
    signals
        .serve_until_stopped(server.local_addr(), started)
        .await;
    server.shutdown().await;
    Ok(())
}

async fn prune(args: PruneArgs, settings: Settings) -> anyhow::Result<()> {
    let options = prune_options(&settings, args.dry_run);
    let registry = speculum_server::open_existing_store(&settings.storage)
        .await
        .context("prune cannot open the store")?;
    let report = match run_prune(&registry, &options, None).await {
        Ok(report) => report,
        Err(speculum_storage::Error::CollectionRunning) => anyhow::bail!(
            "another garbage collection is running on {} (a `prune`, or the scheduled \
             collection of `serve`); nothing was removed, try again later",
            settings.storage
        ),
        Err(e) => return Err(anyhow::Error::new(e).context("prune failed")),
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report).context("cannot encode the report")?
    } else {
        let mut lines = Vec::new();
        let verb = if report.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for t in &report.tags_deleted {
            lines.push(format!(
                "{verb} tag {}:{} ({})",
                t.repository, t.tag, t.digest
            ));
        }
        for m in &report.manifests_deleted {
            lines.push(format!("{verb} manifest {}@{}", m.repository, m.digest));
        }
        for d in &report.blobs_removed {
            lines.push(format!("{verb} blob {d}"));
        }
        for u in &report.uploads_removed {
            lines.push(format!("{verb} upload {u}"));
        }
        lines.push(format!(
            "{}: {} freed",
            report.summary(),
            human_bytes(report.bytes_freed)
        ));
        lines.join("\n")
    };
    #[allow(clippy::print_stdout)] // the report is this command's output
    {
        println!("{text}");
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

async fn buildset(args: BuildsetArgs, started: Instant) -> anyhow::Result<()> {
    let password = match &args.password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the password file {}", path.display()))?;
            let password = text.trim_end_matches(['\r', '\n']).to_string();
            anyhow::ensure!(
                !password.is_empty(),
                "the password file {} is empty",
                path.display()
            );
            Some(password)
        }
        None => None,
    };
    let options = BuildsetOptions {
        listen: args.listen,
        hostnames: args.hostnames,
        ips: args.ips,
        root: args.root,
        username: args.username,
        password,
        insecure_http: args.insecure_http,
        connections: ConnectionLimits {
            header_timeout: args.header_timeout,
            body_idle_timeout: args.body_idle_timeout,
            keep_alive_timeout: args.keep_alive_timeout,
            max_connections: args.max_connections.map(|n| n as usize),
        },
        upload_max_age: args.upload_expiry,
    };
    // Install the signal handlers before announcing readiness, so a signal
    // sent right after the info appears is never missed.
    let signals = Signals::install()?;

    let settings = Settings::buildset(options).context("cannot start the registry")?;
    let server = RegistryServer::start(&settings)
        .await
        .context("cannot start the registry")?;
    if let Err(e) = publish_info(args.info_file.as_deref(), server.info()) {
        server.shutdown().await;
        return Err(e);
    }
    signals
        .serve_until_stopped(server.local_addr(), started)
        .await;
    server.shutdown().await;
    Ok(())
}

/// Write the buildset registry's connection info to `info_file`, or to
/// stdout.
fn publish_info(info_file: Option<&Path>, info: Option<&RegistryInfo>) -> anyhow::Result<()> {
    let info = info.context("the registry made no connection info")?;
    match info_file {
        Some(path) => write_info_file(path, info)
            .with_context(|| format!("cannot write the info file {}", path.display())),
        None => {
            let json = serde_json::to_string(info).context("cannot encode the info")?;
            #[allow(clippy::print_stdout)] // the info JSON is this command's output
            {
                println!("{json}");
            }
            Ok(())
        }
    }
}

/// SIGTERM and SIGINT handlers, installed before a server announces readiness
/// so that a signal sent right after the announcement is never missed.
struct Signals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind| signal(kind).context("cannot install a signal handler");
        Ok(Signals {
            sigterm: install(SignalKind::terminate())?,
            sigint: install(SignalKind::interrupt())?,
        })
    }

    /// Log that the server at `addr` is ready, then wait for SIGTERM or SIGINT.
    async fn serve_until_stopped(mut self, addr: std::net::SocketAddr, started: Instant) {
        tracing::info!(
            addr = %addr,
            ready_ms = started.elapsed().as_secs_f64() * 1000.0,
            "accepting connections"
        );
        tokio::select! {
            _ = self.sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = self.sigint.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
}
