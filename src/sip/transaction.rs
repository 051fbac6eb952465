//! SIP transactions over a reliable transport (RFC 3261 §17, with RFC 6026 for 2xx to INVITE),
//! sans-IO: every call takes `now`, outputs are drained with [`Transactions::poll_output`] and
//! the next deadline is [`Transactions::poll_timeout`]. No sockets, no clock, no tasks.
//!
//! The federation link is TLS only, so nothing is retransmitted (§17.1.1.2, §17.1.2.2: Timers A
//! and E are not used on reliable transports), and the timers that only absorb retransmissions
//! are zero: Timer D, I, J and K. What remains:
//!
//! | timer | value | meaning |
//! | --- | --- | --- |
//! | B | 64·T1 | INVITE client: no final response → [`TxEvent::Timeout`] |
//! | F | 64·T1 | non-INVITE client: no final response → [`TxEvent::Timeout`] |
//! | H | 64·T1 | INVITE server: no ACK for a non-2xx final response → [`TxEvent::AckTimeout`] |
//!
//! Matching: a response belongs to the client transaction with the same top Via branch and CSeq
//! method (§17.1.3); a request belongs to the server transaction with the same top Via branch,
//! sent-by and method, ACK counting as INVITE (§17.2.3). The layer answers on its own where RFC
//! 3261 says the transaction does: `100 Trying` to INVITE (§17.2.1), the ACK for a non-2xx final
//! response (§17.1.1.3), `200` to a CANCEL that matches an INVITE and `481` to one that does not
//! (§9.2). Everything else goes to the transaction user as a [`TxEvent`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::header::HeaderKind;
use super::message::{Message, Method};
use super::status::{self, Reject};

/// The connection a message came in on or goes out on (owned by the edge).
pub type ConnId = u64;

/// A transaction's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

/// Hands out transaction ids. Clones share one counter, so the code that names a client
/// transaction before it reaches the layer (the edge's handle) and the layer itself never
/// hand out the same id.
#[derive(Debug, Clone)]
pub struct TxIds(Arc<AtomicU64>);

impl Default for TxIds {
    fn default() -> Self {
        TxIds(Arc::new(AtomicU64::new(1)))
    }
}

