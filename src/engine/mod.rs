//! The translation engine: XMPP stanzas and SIP edge events in, stanzas and SIP messages out.
//! Sans-IO like the edge core: every input takes `now`, timers come from `poll_timeout`.
//!
//! - [`im`]: session-mode instant messaging both ways.
//! - [`presence`]: presence and subscriptions both ways.
//! - `common`: what both engines build the same way (parties, Via, Contact, branches, To
//!   tags, failures without a response, stanza bounces, stored dialogs taken up, the wall
//!   clock [`WallClock`]).
//!
//! Both engines return [`Output`]s, which the runner (`app.rs`) executes **in order**; store
//! writes ([`Output::Persist`], [`Output::Forget`], a durable [`Output::PersistIm`]) are
//! durable before the next output runs.

pub mod admin;
pub mod bridge;
mod common;
pub mod im;
mod multiparty;
pub mod name_book;
pub mod presence;
pub mod roster;

pub use common::WallClock;

use xmpp_parsers::jid::BareJid;
use xmpp_parsers::minidom::Element;

use crate::core::names::NameSource;
use crate::edge::core::Route;
use crate::sip::message::Message;
use crate::sip::transaction::{ConnId, TxId};
use crate::store::{Direction, ImDialog, Subscription};

/// What the I/O layer must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a stanza on the component link.
    Stanza(Element),
    /// Send a SIP request as client transaction `tx`.
    Request {
        tx: TxId,
        request: Message,
        route: Route,
    },
    /// Answer server transaction `tx`.
    Respond { tx: TxId, response: Message },
    /// Send the ACK for a 2xx on the dialog's connection.
    Ack { conn: ConnId, ack: Message },
    /// Write this subscription to the store, durably, before running the next output.
    Persist(Box<Subscription>),
    /// Write this subscription without waiting for the disk (`Store::put_subscription_lazy`):
    /// changes whose loss in a crash costs nothing that matters (a refreshed expiry).
    PersistLazy(Box<Subscription>),
    /// Remove this subscription from the store, durably, before running the next output.
    Forget {
        direction: Direction,
        /// The local user's bare JID.
        local: String,
        /// The LCS user's AOR.
        remote: String,
    },
    /// Write this IM session's dialog to the store (the IM engine's; docs/storage.md): with
    /// `durable`, synced before the next output runs (`Store::put_im_dialog` then
    /// `Store::flush`), else lazily. `before` is the local CSeq reservation the store held for
    /// this dialog until this write (`None`: no record of it): requests above it go out on the
    /// strength of this write, so when a durable one fails the engine is told
    /// ([`bridge::Engine::store_failed`]) and withdraws them. A failure changes no answer
    /// (losing an IM dialog costs a new INVITE, not a lost message).
    PersistIm {
        dialog: Box<ImDialog>,
        durable: bool,
        before: Option<u32>,
    },
    /// Remove the IM dialog of this pair from the store, lazily (`Store::remove_im_dialog`).
    ForgetIm {
        /// The local user's bare JID.
        local: String,
        /// The LCS user's AOR.
        remote: String,
    },
    /// Something the other engines act on; the bridge hands it to every engine that takes
    /// it ([`bridge::Input::Fact`]) and never to the runner.
    Fact(Fact),
    /// An administration command for the runner's executor; its outcome comes back as
    /// [`bridge::Input::AdminDone`] with this `id`.
    Admin { id: u64, command: admin::Command },
    /// The outcome of a command the runner gave as [`bridge::Input::Admin`].
    AdminReply { id: u64, outcome: admin::Outcome },
}

/// What one engine learned that another acts on (docs/mapping.md §6), and the
/// administration commands that another engine carries out (`admin::AdminEngine` → presence
/// → back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// An administrator ends the subscriptions between local user `local` (bare JID) and
    /// LCS user `remote` (AOR URI), both ways; the outcome comes back as [`Fact::AdminDone`].
    EndSubscription {
        id: u64,
        local: String,
        remote: String,
    },
    /// The outcome of administration command `id` carried out by an engine.
    AdminDone { id: u64, outcome: admin::Outcome },
    /// The display name the bridge knows for an LCS contact is new or changed (also each
    /// name read back from the store at start). `name` is cleaned (`core::names`); `source`
    /// says where it came from (a PIDF name wins over a `From` name); `subscribed`: learned
    /// with a subscription (the presence engine), not only from an IM session.
    Name {
        contact: BareJid,
        aor: String,
        name: String,
        source: NameSource,
        subscribed: bool,
    },
    /// The local user's roster should hold `contact` with `name` (the pair's one name, both
    /// directions merged): a subscription between them was just approved on either side
    /// (`approved`), or, approved earlier, the pair's name changed from `previous`.
    Roster {
        local: BareJid,
        contact: BareJid,
        name: Option<String>,
        previous: Option<String>,
        approved: bool,
    },
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the world starts its virtual clock at a real instant
mod world;
#[cfg(test)]
mod world_admin_tests;
#[cfg(test)]
mod world_reload_tests;
#[cfg(test)]
mod world_tests;

/// How many subscriptions and IM sessions the engines hold, by kind: what the runner samples
/// into gauges every few seconds ([`bridge::Bridge::census`]). A walk over the subscriptions, so not for
/// every event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// XMPP users' subscriptions to LCS contacts (SUBSCRIBE sent): `[pending, active]`, active
    /// once a NOTIFY said `active` on the current dialog.
    pub outbound: [usize; 2],
    /// LCS watchers of local users, by the local user's approval: `[none, requested,
    /// approved, denied]` (`Approval` in `store`).
    pub inbound: [usize; 4],
    /// Open IM sessions.
    pub im_sessions: usize,
}

impl Census {
    /// The label of `outbound[i]`.
    pub const OUTBOUND_STATES: [&'static str; 2] = ["pending", "active"];
    /// The label of `inbound[i]` (`Approval::as_str`).
    pub const INBOUND_STATES: [&'static str; 4] = ["none", "requested", "approved", "denied"];
}
