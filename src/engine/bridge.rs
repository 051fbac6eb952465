//! [`Bridge`]: the engines behind one sans-IO interface.
//!
//! The runner (`app.rs`) gives the bridge every input — SIP edge events, component stanzas,
//! the component link going up and down, the subscriptions read from the store — with the time
//! it happened, and executes the [`Action`]s it drains with [`Bridge::poll_action`], in order.
//! The bridge decides everything protocol-shaped in between:
//!
//! - **Routing.** Each input goes to the first engine whose [`Engine::takes`] accepts it, in
//!   the order the engines were given; a lost connection and the link's state go to every
//!   engine that takes them. Adding an engine is one more entry in that list.
//! - **Order.** An engine's outputs for one input form a batch, run in order; an engine may ask
//!   for its stanzas to go first ([`Engine::stanzas_first`]), so that a SIP answer follows what
//!   it acknowledges. Consecutive durable store writes of a batch are joined into one
//!   [`Action::Write`] (one sync); IM sessions' durable writes also across batches, over the
//!   actions between them, which stay behind the joined write ([`Action::WriteIm`]: one sync
//!   for a burst of new sessions).
//! - **Failures.** The runner reports what it could not do with [`Bridge::report`]: a stanza
//!   the link refused (its queue is full) turns the batch's later acknowledgements that promise
//!   delivery into `503` with `Retry-After` (RFC 3261 §21.5.4); a store write that failed turns
//!   the batch's later 2xx into `503` with `Retry-After` (the state change was not kept, so the
//!   peer tries again once the store is back),
//!   except an IM session's dialog, whose loss changes no answer. Either way the engine that
//!   wrote is told ([`Engine::store_failed`]) and may withdraw its requests still waiting (a
//!   request must not go out above a CSeq reservation the store does not hold) and put
//!   outputs of its own first.
//! - **Time.** [`Bridge::poll_timeout`] is the earliest of the engines' deadlines;
//!   [`Bridge::handle_timeout`] runs the engines that are due.
//! - **Facts.** What an engine learned for the others ([`Output::Fact`]: a contact's display
//!   name, a subscription approved; an administrator's `end-subscription` and its outcome) is
//!   no action: after the input that produced it, the
//!   bridge hands it to every engine that takes it as [`Input::Fact`], in order, each
//!   engine's outputs a batch of their own.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use tracing::{debug, info, warn};
use xmpp_parsers::minidom::Element;

use super::admin::{AdminEngine, Command, Outcome};
use super::im::{ImEngine, ImSettings};
use super::name_book::NameBook;
use super::presence::{PresenceEngine, PresenceSettings};
use super::roster::RosterEngine;
use super::{Census, Fact, Output};
use crate::core::address::AddressBook;
use crate::core::errors::Condition;
use crate::core::tables::{ErrorTable, Mappings};
use crate::edge::core::Route;
use crate::edge::event::EdgeEvent;
use crate::sip::builder::reason_phrase;
use crate::sip::message::{Message, Method};
use crate::sip::status::{self, Reject};
use crate::sip::transaction::{ConnId, TxEvent, TxId};
use crate::store::{Direction, ImDialog, Subscription};
use crate::xmpp::gateway::{self, GatewayInfo};

/// Most consecutive durable writes joined into one [`Action::Write`].
pub const WRITE_BATCH: usize = 1024;
/// How far ahead in the queue [`Bridge::poll_action`] looks for IM writes to join.
pub const WRITE_LOOKAHEAD: usize = 4096;

/// Most facts handed on after one input: engines answer facts with actions (and an
/// administration command's outcome with one more fact), so this is a guard against a loop,
/// never reached.
const MAX_FACTS: usize = 100_000;

/// `Retry-After` when the component link's queue was full: the link drains a full queue in
/// well under that once the XMPP server reads again.
const LINK_RETRY_AFTER_SECS: u32 = 5;
/// `Retry-After` of a `503` for a change the store did not keep (the database unreachable, or
/// a disk error): the request is worth repeating once the store is back.
const STORE_RETRY_AFTER_SECS: u32 = 5;
/// `Retry-After` of a `503` while this bridge does not serve (a standby, or a leader whose
/// lease is not renewed): about one lease renewal.
const NOT_SERVING_RETRY_AFTER_SECS: u32 = 2;

/// What happens to the bridge.
#[derive(Debug, Clone)]
pub enum Input {
    /// An event from the SIP edge.
    Edge(EdgeEvent),
    /// A stanza from the component link, as the XMPP server sent it.
    Stanza(Element),
    /// A component domain's stream is authenticated (the first time, or again after a loss).
    LinkUp { domain: String },
    /// A component domain's stream was lost; the link queues stanzas and reconnects.
    LinkDown { domain: String, reason: String },
    /// The subscriptions read from the store at start.
    Restore(Vec<Subscription>),
    /// The IM sessions' dialogs read from the store at start.
    RestoreIm(Vec<ImDialog>),
    /// What another engine learned ([`Output::Fact`]).
    Fact(Fact),
    /// A reloaded configuration (`SIGHUP`, the admin `reload` command): every engine that
    /// takes it applies the settings it can (see [`Reconfigure`]).
    Reconfigure(Box<Reconfigure>),
    /// The outcome of an administration command ([`Action::Admin`]).
    AdminDone { id: u64, outcome: Outcome },
    /// An administration command from the runner (the local socket) that the engines carry
    /// out (`end-subscription`); its outcome comes out as [`Action::AdminReply`] with this
    /// `id`.
    Admin { id: u64, command: Command },
}

