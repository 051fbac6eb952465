//! Store measurements for docs/benchmarks.md ("Store"): synced write latency, group commit,
//! bytes on disk and memory per subscription, reopen and scan time.
//!
//! ```sh
//! cargo run --release --example store_bench -- [--records N] [--pidf|--tiny] [--dir DIR]
//! LCS_STORE_BENCH_BACKEND=redb cargo run --release --features redb --example store_bench -- …
//! LCS_STORE_BENCH_BACKEND=postgres cargo run --release --example store_bench -- [--records N]
//! ```
//!
//! With `postgres` the store is a `PgStore` (pool of 16) on a private PostgreSQL server the
//! benchmark starts (lcs-test-support's `Postgres`: Debian's server, default settings, fsync
//! on, in a temporary directory under /tmp), a fresh database for each measurement; the
//! measurements of files, memory, reopening and crashes, which are sled's, are left out, and
//! the bulk load reports the subscription setup rate.
//!
//! `--records` (default 100000) subscriptions are loaded in batches of 1,000; `--pidf` stores a
//! full PIDF document (571 bytes, the profile's example) as `last_received` and a 380-byte one
//! as `last_sent` instead of the compact ~70-byte stanzas, `--tiny` an 8-byte code; `--dir` puts the store somewhere
//! else than a temporary directory under the current one (which is removed at the end).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a benchmark measures time

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lcs_bridge::store::{
    Approval, DialogRecord, Direction, SledOptions, SledStore, Store, SubState, Subscription,
};

const PIDF: &[u8] = include_bytes!("../golden/pidf/profile-example.xml");

