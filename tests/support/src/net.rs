//! The bridge's two neighbours on the wire: an XEP-0114 server (the bridge connects to it as
//! its component) and mutual-TLS SIP connections of an LCS edge (the bridge dials the
//! partner's listener; the edge dials the bridge). With a real XMPP server in between
//! (`im-prosody`), XMPP clients logged in to it over c2s instead. Every connection feeds one
//! event channel; writes go through a per-connection channel to a task that batches them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use lcs_bridge::sip::framing::{Frame, Framer, PONG};
use lcs_bridge::sip::message::{Limits, Message};
use rustls::pki_types::{CertificateDer, ServerName};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::pki::Leaf;

/// What the connections report to the driver.
pub enum Event {
    /// A stanza from the bridge (one top-level element, raw).
    Stanza(Vec<u8>, Instant),
    /// Component stream number `.0` ended.
    XmppClosed(u64, String),
    /// A SIP message on connection `conn`.
    Sip(usize, Message, Instant),
    /// A SIP connection is up: its writer.
    SipUp(usize, Writer),
    /// A SIP connection ended (or failed to frame).
    SipClosed(usize, String),
    /// A stanza to XMPP client `.0` (see [`c2s_login`]).
    Client(usize, Vec<u8>, Instant),
    /// XMPP client `.0`'s stream ended.
    ClientClosed(usize, String),
}

pub type Writer = UnboundedSender<Vec<u8>>;