impl TxIds {
    pub fn next(&self) -> TxId {
        TxId(self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// RFC 3261 T1 (500 ms): the timers are multiples of it.
pub const T1: Duration = Duration::from_millis(500);

/// What the layer wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write this message to this connection.
    Transmit { conn: ConnId, message: Message },
    /// Tell the transaction user.
    Event(TxEvent),
}

/// Events for the transaction user (the dialog / engine layer).
#[derive(Debug, Clone, PartialEq)]
pub enum TxEvent {
    /// A new request created server transaction `tx` (answer it with [`Transactions::respond`]).
    Request {
        tx: TxId,
        conn: ConnId,
        request: Message,
    },
    /// An ACK that matched no transaction: the ACK for a 2xx, which belongs to the dialog.
    Ack { conn: ConnId, request: Message },
    /// A response to client transaction `tx`, received on `conn` (where a dialog it creates
    /// lives); `is_final` ends the transaction.
    Response {
        tx: TxId,
        conn: ConnId,
        response: Message,
        is_final: bool,
    },
    /// Client transaction `tx` got no final response in time (Timer B or F).
    Timeout { tx: TxId },
    /// The connection of client transaction `tx` was lost before a final response.
    TransportError { tx: TxId },
    /// Server INVITE transaction `tx` was cancelled (the CANCEL was answered with 200); the user
    /// should now send `487 Request Terminated` on it.
    Cancelled { tx: TxId },
    /// Server INVITE transaction `tx` sent a non-2xx final response and no ACK came (Timer H).
    AckTimeout { tx: TxId },
    /// A response that matches no client transaction (dropped, RFC 3261 §18.1.2).
    StrayResponse { conn: ConnId, response: Message },
}

/// Misuse of the API (never caused by peer input).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxError {
    #[error("request has no top Via with a branch")]
    NoBranch,
    #[error("ACK is not sent in a transaction (RFC 3261 §17.1.1.3)")]
    AckNotTransaction,
    #[error("a client transaction with this branch and method exists already")]
    DuplicateBranch,
    #[error("unknown or finished server transaction")]
    UnknownTransaction,
    #[error("a final response was already sent on this transaction")]
    AlreadyFinal,
    #[error("status {0} is not a valid response status")]
    BadStatus(u16),
    #[error("message is not a {0}")]
    WrongKind(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    /// ACK is stored as INVITE.
    method: Method,
}

#[derive(Debug)]
struct Client {
    key: ClientKey,
    conn: ConnId,
    request: Message,
    deadline: Instant,
}

#[derive(Debug, PartialEq, Eq)]
enum ServerState {
    /// No final response yet.
    Proceeding,
    /// INVITE only: non-2xx final response sent, waiting for the ACK until the deadline.
    Completed { deadline: Instant },
}

#[derive(Debug)]
struct Server {
    key: ServerKey,
    conn: ConnId,
    request: Message,
    state: ServerState,
    last_response: Option<Message>,
}

/// The transaction layer of one bridge instance (all connections).
#[derive(Debug)]
pub struct Transactions {
    timeout: Duration,
    ids: TxIds,
    clients: HashMap<TxId, Client>,
    client_index: HashMap<ClientKey, TxId>,
    servers: HashMap<TxId, Server>,
    server_index: HashMap<ServerKey, TxId>,
    /// Timer B/F/H deadlines, earliest first. A deadline is set once per transaction, so an
    /// entry counts while its transaction is there with that deadline; the others are dropped
    /// when they reach the top. The edge asks for the next deadline after every event: this
    /// keeps that O(1) however many transactions are open.
    deadlines: BinaryHeap<Reverse<(Instant, TxId)>>,
    out: VecDeque<Output>,
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions::new(T1)
    }
}

fn top_branch_and_sent_by(m: &Message) -> Option<(String, String)> {
    let via = m.top_via().ok()?;
    let branch = via.branch()?.to_owned();
    let sent_by = match via.port {
        Some(p) => format!("{}:{p}", via.host.to_ascii_lowercase()),
        None => via.host.to_ascii_lowercase(),
    };
    Some((branch, sent_by))
}

impl Transactions {
    /// A layer whose timers are 64 × `t1` (RFC 3261 default T1 = 500 ms, so 32 s).
    pub fn new(t1: Duration) -> Transactions {
        Transactions {
            timeout: t1 * 64,
            ids: TxIds::default(),
            clients: HashMap::new(),
            client_index: HashMap::new(),
            servers: HashMap::new(),
            server_index: HashMap::new(),
            deadlines: BinaryHeap::new(),
            out: VecDeque::new(),
        }
    }

    fn id(&mut self) -> TxId {
        self.ids.next()
    }

    /// The id source of this layer, for naming client transactions ahead of
    /// [`Transactions::send_request_as`].
    pub fn ids(&self) -> TxIds {
        self.ids.clone()
    }

    fn transmit(&mut self, conn: ConnId, message: Message) {
        self.out.push_back(Output::Transmit { conn, message });
    }

