//! `speculum zuul ...`: the intermediate-registry steps of the Zuul roles.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::{Subcommand, ValueEnum};
use speculum_client as sc;
use speculum_client::zuul::{PullMethod, StepReport};

use crate::{out, out_json};

/// The exit status of `pull-intermediate --method lazy` when the
/// intermediate registry offers no token service (the role then copies).
pub(crate) const LAZY_REFUSED: u8 = 3;

#[derive(Subcommand)]
pub(crate) enum ZuulCommand {
    /// Bring the container_image artifacts of the changes ahead into the buildset registry.
    ///
    /// Exits 3 when --method lazy is refused because the intermediate
    /// registry has no token service (its password would have to reach the
    /// buildset registry); nothing was registered then.
    PullIntermediate {
        /// JSON with buildset_registry, intermediate_registry and artifacts.
        #[arg(long)]
        vars: PathBuf,
        /// copy: copy every image before the jobs run. lazy: register the
        /// images with the buildset registry, which fetches blobs from the
        /// intermediate registry when a client pulls them.
        #[arg(long, value_enum, default_value_t = Method::Copy)]
        method: Method,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Copy this build's images to the intermediate registry and print zuul_return data.
    PushIntermediate {
        /// JSON with buildset_registry, intermediate_registry, images and build.
        #[arg(long)]
        vars: PathBuf,
        /// Write the zuul_return data here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// `--method`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Method {
    /// Copy every image, all blobs, before the jobs run.
    Copy,
    /// Register the images; blobs move when a client pulls them.
    Lazy,
}

impl From<Method> for PullMethod {
    fn from(m: Method) -> PullMethod {
        match m {
            Method::Copy => PullMethod::Copy,
            Method::Lazy => PullMethod::Lazy,
        }
    }
}

/// Whether `e` is the lazy method's refusal of an IR without token service.
pub(crate) fn is_lazy_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sc::Error>(),
            Some(sc::Error::NoTokenService { .. })
        )
    })
}

pub(crate) async fn run(cmd: ZuulCommand) -> Result<()> {
    match cmd {
        ZuulCommand::PullIntermediate { vars, method, json } => {
            let v: sc::zuul::PullVars = sc::zuul::read_vars(&vars)?;
            let report = sc::zuul::pull_intermediate(&v, method.into()).await?;
            if json {
                out_json(&report)?;
            } else {
                out(summary(&report).as_bytes())?;
            }
            if let Some(e) = report.error() {
                return Err(anyhow!("pull-intermediate failed: {e}"));
            }
        }
        ZuulCommand::PushIntermediate { vars, output } => {
            let v: sc::zuul::PushVars = sc::zuul::read_vars(&vars)?;
            let (report, data) = sc::zuul::push_intermediate(&v).await?;
            if let Some(e) = report.error() {
                return Err(anyhow!("push-intermediate failed: {e}"));
            }
            let mut text = serde_json::to_vec_pretty(&data)?;
            text.push(b'\n');
            match output {
                Some(p) => std::fs::write(&p, text).with_context(|| p.display().to_string())?,
                None => out(&text)?,
            }
        }
    }
    Ok(())
}

/// The pull step's report for a log: one line per image.
fn summary(report: &StepReport) -> String {
    let method = match report.method {
        Some(PullMethod::Lazy) => "lazy",
        _ => "copy",
    };
    let mut s = format!("method: {method}\n");
    for src in &report.sources {
        let life = src
            .token_expires_in
            .map(|t| format!(", token valid for {t} s"))
            .unwrap_or_default();
        s.push_str(&format!("source {} ({}{life})\n", src.registry, src.auth));
    }
    for c in &report.copies {
        s.push_str(&format!("copied {} -> {}\n", c.source, c.destination));
    }
    for r in &report.registered {
        s.push_str(&format!(
            "registered {} = {} ({})\n",
            r.destination, r.digest, r.url
        ));
    }
    for x in &report.superseded {
        s.push_str(&format!(
            "superseded {} for {} by {}\n",
            x.url, x.destination, x.by
        ));
    }
    for f in &report.failures {
        s.push_str(&format!("failed {}: {}\n", f.image, f.error));
    }
    s
}