/// Reads an XMPP stream's stanzas into `events` (`stanza`), until it ends or breaks
/// (`closed`, with `eof` or the framing error).
async fn read_stanzas<R: AsyncRead + Unpin>(
    mut r: R,
    mut splitter: Splitter,
    events: UnboundedSender<Event>,
    stanza: impl Fn(Vec<u8>, Instant) -> Event,
    closed: impl Fn(String) -> Event,
    eof: &str,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let at = Instant::now();
        loop {
            match splitter.next() {
                Ok(Some(s)) => {
                    if events.send(stanza(s, at)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(closed(e));
                    return;
                }
            }
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = events.send(closed(eof.into()));
                return;
            }
            Ok(n) => splitter.buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes everything sent to `rx` to `w`, coalescing what is queued into one write.
fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(mut w: W) -> Writer {
    let (tx, mut rx): (Writer, UnboundedReceiver<Vec<u8>>) = unbounded_channel();
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            buf.clear();
            buf.extend_from_slice(&first);
            while buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    tx
}

// ------------------------------------------------------------------ XMPP (XEP-0114 server)

/// Accepts the bridge's component connection on `listener` for `domain`, checks its
/// handshake against `secret`, and then reports its stanzas. Returns the stream's writer.
pub async fn accept_component(
    listener: &TcpListener,
    domain: &str,
    secret: &str,
    stream: u64,
    events: UnboundedSender<Event>,
) -> Result<Writer, String> {
    let (mut tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let mut buf = Vec::new();
    let header = read_until(&mut tcp, &mut buf, find_stream_open).await?;
    buf.drain(..header);
    let id = format!("load{}", std::process::id());
    let open = format!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns='jabber:component:accept' from='{domain}' id='{id}'>"
    );
    tcp.write_all(open.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let end = read_until(&mut tcp, &mut buf, |b| {
        memchr::memmem::find(b, b"</handshake>").map(|i| i + 12)
    })
    .await?;
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let digest: String = Sha1::digest(format!("{id}{secret}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !text.contains(&digest) {
        return Err(format!("bad component handshake: {text}"));
    }
    tcp.write_all(b"<handshake/>")
        .await
        .map_err(|e| e.to_string())?;
    let (r, w) = tcp.into_split();
    let writer = spawn_writer(w);
    tokio::spawn(read_stanzas(
        r,
        Splitter { buf },
        events,
        Event::Stanza,
        move |why| Event::XmppClosed(stream, why),
        "the bridge closed the stream",
    ));
    Ok(writer)
}

async fn read_until(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Result<usize, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = done(buf) {
            return Ok(i);
        }
        let n = r.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "stream closed during the handshake: {}",
                String::from_utf8_lossy(buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ------------------------------------------------------------------ XMPP client (c2s)

/// Logs `user@domain` in to the XMPP server at `addr` as an ordinary client over plain TCP
/// (RFC 6120: stream, SASL PLAIN, stream restart, resource binding; no TLS, no initial
/// presence: the test server allows plain authentication on loopback), then reports what the
/// server sends it as [`Event::Client`] number `client`. Returns the stream's writer and the
/// bound full JID.
pub async fn c2s_login(
    addr: SocketAddr,
    domain: &str,
    user: &str,
    password: &str,
    client: usize,
    events: UnboundedSender<Event>,
) -> Result<(Writer, String), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let open = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    );
    let mut sp = Splitter::default();
    let features = c2s_open(&mut tcp, &mut sp, &open).await?;
    if memchr::memmem::find(&features, b">PLAIN</mechanism>").is_none() {
        return Err(format!(
            "no SASL PLAIN offered: {}",
            String::from_utf8_lossy(&features)
        ));
    }
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let auth =
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>");
    tcp.write_all(auth.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = next_element(&mut tcp, &mut sp).await?;
    if !answer.starts_with(b"<success") {
        return Err(format!(
            "SASL PLAIN for {user}: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    c2s_open(&mut tcp, &mut sp, &open).await?;
    let bind = "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                <resource>load</resource></bind></iq>";
    tcp.write_all(bind.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = next_element(&mut tcp, &mut sp).await?;
    let jid = (attr(&answer, "type") == Some(b"result"))
        .then(|| child_text(&answer, "jid"))
        .flatten()
        .ok_or_else(|| format!("bind for {user}: {}", String::from_utf8_lossy(&answer)))?;
    let jid = String::from_utf8_lossy(jid).into_owned();
    let (r, w) = tcp.into_split();
    let writer = spawn_writer(w);
    tokio::spawn(read_stanzas(
        r,
        sp,
        events,
        move |stanza, at| Event::Client(client, stanza, at),
        move |why| Event::ClientClosed(client, why),
        "the server closed the stream",
    ));
    Ok((writer, jid))
}

/// Sends a stream header and reads the server's, then its `<stream:features>`.
async fn c2s_open(tcp: &mut TcpStream, sp: &mut Splitter, open: &str) -> Result<Vec<u8>, String> {
    tcp.write_all(open.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let header = read_until(tcp, &mut sp.buf, find_stream_open).await?;
    sp.buf.drain(..header);
    let features = next_element(tcp, sp).await?;
    if !features.starts_with(b"<stream:features") {
        return Err(format!(
            "expected stream features: {}",
            String::from_utf8_lossy(&features)
        ));
    }
    Ok(features)
}

/// The next top-level element of a stream whose header has been read.
async fn next_element(
    r: &mut (impl AsyncRead + Unpin),
    sp: &mut Splitter,
) -> Result<Vec<u8>, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(e) = sp.next()? {
            return Ok(e);
        }
        let n = r.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "stream closed during login: {}",
                String::from_utf8_lossy(&sp.buf)
            ));
        }
        sp.buf.extend_from_slice(&chunk[..n]);
    }
}

/// End of `<stream:stream …>` (after an optional XML declaration).
fn find_stream_open(b: &[u8]) -> Option<usize> {
    let start = memchr::memmem::find(b, b"<stream:stream")?;
    memchr::memchr(b'>', &b[start..]).map(|i| start + i + 1)
}

/// Cuts top-level elements out of the component stream (no DTDs, comments or CDATA in XMPP;
/// quotes in attribute values are respected).
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
}

impl Splitter {
    fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        let b = &self.buf;
        let mut i = 0;
        while i < b.len() && b[i] != b'<' {
            i += 1;
        }
        let start = i;
        let mut depth = 0usize;
        while i < b.len() {
            if b[i] != b'<' {
                i += 1;
                continue;
            }
            let Some(close) = tag_end(&b[i..]) else {
                break;
            };
            let tag = &b[i..i + close + 1];
            i += close + 1;
            if tag.starts_with(b"</") {
                if depth == 0 {
                    return Err(format!("end of stream: {}", String::from_utf8_lossy(tag)));
                }
                depth -= 1;
            } else if tag.starts_with(b"<?") || tag.ends_with(b"/>") {
            } else {
                depth += 1;
                continue;
            }
            if depth == 0 {
                let stanza = b[start..i].to_vec();
                self.buf.drain(..i);
                return Ok(Some(stanza));
            }
        }
        if start > 0 {
            self.buf.drain(..start);
        }
        Ok(None)
    }
}

/// Offset of the `>` that ends the tag starting at `b[0]`, outside quoted values.
fn tag_end(b: &[u8]) -> Option<usize> {
    let mut quote = 0u8;
    for (i, &c) in b.iter().enumerate().skip(1) {
        match c {
            b'"' | b'\'' if quote == 0 => quote = c,
            c if c == quote => quote = 0,
            b'>' if quote == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// The value of attribute `name` in the start tag of `stanza` (either quote).
pub fn attr<'a>(stanza: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let head = &stanza[..tag_end(stanza)?];
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&head[from..], name.as_bytes()) {
        let at = from + i;
        let after = at + name.len();
        let quote = head.get(after + 1).copied();
        if let (true, Some(q)) = (
            at > 0 && head[at - 1] == b' ' && head.get(after) == Some(&b'='),
            quote,
        ) {
            let rest = &head[after + 2..];
            let end = memchr::memchr(q, rest)?;
            return Some(&rest[..end]);
        }
        from = after;
    }
    None
}

/// The text of the first `<name>…</name>` child (no unescaping: load markers are ASCII).
pub fn child_text<'a>(stanza: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let open = format!("<{name}");
    let start = memchr::memmem::find(stanza, open.as_bytes())?;
    let gt = start + memchr::memchr(b'>', &stanza[start..])?;
    if stanza[gt - 1] == b'/' {
        return Some(&[]);
    }
    let close = format!("</{name}>");
    let end = memchr::memmem::find(&stanza[gt..], close.as_bytes())?;
    Some(&stanza[gt + 1..gt + end])
}

/// The number after `marker` in `text` (load generator sequence numbers, e.g. `m123`).
pub fn seq_after(text: &[u8], marker: u8) -> Option<u64> {
    let i = memchr::memchr(marker, text)?;
    text[i + 1..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .fold(None, |acc: Option<u64>, c| {
            Some(acc.unwrap_or(0) * 10 + u64::from(c - b'0'))
        })
}

// ------------------------------------------------------------------ SIP over mutual TLS

pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl Tls {
    pub fn new(leaf: &Leaf, ca: &CertificateDer<'static>) -> Tls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).expect("the test CA");
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(leaf.0.clone(), leaf.1.clone_key())
            .expect("peer certificate");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(leaf.0.clone(), leaf.1.clone_key())
            .expect("peer certificate");
        Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        }
    }
}

/// A partner edge on loopback accepting the bridge's mutual-TLS SIP connections
/// ([`accept_sip`], ids from 0): its port, a sender for the test's own connections' events, and
/// the events of all of them.
pub async fn sip_partner(
    acceptor: TlsAcceptor,
) -> (u16, UnboundedSender<Event>, UnboundedReceiver<Event>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("a bound address").port();
    let (events_tx, events) = unbounded_channel();
    accept_sip(listener, acceptor, 0, events_tx.clone());
    (port, events_tx, events)
}

/// Accepts the bridge's TLS connections on `listener` for ever, numbering them from
/// `first_id` upwards.
pub fn accept_sip(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    first_id: usize,
    events: UnboundedSender<Event>,
) {
    tokio::spawn(async move {
        let mut id = first_id;
        while let Ok((tcp, _)) = listener.accept().await {
            tcp.set_nodelay(true).ok();
            let (acceptor, events, conn) = (acceptor.clone(), events.clone(), id);
            id += 1;
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => run_sip(conn, tls, events).await,
                    Err(e) => {
                        let _ = events.send(Event::SipClosed(conn, format!("handshake: {e}")));
                    }
                }
            });
        }
    });
}