/// The settings a reload gives the engines, checked in full before they are sent. What each
/// engine does with state it has already built is its own decision (documented on its
/// `reconfigure`); values that only a restart can change (`sip.public_fqdn`: the engines' Via,
/// Contact and SDP) are kept as the engines started with them.
#[derive(Debug, Clone)]
pub struct Reconfigure {
    pub presence: PresenceSettings,
    pub im: ImSettings,
    /// Both tables: the presence engine takes both, the IM engine and the bridge the errors.
    pub mappings: Mappings,
    /// `[admin] jids`.
    pub admins: Vec<String>,
}

impl Input {
    /// Inputs every engine that takes them sees (the others go to one engine).
    fn is_shared(&self) -> bool {
        matches!(
            self,
            Input::Edge(EdgeEvent::ConnectionLost { .. })
                | Input::LinkUp { .. }
                | Input::LinkDown { .. }
                | Input::Fact(_)
                | Input::Reconfigure(_)
        )
    }
}

/// What the runner could not do; see [`Bridge::report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The component link refused a stanza (its queue for the domain is full).
    StanzaRefused,
    /// A store write or removal failed.
    StoreFailed,
}

/// What the runner must do, in the order the bridge gives them.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue a stanza on the component link; report [`Failure::StanzaRefused`] if it cannot.
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
    /// Write these subscriptions — durably (one atomic batch, one sync) before the next
    /// action, or lazily; report [`Failure::StoreFailed`] if that fails.
    Write {
        subs: Vec<Subscription>,
        durable: bool,
    },
    /// Remove a subscription, durably, before the next action; report
    /// [`Failure::StoreFailed`] if that fails.
    Forget {
        direction: Direction,
        local: String,
        remote: String,
    },
    /// Write IM sessions' dialogs: `Store::put_im_dialog` each, then with `durable`
    /// `Store::flush` (one sync) before the next action; report [`Failure::StoreFailed`] if
    /// that fails (no answer changes; the IM engine withdraws what depended on it).
    WriteIm {
        dialogs: Vec<ImDialog>,
        durable: bool,
    },
    /// Remove an IM session's dialog (`Store::remove_im_dialog`, not synced); report
    /// [`Failure::StoreFailed`] if that fails.
    ForgetIm { local: String, remote: String },
    /// Run an administration command and give its outcome back as [`Input::AdminDone`] with
    /// this `id` (later: the command may take time; other inputs go on meanwhile).
    Admin { id: u64, command: Command },
    /// The outcome of [`Input::Admin`] `id`.
    AdminReply { id: u64, outcome: Outcome },
}

/// One engine behind the bridge: sans-IO, inputs with their time, outputs in order.
pub trait Engine: Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// Whether it takes this input. An input that is not shared goes to the first engine
    /// that takes it, so a catch-all engine comes last.
    fn takes(&self, input: &Input) -> bool;
    /// Handles an input it takes.
    fn handle(&mut self, now: Instant, input: Input) -> Vec<Output>;
    /// Its next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Its deadlines due at `now`.
    fn handle_timeout(&mut self, now: Instant) -> Vec<Output>;
    /// Whether a batch's stanzas run before its other outputs.
    fn stanzas_first(&self) -> bool {
        false
    }
    /// Whether `response` promises that the batch's stanzas reached the XMPP side, so it must
    /// not be sent as it is when the link refused one of them.
    fn promises_delivery(&self, _response: &Message) -> bool {
        false
    }
    /// Its last outputs before the bridge stops.
    fn shutdown(&mut self) -> Vec<Output> {
        Vec::new()
    }
    /// Adds what it holds to `census` (see [`Census`]).
    fn census(&self, _census: &mut Census) {}
    /// A store write or removal it asked for failed (`failed`: the outputs the failed action
    /// carried, as the engine gave them); `queued`: its requests not sent yet. Returns the
    /// transactions to withdraw (they are not sent; the engine has dealt with them) and outputs
    /// to run before anything else.
    fn store_failed(
        &mut self,
        _now: Instant,
        _failed: &[Output],
        _queued: &[(TxId, &Message)],
    ) -> (Vec<TxId>, Vec<Output>) {
        (Vec::new(), Vec::new())
    }
}

/// One output waiting, with the batch it belongs to.
struct Queued {
    output: Output,
    batch: u64,
    engine: usize,
}

/// The engines, the routing between them and the order of their outputs. See the module
/// documentation.
pub struct Bridge {
    engines: Vec<Box<dyn Engine>>,
    /// For the statuses of the bridge's own failures (`xmpp_to_sip`).
    errors: ErrorTable,
    queue: VecDeque<Queued>,
    next_batch: u64,
    /// The batch the last action came from, and what failed in it so far.
    current: u64,
    refused: bool,
    unsaved: bool,
    /// The last action was an IM dialog write or removal (its failure changes no answer).
    im_store: bool,
    /// The last action was a store write or removal: its engine and the outputs it carried,
    /// for [`Engine::store_failed`] should it fail.
    last_store: Option<(usize, Vec<Output>)>,
    /// Component domains whose stream was lost and has not come back.
    down: BTreeSet<String>,
    /// Facts waiting to be handed to the engines that take them.
    facts: VecDeque<Fact>,
    /// Whether a leader lease gates serving ([`Bridge::set_serving_until`]).
    leased: bool,
    /// With a lease: serve only before this (none: not now).
    serving_until: Option<Instant>,
}

