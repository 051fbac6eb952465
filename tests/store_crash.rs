//! Crash safety of the store, proven with SIGKILL (issue 5, item 5; docs/storage.md).
//!
//! The presence engine does not exist yet, so the process under test is the store itself
//! driven by a steady subscription workload: this test binary re-runs itself as a child
//! (`torture_child`, which does nothing unless `LCS_STORE_TORTURE_DIR` is set) that opens a
//! real [`SledStore`] and, in a loop, puts, batch-puts and removes subscriptions (and writes
//! IM dialogs), printing `BEGIN …` before each write and `ACK …` only after the call returned.
//! The parent kills it with SIGKILL at a random moment — sometimes while it is still opening
//! and recovering the database, mostly in the middle of the workload — reads every line it
//! printed, opens the database itself and checks:
//!
//! - the database opens (no error, schema version 1) every time;
//! - every record decodes (no `Corrupt`) and is exactly the record its version describes
//!   (every field is a function of key and version, so a torn or mixed record shows);
//! - every key is in the state of its last acknowledged write, or of the one write begun
//!   after it and not acknowledged (which may or may not have reached the disk);
//! - a batch is all-or-nothing.
//!
//! Then it starts the child again on the same directory: 25 kills in all, well under a minute
//! (`LCS_STORE_CRASH_KILLS=N` for a longer run by hand).
//! A failure prints the seed; `LCS_STORE_CRASH_SEED=<seed>` replays the same kill schedule
//! (the child's timing still varies).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lcs_bridge::store::{
    Approval, DialogRecord, Direction, ImDialog, SledStore, Store as _, SubState, Subscription,
};

/// Kills per run; `LCS_STORE_CRASH_KILLS` sets another number (long runs by hand).
const KILLS: usize = 25;
/// Distinct subscription keys in the workload.
const KEYS: u64 = 300;

/// SplitMix64: a small, seedable random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn parties(k: u64) -> (Direction, String, String) {
    let d = if k % 2 == 0 {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    let pair = k / 2;
    (
        d,
        format!("user{}@example.org", pair / 10),
        format!("sip:contact{}@contoso.com", pair % 10),
    )
}

fn key_of(s: &Subscription) -> Option<u64> {
    (0..KEYS).find(|&k| {
        let (d, j, a) = parties(k);
        d == s.direction && j == s.local_jid && a == s.remote_aor
    })
}

fn dialog(k: u64, v: u64) -> DialogRecord {
    DialogRecord {
        call_id: format!("call-{k}-{v}@sip.example.org"),
        local_tag: format!("l{v:x}"),
        remote_tag: format!("r{k:x}"),
        local_uri: format!("sip:user{k}@example.org"),
        local_display: (v % 2 == 0).then(|| format!("User {k}")),
        remote_uri: format!("sip:contact{k}@contoso.com"),
        remote_display: None,
        remote_target: format!("sip:contact{k}@10.0.0.{}:5061;transport=tls", v % 250),
        route_set: (0..v % 3)
            .map(|i| format!("<sip:edge{i}.contoso.com;transport=tls;lr>"))
            .collect(),
        local_cseq: (v % u64::from(u32::MAX)) as u32,
        remote_cseq: (v % 3 != 0).then_some((v % 1000) as u32),
        created_unix: 1_790_000_000 + v,
    }
}

/// The record that key `k` holds at version `v`: every field depends on both.
fn record(k: u64, v: u64) -> Subscription {
    let (direction, local_jid, remote_aor) = parties(k);
    // Mostly small presence documents, now and then a large one.
    let sent_len = if v % 17 == 0 {
        6000
    } else {
        (v % 5 * 120) as usize
    };
    Subscription {
        direction,
        local_jid,
        remote_aor,
        dialog: (v % 4 != 0).then(|| dialog(k, v)),
        expires_unix: 1_790_003_600 + v,
        state: [SubState::Pending, SubState::Active, SubState::Terminated][(v % 3) as usize],
        approval: [
            Approval::None,
            Approval::Requested,
            Approval::Approved,
            Approval::Denied,
        ][(v % 4) as usize],
        last_sent: (v % 5 != 0).then(|| vec![(v % 251) as u8; sent_len]),
        last_received: (v % 2 == 0).then(|| format!("<presence from='{k}' v='{v}'/>").into_bytes()),
        updated_unix: v,
    }
}

fn im_record(k: u64, v: u64) -> ImDialog {
    let (_, local_jid, remote_aor) = parties(k);
    ImDialog {
        local_jid,
        remote_aor,
        dialog: dialog(k, v),
    }
}