/// Connects to the bridge as the LCS edge (connection `conn`); the handshake's end is when
/// [`Event::SipUp`] arrives.
pub async fn connect_sip(
    addr: SocketAddr,
    connector: TlsConnector,
    conn: usize,
    events: UnboundedSender<Event>,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from("sip.xmpp.test").expect("a DNS name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(run_sip(conn, tls, events));
    Ok(())
}

async fn run_sip<S: AsyncRead + AsyncWrite + Send + 'static>(
    conn: usize,
    stream: S,
    events: UnboundedSender<Event>,
) {
    let (mut r, w) = tokio::io::split(stream);
    let writer = spawn_writer(w);
    // Weak: dropping the driver's writer closes the connection.
    let pong = writer.downgrade();
    if events.send(Event::SipUp(conn, writer)).is_err() {
        return;
    }
    let mut framer = Framer::new(Limits::default());
    let mut chunk = vec![0u8; 64 * 1024];
    let why = loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) => break "closed by the bridge".to_owned(),
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        framer.push(&chunk[..n]);
        let at = Instant::now();
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Message(m))) => {
                    if events.send(Event::Sip(conn, m, at)).is_err() {
                        return;
                    }
                }
                Ok(Some(Frame::Ping)) => {
                    if let Some(w) = pong.upgrade() {
                        let _ = w.send(PONG.to_vec());
                    }
                }
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Invalid { error, .. })) => {
                    let _ = events.send(Event::SipClosed(conn, format!("invalid: {error}")));
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send(Event::SipClosed(conn, format!("framing: {e}")));
                    return;
                }
            }
        }
    };
    let _ = events.send(Event::SipClosed(conn, why));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_cuts_elements_and_attr_reads_either_quote() {
        let mut s = Splitter {
            buf: b" <message to=\"a>b\" from='c'><body>x</body></message><presence/><iq".to_vec(),
        };
        let m = s.next().unwrap().unwrap();
        assert_eq!(attr(&m, "to"), Some(&b"a>b"[..]));
        assert_eq!(attr(&m, "from"), Some(&b"c"[..]));
        assert_eq!(child_text(&m, "body"), Some(&b"x"[..]));
        assert_eq!(s.next().unwrap().unwrap(), b"<presence/>");
        assert_eq!(s.next().unwrap(), None);
        assert_eq!(seq_after(b"s42", b's'), Some(42));
    }

    #[test]
    fn splitter_takes_features_after_a_drained_stream_header() {
        let mut s = Splitter {
            buf: b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='x'>\
                   <stream:features><mechanisms><mechanism>PLAIN</mechanism></mechanisms>\
                   </stream:features><success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
                .to_vec(),
        };
        let header = find_stream_open(&s.buf).unwrap();
        s.buf.drain(..header);
        let f = s.next().unwrap().unwrap();
        assert!(f.starts_with(b"<stream:features") && f.ends_with(b"</stream:features>"));
        assert_eq!(
            s.next().unwrap().unwrap(),
            b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
        );
        assert!(s.next().unwrap().is_none());
    }
}
