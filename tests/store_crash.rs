//! Crash safety of the store, proven with SIGKILL (docs/storage.md).
//!
//! The process under test is the store itself (tests/bridge_crash.rs does it for the whole
//! bridge), driven by a steady subscription workload: this test binary re-runs itself as a child
//! (`torture_child`, which does nothing unless `LCS_STORE_TORTURE_DIR` is set) that opens a
//! real [`SledStore`] and, in a loop, puts, batch-puts, removes and lazily puts subscriptions
//! and writes and removes IM dialogs (lazily, or as the bridge's durable IM write does: a put
//! then `flush`), printing `BEGIN …` before each write and, for the synced ones, `ACK` only
//! after the call returned. The parent kills it with SIGKILL at a random
//! moment — sometimes while it is still opening and recovering the database, mostly in the
//! middle of the workload — reads every line it printed, opens the database itself and checks:
//!
//! - the database opens (no error, the current schema version) every time;
//! - every record decodes (no `Corrupt`) and is exactly the record its version describes
//!   (every field is a function of key and version, so a torn or mixed record shows);
//! - the database holds exactly the result of the writes up to some point (a prefix of the
//!   run's writes, nothing reordered, a batch all or nothing), and that point is at or after
//!   the last acknowledged write: nothing acknowledged is lost. Unsynced writes after it may
//!   or may not be there.
//!
//! Then it starts the child again on the same directory: 25 kills in all, well under a minute
//! (`LCS_STORE_CRASH_KILLS=N` and `LCS_STORE_CRASH_KEYS=N` for longer runs on a larger database
//! by hand).
//! `LCS_STORE_CRASH_BACKEND=redb` (with `--features redb`) runs the same test on `RedbStore`.
//! A failure prints the seed; `LCS_STORE_CRASH_SEED=<seed>` replays the same kill schedule
//! (the child's timing still varies).

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // a test reads the clock

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lcs_bridge::store::{
    Approval, DialogRecord, Direction, ImDialog, SledStore, Store, StoreError, SubState,
    Subscription,
};

/// Kills per run; `LCS_STORE_CRASH_KILLS` sets another number (long runs by hand).
const KILLS: usize = 25;
/// Distinct subscription keys in the workload; `LCS_STORE_CRASH_KEYS` sets another number (a
/// larger database for long runs by hand).
const KEYS: u64 = 300;