impl Bridge {
    /// The engines in routing order (see [`Engine::takes`]).
    pub fn new(engines: Vec<Box<dyn Engine>>, errors: ErrorTable) -> Bridge {
        Bridge {
            engines,
            errors,
            queue: VecDeque::new(),
            next_batch: 1,
            current: 0,
            refused: false,
            unsaved: false,
            im_store: false,
            last_store: None,
            down: BTreeSet::new(),
            facts: VecDeque::new(),
            leased: false,
            serving_until: None,
        }
    }

    /// The bridge's engines in routing order: presence, rosters (the server's privilege
    /// message and the answers to its roster IQs), the administration commands (XEP-0050),
    /// the component's IQ answers, IM (which takes every message stanza and every SIP request
    /// and transaction the others leave).
    pub fn standard(
        presence: PresenceEngine,
        roster: RosterEngine,
        im: ImEngine,
        iq: IqEngine,
        admin: AdminEngine,
        errors: ErrorTable,
    ) -> Bridge {
        Bridge::new(
            vec![
                Box::new(presence),
                Box::new(roster),
                Box::new(admin),
                Box::new(iq),
                Box::new(im),
            ],
            errors,
        )
    }

    /// An input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        let new_request = matches!(
            input,
            Input::Edge(EdgeEvent::Request { .. }) | Input::Stanza(_)
        );
        if new_request && !self.serving(now) {
            self.refuse_while_not_serving(input);
            return;
        }
        self.route(now, input);
        self.hand_on_facts(now);
    }

    /// Puts the bridge under a leader lease (docs/high-availability.md): it serves only
    /// before `until`, the lease's local deadline (`None`: not at all, the lease being lost
    /// or not renewed). The runner passes each new deadline; the bridge compares it with each
    /// input's time, so a process that wakes after being stopped serves nothing even before
    /// it has heard from the database. While not serving, new SIP requests are answered `503`
    /// with `Retry-After` (RFC 3261 §21.5.4; a partner with another SRV target tries it,
    /// RFC 3263 §4.3), messages and IQ requests from the XMPP side return
    /// `service-unavailable`, other presence stanzas are dropped, and the engines' timers
    /// wait; what completes what was started (responses, lost connections, the link's state)
    /// still goes to the engines. Without a call the bridge always serves.
    pub fn set_serving_until(&mut self, until: Option<Instant>) {
        self.leased = true;
        self.serving_until = until;
    }

    /// Whether the bridge serves at `now` (always, without a lease).
    pub fn serving(&self, now: Instant) -> bool {
        !self.leased || self.serving_until.is_some_and(|u| now < u)
    }

    /// The answer to a new request while not serving (see [`Bridge::set_serving_until`]).
    fn refuse_while_not_serving(&mut self, input: Input) {
        const WHY: &str = "this bridge does not hold the lease";
        let out = match input {
            Input::Edge(EdgeEvent::Request { tx, request, .. }) => {
                if request.method() == Some(&Method::Ack) {
                    return;
                }
                let response = Reject::new(503)
                    .reason(format!("{}: {WHY}", reason_phrase(503)))
                    .retry_after(NOT_SERVING_RETRY_AFTER_SECS)
                    .response_to(&request, None);
                Output::Respond { tx, response }
            }
            Input::Stanza(el) => {
                let kind = el.attr("type").unwrap_or("");
                let answered = match el.name() {
                    "message" => kind != "error",
                    "iq" => kind == "get" || kind == "set",
                    _ => false,
                };
                if !answered {
                    return;
                }
                Output::Stanza(gateway::error_reply(
                    &el,
                    Condition::ServiceUnavailable,
                    Some(WHY),
                ))
            }
            _ => return,
        };
        // Queued as the last engine's (the catch-all): the bridge's own answer.
        let engine = self.engines.len().saturating_sub(1);
        self.push(engine, vec![out]);
    }

    /// The facts the engines produced, to the engines that take them (see the module
    /// documentation).
    fn hand_on_facts(&mut self, now: Instant) {
        let mut n = 0;
        while let Some(fact) = self.facts.pop_front() {
            n += 1;
            if n > MAX_FACTS {
                warn!("facts dropped: engines keep producing them");
                self.facts.clear();
                return;
            }
            self.route(now, Input::Fact(fact));
        }
    }

    fn route(&mut self, now: Instant, input: Input) {
        match &input {
            Input::LinkUp { domain } => {
                info!(%domain, "component link up");
                if !self.down.remove(domain) {
                    // The first Up: nothing was missed.
                    return;
                }
            }
            Input::LinkDown { domain, reason } => {
                warn!(%domain, %reason, "component link down; stanzas are queued");
                self.down.insert(domain.clone());
            }
            Input::Reconfigure(settings) => {
                // The statuses of the bridge's own failures come from the new table too.
                self.errors = settings.mappings.errors.clone();
            }
            _ => {}
        }
        if input.is_shared() {
            for i in 0..self.engines.len() {
                if self.engines[i].takes(&input) {
                    let out = self.engines[i].handle(now, input.clone());
                    self.push(i, out);
                }
            }
            return;
        }
        match self.engines.iter().position(|e| e.takes(&input)) {
            Some(i) => {
                let out = self.engines[i].handle(now, input);
                self.push(i, out);
            }
            None => debug!(input = ?input_kind(&input), "no engine takes this input"),
        }
    }

    /// The runner could not do the last action it took (at `now`). A store failure is passed
    /// to the engine that wrote ([`Engine::store_failed`]): the requests it withdraws are
    /// dropped from the queue, and what it answers with runs next.
    pub fn report(&mut self, now: Instant, failure: Failure) {
        match failure {
            Failure::StanzaRefused => self.refused = true,
            Failure::StoreFailed => {
                // An IM session's dialog changes no answer (its engine decides what follows).
                if !self.im_store {
                    self.unsaved = true;
                }
                let Some((engine, failed)) = self.last_store.take() else {
                    return;
                };
                let queued: Vec<(TxId, &Message)> = self
                    .queue
                    .iter()
                    .filter(|q| q.engine == engine)
                    .filter_map(|q| match &q.output {
                        Output::Request { tx, request, .. } => Some((*tx, request)),
                        _ => None,
                    })
                    .collect();
                let (withdrawn, first) = self.engines[engine].store_failed(now, &failed, &queued);
                if !withdrawn.is_empty() {
                    self.queue.retain(|q| {
                        !matches!(&q.output, Output::Request { tx, .. } if withdrawn.contains(tx))
                    });
                }
                for output in first.into_iter().rev() {
                    self.queue.push_front(Queued {
                        output,
                        batch: self.current,
                        engine,
                    });
                }
            }
        }
    }

    /// Group commit of IM sessions' durable writes: the durable IM writes queued after the
    /// one being taken, by the same engine, in later batches too, join it (one sync for a burst
    /// of new sessions), in their order. Other actions stay where they are, so whatever
    /// followed a write still waits for it; the look-ahead passes over actions that are no
    /// store writes and stops at the first store write of another kind (store writes keep
    /// their order), after [`WRITE_LOOKAHEAD`] entries, or at [`WRITE_BATCH`] writes.
    fn join_im_writes(&mut self, engine: usize, kept: &mut Vec<(ImDialog, Option<u32>)>) {
        let mut joined = Vec::new();
        for (i, q) in self.queue.iter().enumerate().take(WRITE_LOOKAHEAD) {
            match &q.output {
                Output::PersistIm { durable: true, .. } if q.engine == engine => {
                    joined.push(i);
                    if kept.len() + joined.len() >= WRITE_BATCH {
                        break;
                    }
                }
                Output::Stanza(_)
                | Output::Request { .. }
                | Output::Respond { .. }
                | Output::Ack { .. }
                | Output::Fact(_) => {}
                _ => break,
            }
        }
        let Some(&last) = joined.last() else {
            return;
        };
        let prefix: Vec<Queued> = self.queue.drain(..=last).collect();
        let mut joined = joined.into_iter().peekable();
        let mut stay = Vec::with_capacity(prefix.len());
        for (i, q) in prefix.into_iter().enumerate() {
            if joined.next_if_eq(&i).is_some() {
                if let Output::PersistIm { dialog, before, .. } = q.output {
                    kept.push((*dialog, before));
                }
            } else {
                stay.push(q);
            }
        }
        for q in stay.into_iter().rev() {
            self.queue.push_front(q);
        }
    }

    /// The number the next batch of outputs will get: the batches an input made are those
    /// numbered from this value before [`Bridge::handle`] to it after (for the runner's
    /// transcript, which pairs each action with the input it came from).
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// The batch of the action [`Bridge::poll_action`] returned last.
    pub fn action_batch(&self) -> u64 {
        self.current
    }

    /// The next action, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        let Queued {
            output,
            batch,
            engine,
        } = loop {
            let q = self.queue.pop_front()?;
            // Facts never reach the queue (`push` takes them out); skipped should one.
            if !matches!(q.output, Output::Fact(_)) {
                break q;
            }
        };
        if batch != self.current {
            self.current = batch;
            self.refused = false;
            self.unsaved = false;
        }
        self.im_store = matches!(output, Output::PersistIm { .. } | Output::ForgetIm { .. });
        self.last_store = None;
        Some(match output {
            Output::Stanza(el) => Action::Stanza(el),
            Output::Request { tx, request, route } => Action::Request { tx, request, route },
            Output::Respond { tx, response } => Action::Respond {
                tx,
                response: self.answer(engine, response),
            },
            Output::Ack { conn, ack } => Action::Ack { conn, ack },
            Output::Persist(sub) => {
                let mut subs = vec![*sub];
                while subs.len() < WRITE_BATCH {
                    match self.queue.front() {
                        Some(q) if q.batch == batch && matches!(q.output, Output::Persist(_)) => {
                            if let Some(Queued {
                                output: Output::Persist(sub),
                                ..
                            }) = self.queue.pop_front()
                            {
                                subs.push(*sub);
                            }
                        }
                        _ => break,
                    }
                }
                let kept = subs.iter().cloned().map(|s| Output::Persist(Box::new(s)));
                self.last_store = Some((engine, kept.collect()));
                Action::Write {
                    subs,
                    durable: true,
                }
            }
            Output::PersistIm {
                dialog,
                durable: true,
                before,
            } => {
                let mut kept = vec![(*dialog, before)];
                self.join_im_writes(engine, &mut kept);
                let dialogs = kept.iter().map(|(d, _)| d.clone()).collect();
                let failed = kept.into_iter().map(|(d, before)| Output::PersistIm {
                    dialog: Box::new(d),
                    durable: true,
                    before,
                });
                self.last_store = Some((engine, failed.collect()));
                Action::WriteIm {
                    dialogs,
                    durable: true,
                }
            }
            Output::PersistLazy(sub) => {
                self.last_store = Some((engine, vec![Output::PersistLazy(sub.clone())]));
                Action::Write {
                    subs: vec![*sub],
                    durable: false,
                }
            }
            Output::PersistIm { dialog, before, .. } => {
                let kept = Output::PersistIm {
                    dialog: dialog.clone(),
                    durable: false,
                    before,
                };
                self.last_store = Some((engine, vec![kept]));
                Action::WriteIm {
                    dialogs: vec![*dialog],
                    durable: false,
                }
            }
            Output::Forget {
                direction,
                local,
                remote,
            } => {
                let kept = Output::Forget {
                    direction,
                    local: local.clone(),
                    remote: remote.clone(),
                };
                self.last_store = Some((engine, vec![kept]));
                Action::Forget {
                    direction,
                    local,
                    remote,
                }
            }
            Output::ForgetIm { local, remote } => {
                let kept = Output::ForgetIm {
                    local: local.clone(),
                    remote: remote.clone(),
                };
                self.last_store = Some((engine, vec![kept]));
                Action::ForgetIm { local, remote }
            }
            Output::Admin { id, command } => Action::Admin { id, command },
            Output::AdminReply { id, outcome } => Action::AdminReply { id, outcome },
            Output::Fact(_) => return self.poll_action(),
        })
    }

    /// The earliest of the engines' deadlines; under a lease, none while not serving, and
    /// the lease's deadline if it comes first (the engines' timers wait while not serving).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = self.engines.iter().filter_map(|e| e.poll_timeout()).min();
        match (self.leased, self.serving_until) {
            (false, _) => due,
            (true, None) => None,
            (true, Some(until)) => Some(due.map_or(until, |d| d.min(until))),
        }
    }

    /// Runs the engines whose deadline is due at `now` (none while not serving).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.serving(now) {
            if self.serving_until.take().is_some() {
                warn!("lease deadline passed: serving nothing until the lease is renewed");
            }
            return;
        }
        for i in 0..self.engines.len() {
            if self.engines[i].poll_timeout().is_some_and(|d| d <= now) {
                let out = self.engines[i].handle_timeout(now);
                self.push(i, out);
            }
        }
        self.hand_on_facts(now);
    }

    /// What the engines hold now (subscriptions by direction and state, IM sessions), for the
    /// operations gauges; it walks every subscription, so call it every few seconds, not per
    /// event.
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        for e in &self.engines {
            e.census(&mut census);
        }
        census
    }

    /// The engines' last outputs (XEP-0100 unavailable presences), queued like any others.
    pub fn shutdown(&mut self) {
        for i in 0..self.engines.len() {
            let out = self.engines[i].shutdown();
            self.push(i, out);
        }
    }

    /// Whether actions are waiting.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    fn push(&mut self, engine: usize, outputs: Vec<Output>) {
        let (facts, outputs): (Vec<Output>, Vec<Output>) = outputs
            .into_iter()
            .partition(|o| matches!(o, Output::Fact(_)));
        self.facts.extend(facts.into_iter().filter_map(|o| match o {
            Output::Fact(f) => Some(f),
            _ => None,
        }));
        if outputs.is_empty() {
            return;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let queued = |output| Queued {
            output,
            batch,
            engine,
        };
        if self.engines[engine].stanzas_first() {
            let (stanzas, rest): (Vec<Output>, Vec<Output>) = outputs
                .into_iter()
                .partition(|o| matches!(o, Output::Stanza(_)));
            self.queue
                .extend(stanzas.into_iter().chain(rest).map(queued));
        } else {
            self.queue.extend(outputs.into_iter().map(queued));
        }
    }

    /// The refusal for a failure of the bridge's own: the status `errors.toml` gives the
    /// condition, its standard phrase and what failed.
    fn failure(&self, condition: Condition, what: &str) -> Reject {
        let status = self.errors.status_for_condition(condition);
        Reject::new(status).reason(format!("{}: {what}", reason_phrase(status)))
    }

    /// A response as it goes out, after what failed before it in its batch: the failure's
    /// stanza error condition, answered with the status `errors.toml` gives it (XMPP → SIP).
    fn answer(&self, engine: usize, response: Message) -> Message {
        let ok = response.status().is_some_and(status::is_success);
        if self.unsaved && ok {
            self.failure(Condition::ServiceUnavailable, "state not saved")
                .retry_after(STORE_RETRY_AFTER_SECS)
                .instead_of(&response)
        } else if self.refused && self.engines[engine].promises_delivery(&response) {
            self.failure(Condition::ServiceUnavailable, "XMPP server unreachable")
                .retry_after(LINK_RETRY_AFTER_SECS)
                .instead_of(&response)
        } else {
            response
        }
    }
}

