//! SIP codec micro-benchmarks (issue targets: ≥ 1,000,000 MESSAGE parses/s per core).
//! Run: `cargo bench --bench sip`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lcs_bridge::sip::framing::Framer;
use lcs_bridge::sip::header::{HeaderKind, NameAddr, Via};
use lcs_bridge::sip::message::{Limits, Message};
use lcs_bridge::sip::uri::Uri;

const NOTIFY: &[u8] = include_bytes!("../golden/sip/lcs_notify_pidf.sip");
const MESSAGE: &[u8] = include_bytes!("../golden/sip/lcs_message_in_dialog.sip");

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in [("notify_pidf", NOTIFY), ("message_in_dialog", MESSAGE)] {
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Message::parse(black_box(raw)).map(|m| m.header_count()))
        });
        g.bench_function(format!("parse_structure/{name}"), |b| {
            b.iter(|| {
                Message::parse_structure(black_box(raw), &Limits::DEFAULT).map(|m| m.header_count())
            })
        });
        let parsed = Message::parse(raw).expect("golden message parses");
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("serialize/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&parsed).write_to(&mut out);
                out.len()
            })
        });
    }
    // The pieces of validation, to see where parse time goes.
    let via = "SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK9A8B7C6D.1F2E3D4C;branched=FALSE;ms-received-port=5061;ms-received-cid=2B00";
    g.bench_function("piece/via", |b| {
        b.iter(|| Via::parse(black_box(via)).map(|v| v.port))
    });
    let from = "<sip:joe@contoso.com>;tag=c8f1e2d3a4;epid=ab12cd34ef";
    g.bench_function("piece/name_addr", |b| {
        b.iter(|| NameAddr::parse(black_box(from), "From").map(|n| n.uri.len()))
    });
    g.bench_function("piece/uri", |b| {
        b.iter(|| Uri::parse(black_box("sip:alice@sip.example.org:5061;transport=tls")).is_ok())
    });
    g.bench_function("piece/header_kind_x13", |b| {
        b.iter(|| {
            [
                "Via",
                "Max-Forwards",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Route",
                "User-Agent",
                "Supported",
                "Supported",
                "Ms-Conversation-ID",
                "Content-Type",
                "Content-Length",
            ]
            .iter()
            .map(|n| HeaderKind::of(black_box(n)) as usize)
            .sum::<usize>()
        })
    });
    let mut stream = Vec::new();
    for _ in 0..64 {
        stream.extend_from_slice(MESSAGE);
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("framer/64_messages_in_4k_chunks", |b| {
        b.iter(|| {
            let mut f = Framer::new(Limits::default());
            let mut n = 0;
            for chunk in stream.chunks(4096) {
                f.push(chunk);
                while let Ok(Some(_)) = f.next_frame() {
                    n += 1;
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
