//! The runner's side of the administration commands (docs/operations.md "Administration"):
//! the one executor both front ends use — XEP-0050 commands arrive from the bridge as
//! `Action::Admin`, `lcs-bridge admin` requests from the local socket — and the socket itself.
//! The executor only gathers data and applies changes; parsing, wording and every protocol
//! decision are `engine::admin`'s.
//!
//! Runtime blocks are layered on top of the configured federation policy each time the edge
//! is given settings (at a block, an unblock and every reload), so a reload keeps them; they
//! are not written anywhere and end with the process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{info, warn};

use super::reload::{Outcome as ReloadOutcome, Reloader, with_blocks};
use crate::config::{self, PartnerPolicy};
use crate::edge::server::EdgeHandle;
use crate::engine::admin::{self, Command, Outcome};
use crate::engine::bridge::Reconfigure;
use crate::store::Store;

/// Commands waiting for the executor.
pub const QUEUE: usize = 64;
/// Clients of the socket served at once (more wait for a slot).
const MAX_CLIENTS: usize = 8;
/// Bytes one socket connection may send in all (requests are one short line each).
const MAX_CLIENT_BYTES: u64 = 64 * 1024;
/// A socket connection silent this long is closed.
const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// A command and where its outcome goes.
pub struct AdminJob {
    pub command: Command,
    pub reply: oneshot::Sender<Outcome>,
}

/// A command the engines carry out, on its way to the runner, and where its outcome goes.
pub type EngineJob = (Command, oneshot::Sender<Outcome>);

/// Runs the commands (and SIGHUP's reload).
pub struct Executor {
    reloader: Reloader,
    blocks: BTreeSet<String>,
    edge: Arc<EdgeHandle>,
    store: Arc<dyn Store>,
    engines: mpsc::Sender<Box<Reconfigure>>,
    /// Commands for the engines (through the runner).
    bridge: mpsc::Sender<EngineJob>,
}

impl Executor {
    pub fn new(
        reloader: Reloader,
        edge: Arc<EdgeHandle>,
        store: Arc<dyn Store>,
        engines: mpsc::Sender<Box<Reconfigure>>,
        bridge: mpsc::Sender<EngineJob>,
    ) -> Executor {
        Executor {
            reloader,
            blocks: BTreeSet::new(),
            edge,
            store,
            engines,
            bridge,
        }
    }

    /// A reload (`why`: SIGHUP, or the admin command), runtime blocks kept.
    pub async fn reload(&mut self, why: &str) -> Outcome {
        match self
            .reloader
            .reload(why, &self.edge, &self.engines, &self.blocks)
            .await
        {
            ReloadOutcome::Applied { changed, restart } => {
                let mut lines = Vec::new();
                if !changed.is_empty() {
                    lines.push(format!("changed: {}", changed.join(", ")));
                }
                if !restart.is_empty() {
                    lines.push(format!("after a restart: {}", restart.join(", ")));
                }
                if !self.blocks.is_empty() {
                    let kept: Vec<&str> = self.blocks.iter().map(String::as_str).collect();
                    lines.push(format!("runtime blocks kept: {}", kept.join(", ")));
                }
                Outcome::ok("configuration reloaded", lines)
            }
            ReloadOutcome::Refused(problems) => {
                Outcome::failed("reload refused: the running configuration stays", problems)
            }
        }
    }

    /// Runs one command.
    pub async fn execute(&mut self, command: Command) -> Outcome {
        let outcome = match &command {
            Command::Reload => return self.reload("admin").await,
            Command::EndSubscription { .. } => {
                // Only from the socket: XEP-0050 requests go to the engine directly.
                let (reply, rx) = oneshot::channel();
                if self.bridge.send((command.clone(), reply)).await.is_err() {
                    Outcome::failed("the engines have stopped", Vec::new())
                } else {
                    rx.await.unwrap_or_else(|_| {
                        Outcome::failed("the engines stopped before answering", Vec::new())
                    })
                }
            }
            Command::Partners => {
                let cfg = self.reloader.applied();
                let configured: Vec<(String, &'static str)> = cfg
                    .federation
                    .partners
                    .iter()
                    .map(|p| {
                        let policy = match p.policy {
                            PartnerPolicy::Allow => "allow",
                            PartnerPolicy::Block => "block",
                        };
                        (p.domain.clone(), policy)
                    })
                    .collect();
                let default = format!("{:?}", cfg.federation.default_policy).to_ascii_lowercase();
                let conns = self.edge.connections().await;
                admin::partners(&configured, &self.blocks, &default, &conns)
            }
            Command::Subscriptions { user } => {
                let store = self.store.clone();
                let user = user.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mine: Result<Vec<_>, _> = store
                        .subscriptions()
                        .filter(|r| r.as_ref().map_or(true, |s| s.local_jid == user))
                        .collect();
                    mine.map(|subs| admin::subscriptions(&user, &subs))
                })
                .await;
                match read {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(e)) => {
                        Outcome::failed(format!("the store could not be read: {e}"), Vec::new())
                    }
                    Err(e) => Outcome::failed(format!("the store read failed: {e}"), Vec::new()),
                }
            }
            Command::Block { domain } => {
                let already = !self.blocks.insert(domain.clone());
                self.apply_blocks().await;
                admin::blocked(domain, already)
            }
            Command::Unblock { domain } => {
                let was = self.blocks.remove(domain);
                self.apply_blocks().await;
                let configured = self
                    .reloader
                    .applied()
                    .federation
                    .partners
                    .iter()
                    .any(|p| &p.domain == domain && p.policy == PartnerPolicy::Block);
                admin::unblocked(domain, was, configured)
            }
        };
        info!(
            command = command.node(),
            ok = outcome.ok,
            result = %outcome.message,
            "admin command"
        );
        outcome
    }

    /// The edge's settings again, from the applied configuration with the runtime blocks.
    async fn apply_blocks(&self) {
        let settings = super::core_settings(self.reloader.applied());
        self.edge
            .reconfigure(with_blocks(settings, &self.blocks))
            .await;
    }
}

