//! Progress bars on a terminal: one per blob, drawn on stderr.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use speculum_client::{BlobAction, Progress};
use speculum_oci::Digest;

/// Bars per blob, or nothing when not on a terminal.
pub struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    /// Bars if `enabled`, else a silent sink.
    pub fn new(enabled: bool) -> Arc<Bars> {
        let multi = enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Arc::new(Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
        })
    }

    /// Remove the bars.
    pub fn clear(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }

    fn short(d: &Digest) -> String {
        d.hex().chars().take(12).collect()
    }
}

impl Progress for Bars {
    fn start(&self, digest: &Digest, size: u64) {
        let Some(m) = &self.multi else { return };
        let bar = m.add(ProgressBar::new(size));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(Self::short(digest));
        if let Ok(mut bars) = self.bars.lock()
            && let Some(old) = bars.insert(digest.to_string(), bar)
        {
            old.finish_and_clear();
        }
    }

    fn advance(&self, digest: &Digest, bytes: u64) {
        if self.multi.is_none() {
            return;
        }
        if let Ok(bars) = self.bars.lock()
            && let Some(b) = bars.get(&digest.to_string())
        {
            b.inc(bytes);
        }
    }

    fn finish(&self, digest: &Digest, action: BlobAction) {
        if self.multi.is_none() {
            return;
        }
        if let Ok(bars) = self.bars.lock()
            && let Some(b) = bars.get(&digest.to_string())
        {
            let word = match action {
                BlobAction::Copied => "copied",
                BlobAction::Skipped => "exists",
                BlobAction::Mounted => "mounted",
            };
            b.finish_with_message(word);
        }
    }
}
