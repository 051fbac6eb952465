//! The crate's module layering (docs/ARCHITECTURE.md "Layers"), checked from the source: every
//! file of `src/` reachable through `mod` declarations outside `#[cfg(test)]` is read, comments,
//! string literals and `#[cfg(test)]` items are dropped, and each `use` and `crate::…` path
//! (`lcs_bridge::…` in `main.rs`) becomes an edge from the file's module to the module of the
//! file that defines the item. The test fails when
//!
//! - the file modules import each other in a cycle (the cycle is named, file by file, with the
//!   import that closes each step), or
//! - an import breaks the layer table [`LAYERS`] (which top-level module may import which), or
//! - a module without I/O imports one of the [`IO_MODULES`] (sockets, DNS, clock, disk).
//!
//! A `mod.rs` using its own submodules is not an edge: it is their façade (the submodules
//! depend on the `mod.rs`, never the other way round in a way that matters to layering).
//!
//! `LAYERING_DUMP=1 cargo test --test layering -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Which top-level modules each top-level module may import (besides itself). `lib` is
/// `src/lib.rs`, `main` is `src/main.rs`. Keep it strict: a new arrow here is a design change.
const LAYERS: &[(&str, &[&str])] = &[
    // Utilities on std alone.
    ("compact", &[]),
    ("random", &[]),
    ("backoff", &[]),
    // The operations metrics' names and handles (the `metrics` crate alone).
    ("telemetry", &[]),
    // The service manager's notifications (sd_notify), for the runner.
    ("systemd", &[]),
    // The codecs and translation, sans-IO.
    ("sip", &["compact"]),
    ("core", &["sip"]),
    ("config", &["core", "sip"]),
    ("store", &["sip"]),
    ("xmpp", &["backoff", "config", "core", "sip"]),
    ("edge", &["backoff", "config", "random", "sip", "telemetry"]),
    (
        "engine",
        &["compact", "core", "edge", "random", "sip", "store", "xmpp"],
    ),
    ("inspect", &["core", "sip", "xmpp"]),
    // Active/standby: the leader lease for the runner (I/O).
    ("ha", &["config", "store"]),
    // The operations HTTP listener (/metrics, /health, /ready).
    ("ops", &["telemetry", "xmpp"]),
    // One line per translation, described from the bridge's inputs and actions.
    ("transcript", &["core", "edge", "engine", "sip"]),
    // The runner and the binary wire everything.
    (
        "app",
        &[
            "config",
            "core",
            "edge",
            "engine",
            "ha",
            "ops",
            "random",
            "sip",
            "store",
            "systemd",
            "telemetry",
            "transcript",
            "xmpp",
        ],
    ),
    // `lcs-bridge doctor`: the edge's, the link's and the SIP codec's own parts, probed.
    (
        "doctor",
        &["config", "core", "edge", "random", "sip", "xmpp"],
    ),
    // `lcs-bridge demo`: Prosody, a simulated partner and the runner, on loopback.
    ("demo", &["app", "core", "random", "sip", "transcript"]),
    (
        "main",
        &[
            "app", "config", "core", "demo", "doctor", "inspect", "store",
        ],
    ),
    ("lib", &[]),
];

/// Modules that do I/O (sockets, DNS, the clock, the store's disk); only `app` and `main` may
/// import them (and the pairs in [`IO_IMPORTERS`]). The engines in particular see the edge and
/// the XMPP link only through sans-IO types (`edge::event::EdgeEvent`, `edge::core::Route`).
const IO_MODULES: &[&str] = &[
    "app",
    "ha",
    "main",
    "edge::server",
    "edge::dns",
    "xmpp::link",
    "store::sled_store",
    "store::redb_store",
    "store::pg_lease",
    "store::pg_store",
    "doctor::probe",
    "systemd",
    "demo",
    "demo::partner_io",
    "demo::prosody",
    "demo::output",
    // Not I/O, but recording is a side effect the sans-IO code must not have: only the I/O
    // modules count (the engines are sampled through `Bridge::census`).
    "telemetry",
    "ops",
];

