use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::*;
use crate::config::reader::Diag;
use crate::config::sections;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Set to regenerate docs/configuration.md's "Keys" section instead of failing when it is stale.
const UPDATE: &str = "UPDATE_CONFIG_REFERENCE";

#[test]
fn docs_key_reference_is_generated_from_the_table() {
    let path = repo_file("docs/configuration.md");
    let text = std::fs::read_to_string(&path).expect("read docs/configuration.md");
    let start = text.find("\n## Keys\n").expect("a \"## Keys\" section") + 1;
    let end = text[start + 1..]
        .find("\n## ")
        .map_or(text.len(), |i| start + 1 + i + 1);
    let want = reference_markdown();
    if text[start..end] == want {
        return;
    }
    if std::env::var_os(UPDATE).is_some() {
        let updated = format!("{}{want}{}", &text[..start], &text[end..]);
        std::fs::write(&path, updated).expect("write docs/configuration.md");
        return;
    }
    panic!(
        "docs/configuration.md's \"## Keys\" section is not what config::keys generates; \
         regenerate it with `{UPDATE}=1 cargo test --lib config::keys`"
    );
}

#[test]
fn table_entries_are_consistent() {
    let mut seen = BTreeSet::new();
    for key in ALL {
        assert!(seen.insert(key.path), "{} declared twice", key.path);
        assert_eq!(key.path, format!("{}.{}", key.section, key.name));
        assert!(
            !key.doc.is_empty() && !key.doc.contains('\n'),
            "{}",
            key.path
        );
        if let Some((lo, hi)) = key.range {
            assert_eq!(key.kind, Kind::Integer, "{}", key.path);
            assert!(lo <= hi, "{}", key.path);
            // The reference states the range the walker enforces.
            assert!(
                key.doc.contains(&format!("{lo}–{hi}")),
                "{}: doc lacks {lo}–{hi}",
                key.path
            );
            let default = key.default_int();
            assert!(
                (lo..=hi).contains(&default) || (key.zero_is_off && default == 0),
                "{}: default {default} outside {lo}–{hi}",
                key.path
            );
        }
        if !key.choices.is_empty() {
            assert_eq!(key.kind, Kind::Text, "{}", key.path);
            for word in key.choices {
                assert!(
                    key.doc.contains(&format!("\"{word}\"")),
                    "{}: {word}",
                    key.path
                );
            }
            if let DefaultValue::Text(d) = key.default {
                assert!(key.choices.contains(&d), "{}: default {d:?}", key.path);
            }
        }
        match key.default {
            DefaultValue::Integer(_) => assert_eq!(key.kind, Kind::Integer, "{}", key.path),
            DefaultValue::Boolean(_) => assert_eq!(key.kind, Kind::Boolean, "{}", key.path),
            DefaultValue::EmptyList => assert_eq!(key.kind, Kind::TextList, "{}", key.path),
            DefaultValue::Text(_) => assert_eq!(key.kind, Kind::Text, "{}", key.path),
            DefaultValue::Required | DefaultValue::Absent => {}
        }
    }
    assert_eq!(
        find("sip.max_headers").map(|k| k.path),
        Some("sip.max_headers")
    );
    assert!(find("sip.nope").is_none());
    assert_eq!(
        crate::config::DEFAULT_QUEUE_CAPACITY as u64,
        XMPP_QUEUE_CAPACITY.default_int()
    );
}

#[test]
fn the_walker_reads_exactly_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    let text = std::fs::read_to_string(repo_file("config/lcs-bridge.example.toml"))
        .expect("read example")
        + "\n[[federation.partners]]\ndomain = \"contoso.com\"\n";
    std::fs::write(&path, text).expect("write");
    let mut diag = Diag::default();
    let _ = sections::load_parts(&path, Vec::new(), &mut diag);
    let mut want: BTreeSet<String> = ALL.iter().map(|k| k.path.to_owned()).collect();
    want.extend(names_in("").iter().map(|s| (*s).to_owned()));
    // The walker names an array of tables by its key; the table names its entries' keys.
    let got: BTreeSet<String> = diag.known.iter().cloned().collect();
    assert_eq!(got, want);
}

/// One `key = value` line of the example file (also commented out, `# key = value`), with the
/// comment block above it (or above the group of assignments it is in).
#[derive(Debug)]
struct Shown {
    section: String,
    name: String,
    value: String,
    commented: bool,
    comment: String,
}