/// The socket, removed when dropped.
pub struct Socket {
    path: PathBuf,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (mode 0600: only the bridge's user may connect; a stale socket from an
/// earlier run is replaced) and hands each request line to the executor through `jobs`,
/// answering with the outcome as one JSON line.
#[cfg(unix)]
pub fn serve(path: &Path, jobs: mpsc::Sender<AdminJob>) -> anyhow::Result<Socket> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let key = "admin.socket";
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(anyhow!(
                "{key}: {} exists and is not a socket",
                path.display()
            ));
        }
        std::fs::remove_file(path).with_context(|| format!("{key}: {}", path.display()))?;
    }
    // Its directory (by default `storage.path`, which a PostgreSQL store does not create) is
    // made when missing, private to this user; its parent must exist.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("{key}: cannot create {}", dir.display()))?;
    }
    // Bound under a temporary name, made private, then renamed: never reachable by others.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)
        .with_context(|| format!("{key}: cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{key}: {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{key}: {}", path.display()))?;
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(reason = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let jobs = jobs.clone();
            tokio::spawn(async move {
                client(stream, jobs).await;
                drop(permit);
            });
        }
    });
    info!(path = %path.display(), "admin socket listening");
    Ok(Socket {
        path: path.to_owned(),
    })
}

#[cfg(not(unix))]
pub fn serve(path: &Path, _jobs: mpsc::Sender<AdminJob>) -> anyhow::Result<Socket> {
    Err(anyhow!(
        "admin.socket: Unix sockets need a Unix system ({})",
        path.display()
    ))
}

/// One socket client: request lines in, outcome lines out, until it closes, is silent for
/// [`CLIENT_IDLE`] or has sent [`MAX_CLIENT_BYTES`].
#[cfg(unix)]
async fn client(stream: tokio::net::UnixStream, jobs: mpsc::Sender<AdminJob>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_CLIENT_BYTES)).lines();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(CLIENT_IDLE, lines.next_line()).await {
        if line.trim().is_empty() {
            continue;
        }
        let outcome = match admin::parse_request(&line) {
            Err(reason) => Outcome::failed(reason, Vec::new()),
            Ok(command) => {
                let (reply, rx) = oneshot::channel();
                if jobs.send(AdminJob { command, reply }).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(outcome) => outcome,
                    Err(_) => return,
                }
            }
        };
        if write
            .write_all(outcome.to_json_line().as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// `lcs-bridge admin`: sends one command to the running bridge's socket and returns its
/// outcome (blocking; for the CLI).
#[cfg(unix)]
pub fn request(socket: &Path, command: &str, args: &[String]) -> anyhow::Result<Outcome> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to {} (admin.socket): is the bridge running, and may this user open it?",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(admin::request_line(command, args).as_bytes())?;
    let mut line = String::new();
    std::io::Read::take(std::io::BufReader::new(&stream), 16 * 1024 * 1024)
        .read_line(&mut line)
        .context("no answer from the bridge")?;
    #[derive(serde::Deserialize)]
    struct Answer {
        ok: bool,
        message: String,
        #[serde(default)]
        lines: Vec<String>,
    }
    let a: Answer = serde_json::from_str(&line)
        .with_context(|| format!("the bridge's answer is not understood: {line:?}"))?;
    Ok(Outcome {
        ok: a.ok,
        message: a.message,
        lines: a.lines,
    })
}

#[cfg(not(unix))]
pub fn request(socket: &Path, _command: &str, _args: &[String]) -> anyhow::Result<Outcome> {
    Err(anyhow!(
        "{}: Unix sockets need a Unix system",
        socket.display()
    ))
}

/// The socket `lcs-bridge admin --config FILE` talks to: the file's `admin.socket`.
pub fn socket_of(config_path: &Path) -> anyhow::Result<PathBuf> {
    let report = config::check(config_path, SystemTime::now());
    match report.config {
        Some(cfg) => Ok(cfg.admin.socket),
        None => {
            let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
            Err(anyhow!("{}: {}", config_path.display(), lines.join("; ")))
        }
    }
}