/// Who else may import an I/O module: the edge's server task runs the DNS discovery and
/// records metrics; doctor's probe runs the discovery and the component link's handshake; the
/// operations listener renders the metrics and reads the link's state; `ha` (the runner's
/// active/standby part) the lease task.
const IO_IMPORTERS: &[(&str, &str)] = &[
    ("edge::server", "edge::dns"),
    ("edge::server", "telemetry"),
    ("doctor::probe", "edge::dns"),
    ("doctor::probe", "xmpp::link"),
    // The runner's active/standby part starts and follows the lease task.
    ("ha", "store::pg_lease"),
    ("ops", "telemetry"),
    // `/ready` asks the component link whether its streams are up.
    ("ops", "xmpp::link"),
    // The demo runs the bridge (`app::run_with`) and starts its Prosody, its partner's edge
    // and its output; the output names the partner's log target, Prosody's installer writes
    // through the output.
    ("demo", "app"),
    ("demo", "demo::partner_io"),
    ("demo", "demo::prosody"),
    ("demo", "demo::output"),
    ("demo::output", "demo::partner_io"),
    ("demo::prosody", "demo::output"),
];

/// One import: from a file module to a module, with the path as written, for the message.
#[derive(Debug, Clone)]
struct Import {
    from: String,
    to: String,
    path: String,
}