/// An input's kind, for logs (never its content).
fn input_kind(input: &Input) -> &'static str {
    match input {
        Input::Edge(EdgeEvent::Request { .. }) => "request",
        Input::Edge(EdgeEvent::Transaction(_)) => "transaction",
        Input::Edge(EdgeEvent::Undeliverable { .. }) => "undeliverable",
        Input::Edge(EdgeEvent::ConnectionLost { .. }) => "connection lost",
        Input::Stanza(_) => "stanza",
        Input::LinkUp { .. } => "link up",
        Input::LinkDown { .. } => "link down",
        Input::Restore(_) => "restore",
        Input::RestoreIm(_) => "IM restore",
        Input::Fact(_) => "fact",
        Input::Reconfigure(_) => "reconfigure",
        Input::AdminDone { .. } => "admin outcome",
        Input::Admin { .. } => "admin command",
    }
}

/// The client transaction an edge event completes, if any.
fn client_tx(event: &EdgeEvent) -> Option<TxId> {
    match event {
        EdgeEvent::Transaction(
            TxEvent::Response { tx, .. }
            | TxEvent::Timeout { tx }
            | TxEvent::GaveUp { tx }
            | TxEvent::TransportError { tx },
        )
        | EdgeEvent::Undeliverable { tx, .. } => Some(*tx),
        _ => None,
    }
}