/// The child: a steady workload on the real store until killed (or 30 s, should the parent
/// have gone away without killing it).
#[test]
fn torture_child() {
    let Ok(dir) = std::env::var("LCS_STORE_TORTURE_DIR") else {
        return;
    };
    let seed: u64 = std::env::var("LCS_STORE_TORTURE_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let mut version: u64 = std::env::var("LCS_STORE_TORTURE_BASE")
        .unwrap()
        .parse()
        .unwrap();
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        o.write_all(line.as_bytes()).unwrap();
        o.write_all(b"\n").unwrap();
        o.flush().unwrap();
    };
    let store = SledStore::open(Path::new(&dir)).unwrap();
    // A line of its own: libtest may have written "test torture_child ... " already.
    say("\nOPEN".into());
    let mut rng = Rng(seed);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        version += 1;
        let v = version;
        match rng.below(100) {
            0..60 => {
                let k = rng.below(KEYS);
                say(format!("BEGIN PUT {k} {v}"));
                store.put_subscription(&record(k, v)).unwrap();
                say(format!("ACK PUT {k} {v}"));
            }
            60..75 => {
                let k = rng.below(KEYS);
                let (d, j, a) = parties(k);
                say(format!("BEGIN DEL {k} {v}"));
                store.remove_subscription(d, &j, &a).unwrap();
                say(format!("ACK DEL {k} {v}"));
            }
            75..95 => {
                let mut keys: Vec<u64> = (0..2 + rng.below(7)).map(|_| rng.below(KEYS)).collect();
                keys.sort_unstable();
                keys.dedup();
                let list: Vec<String> = keys.iter().map(u64::to_string).collect();
                say(format!("BEGIN BATCH {v} {}", list.join(" ")));
                let batch: Vec<Subscription> = keys.iter().map(|&k| record(k, v)).collect();
                store.put_subscriptions(&batch).unwrap();
                say(format!("ACK BATCH {v}"));
            }
            _ => {
                // IM dialogs are not synced one by one: only their consistency is checked.
                let k = rng.below(KEYS);
                if rng.below(4) == 0 {
                    let (_, j, a) = parties(k);
                    store.remove_im_dialog(&j, &a).unwrap();
                } else {
                    store.put_im_dialog(&im_record(k, v)).unwrap();
                }
            }
        }
    }
}

/// A key's state: absent, or present at a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    Present(u64),
}

/// What the parent knows from the child's output.
#[derive(Default)]
struct Model {
    acked: HashMap<u64, State>,
    inflight: HashMap<u64, State>,
    batch: Option<(u64, Vec<u64>)>,
    acks: u64,
}

impl Model {
    fn acked(&self, k: u64) -> State {
        self.acked.get(&k).copied().unwrap_or(State::Absent)
    }

    fn feed(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> u64 { w[i].parse().unwrap() };
        match w.as_slice() {
            ["BEGIN", "PUT", ..] => {
                self.inflight.insert(n(2), State::Present(n(3)));
            }
            ["BEGIN", "DEL", ..] => {
                self.inflight.insert(n(2), State::Absent);
            }
            ["BEGIN", "BATCH", ..] => {
                let v = n(2);
                let keys: Vec<u64> = (3..w.len()).map(n).collect();
                for &k in &keys {
                    self.inflight.insert(k, State::Present(v));
                }
                self.batch = Some((v, keys));
            }
            ["ACK", "PUT", ..] | ["ACK", "DEL", ..] => {
                let k = n(2);
                let s = self.inflight.remove(&k).unwrap();
                self.acked.insert(k, s);
                self.acks += 1;
            }
            ["ACK", "BATCH", ..] => {
                let (_, keys) = self.batch.take().unwrap();
                for k in keys {
                    let s = self.inflight.remove(&k).unwrap();
                    self.acked.insert(k, s);
                }
                self.acks += 1;
            }
            ["OPEN"] => {}
            other => panic!("unexpected line from the child: {other:?}"),
        }
    }
}

#[derive(Default)]
struct Tally {
    kills_while_opening: usize,
    kills_in_workload: usize,
    inflight_applied: usize,
    inflight_not_applied: usize,
    batches_applied: usize,
    batches_not_applied: usize,
    max_open_ms: u128,
    records_checked: usize,
}

