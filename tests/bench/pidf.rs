//! Micro-benchmarks of the PIDF codec (RFC 3863/4480/4482, the LCS profile's form): render of a
//! typical document, parse of the profile's own example, and render + parse (the per-NOTIFY
//! cost). Target: ≥ 500,000 render+parse per second per core.
//!
//! `cargo bench --bench pidf` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lcs_bridge::core::pidf::{self, Basic, Note, PidfDocument};

const PROFILE_EXAMPLE: &[u8] = include_bytes!("../golden/pidf/profile-example.xml");

fn typical() -> PidfDocument {
    PidfDocument {
        entity: "sip:alice@example.org".into(),
        basic: Some(Basic::Open),
        activity: Some("away".into()),
        notes: vec![Note {
            lang: Some("en".into()),
            text: "Back at 3 & then in a meeting".into(),
        }],
        display_name: Some("Alice at Example".into()),
        icon: Some("https://example.org/brand16.png".into()),
    }
}

fn bench(c: &mut Criterion) {
    let doc = typical();
    let rendered = pidf::render(&doc);
    assert_eq!(pidf::parse(rendered.as_bytes()).unwrap(), doc);
    pidf::parse(PROFILE_EXAMPLE).unwrap();

    let mut g = c.benchmark_group("pidf");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render_typical", |b| {
        b.iter(|| pidf::render(black_box(&doc)))
    });
    g.bench_function("parse_profile_example", |b| {
        b.iter(|| pidf::parse(black_box(PROFILE_EXAMPLE)))
    });
    g.bench_function("parse_typical", |b| {
        b.iter(|| pidf::parse(black_box(rendered.as_bytes())))
    });
    g.bench_function("render_then_parse_typical", |b| {
        b.iter(|| {
            let xml = pidf::render(black_box(&doc));
            pidf::parse(xml.as_bytes())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
