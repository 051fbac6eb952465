//! What the edge tells the layer above ([`EdgeEvent`]), without I/O: the engines consume these
//! and tests build them, neither needing the edge's sockets ([`crate::edge::server`] produces
//! them).

use crate::edge::core::{Asserted, Undeliverable};
use crate::sip::message::Message;
use crate::sip::transaction::{ConnId, TxEvent, TxId};

/// What the edge tells the layer above.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeEvent {
    /// A request from a peer that passed admission: answer it with
    /// [`EdgeHandle::respond`](crate::edge::server::EdgeHandle::respond).
    Request {
        tx: TxId,
        conn: ConnId,
        request: Message,
        asserted: Option<Asserted>,
    },
    /// A transaction event: responses to requests sent, timeouts, ACKs for 2xx, cancels.
    Transaction(TxEvent),
    /// An outbound request was not sent.
    Undeliverable { tx: TxId, why: Undeliverable },
    /// A connection closed; dialogs on it are lost.
    ConnectionLost { conn: ConnId },
}
