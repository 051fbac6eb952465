//! [`NameBook`]: the display names of LCS contacts the vCard answers give
//! (`xmpp::gateway::vcard_reply`, through `IqEngine`), one per contact address, learned from the
//! other engines' [`super::Fact::Name`]s (docs/mapping.md §6).
//!
//! - **Precedence.** Names merge as everywhere else (`core::names::merge`): a PIDF name wins
//!   over a `From` name, whichever arrives last, so an IM session's INVITE does not replace
//!   the name a contact publishes itself.
//! - **Bounds.** Every name comes from a peer, and an INVITE's `From` is enough to teach one:
//!   at most [`MAX_NAMES_PER_DOMAIN`] per LCS domain (the host of the address) and
//!   [`MAX_KNOWN_NAMES`] in all. Over a bound, a name learned only from an IM session goes
//!   first (the least recently learned of them), and a name tied to a subscription only when
//!   none is left: a peer that opens sessions from many addresses evicts its own names, not
//!   those of other domains, and not the names of the contacts the bridge's users subscribe to.
//! - **Memory.** Each address is held once (the map's key and its places in the eviction
//!   queues share one allocation); a name learned again leaves a stale queue entry behind,
//!   and the queues are compacted when the stale entries outnumber the live ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::core::names::{self, NameSource};

/// Display names kept at most.
pub const MAX_KNOWN_NAMES: usize = 100_000;
/// Display names kept at most for the addresses of one LCS domain.
pub const MAX_NAMES_PER_DOMAIN: usize = 10_000;

/// Stale queue entries tolerated beyond the live ones before a compaction.
const SLACK: usize = 1024;

#[derive(Debug)]
struct Entry {
    name: String,
    source: NameSource,
    /// Learned from a subscription (kept before names learned only from IM sessions).
    subscribed: bool,
    /// The entry's place in the queues: the queue entries with another number are stale.
    seq: u64,
    domain: Arc<str>,
}

/// Eviction order: least recently learned first, names learned only from IM sessions
/// (`loose`) before names tied to subscriptions (`tied`).
#[derive(Debug, Default)]
struct Queues {
    loose: VecDeque<(u64, Arc<str>)>,
    tied: VecDeque<(u64, Arc<str>)>,
}

impl Queues {
    fn push(&mut self, subscribed: bool, seq: u64, aor: Arc<str>) {
        if subscribed {
            self.tied.push_back((seq, aor));
        } else {
            self.loose.push_back((seq, aor));
        }
    }

    fn len(&self) -> usize {
        self.loose.len() + self.tied.len()
    }
}

#[derive(Debug, Default)]
struct Domain {
    count: usize,
    queues: Queues,
}

/// The last known display name of each LCS contact, by address of record. See the module
/// documentation.
#[derive(Debug, Default)]
pub struct NameBook {
    names: HashMap<Arc<str>, Entry>,
    domains: HashMap<Arc<str>, Domain>,
    all: Queues,
    seq: u64,
}

/// The LCS domain of an address of record (`sip:joe@contoso.com` → `contoso.com`).
fn domain_of(aor: &str) -> String {
    let host = aor.rsplit_once('@').map_or(aor, |(_, h)| h);
    let host = host.split([';', '?', '>']).next().unwrap_or(host);
    host.to_ascii_lowercase()
}

