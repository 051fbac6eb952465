//! A minimal XEP-0114 component client, for smoke tests of the XMPP servers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::base::LOOPBACK;

/// Outcome of [`component_handshake`].
#[derive(Debug)]
pub enum Handshake {
    /// The server answered `<handshake/>`.
    Accepted { stream_id: String },
    /// The server refused; `transcript` is everything it sent.
    Refused { transcript: String },
}

/// Lowercase hex SHA-1 of `stream_id + secret` (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("{stream_id}{secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to `127.0.0.1:port` as component `domain` and performs the XEP-0114
/// handshake with `secret`. Every read is bounded; panics on I/O trouble or after
/// `timeout` without an answer.
pub fn component_handshake(port: u16, domain: &str, secret: &str, timeout: Duration) -> Handshake {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((LOOPBACK, port));
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("set_read_timeout");
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("set_write_timeout");
    write!(
        sock,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    )
    .expect("send stream header");

    let mut buf = String::new();
    let header_done = |b: &str| {
        b.find("<stream:stream")
            .is_some_and(|i| b[i..].contains('>'))
            || b.contains("</stream:stream>")
            || b.contains("<stream:error")
    };
    read_until(&mut sock, &mut buf, deadline, header_done);
    let Some(stream_id) = stream_header_id(&buf) else {
        return Handshake::Refused { transcript: buf };
    };
    write!(
        sock,
        "<handshake>{}</handshake>",
        handshake_digest(&stream_id, secret)
    )
    .expect("send handshake");
    let answered = |b: &str| {
        b.contains("<handshake/>")
            || b.contains("<handshake></handshake>")
            || b.contains("</stream:stream>")
            || b.contains("</stream:error>")
    };
    read_until(&mut sock, &mut buf, deadline, answered);
    if buf.contains("<handshake/>") || buf.contains("<handshake></handshake>") {
        let _ = sock.write_all(b"</stream:stream>");
        Handshake::Accepted { stream_id }
    } else {
        Handshake::Refused { transcript: buf }
    }
}

fn read_until(
    sock: &mut TcpStream,
    buf: &mut String,
    deadline: Instant,
    done: impl Fn(&str) -> bool,
) {
    let mut chunk = [0u8; 4096];
    while !done(buf) {
        if Instant::now() >= deadline {
            panic!("no complete answer from the XMPP server in time; got so far: {buf:?}");
        }
        match sock.read(&mut chunk) {
            Ok(0) => return, // closed
            Ok(n) => buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("read from XMPP server: {e}; got so far: {buf:?}"),
        }
    }
}

/// The `id` attribute of the first `<stream:stream …>` tag in `buf`.
fn stream_header_id(buf: &str) -> Option<String> {
    let start = buf.find("<stream:stream")?;
    let tag = &buf[start..start + buf[start..].find('>')?];
    let mut rest = tag;
    while let Some(i) = rest.find("id=") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 3..];
        if before.is_some_and(char::is_whitespace) {
            let quote = after.chars().next()?;
            if quote == '\'' || quote == '"' {
                let value = &after[1..];
                return Some(value[..value.find(quote)?].to_string());
            }
        }
        rest = after;
    }
    None
}