fn shown_keys(text: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut comment = String::new();
    // The next comment line starts a new block (after a blank line or an assignment).
    let mut new_block = true;
    for line in text.lines() {
        let (commented, body) = match line.strip_prefix("# ") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if let Some(name) = body.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            section = format!("{name}[]");
            new_block = true;
            continue;
        }
        if let Some(name) = body.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.to_owned();
            comment.clear();
            new_block = false;
            continue;
        }
        let assignment = body.split_once(" = ").filter(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        });
        if let Some((name, value)) = assignment {
            out.push(Shown {
                section: section.clone(),
                name: name.to_owned(),
                value: value.trim().to_owned(),
                commented,
                comment: comment.clone(),
            });
            new_block = true;
        } else if line.trim().is_empty() {
            new_block = true;
        } else if line.starts_with('#') {
            if new_block {
                comment.clear();
                new_block = false;
            }
            comment.push_str(line.trim_start_matches('#').trim());
            comment.push(' ');
        }
    }
    out
}

/// How a default is written in TOML.
fn toml_default(key: &Key) -> Option<String> {
    match key.default {
        DefaultValue::Text(s) => Some(format!("{s:?}")),
        DefaultValue::Integer(n) => Some(n.to_string()),
        DefaultValue::Boolean(b) => Some(b.to_string()),
        DefaultValue::EmptyList => Some("[]".to_owned()),
        DefaultValue::Required | DefaultValue::Absent => None,
    }
}

#[test]
fn example_file_shows_every_key_with_its_default_and_range() {
    let text =
        std::fs::read_to_string(repo_file("config/lcs-bridge.example.toml")).expect("read example");
    let shown = shown_keys(&text);
    for s in &shown {
        let path = format!("{}.{}", s.section, s.name);
        assert!(
            find(&path).is_some(),
            "the example shows {path}, which is no key"
        );
    }
    for key in ALL {
        let Some(s) = shown
            .iter()
            .find(|s| s.section == key.section && s.name == key.name)
        else {
            assert_eq!(
                key.kind,
                Kind::TableList,
                "{} is not in the example",
                key.path
            );
            continue;
        };
        if key.section.ends_with("[]") {
            // Array entries are shown commented out, documented in the block above them.
            continue;
        }
        let comment = &s.comment;
        match toml_default(key) {
            Some(default) => {
                assert!(
                    comment.contains(&format!("Default: {default}")),
                    "{}: the comment does not say \"Default: {default}\": {comment}",
                    key.path
                );
                // The example in config/ points at the repository's mappings/.
                if key.path != "mappings.path" {
                    assert!(!s.commented, "{} is commented out", key.path);
                    assert_eq!(s.value, default, "{}", key.path);
                }
            }
            None if key.default == DefaultValue::Required => {
                assert!(
                    comment.contains("Required") || comment.contains("required"),
                    "{}: the comment does not say it is required: {comment}",
                    key.path
                );
            }
            None => assert!(
                comment.contains("Default: none") || comment.contains("No default"),
                "{}: the comment does not say it has no default: {comment}",
                key.path
            ),
        }
        if let Some((lo, hi)) = key.range {
            assert!(
                comment.contains(&format!("{lo}-{hi}")),
                "{}: the comment does not give the range {lo}-{hi}: {comment}",
                key.path
            );
        }
    }
}

#[test]
fn other_example_files_use_only_known_keys() {
    for name in [
        "config/prosody.example.toml",
        "config/ejabberd.example.toml",
    ] {
        let text = std::fs::read_to_string(repo_file(name)).expect(name);
        for s in shown_keys(&text) {
            let path = format!("{}.{}", s.section, s.name);
            assert!(
                find(&path).is_some(),
                "{name} shows {path}, which is no key"
            );
        }
    }
}

#[test]
fn edge_limit_defaults_are_the_table_defaults() {
    use crate::edge::limits::EdgeLimits;
    let d = EdgeLimits::DEFAULT;
    let secs = |k: &Key| std::time::Duration::from_secs(k.default_int());
    let n = |k: &Key| usize::try_from(k.default_int()).unwrap_or(usize::MAX);
    assert_eq!(
        d,
        EdgeLimits {
            max_dns_lookups: n(&SIP_MAX_DNS_LOOKUPS),
            max_dns_lookups_per_peer: n(&SIP_MAX_DNS_LOOKUPS_PER_PEER),
            pool_idle: secs(&SIP_POOL_IDLE_SECS),
            max_handshakes: n(&SIP_MAX_HANDSHAKES),
            max_connections_per_address: n(&SIP_MAX_CONNECTIONS_PER_ADDRESS),
            max_connections_per_identity: n(&SIP_MAX_CONNECTIONS_PER_IDENTITY),
            max_connections: n(&SIP_MAX_CONNECTIONS),
            max_write_backlog_bytes: n(&SIP_MAX_WRITE_BACKLOG_BYTES),
        }
    );
}