/// Opens the store after a kill and checks it against the model; returns the actual states.
fn verify(dir: &Path, model: &Model, tally: &mut Tally, ctx: &str) -> HashMap<u64, State> {
    let t = Instant::now();
    let store =
        SledStore::open(dir).unwrap_or_else(|e| panic!("{ctx}: the store did not open: {e}"));
    tally.max_open_ms = tally.max_open_ms.max(t.elapsed().as_millis());
    assert_eq!(store.schema_version(), 1, "{ctx}");
    let mut actual: HashMap<u64, State> = HashMap::new();
    for r in store.subscriptions() {
        let s = r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let k = key_of(&s).unwrap_or_else(|| panic!("{ctx}: unexpected record {s:?}"));
        let v = s.updated_unix;
        assert_eq!(
            s,
            record(k, v),
            "{ctx}: key {k} holds a record that is not version {v}'s"
        );
        actual.insert(k, State::Present(v));
        tally.records_checked += 1;
    }
    for r in store.im_dialogs() {
        let d = r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let v = d.dialog.created_unix - 1_790_000_000;
        assert!(
            (0..KEYS).any(|k| im_record(k, v) == d),
            "{ctx}: IM dialog is no version's record: {d:?}"
        );
    }
    let stats = store.stats().unwrap();
    assert_eq!(stats.corrupt, 0, "{ctx}");
    for k in 0..KEYS {
        let got = actual.get(&k).copied().unwrap_or(State::Absent);
        let acked = model.acked(k);
        let inflight = model.inflight.get(&k).copied();
        if got == acked && inflight.is_none_or(|i| i != got) {
            if inflight.is_some() {
                tally.inflight_not_applied += 1;
            }
            continue;
        }
        if Some(got) == inflight {
            tally.inflight_applied += 1;
            continue;
        }
        panic!(
            "{ctx}: key {k} is {got:?}; acknowledged {acked:?}, in flight {inflight:?}: an acknowledged write was lost"
        );
    }
    if let Some((v, keys)) = &model.batch {
        let applied = keys
            .iter()
            .filter(|k| actual.get(k) == Some(&State::Present(*v)))
            .count();
        assert!(
            applied == 0 || applied == keys.len(),
            "{ctx}: batch {v} is half applied ({applied} of {} keys)",
            keys.len()
        );
        if applied == 0 {
            tally.batches_not_applied += 1;
        } else {
            tally.batches_applied += 1;
        }
    }
    actual
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let seed: u64 = std::env::var("LCS_STORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("store_crash: seed {seed} (LCS_STORE_CRASH_SEED={seed} to replay)");
    let kills: usize = std::env::var("LCS_STORE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sled");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut model = Model::default();
    let mut tally = Tally::default();
    let mut total_acks = 0;

    for run in 0..kills {
        let ctx = format!("seed {seed}, kill {run}");
        let mut child = Command::new(&exe)
            .args([
                "torture_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LCS_STORE_TORTURE_DIR", &dir)
            .env("LCS_STORE_TORTURE_SEED", rng.next().to_string())
            .env(
                "LCS_STORE_TORTURE_BASE",
                ((run as u64 + 1) * 10_000_000).to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (opened_tx, opened_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "OPEN" {
                    let _ = opened_tx.send(());
                }
                // libtest's own lines ("running 1 test") are not ours.
                if line == "OPEN" || line.starts_with("BEGIN ") || line.starts_with("ACK ") {
                    lines.push(line);
                }
            }
            lines
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        // One kill in five lands early (the child may still be opening and recovering the
        // database); the others after the workload has started.
        if rng.below(5) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(120)));
            tally.kills_while_opening += 1;
        } else {
            if opened_rx.recv_timeout(Duration::from_secs(20)).is_err() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{ctx}: the child did not open the store: {}",
                    err_reader.join().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10 + rng.below(400)));
            tally.kills_in_workload += 1;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{ctx}: the child exited by itself ({status}): {}",
                err_reader.join().unwrap()
            );
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{ctx}: {status}"
        );
        let lines = reader.join().unwrap();
        let _ = err_reader.join();
        for l in &lines {
            model.feed(l);
        }
        total_acks += model.acks;
        model.acks = 0;

        let actual = verify(&dir, &model, &mut tally, &ctx);
        // What is on disk now is the starting point of the next run.
        model.acked = actual;
        model.inflight.clear();
        model.batch = None;
    }

    // A last clean open and full scan.
    let store = SledStore::open(&dir).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.corrupt, 0);
    let on_disk: BTreeMap<_, _> = store
        .subscriptions()
        .map(|r| {
            let s = r.unwrap();
            (key_of(&s).unwrap(), s.updated_unix)
        })
        .collect();
    assert_eq!(on_disk.len() as u64, stats.total_subscriptions());
    drop(store);
    eprintln!(
        "store_crash: {kills} SIGKILLs ({} while opening, {} in the workload) in {:.1} s; \
         {total_acks} acknowledged writes, all found; {} records checked; writes in flight at \
         the kill: {} found applied, {} not; batches in flight: {} applied whole, {} not at \
         all, none half; {} subscriptions at the end; slowest reopen {} ms; sled size {} bytes",
        tally.kills_while_opening,
        tally.kills_in_workload,
        started.elapsed().as_secs_f64(),
        tally.records_checked,
        tally.inflight_applied,
        tally.inflight_not_applied,
        tally.batches_applied,
        tally.batches_not_applied,
        on_disk.len(),
        tally.max_open_ms,
        dir_size(&dir),
    );
    if kills == KILLS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the test took too long"
        );
    }
    assert!(
        total_acks > 100,
        "too little work between the kills: {total_acks} acknowledged writes"
    );
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