impl NameBook {
    /// `name` (cleaned, `core::names::display_name`) for `aor`, from `source`; `subscribed`
    /// when it comes with a subscription (the presence engine), not only an IM session.
    pub fn learn(&mut self, aor: &str, name: &str, source: NameSource, subscribed: bool) {
        self.seq += 1;
        let seq = self.seq;
        let (key, domain) = match self.names.get_key_value(aor) {
            Some((key, e)) => (key.clone(), e.domain.clone()),
            None => {
                let domain = domain_of(aor);
                let domain = match self.domains.get_key_value(domain.as_str()) {
                    Some((d, _)) => d.clone(),
                    None => Arc::from(domain),
                };
                (Arc::from(aor), domain)
            }
        };
        match self.names.get_mut(aor) {
            Some(e) => {
                if let Some((text, source)) =
                    names::merge(Some((&e.name, e.source)), (name, source))
                {
                    e.name = text;
                    e.source = source;
                }
                e.subscribed |= subscribed;
                e.seq = seq;
            }
            None => {
                self.names.insert(
                    key.clone(),
                    Entry {
                        name: name.to_owned(),
                        source,
                        subscribed,
                        seq,
                        domain: domain.clone(),
                    },
                );
                self.domains.entry(domain.clone()).or_default().count += 1;
            }
        }
        let subscribed = self.names.get(aor).is_some_and(|e| e.subscribed);
        self.all.push(subscribed, seq, key.clone());
        let d = self.domains.entry(domain.clone()).or_default();
        d.queues.push(subscribed, seq, key);
        if d.count > MAX_NAMES_PER_DOMAIN {
            let mut queues = std::mem::take(&mut d.queues);
            self.evict(&mut queues);
            if let Some(d) = self.domains.get_mut(&domain) {
                d.queues = queues;
            }
        }
        if self.names.len() > MAX_KNOWN_NAMES {
            let mut queues = std::mem::take(&mut self.all);
            self.evict(&mut queues);
            self.all = queues;
        }
        if self.all.len() > 2 * self.names.len() + SLACK {
            self.compact();
        }
    }

    /// Removes the first live entry of `queues`: a loose one if there is any, else a tied one.
    fn evict(&mut self, queues: &mut Queues) {
        for (tied, queue) in [(false, &mut queues.loose), (true, &mut queues.tied)] {
            while let Some((seq, aor)) = queue.pop_front() {
                let live = self
                    .names
                    .get(&aor)
                    .is_some_and(|e| e.seq == seq && e.subscribed == tied);
                if live {
                    self.forget(&aor);
                    return;
                }
            }
        }
    }

    fn forget(&mut self, aor: &str) {
        let Some(e) = self.names.remove(aor) else {
            return;
        };
        if let Some(d) = self.domains.get_mut(&e.domain) {
            d.count -= 1;
            if d.count == 0 {
                self.domains.remove(&e.domain);
            }
        }
    }

    /// Drops the stale queue entries.
    fn compact(&mut self) {
        let names = &self.names;
        let live = |tied: bool| {
            move |(seq, aor): &(u64, Arc<str>)| {
                names
                    .get(aor)
                    .is_some_and(|e| e.seq == *seq && e.subscribed == tied)
            }
        };
        for q in
            std::iter::once(&mut self.all).chain(self.domains.values_mut().map(|d| &mut d.queues))
        {
            q.loose.retain(live(false));
            q.tied.retain(live(true));
            q.loose.shrink_to_fit();
            q.tied.shrink_to_fit();
        }
    }

    /// The name known for `aor`.
    pub fn get(&self, aor: &str) -> Option<&str> {
        self.names.get(aor).map(|e| e.name.as_str())
    }

    /// Names known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Names known for the addresses of `domain`.
    pub fn domain_len(&self, domain: &str) -> usize {
        self.domains.get(domain).map_or(0, |d| d.count)
    }

    /// Queue entries held, stale ones included (bounded: tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.all.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use NameSource::{From, Pidf};

    fn aor(user: usize, domain: usize) -> String {
        format!("sip:u{user}@d{domain}.example")
    }

