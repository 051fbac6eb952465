//! What `lcs-bridge demo` shows on standard output: the banner, the runner's transcript lines
//! (`lcs_bridge::transcript`), the partner's notes, and every warning or error, one readable
//! line each, through a tracing layer (the bridge's other log lines are left out).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use std::sync::mpsc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use super::partner_io;
use crate::transcript;

/// The target of the demo's own lines, printed as they are.
pub const BANNER: &str = "lcs_bridge::demo";

/// The message of the runner's line once the bridge is up.
const STARTED: &str = "lcs-bridge started";

/// Installs the demo's subscriber; the receiver hears once the bridge has started.
pub fn init() -> anyhow::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    let targets = Targets::new()
        .with_default(Level::WARN)
        .with_target(transcript::TARGET, Level::DEBUG)
        .with_target(BANNER, Level::INFO)
        .with_target("lcs_bridge::app", Level::INFO);
    tracing_subscriber::registry()
        .with(Printer {
            started: Mutex::new(Some(tx)),
        })
        .with(targets)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot initialise the demo's output: {e}"))?;
    Ok(rx)
}

struct Printer {
    started: Mutex<Option<mpsc::Sender<()>>>,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Printer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let target = meta.target();
        let line = if target == transcript::TARGET {
            format!("{}  {}", clock(), f.message)
        } else if target == partner_io::TARGET && *meta.level() <= Level::INFO {
            format!("{}  LYNC      {}", clock(), f.message)
        } else if target == BANNER {
            f.message
        } else if *meta.level() <= Level::WARN {
            format!(
                "{}  {} {target}: {}{}",
                clock(),
                meta.level(),
                f.message,
                f.rest
            )
        } else {
            if target == "lcs_bridge::app" && f.message.starts_with(STARTED) {
                if let Some(tx) = self.started.lock().ok().and_then(|mut s| s.take()) {
                    let _ = tx.send(());
                }
            }
            return;
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// `HH:MM:SS` (UTC) of now.
#[allow(clippy::disallowed_methods)] // the printer stamps its lines
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}