fn key_count() -> u64 {
    std::env::var("LCS_STORE_CRASH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KEYS)
}

/// The store under test: sled (the product's), or redb with `LCS_STORE_CRASH_BACKEND=redb`
/// (and `--features redb`).
fn open_store(dir: &Path) -> Result<Box<dyn Store>, StoreError> {
    match std::env::var("LCS_STORE_CRASH_BACKEND").as_deref() {
        #[cfg(feature = "redb")]
        Ok("redb") => Ok(Box::new(lcs_bridge::store::RedbStore::open(dir)?)),
        #[cfg(not(feature = "redb"))]
        Ok("redb") => panic!("LCS_STORE_CRASH_BACKEND=redb needs --features redb"),
        Ok("sled") | Err(_) => Ok(Box::new(SledStore::open(dir)?)),
        Ok(other) => panic!("LCS_STORE_CRASH_BACKEND={other}: sled or redb"),
    }
}

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

/// The key number of a pair of parties: the inverse of [`parties`] (direction aside).
fn pair_of(local_jid: &str, remote_aor: &str) -> Option<u64> {
    let user: u64 = local_jid
        .strip_prefix("user")?
        .strip_suffix("@example.org")?
        .parse()
        .ok()?;
    let contact: u64 = remote_aor
        .strip_prefix("sip:contact")?
        .strip_suffix("@contoso.com")?
        .parse()
        .ok()?;
    (contact < 10).then_some(user * 10 + contact)
}

fn key_of(s: &Subscription) -> Option<u64> {
    let pair = pair_of(&s.local_jid, &s.remote_aor)?;
    Some(pair * 2 + u64::from(s.direction == Direction::Inbound))
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
        display_name: None,
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
    let store = open_store(Path::new(&dir)).unwrap();
    // A line of its own: libtest may have written "test torture_child ... " already.
    say("\nOPEN".into());
    let mut rng = Rng(seed);
    let n = key_count();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        version += 1;
        let v = version;
        let k = rng.below(n);
        let (d, j, a) = parties(k);
        match rng.below(100) {
            0..50 => {
                say(format!("BEGIN PUT {k} {v}"));
                store.put_subscription(&record(k, v)).unwrap();
                say("ACK".into());
            }
            50..62 => {
                say(format!("BEGIN DEL {k} {v}"));
                store.remove_subscription(d, &j, &a).unwrap();
                say("ACK".into());
            }
            62..78 => {
                let mut keys: Vec<u64> = (0..2 + rng.below(7)).map(|_| rng.below(n)).collect();
                keys.sort_unstable();
                keys.dedup();
                let list: Vec<String> = keys.iter().map(u64::to_string).collect();
                say(format!("BEGIN BATCH {v} {}", list.join(" ")));
                let batch: Vec<Subscription> = keys.iter().map(|&k| record(k, v)).collect();
                store.put_subscriptions(&batch).unwrap();
                say("ACK".into());
            }
            78..90 => {
                say(format!("BEGIN LAZY {k} {v}"));
                store.put_subscription_lazy(&record(k, v)).unwrap();
            }
            // A burst of unsynced writes, so that kills also land where only sled's background
            // flush (or nothing) has written the log.
            90..92 => {
                for _ in 0..20 + rng.below(200) {
                    version += 1;
                    let k = rng.below(n);
                    say(format!("BEGIN LAZY {k} {version}"));
                    store.put_subscription_lazy(&record(k, version)).unwrap();
                }
            }
            // IM dialogs are keyed by the parties only: key numbers 2n and 2n+1 (the two
            // directions of one pair) name the same one, so use the even number.
            92..96 => {
                let k = k & !1;
                say(format!("BEGIN IM {k} {v}"));
                store.put_im_dialog(&im_record(k, v)).unwrap();
            }
            // The bridge's durable IM write: the lazy put made durable by a flush.
            96..98 => {
                let k = k & !1;
                say(format!("BEGIN IMSYNC {k} {v}"));
                store.put_im_dialog(&im_record(k, v)).unwrap();
                store.flush().unwrap();
                say("ACK".into());
            }
            _ => {
                let k = k & !1;
                say(format!("BEGIN IMDEL {k} {v}"));
                store.remove_im_dialog(&j, &a).unwrap();
            }
        }
    }
}

/// A record the workload writes: a subscription or an IM dialog, by key number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Sub(u64),
    Im(u64),
}

/// A record's state: absent, or present at a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    Present(u64),
}

/// One write as the child announced it: its effects (several for a batch, applied atomically)
/// and whether it is synced.
struct Op {
    effects: Vec<(Target, State)>,
    synced: bool,
}

/// What the parent knows from the child's output in one run.
#[derive(Default)]
struct RunLog {
    ops: Vec<Op>,
    /// Index of the last acknowledged (synced, returned) write.
    last_acked: Option<usize>,
    acks: u64,
}