fn main_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `source` with comments and the contents of string and character literals blanked out (so
/// that nothing in them looks like a path), lines and offsets kept.
fn strip(source: &str) -> String {
    let c: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
                out.push(' ');
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) && !prev_ident && {
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            c.get(j) == Some(&'"')
        } {
            // Raw string: r#"…"#.
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            out.push('"');
            for _ in i + 1..j {
                out.push(' ');
            }
            i = j;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.push('"');
                    for _ in 0..hashes {
                        out.push(' ');
                    }
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\u{…}') or a lifetime ('a).
            let end = if c.get(i + 1) == Some(&'\\') {
                (i + 2..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.push('\'');
                    for _ in i + 1..end {
                        out.push(' ');
                    }
                    out.push('\'');
                    i = end + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The index just past the item starting at `from` (skipping its attributes): its `;` or its
/// `{…}` block, whichever ends it at bracket depth 0.
fn item_end(s: &[u8], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < s.len() {
        match s[i] {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b';' if depth == 0 => return i + 1,
            b'{' if depth == 0 => {
                let mut braces = 0;
                while i < s.len() {
                    match s[i] {
                        b'{' => braces += 1,
                        b'}' => {
                            braces -= 1;
                            if braces == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    s.len()
}

/// `stripped` without its `#[cfg(test)]` items.
fn without_tests(stripped: &str) -> String {
    let mut s = stripped.as_bytes().to_vec();
    let marker = b"#[cfg(test)]";
    let mut from = 0;
    while let Some(at) = s[from..]
        .windows(marker.len())
        .position(|w| w == marker)
        .map(|p| p + from)
    {
        let end = item_end(&s, at + marker.len());
        for b in &mut s[at..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
        from = end;
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The `use` trees of `code`, flattened to paths (`a::b::{c, d::e}` → `a::b::c`, `a::b::d::e`;
/// `self` in a group names the group's path).
fn use_paths(code: &str) -> Vec<String> {
    let b = code.as_bytes();
    let mut paths = Vec::new();
    let mut i = 0;
    while i + 4 <= b.len() {
        if &b[i..i + 3] == b"use"
            && (i == 0 || !is_ident(b[i - 1]))
            && b[i + 3].is_ascii_whitespace()
        {
            let end = (i..b.len()).find(|&j| b[j] == b';').unwrap_or(b.len());
            // Drop renames (`x as y`), then the whitespace.
            let mut tree = String::new();
            let mut words = code[i + 3..end].split_whitespace();
            while let Some(word) = words.next() {
                if word == "as" {
                    let renamed = words.next().unwrap_or("");
                    tree.push_str(renamed.trim_start_matches(|c: char| is_ident(c as u8)));
                } else {
                    tree.push_str(word);
                }
            }
            flatten("", &tree, &mut paths);
            i = end;
        } else {
            i += 1;
        }
    }
    paths
}

fn flatten(prefix: &str, tree: &str, out: &mut Vec<String>) {
    // Split at top-level commas.
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (k, ch) in tree.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let join = |p: &str| {
            if prefix.is_empty() {
                p.to_owned()
            } else if p == "self" {
                prefix.to_owned()
            } else {
                format!("{prefix}::{p}")
            }
        };
        if let Some(open) = part.find('{') {
            let head = part[..open].trim_end_matches("::");
            let inner = &part[open + 1..part.len() - 1];
            flatten(&join(head), inner, out);
        } else {
            out.push(join(part));
        }
    }
}

/// Paths written in code outside `use`: `crate::a::b`, `super::a`, `lcs_bridge::a`.
fn inline_paths(code: &str, roots: &[&str]) -> Vec<String> {
    let b = code.as_bytes();
    let mut paths = Vec::new();
    for root in roots {
        let pat = format!("{root}::");
        let mut from = 0;
        while let Some(p) = code[from..].find(&pat) {
            let at = from + p;
            from = at + pat.len();
            if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b':') {
                continue;
            }
            let mut end = at;
            while end < b.len() && (is_ident(b[end]) || b[end] == b':') {
                end += 1;
            }
            paths.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    paths
}

struct Crate {
    /// File module path (`edge::server`; `lib` and `main` for the roots) → stripped code.
    files: BTreeMap<String, String>,
}

fn child_file(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        return Some((flat, dir.join(name)));
    }
    let nested = dir.join(name).join("mod.rs");
    nested.exists().then(|| (nested, dir.join(name)))
}

/// Reads the file at `path` (module `module`, whose child modules live in `dir`) and its
/// non-test child modules.
fn read_tree(path: &Path, module: &str, dir: &Path, files: &mut BTreeMap<String, String>) {
    let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let code = without_tests(&strip(&source));
    for line in code.lines() {
        let t = line.trim();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(name) = t.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            let name = name.trim();
            let (file, child_dir) = child_file(dir, name)
                .unwrap_or_else(|| panic!("{path:?}: no file for `mod {name};`"));
            let child = if module == "lib" {
                name.to_owned()
            } else {
                format!("{module}::{name}")
            };
            read_tree(&file, &child, &child_dir, files);
        }
    }
    files.insert(module.to_owned(), code);
}

fn read_crate() -> Crate {
    let src = main_dir();
    let mut files = BTreeMap::new();
    read_tree(&src.join("lib.rs"), "lib", &src, &mut files);
    read_tree(&src.join("main.rs"), "main", &src, &mut files);
    Crate { files }
}

impl Crate {
    /// The file module defining `path` (absolute, without `crate::`): its longest prefix that
    /// is a file module.
    fn resolve(&self, path: &[&str]) -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|m| self.files.contains_key(m) && m != "lib" && m != "main")
    }

    /// The module path `super` names in file module `module` (`None` at the root).
    fn parent(module: &str) -> Option<String> {
        match module.rsplit_once("::") {
            Some((p, _)) => Some(p.to_owned()),
            None if module == "lib" || module == "main" => None,
            None => Some(String::new()),
        }
    }

    fn imports(&self) -> Vec<Import> {
        let mut out = Vec::new();
        for (module, code) in &self.files {
            let mut paths = use_paths(code);
            paths.extend(inline_paths(code, &["crate", "super", "lcs_bridge"]));
            for path in paths {
                let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
                let absolute: Vec<String> = match parts.first().copied() {
                    Some("crate") | Some("lcs_bridge") => {
                        parts[1..].iter().map(|s| (*s).to_owned()).collect()
                    }
                    Some("super") => {
                        let mut base = Self::parent(module);
                        let mut rest = &parts[1..];
                        while rest.first() == Some(&"super") {
                            base = base.as_deref().and_then(Self::parent);
                            rest = &rest[1..];
                        }
                        let Some(base) = base else { continue };
                        base.split("::")
                            .filter(|p| !p.is_empty())
                            .chain(rest.iter().copied())
                            .map(str::to_owned)
                            .collect()
                    }
                    Some("self") => module
                        .split("::")
                        .chain(parts[1..].iter().copied())
                        .map(str::to_owned)
                        .collect(),
                    _ => continue,
                };
                let absolute: Vec<&str> = absolute.iter().map(String::as_str).collect();
                let Some(to) = self.resolve(&absolute) else {
                    continue;
                };
                // The module itself, and a façade (mod.rs) using its own submodules.
                if &to == module || to.starts_with(&format!("{module}::")) {
                    continue;
                }
                out.push(Import {
                    from: module.clone(),
                    to,
                    path,
                });
            }
        }
        out
    }
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// A cycle among the file modules, as `a → b → … → a` with the import behind each arrow.
fn find_cycle(imports: &[Import]) -> Option<Vec<Import>> {
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Import>> = BTreeMap::new();
    for i in imports {
        graph
            .entry(i.from.as_str())
            .or_default()
            .entry(i.to.as_str())
            .or_insert(i);
    }
    // Depth-first search with colours; the stack holds the imports on the current path.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeMap<&'a str, &'a Import>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a Import>,
    ) -> Option<Vec<Import>> {
        state.insert(node, 1);
        for (&next, &import) in graph.get(node).into_iter().flatten() {
            stack.push(import);
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|i| i.from == next).unwrap_or(0);
                    return Some(stack[start..].iter().map(|i| (*i).clone()).collect());
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
            stack.pop();
        }
        state.insert(node, 2);
        None
    }
    let mut state = BTreeMap::new();
    let nodes: Vec<&str> = graph.keys().copied().collect();
    for node in nodes {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, &graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn describe(i: &Import) -> String {
    format!("{} → {} (`{}`)", i.from, i.to, i.path)
}

#[test]
fn file_modules_import_each_other_without_cycles() {
    let krate = read_crate();
    let imports = krate.imports();
    if std::env::var_os("LAYERING_DUMP").is_some() {
        let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
        for i in &imports {
            edges.insert((i.from.clone(), i.to.clone()));
        }
        for (from, to) in edges {
            println!("{from} -> {to}");
        }
    }
    if let Some(cycle) = find_cycle(&imports) {
        let mut msg = String::from("import cycle between file modules:\n");
        for i in &cycle {
            let _ = writeln!(msg, "  {}", describe(i));
        }
        panic!("{msg}");
    }
}

#[test]
fn imports_follow_the_layer_table() {
    let krate = read_crate();
    let table: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut broken = Vec::new();
    for module in krate.files.keys() {
        let layer = top(module);
        assert!(
            table.contains_key(layer),
            "module {module}: its layer `{layer}` is missing from LAYERS in tests/layering.rs"
        );
    }
    for i in krate.imports() {
        let (from, to) = (top(&i.from), top(&i.to));
        if from != to && !table[from].contains(&to) {
            broken.push(format!(
                "{}: layer `{from}` may not import layer `{to}` (allowed: {:?})",
                describe(&i),
                table[from]
            ));
        }
        if IO_MODULES.contains(&i.to.as_str())
            && !matches!(from, "app" | "main")
            && !IO_IMPORTERS.contains(&(i.from.as_str(), i.to.as_str()))
        {
            broken.push(format!(
                "{}: {} may not import the I/O module {} (only app and main wire I/O modules; \
                 sans-IO code takes time and events as arguments)",
                describe(&i),
                i.from,
                i.to
            ));
        }
    }
    broken.sort();
    broken.dedup();
    assert!(
        broken.is_empty(),
        "imports breaking the layering rules:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_layer_table_is_acyclic() {
    let imports: Vec<Import> = LAYERS
        .iter()
        .flat_map(|(from, tos)| {
            tos.iter().map(|to| Import {
                from: (*from).to_owned(),
                to: (*to).to_owned(),
                path: "LAYERS".to_owned(),
            })
        })
        .collect();
    if let Some(cycle) = find_cycle(&imports) {
        let names: Vec<String> = cycle.iter().map(|i| i.from.clone()).collect();
        panic!("LAYERS has a cycle: {}", names.join(" → "));
    }
}

#[test]
fn the_reader_sees_through_comments_strings_and_tests() {
    let code = strip(
        "use crate::a::{b as B, c::{self, D}}; // use crate::x;\nlet s = \"crate::y\"; let r = r#\"crate::z\"#; let c = '\"'; fn f<'a>() {}\n#[cfg(test)]\nmod tests { use crate::t; }\n",
    );
    let code = without_tests(&code);
    assert_eq!(
        use_paths(&code),
        ["crate::a::b", "crate::a::c", "crate::a::c::D"]
    );
    assert_eq!(
        inline_paths(&code, &["crate"]),
        ["crate::a"],
        "only the use statement's head is an inline path"
    );
}
