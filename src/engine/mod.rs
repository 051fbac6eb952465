//! The translation engine: XMPP stanzas and SIP edge events in, stanzas and SIP messages out.
//! Sans-IO like the edge core: every input takes `now`, timers come from `poll_timeout`.
//!
//! - [`im`]: session-mode instant messaging both ways.
//! - [`presence`]: presence and subscriptions both ways.
//!
//! Both engines return [`Output`]s, which the runner (`app.rs`) executes **in order**; store
//! writes ([`Output::Persist`], [`Output::Forget`]) are durable before the next output runs.

pub mod bridge;
pub mod im;
pub mod presence;

use xmpp_parsers::minidom::Element;

use crate::edge::core::Route;
use crate::sip::message::Message;
use crate::sip::transaction::{ConnId, TxId};
use crate::store::{Direction, Subscription};

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
}

/// The host of a `sip:` URI (lowercase), for `Route::Domain`.
pub(crate) fn host_of(uri: &str) -> String {
    match crate::sip::uri::Uri::parse(uri) {
        Ok(crate::sip::uri::Uri::Sip(u)) => u.host_str().to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// This edge's Contact for a local user (`sip:user@public_fqdn;transport=tls`, the profile's
/// TLS-only rule), so in-dialog requests come back to the edge.
pub(crate) fn contact_for(public_fqdn: &str, local_uri: &str) -> String {
    let user = match crate::sip::uri::Uri::parse(local_uri) {
        Ok(crate::sip::uri::Uri::Sip(u)) => u.user.unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    if user.is_empty() {
        format!("sip:{public_fqdn};transport=tls")
    } else {
        format!("sip:{user}@{public_fqdn};transport=tls")
    }
}

/// The parties of a request from LCS: To must be a local user, From a federated address.
pub(crate) struct Parties {
    /// The local user (To).
    pub local: xmpp_parsers::jid::BareJid,
    /// The To URI as written (its user part goes into our Contact).
    pub local_uri: String,
    /// The LCS user's JID (From).
    pub remote: xmpp_parsers::jid::BareJid,
    /// The LCS user's AOR as the bridge writes it (the key both engines use).
    pub remote_aor: String,
    /// From's display name.
    pub display: Option<String>,
}

/// Maps To and From of a request from LCS through the address book; `Err` is the status and
/// reason to answer with (400 malformed, 404 not a local user, 403 From not federated).
pub(crate) fn parties(
    book: &crate::core::address::AddressBook,
    request: &Message,
) -> Result<Parties, (u16, String)> {
    let to = request.to().map_err(|e| (400, e.to_string()))?;
    let from = request.from().map_err(|e| (400, e.to_string()))?;
    let local = book
        .uri_to_jid(to.uri)
        .map_err(|e| (404, format!("No such user: {e}")))?;
    if !book.is_local_domain(local.domain().as_str()) {
        return Err((404, format!("{} is not a user here", to.uri)));
    }
    let remote = book
        .uri_to_jid(from.uri)
        .map_err(|e| (403, format!("Not a federated address: {e}")))?;
    if book.is_local_domain(remote.domain().as_str()) {
        return Err((403, "Forbidden: From is a local address".into()));
    }
    let remote_aor = book
        .jid_to_sip(&remote)
        .map_err(|e| (403, e.to_string()))?
        .aor()
        .to_uri();
    Ok(Parties {
        local: local.to_bare(),
        local_uri: to.uri.to_owned(),
        remote: remote.to_bare(),
        remote_aor,
        display: from.display_name.map(str::to_owned),
    })
}

#[cfg(test)]
mod world;
#[cfg(test)]
mod world_tests;