    fn event(&mut self, e: TxEvent) {
        self.out.push_back(Output::Event(e));
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest deadline; call [`Transactions::handle_timeout`] then.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Asked after every event: the moment to give back what a burst left.
        crate::compact::map(&mut self.clients);
        crate::compact::map(&mut self.client_index);
        crate::compact::map(&mut self.servers);
        crate::compact::map(&mut self.server_index);
        crate::compact::heap(&mut self.deadlines);
        while let Some(Reverse((at, tx))) = self.deadlines.peek() {
            if self.deadline_of(*tx) == Some(*at) {
                return Some(*at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The deadline of transaction `tx`, if it is open and has one.
    fn deadline_of(&self, tx: TxId) -> Option<Instant> {
        if let Some(c) = self.clients.get(&tx) {
            return Some(c.deadline);
        }
        match self.servers.get(&tx)?.state {
            ServerState::Completed { deadline } => Some(deadline),
            ServerState::Proceeding => None,
        }
    }

    /// Number of live transactions (client, server).
    pub fn len(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// Starts a client transaction: the request is transmitted on `conn` and Timer B/F starts.
    pub fn send_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: Message,
    ) -> Result<TxId, TxError> {
        let id = self.id();
        self.send_request_as(now, id, conn, request)?;
        Ok(id)
    }

    /// [`Transactions::send_request`] with an id taken earlier from [`Transactions::ids`].
    pub fn send_request_as(
        &mut self,
        now: Instant,
        id: TxId,
        conn: ConnId,
        request: Message,
    ) -> Result<TxId, TxError> {
        let method = request
            .method()
            .cloned()
            .ok_or(TxError::WrongKind("request"))?;
        if method == Method::Ack {
            return Err(TxError::AckNotTransaction);
        }
        let (branch, _) = top_branch_and_sent_by(&request).ok_or(TxError::NoBranch)?;
        let key = ClientKey { branch, method };
        if self.client_index.contains_key(&key) {
            return Err(TxError::DuplicateBranch);
        }

        self.client_index.insert(key.clone(), id);
        self.transmit(conn, request.clone());
        self.clients.insert(
            id,
            Client {
                key,
                conn,
                request,
                deadline: now + self.timeout,
            },
        );
        self.deadlines.push(Reverse((now + self.timeout, id)));
        Ok(id)
    }

    /// Sends a response on server transaction `tx`.
    pub fn respond(&mut self, now: Instant, tx: TxId, response: Message) -> Result<(), TxError> {
        let status = response.status().ok_or(TxError::WrongKind("response"))?;
        if !status::is_valid(status) {
            return Err(TxError::BadStatus(status));
        }
        let server = self
            .servers
            .get_mut(&tx)
            .ok_or(TxError::UnknownTransaction)?;
        if server.state != ServerState::Proceeding {
            return Err(TxError::AlreadyFinal);
        }
        let conn = server.conn;
        let invite = server.key.method == Method::Invite;
        if status::is_final(status) {
            if invite && status::is_failure(status) {
                // §17.2.1: Completed, wait for the ACK (Timer H); Timer G is not used on TLS.
                server.state = ServerState::Completed {
                    deadline: now + self.timeout,
                };
                self.deadlines.push(Reverse((now + self.timeout, tx)));
                server.last_response = Some(response.clone());
            } else {
                // Non-INVITE final (Timer J = 0) or 2xx to INVITE (RFC 6026: the 2xx and its ACK
                // belong to the dialog; nothing is retransmitted on TLS).
                let key = server.key.clone();
                self.servers.remove(&tx);
                self.server_index.remove(&key);
            }
        } else {
            server.last_response = Some(response.clone());
        }
        self.transmit(conn, response);
        Ok(())
    }

    /// Feeds a message received on `conn`. (`now` is taken for symmetry with the other inputs;
    /// no timer starts on receipt over a reliable transport.)
    pub fn receive(&mut self, _now: Instant, conn: ConnId, message: Message) {
        if message.is_request() {
            self.receive_request(conn, message);
        } else {
            self.receive_response(conn, message);
        }
    }

    fn receive_response(&mut self, conn: ConnId, response: Message) {
        let key = match (top_branch_and_sent_by(&response), response.cseq()) {
            (Some((branch, _)), Ok(cseq)) => ClientKey {
                branch,
                method: cseq.method,
            },
            _ => {
                self.event(TxEvent::StrayResponse { conn, response });
                return;
            }
        };
        let Some(&tx) = self.client_index.get(&key) else {
            self.event(TxEvent::StrayResponse { conn, response });
            return;
        };
        let status = response.status().unwrap_or(0);
        let is_final = status::is_final(status);
        if is_final {
            if let Some(client) = self.clients.remove(&tx) {
                self.client_index.remove(&client.key);
                if client.key.method == Method::Invite && status::is_failure(status) {
                    let ack = ack_for(&client.request, &response);
                    self.transmit(client.conn, ack);
                }
            }
        }
        self.event(TxEvent::Response {
            tx,
            conn,
            response,
            is_final,
        });
    }

    fn receive_request(&mut self, conn: ConnId, request: Message) {
        let Some(method) = request.method().cloned() else {
            return;
        };
        let Some((branch, sent_by)) = top_branch_and_sent_by(&request) else {
            // Without a branch no transaction can be matched: answer 400 (§8.1.1.7).
            if method != Method::Ack {
                let resp = Reject::new(status::BAD_REQUEST)
                    .reason("Missing Via branch")
                    .response_to(&request, None);
                self.transmit(conn, resp);
            }
            return;
        };
        let class = if method == Method::Ack {
            Method::Invite
        } else {
            method.clone()
        };
        let key = ServerKey {
            branch,
            sent_by,
            method: class,
        };
        if let Some(&tx) = self.server_index.get(&key) {
            if method == Method::Ack {
                // ACK for our non-2xx final response: Confirmed, Timer I = 0 → done.
                if let Some(server) = self.servers.get(&tx) {
                    if matches!(server.state, ServerState::Completed { .. }) {
                        self.servers.remove(&tx);
                        self.server_index.remove(&key);
                    }
                }
            } else if let Some(last) = self.servers.get(&tx).and_then(|s| s.last_response.clone()) {
                // A retransmission: repeat the last response (§17.2.1, §17.2.2).
                self.transmit(conn, last);
            }
            return;
        }
        match method {
            Method::Ack => self.event(TxEvent::Ack { conn, request }),
            Method::Cancel => self.receive_cancel(conn, key, request),
            Method::Benotify => {
                // Microsoft's best-effort NOTIFY expects no response ([MS-SIP] §3.5): no
                // server transaction is kept for it, since none would ever complete.
                let tx = self.id();
                self.event(TxEvent::Request { tx, conn, request });
            }
            _ => {
                let tx = self.id();
                let mut last_response = None;
                if method == Method::Invite {
                    let trying = Message::response_to(&request, status::TRYING, None, None);
                    self.transmit(conn, trying.clone());
                    last_response = Some(trying);
                }
                self.server_index.insert(key.clone(), tx);
                self.servers.insert(
                    tx,
                    Server {
                        key,
                        conn,
                        request: request.clone(),
                        state: ServerState::Proceeding,
                        last_response,
                    },
                );
                self.event(TxEvent::Request { tx, conn, request });
            }
        }
    }

    /// CANCEL (§9.2): it matches the INVITE server transaction with the same branch and sent-by.
    fn receive_cancel(&mut self, conn: ConnId, key: ServerKey, cancel: Message) {
        let invite_key = ServerKey {
            method: Method::Invite,
            ..key
        };
        let target = self.server_index.get(&invite_key).copied();
        match target {
            Some(tx) => {
                let ok = Message::response_to(&cancel, status::OK, None, None);
                self.transmit(conn, ok);
                let proceeding = self
                    .servers
                    .get(&tx)
                    .is_some_and(|s| s.state == ServerState::Proceeding);
                if proceeding {
                    self.event(TxEvent::Cancelled { tx });
                }
            }
            None => {
                let resp = Reject::new(status::CALL_DOES_NOT_EXIST).response_to(&cancel, None);
                self.transmit(conn, resp);
            }
        }
    }

    /// The request that created server transaction `tx` (to build responses from).
    pub fn server_request(&self, tx: TxId) -> Option<&Message> {
        self.servers.get(&tx).map(|s| &s.request)
    }

    /// Fires every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let (mut clients, mut servers) = (Vec::new(), Vec::new());
        while let Some(Reverse((at, tx))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.deadline_of(tx) != Some(at) {
                continue;
            }
            if self.clients.contains_key(&tx) {
                clients.push(tx);
            } else {
                servers.push(tx);
            }
        }
        clients.sort_unstable();
        for tx in clients {
            if let Some(c) = self.clients.remove(&tx) {
                self.client_index.remove(&c.key);
                self.event(TxEvent::Timeout { tx });
            }
        }
        servers.sort_unstable();
        for tx in servers {
            if let Some(s) = self.servers.remove(&tx) {
                self.server_index.remove(&s.key);
                self.event(TxEvent::AckTimeout { tx });
            }
        }
    }

    /// The connection is gone: its client transactions fail with a transport error (§17.1.4);
    /// its server transactions end silently, since a response is never sent on another
    /// connection (profile: "Via headers and response handling").
    pub fn connection_lost(&mut self, conn: ConnId) {
        let mut lost: Vec<TxId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        lost.sort_unstable();
        for tx in lost {
            if let Some(c) = self.clients.remove(&tx) {
                self.client_index.remove(&c.key);
                self.event(TxEvent::TransportError { tx });
            }
        }
        let servers: Vec<TxId> = self
            .servers
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for tx in servers {
            if let Some(s) = self.servers.remove(&tx) {
                self.server_index.remove(&s.key);
            }
        }
    }
}

/// The ACK for a non-2xx final response (§17.1.1.3): Request-URI, top Via, From, Call-ID and
/// Route of the INVITE, To of the response, CSeq number of the INVITE with method ACK.
fn ack_for(invite: &Message, response: &Message) -> Message {
    let mut ack = Message::new_request(Method::Ack, invite.request_uri().unwrap_or_default());
    if let Some(via) = invite.values(HeaderKind::Via).next() {
        ack.push_header("Via", via);
    }
    ack.push_header("Max-Forwards", "70");
    for (kind, source) in [
        (HeaderKind::From, invite),
        (HeaderKind::To, response),
        (HeaderKind::CallId, invite),
    ] {
        if let Some(v) = source.values(kind).next() {
            ack.push_header(kind.name(), v);
        }
    }
    if let Ok(cseq) = invite.cseq() {
        ack.push_header("CSeq", &format!("{} ACK", cseq.number));
    }
    for (name, value) in invite.headers() {
        if HeaderKind::of(name) == HeaderKind::Route {
            ack.push_header("Route", value);
        }
    }
    ack.push_header("Content-Length", "0");
    ack
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn req(method: &str, branch: &str) -> Message {
        let raw = format!(
            "{method} sip:joe@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a1\r\nTo: <sip:joe@contoso.com>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\nRoute: <sip:edge.contoso.com;lr>\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    fn resp(request: &Message, status: u16) -> Message {
        Message::response_to(request, status, None, Some("j9"))
    }

    fn drain(t: &mut Transactions) -> Vec<Output> {
        std::iter::from_fn(|| t.poll_output()).collect()
    }

    fn events(t: &mut Transactions) -> Vec<TxEvent> {
        drain(t)
            .into_iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e),
                Output::Transmit { .. } => None,
            })
            .collect()
    }

    #[test]
    fn non_invite_client_completes_on_final_response() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let m = req("MESSAGE", "z9hG4bK1");
        let tx = t.send_request(now, 7, m.clone()).unwrap();
        assert_eq!(
            drain(&mut t),
            vec![Output::Transmit {
                conn: 7,
                message: m.clone()
            }]
        );
        assert_eq!(t.poll_timeout(), Some(now + T1 * 64));
        t.receive(now, 7, resp(&m, 200));
        assert!(matches!(
            events(&mut t).as_slice(),
            [TxEvent::Response { tx: got, conn: 7, is_final: true, .. }] if *got == tx
        ));
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.len(), (0, 0));
        // A late duplicate is stray.
        t.receive(now, 7, resp(&m, 200));
        assert!(matches!(
            events(&mut t).as_slice(),
            [TxEvent::StrayResponse { conn: 7, .. }]
        ));
    }