impl RunLog {
    fn feed(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> u64 { w[i].parse().unwrap() };
        let op = |effects, synced| Op { effects, synced };
        match w.as_slice() {
            ["BEGIN", "PUT", ..] => self
                .ops
                .push(op(vec![(Target::Sub(n(2)), State::Present(n(3)))], true)),
            ["BEGIN", "DEL", ..] => self
                .ops
                .push(op(vec![(Target::Sub(n(2)), State::Absent)], true)),
            ["BEGIN", "BATCH", ..] => {
                let v = n(2);
                let effects = (3..w.len())
                    .map(|i| (Target::Sub(n(i)), State::Present(v)))
                    .collect();
                self.ops.push(op(effects, true));
            }
            ["BEGIN", "LAZY", ..] => self
                .ops
                .push(op(vec![(Target::Sub(n(2)), State::Present(n(3)))], false)),
            ["BEGIN", "IM", ..] => self
                .ops
                .push(op(vec![(Target::Im(n(2)), State::Present(n(3)))], false)),
            ["BEGIN", "IMSYNC", ..] => self
                .ops
                .push(op(vec![(Target::Im(n(2)), State::Present(n(3)))], true)),
            ["BEGIN", "IMDEL", ..] => self
                .ops
                .push(op(vec![(Target::Im(n(2)), State::Absent)], false)),
            ["ACK"] => {
                let last = self.ops.len() - 1;
                assert!(self.ops[last].synced, "ACK after an unsynced write");
                self.last_acked = Some(last);
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
    /// Writes after the last acknowledged one that were found applied, and not.
    beyond_ack_applied: usize,
    beyond_ack_lost: usize,
    /// Of those found applied, how many were unsynced (lazy puts, IM dialogs).
    unsynced_applied: usize,
    max_open_ms: u128,
    records_checked: usize,
}

/// Opens the store after a kill and reads every record, checking each is the record its
/// version describes.
fn read_back(dir: &Path, tally: &mut Tally, ctx: &str) -> HashMap<Target, State> {
    let t = Instant::now();
    let store = open_store(dir).unwrap_or_else(|e| panic!("{ctx}: the store did not open: {e}"));
    tally.max_open_ms = tally.max_open_ms.max(t.elapsed().as_millis());
    let mut actual = HashMap::new();
    for r in store.subscriptions() {
        let s = r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let k = key_of(&s).unwrap_or_else(|| panic!("{ctx}: unexpected record {s:?}"));
        let v = s.updated_unix;
        assert_eq!(
            s,
            record(k, v),
            "{ctx}: key {k} holds a record that is not version {v}'s"
        );
        actual.insert(Target::Sub(k), State::Present(v));
        tally.records_checked += 1;
    }
    for r in store.im_dialogs() {
        let d = r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let v = d.dialog.created_unix - 1_790_000_000;
        let k = pair_of(&d.local_jid, &d.remote_aor)
            .unwrap_or_else(|| panic!("{ctx}: unexpected IM dialog {d:?}"))
            * 2;
        assert_eq!(
            d,
            im_record(k, v),
            "{ctx}: IM dialog {k} is not version {v}'s"
        );
        actual.insert(Target::Im(k), State::Present(v));
        tally.records_checked += 1;
    }
    assert_eq!(store.stats().unwrap().corrupt, 0, "{ctx}");
    actual
}

/// Finds the prefix of `log` that, applied to `start`, gives `actual`; it must include every
/// acknowledged write.
fn check_prefix(
    start: &HashMap<Target, State>,
    log: &RunLog,
    actual: &HashMap<Target, State>,
    tally: &mut Tally,
    ctx: &str,
) {
    let get = |m: &HashMap<Target, State>, t: &Target| m.get(t).copied().unwrap_or(State::Absent);
    let mut state = start.clone();
    let p_min = log.last_acked.map_or(0, |i| i + 1);
    for op in &log.ops[..p_min] {
        for (t, s) in &op.effects {
            state.insert(*t, *s);
        }
    }
    let mut wrong: HashSet<Target> = state
        .keys()
        .chain(actual.keys())
        .filter(|t| get(&state, t) != get(actual, t))
        .copied()
        .collect();
    let at_ack = wrong.clone();
    let mut p = p_min;
    while !wrong.is_empty() {
        if p == log.ops.len() {
            let mut detail: Vec<String> = at_ack
                .iter()
                .take(5)
                .map(|t| {
                    let mut acked = start.clone();
                    for op in &log.ops[..p_min] {
                        for (t, s) in &op.effects {
                            acked.insert(*t, *s);
                        }
                    }
                    format!(
                        "{t:?} is {:?}, acknowledged {:?}",
                        get(actual, t),
                        get(&acked, t)
                    )
                })
                .collect();
            detail.sort();
            panic!(
                "{ctx}: the store is not the result of any prefix of the writes that includes \
                 the {} acknowledged ones ({} writes begun): {}",
                p_min,
                log.ops.len(),
                detail.join("; ")
            );
        }
        for (t, s) in &log.ops[p].effects {
            state.insert(*t, *s);
            if get(&state, t) == get(actual, t) {
                wrong.remove(t);
            } else {
                wrong.insert(*t);
            }
        }
        p += 1;
    }
    tally.beyond_ack_applied += p - p_min;
    tally.beyond_ack_lost += log.ops.len() - p;
    tally.unsynced_applied += log.ops[p_min..p].iter().filter(|o| !o.synced).count();
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
    let kills: usize = std::env::var("LCS_STORE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    let mut rng = Rng(seed);
    // LCS_STORE_CRASH_KEEP=1 keeps the database, each run's output and a copy of the database
    // as the last kills left it, for a post-mortem (the path is printed; remove it by hand).
    let keep = std::env::var_os("LCS_STORE_CRASH_KEEP").is_some();
    let tmp = tempfile::tempdir().unwrap();
    let (base, _cleanup) = if keep {
        let p = tmp.keep();
        eprintln!("store_crash: keeping {}", p.display());
        (p, None)
    } else {
        (tmp.path().to_owned(), Some(tmp))
    };
    let dir = base.join("sled");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut on_disk: HashMap<Target, State> = HashMap::new();
    let mut tally = Tally::default();
    let mut total_acks = 0;
    let mut total_ops = 0;

    for run in 0..kills {
        let ctx = format!("seed {seed} (LCS_STORE_CRASH_SEED to replay), kill {run}");
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
                if line == "OPEN" || line == "ACK" || line.starts_with("BEGIN ") {
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
        let mut log = RunLog::default();
        for l in &lines {
            log.feed(l);
        }
        if keep {
            std::fs::write(base.join(format!("run-{run}.log")), lines.join("\n")).unwrap();
            // The database as the kill left it, before this test opens (and recovers) it.
            let copy = base.join(format!("killed-{run}"));
            let _ = std::fs::remove_dir_all(base.join(format!("killed-{}", run.wrapping_sub(2))));
            copy_dir(&dir, &copy);
        }
        total_acks += log.acks;
        total_ops += log.ops.len();

        let actual = read_back(&dir, &mut tally, &ctx);
        check_prefix(&on_disk, &log, &actual, &mut tally, &ctx);
        // What is on disk now is the starting point of the next run.
        on_disk = actual;
    }

    // A last clean open and full scan.
    let store = open_store(&dir).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.corrupt, 0);
    let subs: BTreeMap<_, _> = store
        .subscriptions()
        .map(|r| {
            let s = r.unwrap();
            (key_of(&s).unwrap(), s.updated_unix)
        })
        .collect();
    assert_eq!(subs.len() as u64, stats.total_subscriptions());
    drop(store);
    eprintln!(
        "store_crash: seed {seed}: {kills} SIGKILLs ({} while opening, {} in the workload) in \
         {:.1} s; {total_ops} writes begun, {total_acks} acknowledged, none lost, no reordering; \
         {} records checked; writes after the last acknowledged one at each kill: {} found \
         applied ({} of them unsynced), {} not; {} subscriptions at the end; slowest reopen \
         {} ms; store directory {} bytes",
        tally.kills_while_opening,
        tally.kills_in_workload,
        started.elapsed().as_secs_f64(),
        tally.records_checked,
        tally.beyond_ack_applied,
        tally.unsynced_applied,
        tally.beyond_ack_lost,
        subs.len(),
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
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