/// Whether a stanza is this element (any namespace the link delivers).
fn stanza_named(input: &Input, name: &str) -> bool {
    matches!(input, Input::Stanza(el) if el.name() == name)
}

impl Engine for PresenceEngine {
    fn name(&self) -> &'static str {
        "presence"
    }

    /// Presence stanzas, SUBSCRIBE/NOTIFY/BENOTIFY, its own transactions, lost connections,
    /// the restore, and the link's state (the bridge passes on no first Up).
    fn takes(&self, input: &Input) -> bool {
        match input {
            Input::Stanza(_) => stanza_named(input, "presence"),
            Input::Edge(EdgeEvent::Request { request, .. }) => {
                request.method().is_some_and(PresenceEngine::handles)
            }
            Input::Edge(EdgeEvent::ConnectionLost { .. }) => true,
            Input::Edge(event) => client_tx(event).is_some_and(|tx| self.owns(tx)),
            Input::Restore(_)
            | Input::LinkUp { .. }
            | Input::LinkDown { .. }
            | Input::Reconfigure(_) => true,
            Input::Fact(Fact::EndSubscription { .. }) => true,
            Input::RestoreIm(_)
            | Input::Fact(_)
            | Input::AdminDone { .. }
            | Input::Admin { .. } => false,
        }
    }

    fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        match input {
            Input::Stanza(el) => self.on_stanza(now, el),
            Input::Edge(event) => self.on_edge(now, event),
            Input::Restore(subs) => self.restore(now, subs.into_iter()),
            Input::LinkUp { domain } => self.link_restored(now, &domain),
            Input::LinkDown { domain, .. } => {
                self.link_lost(&domain);
                Vec::new()
            }
            Input::Reconfigure(settings) => {
                let Reconfigure {
                    presence, mappings, ..
                } = *settings;
                self.reconfigure(presence, mappings);
                Vec::new()
            }
            Input::Fact(Fact::EndSubscription { id, local, remote }) => {
                let (ended, mut out) = self.end_by_admin(now, &local, &remote);
                out.push(Output::Fact(Fact::AdminDone {
                    id,
                    outcome: super::admin::ended(&local, &remote, &ended),
                }));
                out
            }
            Input::RestoreIm(_)
            | Input::Fact(_)
            | Input::AdminDone { .. }
            | Input::Admin { .. } => Vec::new(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        PresenceEngine::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        PresenceEngine::handle_timeout(self, now)
    }

    /// Only a 2xx to SUBSCRIBE: its `subscribe` stanza asked the local user.
    fn promises_delivery(&self, response: &Message) -> bool {
        response.status().is_some_and(status::is_success)
            && response.cseq().is_ok_and(|c| c.method == Method::Subscribe)
    }

    fn census(&self, census: &mut Census) {
        PresenceEngine::census(self, census);
    }

    fn shutdown(&mut self) -> Vec<Output> {
        info!(
            hits = %crate::edge::limits::summary(self.limit_hits().iter().map(|(k, n)| (*k, *n))),
            "presence stopping; pending-subscription limits hit since the start"
        );
        PresenceEngine::shutdown(self)
    }

    /// A watcher's NOTIFY waiting behind a write of its record that failed is withdrawn and
    /// owed again after the backoff ([`PresenceEngine::store_failed`]).
    fn store_failed(
        &mut self,
        now: Instant,
        failed: &[Output],
        queued: &[(TxId, &Message)],
    ) -> (Vec<TxId>, Vec<Output>) {
        (
            PresenceEngine::store_failed(self, now, failed, queued),
            Vec::new(),
        )
    }
}

