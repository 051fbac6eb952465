//! Micro-benchmark of the presence engine's fan-out (XMPP → LCS): a local user's change comes
//! from the XMPP server as one stanza per subscribed contact (RFC 6121 §4.4.2), and each
//! becomes a NOTIFY to that LCS watcher. One iteration is one such stanza, its NOTIFY built
//! and answered; the engine alone, on a virtual clock (docs/benchmarks.md "Presence engine").
//!
//! `cargo bench --bench presence` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // the virtual clock starts at a real instant

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lcs_bridge::core::address::{AddressBook, AddressMode};
use lcs_bridge::core::tables::Mappings;
use lcs_bridge::edge::event::EdgeEvent;
use lcs_bridge::engine::Output;
use lcs_bridge::engine::presence::{PresenceEngine, PresenceSettings, WallClock};
use lcs_bridge::sip::message::Message;
use lcs_bridge::sip::transaction::{TxEvent, TxIds};
use xmpp_parsers::minidom::Element;

const USERS: usize = 20;
const WATCHERS: usize = 50;
const LONG: u32 = 10_000_000;

fn answer(e: &mut PresenceEngine, now: Instant, out: Vec<Output>) -> usize {
    let mut notifies = 0;
    for o in out {
        if let Output::Request { tx, request, .. } = o {
            notifies += 1;
            let response = Message::response_to(&request, 200, None, Some("w"));
            let ev = EdgeEvent::Transaction(TxEvent::Response {
                tx,
                conn: 1,
                response,
                is_final: true,
            });
            e.on_edge(now, ev);
        }
    }
    notifies
}

fn stanza(xml: String) -> Element {
    xml.parse().unwrap()
}

fn watcher_jid(w: usize) -> String {
    format!("w{w}\\40contoso.com@lcs.example.org")
}

/// An engine with `USERS` local users watched by `WATCHERS` LCS users each, approved.
fn world(now: Instant) -> PresenceEngine {
    let book = AddressBook::new(
        AddressMode::Gateway,
        vec!["lcs.example.org".into()],
        vec!["example.org".into()],
    )
    .unwrap();
    let settings = PresenceSettings {
        public_fqdn: "sip.example.org".into(),
        expires: Duration::from_secs(u64::from(LONG)),
        dialog_max_age: Duration::from_secs(u64::from(LONG) * 10),
        max_pending_per_domain: usize::MAX,
        max_pending_per_user: usize::MAX,
        ..PresenceSettings::default()
    };
    let ids = TxIds::default();
    let clock = WallClock {
        at: now,
        unix: 1_700_000_000,
    };
    let mut e = PresenceEngine::new(settings, book, Mappings::builtin(), ids.clone(), 7, clock);
    for u in 0..USERS {
        for w in 0..WATCHERS {
            let raw = format!(
                "SUBSCRIBE sip:u{u}@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.5:5061;branch=z9hG4bK{u}x{w}\r\nMax-Forwards: 70\r\nFrom: <sip:w{w}@contoso.com>;tag=t{w}\r\nTo: <sip:u{u}@example.org>\r\nCall-ID: c{u}x{w}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{w}@192.0.2.5:5061;transport=tls>\r\nEvent: presence\r\nAccept: application/pidf+xml\r\nExpires: {LONG}\r\nContent-Length: 0\r\n\r\n"
            );
            let request = Message::parse(raw.as_bytes()).unwrap();
            let ev = EdgeEvent::Request {
                tx: ids.next(),
                conn: 1,
                request,
                asserted: None,
            };
            let out = e.on_edge(now, ev);
            answer(&mut e, now, out);
            let subscribed = stanza(format!(
                "<presence xmlns='jabber:component:accept' from='u{u}@example.org' to='{}' type='subscribed'/>",
                watcher_jid(w)
            ));
            let out = e.on_stanza(now, subscribed);
            answer(&mut e, now, out);
        }
    }
    e
}

/// Stanza `i` of the fan-out: to watcher `i % WATCHERS` of user `i / WATCHERS % USERS`, each
/// round of all users alternating away and dnd with a new status.
fn stanza_at(i: usize) -> Element {
    let (w, u, round) = (i % WATCHERS, i / WATCHERS % USERS, i / (WATCHERS * USERS));
    let show = if round % 2 == 0 { "away" } else { "dnd" };
    stanza(format!(
        "<presence xmlns='jabber:component:accept' from='u{u}@example.org/pc' to='{}' id='p{i}'><show>{show}</show><status>s{round}</status><priority>1</priority></presence>",
        watcher_jid(w)
    ))
}

/// The engine fed the fan-out; a full round of all users moves the clock past the coalescing
/// interval, so that every stanza makes its watcher's NOTIFY.
struct Fanout {
    e: PresenceEngine,
    now: Instant,
}

impl Fanout {
    fn step(&mut self, i: usize, el: Element) -> usize {
        if i % (WATCHERS * USERS) == 0 {
            self.now += Duration::from_secs(6);
            let out = self.e.handle_timeout(self.now);
            answer(&mut self.e, self.now, out);
        }
        let out = self.e.on_stanza(self.now, black_box(el));
        answer(&mut self.e, self.now, out)
    }
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut f = Fanout { e: world(now), now };
    let next = std::cell::Cell::new(0);
    let mut take = || {
        let i = next.get();
        next.set(i + 1);
        (i, stanza_at(i))
    };
    let sent: usize = (0..WATCHERS * USERS * 2)
        .map(|_| {
            let (i, el) = take();
            f.step(i, el)
        })
        .sum();
    assert_eq!(sent, WATCHERS * USERS * 2, "a NOTIFY per stanza");
    // `PRESENCE_BENCH_STEPS=N`: N more steps, timed as a whole, without criterion (run under
    // `perf stat` for instructions per stanza, which the machine's load does not move).
    if let Some(n) = std::env::var("PRESENCE_BENCH_STEPS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let started = std::time::Instant::now();
        for _ in 0..n {
            let (i, el) = take();
            f.step(i, el);
        }
        println!("{n} steps in {:?}", started.elapsed());
        return;
    }
    let mut g = c.benchmark_group("presence");
    g.throughput(Throughput::Elements(1));
    // The stanza is built outside the measurement (the component link parses it).
    g.bench_function("fanout_stanza_to_notify", |b| {
        b.iter_batched(
            &mut take,
            |(i, el)| f.step(i, el),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
