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
//! | B | 64·T1 | INVITE client in Calling (no provisional response): no final response → [`TxEvent::Timeout`] |
//! | give-up | 64·T1 | INVITE client in Proceeding (a provisional came): CANCEL sent → [`TxEvent::GaveUp`] |
//! | F | 64·T1 | non-INVITE client: no final response → [`TxEvent::Timeout`] |
//! | H | 64·T1 | INVITE server: no ACK for a non-2xx final response → [`TxEvent::AckTimeout`] |
//!
//! Matching: a response belongs to the client transaction with the same top Via branch and CSeq
//! method (§17.1.3); a request belongs to the server transaction with the same top Via branch,
//! sent-by and method, ACK counting as INVITE (§17.2.3). The layer answers on its own where RFC
//! 3261 says the transaction does: `100 Trying` to INVITE (§17.2.1), the ACK for a non-2xx final
//! response (§17.1.1.3), `200` to a CANCEL that matches an INVITE and `481` to one that does not
//! (§9.2). Everything else goes to the transaction user as a [`TxEvent`].
//!
//! Giving up on an INVITE. An INVITE client transaction is in Calling until a provisional
//! response arrives and in Proceeding after (§17.1.1.2). Timer B ends it in Calling. In
//! Proceeding RFC 3261 sets no timer: the transaction user decides when to stop waiting. The
//! bridge stops at the same 64·T1 after the INVITE went out: the layer sends a CANCEL on the
//! INVITE's connection (§9.1: Request-URI, Call-ID, From, To and the CSeq number of the INVITE,
//! a single Via equal to its top Via, its Route headers) as a client transaction of its own, and
//! tells the user [`TxEvent::GaveUp`]. A CANCEL is never sent before a provisional response
//! (§9.1). An INVITE given up on either way is remembered for another 64·T1 (at most
//! [`MAX_ABANDONED`] of them): a non-2xx final response to it (the 487 the CANCEL brings) is
//! ACKed as the transaction would (§17.1.1.3); a 2xx is ACKed (§13.2.2.4) and its dialog ended
//! at once with BYE on the connection the 2xx came on. Nothing of it reaches the user. The
//! CANCEL and the BYE are the layer's own: their responses and failures are absorbed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::header::{Contact, HeaderKind};
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

/// Most INVITEs given up on that are remembered (for 64·T1 each) to answer a late 2xx; past
/// this the oldest is forgotten (a 2xx to it is then dropped as stray).
pub const MAX_ABANDONED: usize = 1024;

/// Distinct dialogs (To tags) a late 2xx may create for one abandoned INVITE that are ended
/// with BYE (a forking peer); further ones are only ACKed.
const MAX_LATE_DIALOGS: usize = 8;

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
    /// INVITE client transaction `tx` got a provisional response but no final one within
    /// 64·T1: the layer sent CANCEL (RFC 3261 §9.1) and the transaction is over for the user.
    GaveUp { tx: TxId },
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
    /// An INVITE, kept for its ACK (non-2xx) and CANCEL; other requests are not needed after
    /// they went out, so they are not copied.
    request: Option<Message>,
    deadline: Instant,
    /// INVITE: a provisional response arrived (Proceeding, §17.1.1.2), else Calling.
    proceeding: bool,
}

/// An INVITE the layer gave up on (Timer B, or CANCEL sent), kept to answer a late response.
#[derive(Debug)]
struct Abandoned {
    key: ClientKey,
    request: Message,
    deadline: Instant,
    /// The To tags of the 2xx responses already ACKed and ended with BYE.
    ended: Vec<String>,
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
    /// INVITEs given up on, by their old id, with the key their responses carry.
    abandoned: HashMap<TxId, Abandoned>,
    abandoned_index: HashMap<ClientKey, TxId>,
    /// Order they were given up in (may hold ids already gone; cleaned as it grows).
    abandoned_order: VecDeque<TxId>,
    /// The layer's own client transactions (CANCEL, BYE): their events are absorbed.
    internal: HashSet<TxId>,
    out: VecDeque<Output>,
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions::new(T1)
    }
}

