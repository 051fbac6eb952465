//! Micro-benchmarks of metric recording with the Prometheus recorder installed, as the bridge
//! runs it (docs/operations.md "Metrics and health"): one SIP request counted from its parsed
//! method, one outbound response counted from its serialised bytes (start line and CSeq), one
//! stanza, and the per-message sum of them set against a SIP message's parse. Target: well
//! under 1 % of the per-message work.
//!
//! `cargo bench --bench telemetry` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lcs_bridge::sip::message::Message;
use lcs_bridge::telemetry::{self, Direction};

const RESPONSE: &[u8] = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK74bf9;received=192.0.2.10\r\nFrom: <sip:joe@contoso.com>;tag=9fxced76sl\r\nTo: <sip:alice@example.org>;tag=8321234356\r\nCall-ID: 3848276298220188511@contoso.com\r\nCSeq: 2 MESSAGE\r\nContent-Length: 0\r\n\r\n";

const REQUEST: &[u8] = b"MESSAGE sip:alice@example.org SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK74bf9\r\nMax-Forwards: 70\r\nFrom: <sip:joe@contoso.com>;tag=9fxced76sl\r\nTo: <sip:alice@example.org>\r\nCall-ID: 3848276298220188511@contoso.com\r\nCSeq: 2 MESSAGE\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 5\r\n\r\nhello";

fn bench(c: &mut Criterion) {
    let handle = lcs_bridge::ops::install_recorder().unwrap();
    let request = Message::parse(REQUEST).unwrap();
    let method = request.method().unwrap().as_str().as_bytes().to_vec();

    let mut g = c.benchmark_group("telemetry");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sip_request_in", |b| {
        b.iter(|| {
            telemetry::sip_request(Direction::In, telemetry::method_index(black_box(&method)))
        })
    });
    g.bench_function("sip_wire_out_response", |b| {
        b.iter(|| telemetry::sip_wire_out(black_box(RESPONSE)))
    });
    g.bench_function("stanza_out", |b| {
        b.iter(|| telemetry::stanza(Direction::Out, black_box("message")))
    });
    g.bench_function("store_write_histogram", |b| {
        b.iter(|| telemetry::store_write(true, black_box(0.0012)))
    });
    g.bench_function("sip_parse_for_scale", |b| {
        b.iter(|| Message::parse(black_box(REQUEST)).unwrap())
    });
    g.finish();
    // Every series recorded above is in the rendering.
    let text = handle.render();
    assert!(text.contains(r#"lcs_bridge_sip_requests_total{direction="in",method="MESSAGE"}"#));
    assert!(text.contains(
        r#"lcs_bridge_sip_responses_total{direction="out",method="MESSAGE",class="2xx"}"#
    ));
}

criterion_group!(benches, bench);
criterion_main!(benches);