impl Engine for ImEngine {
    fn name(&self) -> &'static str {
        "im"
    }

    /// Message stanzas, every SIP request and transaction event left by the engines before
    /// it, and the stored IM dialogs at start.
    fn takes(&self, input: &Input) -> bool {
        match input {
            Input::Stanza(_) => stanza_named(input, "message"),
            Input::Edge(_) | Input::RestoreIm(_) | Input::Reconfigure(_) => true,
            Input::LinkUp { .. }
            | Input::LinkDown { .. }
            | Input::Restore(_)
            | Input::Fact(_)
            | Input::AdminDone { .. }
            | Input::Admin { .. } => false,
        }
    }

    fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        match input {
            Input::Stanza(el) => self.on_stanza(now, el),
            Input::Edge(event) => self.on_edge(now, event),
            Input::RestoreIm(dialogs) => self.restore(now, dialogs),
            Input::Reconfigure(settings) => {
                let Reconfigure { im, mappings, .. } = *settings;
                self.reconfigure(im, mappings.errors);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        ImEngine::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        ImEngine::handle_timeout(self, now)
    }

    /// A 200 whose stanza must reach the XMPP side first.
    fn stanzas_first(&self) -> bool {
        true
    }

    /// A 200 to a MESSAGE or INVITE: its body was delivered.
    fn promises_delivery(&self, response: &Message) -> bool {
        response.status() == Some(status::OK)
    }

    fn store_failed(
        &mut self,
        now: Instant,
        failed: &[Output],
        queued: &[(TxId, &Message)],
    ) -> (Vec<TxId>, Vec<Output>) {
        ImEngine::store_failed(self, now, failed, queued)
    }

    fn census(&self, census: &mut Census) {
        census.im_sessions += self.session_count();
    }

    fn shutdown(&mut self) -> Vec<Output> {
        info!(
            hits = %crate::edge::limits::summary(self.limit_hits().iter().map(|(k, n)| (*k, *n))),
            "IM stopping; session limits hit since the start"
        );
        Vec::new()
    }
}

