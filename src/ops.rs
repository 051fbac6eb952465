//! The operations HTTP listener (`admin.metrics_listen`): `GET /metrics` (the Prometheus text
//! format of everything `telemetry` records), `GET /health` (200 while the process runs) and
//! `GET /ready` (200 when the SIP listener is bound, the store is open and every component
//! link is up; else 503 with one line per failing check). docs/operations.md "Metrics and
//! health" describes the series.
//!
//! A small HTTP/1.1 server of its own (one request per connection, `Connection: close`), bounded
//! like everything a peer can reach: at most [`MAX_CONNECTIONS`] at once, a request head of at
//! most [`MAX_HEAD`] bytes read within [`IO_TIMEOUT`], the answer written within it too.

#![allow(clippy::disallowed_methods)] // I/O: the upkeep timer

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::telemetry;
use crate::xmpp::link::LinkHandle;

/// Connections served at once; more wait in the listener's backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head, and to read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Store write latency buckets, seconds: a lazy write takes microseconds, a synced one a disk
/// flush (0.1–10 ms on SSDs, tens of ms on disks and network storage).
const STORE_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The recorder this process installed, if any.
static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once: a second call
/// returns the first one's handle); the handle renders it. Call before the edge and the runner
/// record anything (handles resolved before it stay no-ops).
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = INSTALLED.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::STORE_WRITE_SECONDS.to_owned()),
            &STORE_BUCKETS,
        )
        .map_err(|e| anyhow!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow!("metrics: cannot install the recorder: {e}"))?;
    Ok(INSTALLED.get_or_init(|| handle).clone())
}

/// What `/ready` checks; the runner sets each part as it comes up.
pub struct Readiness {
    sip_listening: AtomicBool,
    store_open: AtomicBool,
    /// The component domains, named before the link exists.
    components: Vec<String>,
    link: OnceLock<LinkHandle>,
}

impl Readiness {
    pub fn new(components: Vec<String>) -> Readiness {
        Readiness {
            sip_listening: AtomicBool::new(false),
            store_open: AtomicBool::new(false),
            components,
            link: OnceLock::new(),
        }
    }

    pub fn set_sip_listening(&self, on: bool) {
        self.sip_listening.store(on, Ordering::Release);
    }

    pub fn set_store_open(&self, open: bool) {
        self.store_open.store(open, Ordering::Release);
    }

    /// The link whose streams `/ready` asks about from now on.
    pub fn set_link(&self, link: LinkHandle) {
        let _ = self.link.set(link);
    }

    /// The failing checks, one line each; empty when ready.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.sip_listening.load(Ordering::Acquire) {
            out.push("sip: the federation listener is not bound".to_owned());
        }
        if !self.store_open.load(Ordering::Acquire) {
            out.push("store: not open".to_owned());
        }
        for domain in &self.components {
            let up = self.link.get().is_some_and(|l| l.is_up(domain));
            if !up {
                out.push(format!("xmpp: component link {domain} is down"));
            }
        }
        out
    }
}

/// Binds `addr` and serves until the runtime stops; the Prometheus upkeep (histogram windows)
/// runs every 5 s beside it.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Arc<Readiness>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin.metrics_listen: cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    info!(listen = %local, "operations HTTP listening: /metrics, /health, /ready");
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "operations HTTP: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (metrics, ready) = (metrics.clone(), ready.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(tcp, &metrics, &ready).await {
                    debug!(%peer, error = %e, "operations HTTP: request not answered");
                }
                drop(permit);
            });
        }
    });
    Ok(local)
}

/// Reads one request head and answers it.
async fn answer(
    mut tcp: TcpStream,
    metrics: &PrometheusHandle,
    ready: &Readiness,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(IO_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok::<bool, std::io::Error>(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let complete = match read {
        Ok(r) => r?,
        Err(_) => false,
    };
    let response = if complete {
        route(&head, metrics, ready)
    } else if head.len() > MAX_HEAD {
        Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        )
    } else {
        return Ok(());
    };
    let bytes = response.into_bytes(head.starts_with(b"HEAD "));
    tokio::time::timeout(IO_TIMEOUT, async {
        tcp.write_all(&bytes).await?;
        tcp.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }

    fn into_bytes(self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            if self.allow { "Allow: GET, HEAD\r\n" } else { "" },
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a complete request head.
fn route(head: &[u8], metrics: &PrometheusHandle, ready: &Readiness) -> Response {
    let line = head
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let Some(target) = target.filter(|_| parts.next().is_some_and(|v| v.starts_with(b"HTTP/1.")))
    else {
        return Response::text(400, "Bad Request", "not an HTTP/1.x request line\n");
    };
    if method != b"GET" && method != b"HEAD" {
        return Response {
            allow: true,
            ..Response::text(405, "Method Not Allowed", "only GET and HEAD\n")
        };
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => Response {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Response::text(200, "OK", metrics.render())
        },
        b"/health" => Response::text(200, "OK", "ok\n"),
        b"/ready" => {
            let problems = ready.problems();
            if problems.is_empty() {
                Response::text(200, "OK", "ready\n")
            } else {
                let mut body = problems.join("\n");
                body.push('\n');
                Response::text(503, "Service Unavailable", body)
            }
        }
        _ => Response::text(404, "Not Found", "try /metrics, /health or /ready\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> PrometheusHandle {
        PrometheusBuilder::new().build_recorder().handle()
    }

    #[test]
    fn routes() {
        let ready = Readiness::new(vec!["lcs.example.org".to_owned()]);
        let h = handle();
        let r = route(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", &h, &ready);
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        let r = route(b"GET /ready HTTP/1.1\r\n\r\n", &h, &ready);
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            "sip: the federation listener is not bound\nstore: not open\n\
             xmpp: component link lcs.example.org is down\n"
        );
        ready.set_sip_listening(true);
        ready.set_store_open(true);
        let r = route(b"GET /ready?x=1 HTTP/1.0\r\n\r\n", &h, &ready);
        assert_eq!(r.body, "xmpp: component link lcs.example.org is down\n");
        let r = route(b"GET /metrics HTTP/1.1\r\n\r\n", &h, &ready);
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/plain; version=0.0.4"));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", &h, &ready).status,
            405
        );
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n", &h, &ready).status, 404);
        assert_eq!(route(b"GET /metrics\r\n\r\n", &h, &ready).status, 400);
        assert_eq!(route(b"\x00\xff\r\n\r\n", &h, &ready).status, 400);
    }

    #[test]
    fn head_has_no_body() {
        let bytes = Response::text(200, "OK", "ok\n").into_bytes(true);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"));
    }
}