    #[test]
    fn timer_f_fires_at_64_t1_and_not_before() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let tx = t
            .send_request(now, 1, req("SUBSCRIBE", "z9hG4bK2"))
            .unwrap();
        drain(&mut t);
        t.handle_timeout(now + Duration::from_millis(31_999));
        assert_eq!(events(&mut t), vec![]);
        t.handle_timeout(now + Duration::from_secs(32));
        assert_eq!(events(&mut t), vec![TxEvent::Timeout { tx }]);
        assert_eq!(t.len(), (0, 0));
    }

    #[test]
    fn invite_client_acks_a_failure_itself() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let invite = req("INVITE", "z9hG4bK3");
        let tx = t.send_request(now, 2, invite.clone()).unwrap();
        drain(&mut t);
        t.receive(now, 2, resp(&invite, 180));
        assert!(matches!(
            events(&mut t).as_slice(),
            [TxEvent::Response {
                is_final: false,
                ..
            }]
        ));
        t.receive(now, 2, resp(&invite, 486));
        let out = drain(&mut t);
        let Output::Transmit {
            conn: 2,
            message: ack,
        } = &out[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            String::from_utf8(ack.to_bytes()).unwrap(),
            "ACK sip:joe@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bK3\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a1\r\nTo: <sip:joe@contoso.com>;tag=j9\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nRoute: <sip:edge.contoso.com;lr>\r\nContent-Length: 0\r\n\r\n"
        );
        assert!(matches!(
            &out[1],
            Output::Event(TxEvent::Response { tx: got, is_final: true, .. }) if *got == tx
        ));
        // A 2xx is left to the dialog layer: no ACK from the transaction.
        let invite = req("INVITE", "z9hG4bK4");
        t.send_request(now, 2, invite.clone()).unwrap();
        drain(&mut t);
        t.receive(now, 2, resp(&invite, 200));
        assert!(matches!(
            drain(&mut t).as_slice(),
            [Output::Event(TxEvent::Response { .. })]
        ));
    }

    #[test]
    fn same_branch_different_method_are_different_transactions() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let invite = req("INVITE", "z9hG4bK5");
        let cancel = req("CANCEL", "z9hG4bK5");
        let a = t.send_request(now, 1, invite.clone()).unwrap();
        let b = t.send_request(now, 1, cancel.clone()).unwrap();
        assert_eq!(
            t.send_request(now, 1, invite.clone()),
            Err(TxError::DuplicateBranch)
        );
        assert_eq!(
            t.send_request(now, 1, req("ACK", "z9hG4bK6")),
            Err(TxError::AckNotTransaction)
        );
        drain(&mut t);
        t.receive(now, 1, resp(&cancel, 200));
        assert!(matches!(events(&mut t).as_slice(), [TxEvent::Response { tx, .. }] if *tx == b));
        t.receive(now, 1, resp(&invite, 487));
        assert!(matches!(events(&mut t).as_slice(), [TxEvent::Response { tx, .. }] if *tx == a));
    }

    #[test]
    fn invite_server_sends_trying_and_absorbs_the_ack() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let invite = req("INVITE", "z9hG4bK7");
        t.receive(now, 3, invite.clone());
        let out = drain(&mut t);
        assert!(
            matches!(&out[0], Output::Transmit { conn: 3, message } if message.status() == Some(100))
        );
        let Output::Event(TxEvent::Request { tx, conn: 3, .. }) = out[1] else {
            panic!("{out:?}")
        };
        // A retransmitted INVITE gets the last response again and no new event.
        t.receive(now, 3, invite.clone());
        assert!(
            matches!(drain(&mut t).as_slice(), [Output::Transmit { message, .. }] if message.status() == Some(100))
        );
        t.respond(now, tx, resp(&invite, 486)).unwrap();
        assert_eq!(
            t.respond(now, tx, resp(&invite, 500)),
            Err(TxError::AlreadyFinal)
        );
        drain(&mut t);
        assert_eq!(t.poll_timeout(), Some(now + T1 * 64));
        t.receive(now, 3, req("ACK", "z9hG4bK7"));
        assert_eq!(drain(&mut t), vec![]);
        assert_eq!(t.len(), (0, 0));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn timer_h_without_ack() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let invite = req("INVITE", "z9hG4bK8");
        t.receive(now, 3, invite.clone());
        let tx = match drain(&mut t).pop() {
            Some(Output::Event(TxEvent::Request { tx, .. })) => tx,
            other => panic!("{other:?}"),
        };
        assert_eq!(t.server_request(tx), Some(&invite));
        t.respond(now, tx, resp(&invite, 603)).unwrap();
        drain(&mut t);
        t.handle_timeout(now + T1 * 64);
        assert_eq!(events(&mut t), vec![TxEvent::AckTimeout { tx }]);
    }

    #[test]
    fn cancel_matches_the_invite_or_gets_481() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let invite = req("INVITE", "z9hG4bK9");
        t.receive(now, 4, invite.clone());
        let tx = match drain(&mut t).pop() {
            Some(Output::Event(TxEvent::Request { tx, .. })) => tx,
            other => panic!("{other:?}"),
        };
        t.receive(now, 4, req("CANCEL", "z9hG4bK9"));
        let out = drain(&mut t);
        assert!(
            matches!(&out[0], Output::Transmit { message, .. } if message.status() == Some(200) && message.cseq().unwrap().method == Method::Cancel)
        );
        assert_eq!(out[1], Output::Event(TxEvent::Cancelled { tx }));
        t.receive(now, 4, req("CANCEL", "z9hG4bKnone"));
        assert!(
            matches!(drain(&mut t).as_slice(), [Output::Transmit { message, .. }] if message.status() == Some(481))
        );
    }

    #[test]
    fn ack_for_2xx_goes_to_the_dialog_layer_and_non_invite_server_ends_on_final() {
        let now = Instant::now();
        let mut t = Transactions::default();
        t.receive(now, 5, req("ACK", "z9hG4bKa"));
        assert!(matches!(
            events(&mut t).as_slice(),
            [TxEvent::Ack { conn: 5, .. }]
        ));
        let message = req("MESSAGE", "z9hG4bKb");
        t.receive(now, 5, message.clone());
        let tx = match drain(&mut t).pop() {
            Some(Output::Event(TxEvent::Request { tx, .. })) => tx,
            other => panic!("{other:?}"),
        };
        t.respond(now, tx, resp(&message, 200)).unwrap();
        assert!(matches!(
            drain(&mut t).as_slice(),
            [Output::Transmit { conn: 5, .. }]
        ));
        assert_eq!(t.len(), (0, 0));
        assert_eq!(
            t.respond(now, tx, resp(&message, 200)),
            Err(TxError::UnknownTransaction)
        );
    }

    #[test]
    fn lost_connection_fails_its_client_transactions_only() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let a = t.send_request(now, 1, req("MESSAGE", "z9hG4bKc")).unwrap();
        let _b = t.send_request(now, 2, req("MESSAGE", "z9hG4bKd")).unwrap();
        t.receive(now, 1, req("INFO", "z9hG4bKe"));
        drain(&mut t);
        t.connection_lost(1);
        assert_eq!(events(&mut t), vec![TxEvent::TransportError { tx: a }]);
        assert_eq!(t.len(), (1, 0));
    }

    #[test]
    fn request_without_branch_gets_400() {
        let now = Instant::now();
        let mut t = Transactions::default();
        let raw = "OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/TLS h\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        t.receive(now, 1, Message::parse(raw.as_bytes()).unwrap());
        assert!(
            matches!(drain(&mut t).as_slice(), [Output::Transmit { message, .. }] if message.status() == Some(400) && message.reason() == Some("Missing Via branch"))
        );
    }
}