/// `--tiny`: presence kept as an 8-byte code (show, a status hash) instead of a stanza.
static TINY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn record(i: u64, pidf: bool) -> Subscription {
    let (last_sent, last_received) = if pidf {
        (PIDF[..380].to_vec(), PIDF.to_vec())
    } else if TINY.load(std::sync::atomic::Ordering::Relaxed) {
        (i.to_le_bytes().to_vec(), (!i).to_le_bytes().to_vec())
    } else {
        (
            b"<presence><show>away</show><status>In a meeting</status></presence>".to_vec(),
            b"<presence><show>dnd</show><status>Presenting</status></presence>".to_vec(),
        )
    };
    Subscription {
        direction: if i % 2 == 0 {
            Direction::Outbound
        } else {
            Direction::Inbound
        },
        local_jid: format!("user{:06}@example.org", i / 40),
        remote_aor: format!("sip:contact{:06}@contoso.com", i % 50_000),
        dialog: Some(DialogRecord {
            call_id: format!("{:032x}", u128::from(i) * 0x9E37_79B9_7F4A_7C15),
            local_tag: format!("{:010x}", i * 7919),
            remote_tag: format!("{:010x}", i * 104_729),
            local_uri: format!("sip:user{:06}@example.org", i / 40),
            local_display: None,
            remote_uri: format!("sip:contact{:06}@contoso.com", i % 50_000),
            remote_display: Some(format!("Contact {:06}", i % 50_000)),
            remote_target: format!(
                "sip:contact{:06}@contoso.com;opaque=user:epid:Ab12Cd34Ef56Gh78Ij90Kl;gruu",
                i % 50_000
            ),
            route_set: vec!["<sip:sipfed.contoso.com:5061;transport=tls;lr>".into()],
            local_cseq: 3,
            remote_cseq: Some(17),
            created_unix: 1_790_000_000 + i,
        }),
        expires_unix: 1_790_003_600 + i,
        state: SubState::Active,
        approval: Approval::Approved,
        last_sent: Some(last_sent),
        last_received: Some(last_received),
        display_name: None,
        updated_unix: 1_790_000_000 + i,
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Resident memory (VmRSS) in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn percentiles(mut d: Vec<Duration>) -> String {
    d.sort();
    let at = |p: f64| d[((d.len() as f64 * p) as usize).min(d.len() - 1)];
    let mean = d.iter().sum::<Duration>() / d.len() as u32;
    format!(
        "mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} ops)",
        mean.as_secs_f64() * 1e6,
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        d[d.len() - 1].as_secs_f64() * 1e6,
        d.len()
    )
}

fn redb() -> bool {
    std::env::var("LCS_STORE_BENCH_BACKEND").as_deref() == Ok("redb")
}

fn postgres() -> bool {
    std::env::var("LCS_STORE_BENCH_BACKEND").as_deref() == Ok("postgres")
}

/// The benchmark's PostgreSQL server (`postgres()`), stopped at the end of `main`.
static PG: std::sync::Mutex<Option<lcs_test_support::postgres::Postgres>> =
    std::sync::Mutex::new(None);
static PG_DATABASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A `PgStore` on a new database of the benchmark's server.
fn open_pg() -> Box<dyn Store> {
    let guard = PG.lock().unwrap();
    let pg = guard.as_ref().expect("PostgreSQL started");
    let db = format!(
        "bench{}",
        PG_DATABASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    pg.create_database(&db);
    let options = lcs_bridge::store::PgOptions {
        pool_size: 16,
        ..lcs_bridge::store::PgOptions::new(&pg.url_for(&db), Some(pg.password().to_string()))
    };
    Box::new(lcs_bridge::store::PgStore::open(&options).unwrap())
}

/// Removes a store's directory (none for PostgreSQL).
fn remove(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).unwrap();
    }
}

/// The store under test (`LCS_STORE_BENCH_BACKEND=redb` for redb), in its default
/// configuration, or (`alternative`) sled without the fsync / redb without quick repair.
fn open_store(path: &Path, alternative: bool) -> Box<dyn Store> {
    if postgres() {
        return open_pg();
    }
    if redb() {
        #[cfg(feature = "redb")]
        return Box::new(
            lcs_bridge::store::RedbStore::open_with(
                path,
                &lcs_bridge::store::RedbOptions {
                    quick_repair: !alternative,
                    ..lcs_bridge::store::RedbOptions::default()
                },
            )
            .unwrap(),
        );
        #[cfg(not(feature = "redb"))]
        panic!("LCS_STORE_BENCH_BACKEND=redb needs --features redb");
    }
    Box::new(
        SledStore::open_with(
            path,
            &SledOptions {
                fsync: !alternative,
                ..SledOptions::default()
            },
        )
        .unwrap(),
    )
}

fn open(path: &Path) -> Box<dyn Store> {
    open_store(path, false)
}

fn synced_writes(dir: &Path, alternative: bool) {
    let path = dir.join(if alternative { "lat-alt" } else { "lat" });
    let store = open_store(&path, alternative);
    let mut lat = Vec::new();
    for i in 0..2000 {
        // 500 keys rewritten in turn; each write changes the record (sled skips a write of
        // the value already stored).
        let mut r = record(i % 500, false);
        r.updated_unix = 2_000_000_000 + i;
        let t = Instant::now();
        store.put_subscription(&r).unwrap();
        lat.push(t.elapsed());
    }
    println!(
        "put_subscription, 1 thread, {}: {}",
        match (redb(), alternative) {
            _ if postgres() => "PostgreSQL, commit (synchronous_commit on)",
            (false, false) => "sled, flush + fsync (default)",
            (false, true) => "sled, flush only",
            (true, false) => "redb, quick repair (default)",
            (true, true) => "redb, no quick repair",
        },
        percentiles(lat)
    );
    drop(store);
    remove(&path);
}

fn lazy_writes(dir: &Path) {
    let path = dir.join("lazy");
    let store = open(&path);
    let mut lat = Vec::new();
    for i in 0..20_000 {
        let mut r = record(i % 500, false);
        r.updated_unix = 2_000_000_000 + i;
        let t = Instant::now();
        store.put_subscription_lazy(&r).unwrap();
        lat.push(t.elapsed());
    }
    println!("put_subscription_lazy, 1 thread: {}", percentiles(lat));
    drop(store);
    remove(&path);
}

fn concurrent_writes(dir: &Path, threads: u64) {
    let path = dir.join("conc");
    let store = Arc::<dyn Store>::from(open(&path));
    let per = 500;
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    store.put_subscription(&record(n * per + i, false)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let el = t.elapsed();
    println!(
        "put_subscription, {threads} threads: {:.0} synced writes/s ({} writes in {:.2} s)",
        (threads * per) as f64 / el.as_secs_f64(),
        threads * per,
        el.as_secs_f64()
    );
    drop(store);
    remove(&path);
}

fn batches(dir: &Path, size: u64) {
    let path = dir.join("batch");
    let store = open(&path);
    let mut lat = Vec::new();
    for b in 0..200 {
        let batch: Vec<Subscription> = (0..size).map(|i| record(b * size + i, false)).collect();
        let t = Instant::now();
        store.put_subscriptions(&batch).unwrap();
        lat.push(t.elapsed());
    }
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    println!(
        "put_subscriptions, batches of {size}: {:.1} µs per batch, {:.1} µs per record",
        mean.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6 / size as f64
    );
    drop(store);
    remove(&path);
}

/// Subscription setup rate: `n` new subscriptions stored in batches of 1,000 (each batch one
/// durable transaction), and the same from 16 threads each storing one at a time.
fn setup_rate(n: u64) {
    let store = open_pg();
    let t = Instant::now();
    for b in 0..n.div_ceil(1000) {
        let batch: Vec<Subscription> = (b * 1000..((b + 1) * 1000).min(n))
            .map(|i| record(i, false))
            .collect();
        store.put_subscriptions(&batch).unwrap();
    }
    let el = t.elapsed();
    println!(
        "subscription setup, batches of 1000: {:.0} subscriptions/s ({n} in {:.2} s)",
        n as f64 / el.as_secs_f64(),
        el.as_secs_f64()
    );
}

fn bulk(dir: &Path, n: u64, pidf: bool) {
    let path = dir.join("bulk");
    let rss0 = rss();
    let store = open(&path);
    let t = Instant::now();
    let mut encoded = 0u64;
    let mut i = 0;
    while i < n {
        let batch: Vec<Subscription> = (i..(i + 1000).min(n)).map(|j| record(j, pidf)).collect();
        store.put_subscriptions(&batch).unwrap();
        i += 1000;
    }
    let load = t.elapsed();
    for r in store.subscriptions().take(1000) {
        let s = r.unwrap();
        encoded += s.encoded_len() as u64;
    }
    println!(
        "bulk load {n} subscriptions ({}): {:.2} s ({:.0}/s); key+value ≈ {} bytes per record",
        if pidf {
            "PIDF documents"
        } else if TINY.load(std::sync::atomic::Ordering::Relaxed) {
            "8-byte presence codes"
        } else {
            "compact presence"
        },
        load.as_secs_f64(),
        n as f64 / load.as_secs_f64(),
        encoded / 1000
    );
    store.flush().unwrap();
    println!(
        "  on disk while open: {} bytes = {:.0} bytes per subscription",
        dir_size(&path),
        dir_size(&path) as f64 / n as f64,
    );
    println!(
        "  RSS after the load: {:.1} MiB over the start",
        (rss().saturating_sub(rss0)) as f64 / 1048576.0
    );
    drop(store);
    // Reopen in a fresh process, as a restarted bridge would: its memory is the store's.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--reopen",
            path.to_str().unwrap(),
            "--records",
            &n.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let store = open(&path);
    // Churn: every record rewritten twice more (its presence changing), lazily, with a synced
    // write every 100: what the store weighs after a while in service.
    let t = Instant::now();
    for round in 1..=2u64 {
        for j in 0..n {
            let mut r = record(j, pidf);
            r.updated_unix += round * 10_000_000;
            if j % 100 == 0 {
                store.put_subscription(&r).unwrap();
            } else {
                store.put_subscription_lazy(&r).unwrap();
            }
        }
    }
    store.flush().unwrap();
    println!(
        "  after rewriting every record twice ({:.2} s): {} bytes = {:.0} bytes per subscription",
        t.elapsed().as_secs_f64(),
        dir_size(&path),
        dir_size(&path) as f64 / n as f64
    );
    drop(store);
    // Recovery after a crash: a process writes (synced and not) and is SIGKILLed; a fresh one
    // reopens.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--write-until-killed",
            path.to_str().unwrap(),
            &n.to_string(),
            if pidf {
                "pidf"
            } else if TINY.load(std::sync::atomic::Ordering::Relaxed) {
                "tiny"
            } else {
                "compact"
            },
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "WRITING");
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--reopen",
            path.to_str().unwrap(),
            "--records",
            &n.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    print!(
        "  after SIGKILL during writes:{}",
        String::from_utf8_lossy(&out.stdout).trim_start_matches("  reopen")
    );
    println!(
        "  on disk after a clean close: {} bytes = {:.0} bytes per subscription; {} sled blob files",
        dir_size(&path),
        dir_size(&path) as f64 / n as f64,
        std::fs::read_dir(path.join("blobs")).map_or(0, |d| d.count())
    );
    remove(&path);
}

/// `--reopen DIR`: open the store, look one record up, scan everything; report times and
/// resident memory.
fn reopen(path: &Path, n: u64) {
    let rss0 = rss();
    let t = Instant::now();
    let store = open(path);
    let open = t.elapsed();
    let rss_open = rss();
    let t = Instant::now();
    let got = store
        .get_subscription(
            Direction::Outbound,
            &format!("user{:06}@example.org", (n / 2) / 40),
            &format!("sip:contact{:06}@contoso.com", (n / 2) % 50_000),
        )
        .unwrap();
    let get = t.elapsed();
    assert!(got.is_some() || n < 2);
    let t = Instant::now();
    let stats = store.stats().unwrap();
    let scan = t.elapsed();
    assert_eq!(stats.total_subscriptions(), n);
    let rss_scan = rss();
    println!(
        "  reopen (fresh process): {:.0} ms, RSS +{:.1} MiB; a point get {:.0} µs; full scan \
         (stats) {:.2} s, then RSS +{:.1} MiB = {:.0} bytes per subscription",
        open.as_secs_f64() * 1e3,
        rss_open.saturating_sub(rss0) as f64 / 1048576.0,
        get.as_secs_f64() * 1e6,
        scan.as_secs_f64(),
        rss_scan.saturating_sub(rss0) as f64 / 1048576.0,
        rss_scan.saturating_sub(rss0) as f64 / n as f64,
    );
}

/// `--write-until-killed DIR N pidf|compact|tiny`: rewrite records (one synced write in 100) until killed.
fn write_until_killed(path: &Path, n: u64, pidf: bool) {
    let store = open(path);
    println!("WRITING");
    let mut i = 0u64;
    loop {
        let mut r = record(i % n, pidf);
        r.updated_unix += 90_000_000 + i;
        if i % 100 == 0 {
            store.put_subscription(&r).unwrap();
        } else {
            store.put_subscription_lazy(&r).unwrap();
        }
        i += 1;
    }
}

fn main() {
    let mut records = 100_000u64;
    let mut pidf = false;
    let mut dir: Option<PathBuf> = None;
    let mut reopen_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--records" => records = args.next().unwrap().parse().unwrap(),
            "--pidf" => pidf = true,
            "--tiny" => TINY.store(true, std::sync::atomic::Ordering::Relaxed),
            "--dir" => dir = Some(args.next().unwrap().into()),
            "--reopen" => reopen_dir = Some(args.next().unwrap().into()),
            "--write-until-killed" => {
                let dir = args.next().unwrap();
                let n = args.next().unwrap().parse().unwrap();
                let mode = args.next();
                TINY.store(
                    mode.as_deref() == Some("tiny"),
                    std::sync::atomic::Ordering::Relaxed,
                );
                write_until_killed(Path::new(&dir), n, mode.as_deref() == Some("pidf"));
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(d) = reopen_dir {
        reopen(&d, records);
        return;
    }
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir_in(".").unwrap();
            tmp.path().to_owned()
        }
    };
    if postgres() {
        let Some(pg) = lcs_test_support::postgres::Postgres::start() else {
            panic!("PostgreSQL is not installed (tests/install-peers.sh)");
        };
        *PG.lock().unwrap() = Some(pg);
        synced_writes(&dir, false);
        lazy_writes(&dir);
        concurrent_writes(&dir, 1);
        concurrent_writes(&dir, 4);
        concurrent_writes(&dir, 16);
        batches(&dir, 10);
        batches(&dir, 100);
        setup_rate(records);
        drop(PG.lock().unwrap().take());
        return;
    }
    synced_writes(&dir, true);
    synced_writes(&dir, false);
    lazy_writes(&dir);
    concurrent_writes(&dir, 1);
    concurrent_writes(&dir, 4);
    concurrent_writes(&dir, 16);
    batches(&dir, 10);
    batches(&dir, 100);
    bulk(&dir, records, pidf);
}