    #[test]
    fn a_pidf_name_is_not_replaced_by_a_from_name() {
        let mut b = NameBook::default();
        b.learn("sip:joe@contoso.com", "Joe Smith", Pidf, true);
        // An IM session's INVITE From, later.
        b.learn("sip:joe@contoso.com", "Smith, Joe", From, false);
        assert_eq!(b.get("sip:joe@contoso.com"), Some("Joe Smith"));
        b.learn("sip:joe@contoso.com", "Joseph Smith", Pidf, true);
        assert_eq!(b.get("sip:joe@contoso.com"), Some("Joseph Smith"));
        // From names replace each other.
        b.learn("sip:ann@contoso.com", "Ann", From, false);
        b.learn("sip:ann@contoso.com", "Ann Lee", From, true);
        assert_eq!(b.get("sip:ann@contoso.com"), Some("Ann Lee"));
        assert_eq!(b.len(), 2);
        assert_eq!(b.domain_len("contoso.com"), 2);
    }

    #[test]
    fn one_domain_evicts_its_own_names_and_session_names_first() {
        let mut b = NameBook::default();
        // Another domain's contacts, and a subscribed contact of the noisy one.
        for i in 0..100 {
            b.learn(&aor(i, 1), "x", From, i % 2 == 0);
        }
        b.learn(&aor(0, 2), "Subscribed", Pidf, true);
        // Domain 2 opens sessions from far more addresses than its quota.
        for i in 1..(3 * MAX_NAMES_PER_DOMAIN) {
            b.learn(&aor(i, 2), "spam", From, false);
        }
        assert_eq!(b.domain_len("d2.example"), MAX_NAMES_PER_DOMAIN);
        assert_eq!(b.domain_len("d1.example"), 100);
        assert_eq!(b.get(&aor(7, 1)), Some("x"));
        assert_eq!(b.get(&aor(0, 2)), Some("Subscribed"));
        assert_eq!(b.get(&aor(1, 2)), None);
        assert_eq!(b.get(&aor(3 * MAX_NAMES_PER_DOMAIN - 1, 2)), Some("spam"));
        // A domain full of subscribed names takes the oldest of them when no session name is
        // left.
        let mut b = NameBook::default();
        for i in 0..(MAX_NAMES_PER_DOMAIN + 5) {
            b.learn(&aor(i, 3), "x", From, true);
        }
        assert_eq!(b.domain_len("d3.example"), MAX_NAMES_PER_DOMAIN);
        assert_eq!(b.get(&aor(4, 3)), None);
        assert_eq!(b.get(&aor(5, 3)), Some("x"));
    }

    #[test]
    fn the_book_is_bounded_in_all() {
        let mut b = NameBook::default();
        let domains = MAX_KNOWN_NAMES / MAX_NAMES_PER_DOMAIN + 2;
        for d in 0..domains {
            for i in 0..MAX_NAMES_PER_DOMAIN {
                // The first domain's names are tied to subscriptions.
                b.learn(&aor(i, d), "x", From, d == 0);
            }
        }
        assert_eq!(b.len(), MAX_KNOWN_NAMES);
        // Session names went, the least recently learned first; subscribed ones stayed.
        assert_eq!(b.domain_len("d0.example"), MAX_NAMES_PER_DOMAIN);
        assert_eq!(b.domain_len("d1.example"), 0);
        assert_eq!(
            b.domain_len(&format!("d{}.example", domains - 1)),
            MAX_NAMES_PER_DOMAIN
        );
        // Learning one name again and again keeps the bookkeeping bounded.
        for _ in 0..(3 * MAX_KNOWN_NAMES) {
            b.learn(&aor(5, 0), "y", Pidf, true);
        }
        assert!(
            b.queued() <= 2 * MAX_KNOWN_NAMES + SLACK + 1,
            "{}",
            b.queued()
        );
        assert_eq!(b.get(&aor(5, 0)), Some("y"));
        assert_eq!(b.len(), MAX_KNOWN_NAMES);
    }

    #[test]
    fn domains_are_the_hosts_in_lower_case() {
        assert_eq!(domain_of("sip:Joe@Contoso.COM"), "contoso.com");
        assert_eq!(
            domain_of("sip:joe@contoso.com;transport=tls"),
            "contoso.com"
        );
        assert_eq!(domain_of("contoso.com"), "contoso.com");
    }
}