impl Engine for RosterEngine {
    fn name(&self) -> &'static str {
        "roster"
    }

    /// The server's privilege message, answers to its roster IQs, roster pushes, roster
    /// facts, a component stream lost and back.
    fn takes(&self, input: &Input) -> bool {
        match input {
            Input::Stanza(el) => self.takes_stanza(el),
            Input::Fact(Fact::Roster { .. }) | Input::LinkDown { .. } | Input::LinkUp { .. } => {
                true
            }
            _ => false,
        }
    }

    fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        match input {
            Input::Stanza(el) => self.on_stanza(now, &el),
            Input::Fact(fact) => self.on_fact(now, fact),
            Input::LinkDown { domain, .. } => {
                self.link_lost(&domain);
                Vec::new()
            }
            Input::LinkUp { domain } => {
                self.link_restored(now, &domain);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        RosterEngine::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        RosterEngine::handle_timeout(self, now)
    }
}

impl Engine for AdminEngine {
    fn name(&self) -> &'static str {
        "admin"
    }

    /// Ad-hoc command IQs and the commands node's disco#items on a component domain, the
    /// outcomes of its commands, and a reload (the administrators' list).
    fn takes(&self, input: &Input) -> bool {
        match input {
            Input::Stanza(el) => AdminEngine::takes(self, el),
            Input::AdminDone { .. }
            | Input::Admin { .. }
            | Input::Reconfigure(_)
            | Input::Fact(Fact::AdminDone { .. }) => true,
            _ => false,
        }
    }

    fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        match input {
            Input::Stanza(el) => self.on_iq(now, &el),
            Input::AdminDone { id, outcome } | Input::Fact(Fact::AdminDone { id, outcome }) => {
                self.done(id, &outcome)
            }
            Input::Admin { id, command } => self.from_runner(id, command),
            Input::Reconfigure(settings) => {
                self.set_admins(settings.admins.iter().cloned());
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) -> Vec<Output> {
        Vec::new()
    }
}

/// The component's own answers to IQs (`xmpp::gateway::handle_iq`: service discovery,
/// XEP-0100 gateway, ping, version; `xmpp::gateway::vcard_reply`: LCS contacts' vCards from
/// the display names the other engines learned, [`Fact::Name`]). IQ results and errors
/// addressed to the component that no engine before it took are dropped: the link sends its
/// own keep-alive pings and takes their answers itself, and the roster engine, which sends
/// roster IQs, takes their answers by id (in [`Engine::takes`]) before this one, so an IQ
/// error here answers nothing the bridge asked and has no SIP side to be told; it is logged
/// (id, sender, condition), and an entity never answers a result or an error (RFC 6120
/// §8.2.3).
pub struct IqEngine {
    book: AddressBook,
    info: GatewayInfo,
    names: NameBook,
}

impl IqEngine {
    pub fn new(book: AddressBook, info: GatewayInfo) -> IqEngine {
        IqEngine {
            book,
            info,
            names: NameBook::default(),
        }
    }
}