/// The top Via's branch (what matches a response to a client transaction, §17.1.3).
fn top_branch(m: &Message) -> Option<String> {
    Some(m.top_via().ok()?.branch()?.to_owned())
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
            abandoned: HashMap::new(),
            abandoned_index: HashMap::new(),
            abandoned_order: VecDeque::new(),
            internal: HashSet::new(),
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
        crate::compact::map(&mut self.abandoned);
        crate::compact::map(&mut self.abandoned_index);
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
        if let Some(a) = self.abandoned.get(&tx) {
            return Some(a.deadline);
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

    /// Number of INVITEs given up on and still remembered.
    pub fn abandoned_len(&self) -> usize {
        self.abandoned.len()
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
        let branch = top_branch(&request).ok_or(TxError::NoBranch)?;
        let invite = method == Method::Invite;
        let key = ClientKey { branch, method };
        if self.client_index.contains_key(&key) {
            return Err(TxError::DuplicateBranch);
        }

        self.client_index.insert(key.clone(), id);
        let kept = invite.then(|| request.clone());
        self.transmit(conn, request);
        self.clients.insert(
            id,
            Client {
                key,
                conn,
                request: kept,
                deadline: now + self.timeout,
                proceeding: false,
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
    pub fn receive(&mut self, now: Instant, conn: ConnId, message: Message) {
        if message.is_request() {
            self.receive_request(conn, message);
        } else {
            self.receive_response(now, conn, message);
        }
    }

    fn receive_response(&mut self, now: Instant, conn: ConnId, response: Message) {
        let key = match (top_branch(&response), response.cseq()) {
            (Some(branch), Ok(cseq)) => ClientKey {
                branch,
                method: cseq.method,
            },
            _ => {
                self.event(TxEvent::StrayResponse { conn, response });
                return;
            }
        };
        let Some(&tx) = self.client_index.get(&key) else {
            if let Some(&tx) = self.abandoned_index.get(&key) {
                self.late_response(now, tx, conn, &response);
            } else {
                self.event(TxEvent::StrayResponse { conn, response });
            }
            return;
        };
        let status = response.status().unwrap_or(0);
        let is_final = status::is_final(status);
        if is_final {
            if let Some(client) = self.clients.remove(&tx) {
                self.client_index.remove(&client.key);
                if let Some(invite) = client.request.as_ref() {
                    if status::is_failure(status) {
                        let ack = ack_for(invite, &response);
                        self.transmit(client.conn, ack);
                    }
                }
            }
        } else if let Some(client) = self.clients.get_mut(&tx) {
            client.proceeding = true;
        }
        if self.internal.contains(&tx) {
            if is_final {
                self.internal.remove(&tx);
            }
            return;
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
                if self.internal.remove(&tx) {
                    continue;
                }
                // Only an INVITE's request is kept.
                let Some(invite) = c.request else {
                    self.event(TxEvent::Timeout { tx });
                    continue;
                };
                if c.proceeding {
                    // §9.1: a CANCEL only after a provisional response, on the same connection.
                    let id = self.id();
                    if self
                        .send_request_as(now, id, c.conn, cancel_for(&invite))
                        .is_ok()
                    {
                        self.internal.insert(id);
                    }
                    self.event(TxEvent::GaveUp { tx });
                } else {
                    self.event(TxEvent::Timeout { tx });
                }
                self.abandon(now, tx, c.key, invite);
            }
        }
        servers.sort_unstable();
        for tx in servers {
            if let Some(a) = self.abandoned.remove(&tx) {
                self.abandoned_index.remove(&a.key);
            } else if let Some(s) = self.servers.remove(&tx) {
                self.server_index.remove(&s.key);
                self.event(TxEvent::AckTimeout { tx });
            }
        }
    }

    /// Remembers INVITE client transaction `tx`, given up on, for 64·T1 (at most
    /// [`MAX_ABANDONED`]: the oldest goes first).
    fn abandon(&mut self, now: Instant, tx: TxId, key: ClientKey, invite: Message) {
        while self.abandoned.len() >= MAX_ABANDONED {
            let Some(old) = self.abandoned_order.pop_front() else {
                break;
            };
            if let Some(a) = self.abandoned.remove(&old) {
                self.abandoned_index.remove(&a.key);
            }
        }
        if self.abandoned_order.len() > 2 * MAX_ABANDONED {
            let live = &self.abandoned;
            self.abandoned_order.retain(|t| live.contains_key(t));
        }
        let deadline = now + self.timeout;
        self.abandoned_index.insert(key.clone(), tx);
        self.abandoned.insert(
            tx,
            Abandoned {
                key,
                request: invite,
                deadline,
                ended: Vec::new(),
            },
        );
        self.abandoned_order.push_back(tx);
        self.deadlines.push(Reverse((deadline, tx)));
    }

    /// A response to an INVITE given up on: a non-2xx final one is ACKed (§17.1.1.3) and ends
    /// it; a 2xx is ACKed (§13.2.2.4) and its dialog ended with BYE on `conn` (once per
    /// dialog; a retransmitted 2xx is only ACKed again); a provisional one is dropped.
    fn late_response(&mut self, now: Instant, tx: TxId, conn: ConnId, response: &Message) {
        let status = response.status().unwrap_or(0);
        if !status::is_final(status) {
            return;
        }
        if status::is_failure(status) {
            if let Some(a) = self.abandoned.remove(&tx) {
                self.abandoned_index.remove(&a.key);
                let ack = ack_for(&a.request, response);
                self.transmit(conn, ack);
            }
            return;
        }
        let Some(a) = self.abandoned.get(&tx) else {
            return;
        };
        let Some(branch) = top_branch(&a.request) else {
            return;
        };
        let Some(tag) = response.to().ok().and_then(|t| t.tag().map(str::to_owned)) else {
            return;
        };
        let n = a.ended.iter().position(|t| *t == tag);
        let (index, full) = (
            n.unwrap_or(a.ended.len()),
            a.ended.len() >= MAX_LATE_DIALOGS,
        );
        let invite = a.request.clone();
        let branch = |what: &str| format!("{branch}-{what}{index}");
        if let Some(ack) = in_dialog_request(&invite, response, Method::Ack, &branch("ack")) {
            self.transmit(conn, ack);
        }
        if n.is_some() || full {
            return;
        }
        if let Some(a) = self.abandoned.get_mut(&tx) {
            a.ended.push(tag);
        }
        if let Some(bye) = in_dialog_request(&invite, response, Method::Bye, &branch("bye")) {
            let id = self.id();
            if self.send_request_as(now, id, conn, bye).is_ok() {
                self.internal.insert(id);
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
                if !self.internal.remove(&tx) {
                    self.event(TxEvent::TransportError { tx });
                }
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

/// A request in the dialog a 2xx to `invite` created (§12.1.2, §12.2.1.1): the ACK for that 2xx
/// (§13.2.2.4: the INVITE's CSeq number) or the BYE that ends the dialog (the next number). The
/// Request-URI is the 2xx's Contact, the route set its Record-Route reversed (strict routing
/// when the first route has no `lr`), From the INVITE's, To the 2xx's (with its tag), the Via
/// the INVITE's sent-by with `branch`. `None` when the 2xx has no Contact or no To tag.
fn in_dialog_request(
    invite: &Message,
    ok: &Message,
    method: Method,
    branch: &str,
) -> Option<Message> {
    let target = match ok.contact().ok()?? {
        Contact::Addresses(list) => list.first()?.uri.to_owned(),
        _ => return None,
    };
    ok.to().ok()?.tag()?;
    let mut routes: Vec<(String, bool)> = ok
        .record_route()
        .ok()?
        .iter()
        .rev()
        .map(|r| {
            let lr = r.parsed_uri().as_sip().is_some_and(|u| u.params.has("lr"));
            (r.uri.to_owned(), lr)
        })
        .collect();
    let strict = routes.first().is_some_and(|(_, lr)| !lr);
    let (request_uri, route) = if strict {
        let first = routes.remove(0).0;
        let mut rest: Vec<String> = routes.into_iter().map(|(u, _)| format!("<{u}>")).collect();
        rest.push(format!("<{target}>"));
        (first, rest)
    } else {
        let all = routes.into_iter().map(|(u, _)| format!("<{u}>")).collect();
        (target, all)
    };
    let (_, sent_by) = top_branch_and_sent_by(invite)?;
    let number = invite.cseq().ok()?.number;
    let cseq = if method == Method::Ack {
        number
    } else {
        number.checked_add(1)?
    };
    let mut m = Message::new_request(method.clone(), &request_uri);
    m.push_header("Via", &format!("SIP/2.0/TLS {sent_by};branch={branch}"));
    m.push_header("Max-Forwards", "70");
    m.push_header("From", invite.values(HeaderKind::From).next()?);
    m.push_header("To", ok.values(HeaderKind::To).next()?);
    m.push_header("Call-ID", invite.call_id().ok()?);
    m.push_header("CSeq", &format!("{cseq} {method}"));
    for r in &route {
        m.push_header("Route", r);
    }
    m.push_header("Content-Length", "0");
    Some(m)
}

/// The CANCEL for `invite` (§9.1): its Request-URI, Call-ID, From, To (with the tags as they
/// were) and CSeq number, a single Via equal to its top Via, its Route headers.
fn cancel_for(invite: &Message) -> Message {
    derived(invite, Method::Cancel, invite)
}

/// The ACK for a non-2xx final response (§17.1.1.3): Request-URI, top Via, From, Call-ID and
/// Route of the INVITE, To of the response, CSeq number of the INVITE with method ACK.
fn ack_for(invite: &Message, response: &Message) -> Message {
    derived(invite, Method::Ack, response)
}

/// A request of `method` made from `invite` as CANCEL and the ACK of a non-2xx are: the
/// INVITE's Request-URI, top Via alone, From, Call-ID, CSeq number and Route headers, the To of
/// `to_of`, no body.
fn derived(invite: &Message, method: Method, to_of: &Message) -> Message {
    let mut request =
        Message::new_request(method.clone(), invite.request_uri().unwrap_or_default());
    if let Some(via) = invite.values(HeaderKind::Via).next() {
        request.push_header("Via", via);
    }
    request.push_header("Max-Forwards", "70");
    for (kind, source) in [
        (HeaderKind::From, invite),
        (HeaderKind::To, to_of),
        (HeaderKind::CallId, invite),
    ] {
        if let Some(v) = source.values(kind).next() {
            request.push_header(kind.name(), v);
        }
    }
    if let Ok(cseq) = invite.cseq() {
        request.push_header("CSeq", &format!("{} {}", cseq.number, method.as_str()));
    }
    for (name, value) in invite.headers() {
        if HeaderKind::of(name) == HeaderKind::Route {
            request.push_header("Route", value);
        }
    }
    request.push_header("Content-Length", "0");
    request
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

    fn transmitted(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Transmit { message, .. } => {
                    Some(String::from_utf8(message.to_bytes()).unwrap())
                }
                Output::Event(_) => None,
            })
            .collect()
    }

    /// A 2xx from LCS with its Contact (and the To tag `j9`).
    fn ok_with_contact(invite: &Message) -> Message {
        let mut ok = resp(invite, 200);
        ok.push_header("Contact", "<sip:joe@192.0.2.9:5061;transport=tls>");
        ok
    }

    #[test]
    fn an_invite_without_a_provisional_response_ends_at_timer_b_without_cancel() {
        // RFC 3261 §17.1.1.2: Timer B in Calling; §9.1: no CANCEL before a provisional.
        let now = Instant::now();
        let mut t = Transactions::default();
        let invite = req("INVITE", "z9hG4bKcall");
        let tx = t.send_request(now, 2, invite.clone()).unwrap();
        drain(&mut t);
        t.handle_timeout(now + T1 * 64);
        assert_eq!(drain(&mut t), vec![Output::Event(TxEvent::Timeout { tx })]);
        assert_eq!((t.len(), t.abandoned_len()), ((0, 0), 1));
        // Its late 487 is ACKed by the layer, nothing goes up, and it is forgotten.
        t.receive(now + T1 * 65, 2, resp(&invite, 487));
        let out = drain(&mut t);
        assert_eq!(transmitted(&out).len(), 1, "{out:?}");
        assert!(transmitted(&out)[0].starts_with("ACK sip:joe@contoso.com SIP/2.0\r\n"));
        assert_eq!(out.len(), 1);
        assert_eq!(t.abandoned_len(), 0);
    }

    #[test]
    fn a_ringing_invite_not_answered_in_64_t1_is_cancelled_and_its_487_acked() {
        // RFC 3261 §9.1: "The Request-URI, Call-ID, To, the numeric part of CSeq, and From
        // header fields in the CANCEL request MUST be identical to those in the request being
        // cancelled, including tags. A CANCEL constructed by a client MUST have only a single
        // Via header field value matching the top Via value in the request being cancelled."
        let now = Instant::now();
        let mut t = Transactions::default();
        let mut invite = req("INVITE", "z9hG4bKring");
        invite.push_header("Via", "SIP/2.0/TLS proxy.example.org;branch=z9hG4bKlower");
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
        t.handle_timeout(now + Duration::from_millis(31_999));
        assert_eq!(drain(&mut t), vec![]);
        t.handle_timeout(now + T1 * 64);
        let out = drain(&mut t);
        assert_eq!(
            transmitted(&out),
            [
                "CANCEL sip:joe@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKring\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a1\r\nTo: <sip:joe@contoso.com>\r\nCall-ID: c1\r\nCSeq: 1 CANCEL\r\nRoute: <sip:edge.contoso.com;lr>\r\nContent-Length: 0\r\n\r\n"
            ]
        );
        assert!(matches!(&out[0], Output::Transmit { conn: 2, .. }));
        assert_eq!(out[1], Output::Event(TxEvent::GaveUp { tx }));
        // The CANCEL's 200 and the INVITE's 487: absorbed, the 487 ACKed on its connection.
        let cancel = match &out[0] {
            Output::Transmit { message, .. } => message.clone(),
            Output::Event(_) => unreachable!(),
        };
        t.receive(now + T1 * 64, 2, resp(&cancel, 200));
        assert_eq!(drain(&mut t), vec![]);
        t.receive(now + T1 * 64, 2, resp(&invite, 487));
        let out = drain(&mut t);
        assert_eq!(
            transmitted(&out),
            [
                "ACK sip:joe@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKring\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a1\r\nTo: <sip:joe@contoso.com>;tag=j9\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nRoute: <sip:edge.contoso.com;lr>\r\nContent-Length: 0\r\n\r\n"
            ]
        );
        assert_eq!(out.len(), 1);
        assert_eq!((t.len(), t.abandoned_len()), ((0, 0), 0));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn a_2xx_after_giving_up_is_acked_and_ended_with_bye_once() {
        // RFC 3261 §13.2.2.4: "The UAC core MUST generate an ACK request for each 2xx received
        // from the transaction layer"; the session the bridge gave up on is ended with BYE.
        let now = Instant::now();
        let mut t = Transactions::default();
        let invite = req("INVITE", "z9hG4bKlate");
        let tx = t.send_request(now, 2, invite.clone()).unwrap();
        t.receive(now, 2, resp(&invite, 183));
        drain(&mut t);
        t.handle_timeout(now + T1 * 64);
        assert!(matches!(events(&mut t).as_slice(), [TxEvent::GaveUp { tx: g }] if *g == tx));
        let mut ok = ok_with_contact(&invite);
        ok.push_header("Record-Route", "<sip:edge.contoso.com;lr>");
        let at = now + T1 * 70;
        t.receive(at, 3, ok.clone());
        let out = drain(&mut t);
        assert!(
            out.iter()
                .all(|o| matches!(o, Output::Transmit { conn: 3, .. })),
            "{out:?}"
        );
        assert_eq!(
            transmitted(&out),
            [
                "ACK sip:joe@192.0.2.9:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKlate-ack0\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a1\r\nTo: <sip:joe@contoso.com>;tag=j9\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nRoute: <sip:edge.contoso.com;lr>\r\nContent-Length: 0\r\n\r\n",
                "BYE sip:joe@192.0.2.9:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS sip.example.org:5061;branch=z9hG4bKlate-bye0\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.org>;tag=a1\r\nTo: <sip:joe@contoso.com>;tag=j9\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\nRoute: <sip:edge.contoso.com;lr>\r\nContent-Length: 0\r\n\r\n",
            ]
        );
        // A retransmitted 2xx is ACKed again, no second BYE; the BYE's 200 is absorbed.
        t.receive(at, 3, ok.clone());
        let again = transmitted(&drain(&mut t));
        assert_eq!(again.len(), 1);
        assert!(again[0].starts_with("ACK "));
        let bye = Message::parse(transmitted(&out)[1].as_bytes()).unwrap();
        t.receive(at, 3, resp(&bye, 200));
        assert_eq!(drain(&mut t), vec![]);
        // 64·T1 after giving up it is forgotten: a 2xx then is stray.
        t.handle_timeout(now + T1 * 128);
        assert_eq!(t.abandoned_len(), 0);
        t.receive(now + T1 * 128, 3, ok);
        assert!(matches!(
            events(&mut t).as_slice(),
            [TxEvent::StrayResponse { conn: 3, .. }]
        ));
    }

    #[test]
    fn abandoned_invites_are_bounded() {
        let now = Instant::now();
        let mut t = Transactions::default();
        for i in 0..MAX_ABANDONED + 10 {
            t.send_request(now, 1, req("INVITE", &format!("z9hG4bKb{i}")))
                .unwrap();
        }
        drain(&mut t);
        t.handle_timeout(now + T1 * 64);
        assert_eq!(t.abandoned_len(), MAX_ABANDONED);
        assert!(t.abandoned_order.len() <= 2 * MAX_ABANDONED + 1);
        // The oldest are the ones forgotten.
        assert!(!t.abandoned_index.keys().any(|k| k.branch == "z9hG4bKb0"));
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
