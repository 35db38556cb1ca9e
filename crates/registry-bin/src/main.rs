//! `speculum-registry`: the speculum OCI registry.
//!
//! Argument parsing, logging and signals only; the registry itself lives in
//! `speculum-server`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use speculum_server::{BuildsetOptions, BuildsetServer, write_info_file};

/// The speculum container registry.
#[derive(Parser, Debug)]
#[command(name = "speculum-registry", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

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
    Buildset(BuildsetArgs),
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
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli, started) {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli, started: Instant) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Buildset(args) => runtime.block_on(buildset(args, started)),
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
    };
    // Install the signal handlers before announcing readiness, so a signal
    // sent right after the info appears is never missed.
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;

    let server = BuildsetServer::start(options)
        .await
        .context("cannot start the registry")?;
    let published = match &args.info_file {
        Some(path) => write_info_file(path, server.info())
            .with_context(|| format!("cannot write the info file {}", path.display())),
        None => serde_json::to_string(server.info())
            .map(|json| {
                #[allow(clippy::print_stdout)] // the info JSON is this command's output
                {
                    println!("{json}");
                }
            })
            .context("cannot encode the info"),
    };
    if let Err(e) = published {
        server.shutdown().await;
        return Err(e);
    }
    tracing::info!(
        addr = %server.local_addr(),
        ready_ms = started.elapsed().as_secs_f64() * 1000.0,
        "accepting connections"
    );

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    server.shutdown().await;
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("cannot install a signal handler")
}