impl Engine for IqEngine {
    fn name(&self) -> &'static str {
        "iq"
    }

    fn takes(&self, input: &Input) -> bool {
        stanza_named(input, "iq") || matches!(input, Input::Fact(Fact::Name { .. }))
    }

    fn handle(&mut self, _now: Instant, input: Input) -> Vec<Output> {
        let iq = match input {
            Input::Stanza(iq) => iq,
            Input::Fact(Fact::Name {
                aor,
                name,
                source,
                subscribed,
                ..
            }) => {
                self.names.learn(&aor, &name, source, subscribed);
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        let names = &self.names;
        let name_of = |aor: &str| names.get(aor).map(str::to_owned);
        let reply = gateway::vcard_reply(&iq, &self.book, &name_of)
            .or_else(|| gateway::handle_iq(&iq, &self.book, &self.info));
        match reply {
            Some(reply) => vec![Output::Stanza(reply)],
            None if iq.attr("type") == Some("error") => {
                let payloads: Vec<Element> = iq.children().cloned().collect();
                let condition = super::common::error_of(&payloads)
                    .map_or("undefined-condition", |(c, _)| c.as_str());
                info!(
                    id = iq.attr("id").unwrap_or(""),
                    from = iq.attr("from").unwrap_or(""),
                    condition,
                    "iq error for no request of the bridge's dropped"
                );
                Vec::new()
            }
            None => {
                debug!(kind = iq.attr("type").unwrap_or(""), "iq result dropped");
                Vec::new()
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) -> Vec<Output> {
        Vec::new()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::core::tables::Mappings;
    use crate::sip::transaction::TxIds;
    use crate::store::DialogRecord;

    /// An engine that answers its input with the outputs it is given and notes what the
    /// bridge tells it failed, answering with `withdraw` and `first`.
    #[derive(Default)]
    struct Stub {
        out: Vec<Output>,
        /// The outputs of the inputs after the first, in order.
        more: VecDeque<Vec<Output>>,
        failed: Vec<Vec<Output>>,
        withdraw: Vec<TxId>,
        first: Vec<Output>,
    }

    impl Engine for Stub {
        fn name(&self) -> &'static str {
            "stub"
        }
        fn takes(&self, _input: &Input) -> bool {
            true
        }
        fn handle(&mut self, _now: Instant, _input: Input) -> Vec<Output> {
            if self.out.is_empty() {
                return self.more.pop_front().unwrap_or_default();
            }
            std::mem::take(&mut self.out)
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn handle_timeout(&mut self, _now: Instant) -> Vec<Output> {
            Vec::new()
        }
        fn store_failed(
            &mut self,
            _now: Instant,
            failed: &[Output],
            queued: &[(TxId, &Message)],
        ) -> (Vec<TxId>, Vec<Output>) {
            assert_eq!(queued.len(), 2, "both requests still wait");
            let befores: Vec<Option<u32>> = failed
                .iter()
                .map(|o| match o {
                    Output::PersistIm { before, .. } => *before,
                    _ => panic!("{o:?}"),
                })
                .collect();
            assert_eq!(befores, [Some(1), None], "every record of the joined write");
            self.failed.push(failed.to_vec());
            (
                std::mem::take(&mut self.withdraw),
                std::mem::take(&mut self.first),
            )
        }
    }

    fn im_dialog(remote: &str) -> ImDialog {
        ImDialog {
            local_jid: "alice@example.org".into(),
            remote_aor: remote.into(),
            dialog: DialogRecord {
                call_id: format!("call-{remote}"),
                local_tag: "a".into(),
                remote_tag: "b".into(),
                local_uri: "sip:alice@example.org".into(),
                local_display: None,
                remote_uri: remote.into(),
                remote_display: None,
                remote_target: remote.into(),
                route_set: vec![],
                local_cseq: 1001,
                remote_cseq: None,
                created_unix: 1_700_000_000,
            },
        }
    }

    fn request(tx: TxId) -> Output {
        Output::Request {
            tx,
            request: Message::new_request(Method::Message, "sip:bob@contoso.com"),
            route: Route::Domain("contoso.com".into()),
        }
    }

    /// Consecutive durable IM writes share one action (one flush); when it fails, the engine is
    /// given every record it carried and the requests still waiting, the requests it withdraws
    /// are not sent and what it answers with runs first.
    #[test]
    fn a_failed_store_write_is_the_engines_to_answer() {
        let (d1, d2) = (
            im_dialog("sip:bob@contoso.com"),
            im_dialog("sip:carol@contoso.com"),
        );
        let ids = TxIds::default();
        let (tx1, tx2) = (ids.next(), ids.next());
        let stub = Stub {
            out: vec![
                Output::PersistIm {
                    dialog: Box::new(d1.clone()),
                    durable: true,
                    before: Some(1),
                },
                Output::PersistIm {
                    dialog: Box::new(d2.clone()),
                    durable: true,
                    before: None,
                },
                request(tx1),
                request(tx2),
            ],
            withdraw: vec![tx1],
            first: vec![Output::ForgetIm {
                local: "alice@example.org".into(),
                remote: "sip:bob@contoso.com".into(),
            }],
            ..Stub::default()
        };
        let mut bridge = Bridge::new(vec![Box::new(stub)], Mappings::builtin().errors);
        let now = Instant::now();
        let el: Element = "<message xmlns='jabber:component:accept'/>"
            .parse()
            .unwrap();
        bridge.handle(now, Input::Stanza(el));
        assert_eq!(
            bridge.poll_action(),
            Some(Action::WriteIm {
                dialogs: vec![d1, d2],
                durable: true
            })
        );
        bridge.report(now, Failure::StoreFailed);
        assert!(matches!(
            bridge.poll_action(),
            Some(Action::ForgetIm { remote, .. }) if remote == "sip:bob@contoso.com"
        ));
        assert!(matches!(bridge.poll_action(), Some(Action::Request { tx, .. }) if tx == tx2));
        assert_eq!(bridge.poll_action(), None);
    }

    /// IM writes of later inputs join the first one's sync (group commit), passing over the
    /// actions between, which stay in order behind it; a store write of another kind ends the
    /// join (store writes keep their order).
    #[test]
    fn durable_im_writes_of_later_inputs_share_one_sync() {
        let d = |r: &str| im_dialog(r);
        let w = |r: &str| Output::PersistIm {
            dialog: Box::new(d(r)),
            durable: true,
            before: None,
        };
        let ids = TxIds::default();
        let (tx1, tx2, tx3) = (ids.next(), ids.next(), ids.next());
        let forget = Output::ForgetIm {
            local: "alice@example.org".into(),
            remote: "sip:dave@contoso.com".into(),
        };
        let stub = Stub {
            out: vec![w("sip:bob@contoso.com"), request(tx1)],
            more: VecDeque::from([
                vec![w("sip:carol@contoso.com"), request(tx2)],
                vec![forget, w("sip:erin@contoso.com"), request(tx3)],
            ]),
            ..Stub::default()
        };
        let mut bridge = Bridge::new(vec![Box::new(stub)], Mappings::builtin().errors);
        let now = Instant::now();
        let el: Element = "<message xmlns='jabber:component:accept'/>"
            .parse()
            .unwrap();
        for _ in 0..3 {
            bridge.handle(now, Input::Stanza(el.clone()));
        }
        assert_eq!(
            bridge.poll_action(),
            Some(Action::WriteIm {
                dialogs: vec![d("sip:bob@contoso.com"), d("sip:carol@contoso.com")],
                durable: true
            })
        );
        assert!(matches!(bridge.poll_action(), Some(Action::Request { tx, .. }) if tx == tx1));
        assert!(matches!(bridge.poll_action(), Some(Action::Request { tx, .. }) if tx == tx2));
        assert!(matches!(
            bridge.poll_action(),
            Some(Action::ForgetIm { .. })
        ));
        assert_eq!(
            bridge.poll_action(),
            Some(Action::WriteIm {
                dialogs: vec![d("sip:erin@contoso.com")],
                durable: true
            })
        );
        assert!(matches!(bridge.poll_action(), Some(Action::Request { tx, .. }) if tx == tx3));
        assert_eq!(bridge.poll_action(), None);
    }
}
