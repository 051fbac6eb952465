//! Reading the file and the environment through the `config` crate, and walking the resulting
//! value tree key by key so that every unknown key and every type error is reported with its
//! dotted path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use config::{Value, ValueKind};

use super::keys::{self, Key, Kind};
use super::{ENV_PREFIX, Problem};

/// Collects problems and warnings, and remembers what the walker saw.
#[derive(Debug, Default)]
pub(crate) struct Diag {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Known keys that an unknown key's "did you mean" hint pointed at: a "required key is
    /// missing" for one of these would repeat the same mistake, so it is not reported.
    suggested: BTreeSet<String>,
    /// Keys (dotted, without list indices) whose value came from the environment.
    from_env: BTreeSet<String>,
    /// Every known key the walker asked for (dotted, `[]` for list items).
    pub(crate) known: BTreeSet<String>,
}

impl Diag {
    pub(crate) fn problem(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem::new(key, reason));
    }

    pub(crate) fn warning(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(Problem::new(key, reason));
    }

    pub(crate) fn problem_count(&self) -> usize {
        self.problems.len()
    }

    /// Reports a missing required key, unless a misspelling of it was already reported.
    pub(crate) fn missing(&mut self, key: &str, reason: &str) {
        if !self.suggested.contains(key) {
            self.problem(key, reason);
        }
    }

    /// Whether an unknown key was reported with a hint pointing at `key`.
    pub(crate) fn was_suggested(&self, key: &str) -> bool {
        self.suggested.contains(key)
    }

    /// Problems and warnings, each naming the environment variable when the key was set there.
    pub(crate) fn finish(self) -> (Vec<Problem>, Vec<Problem>) {
        let from_env = self.from_env;
        let annotate = |mut p: Problem| {
            let bare = strip_indices(&p.key);
            if from_env.contains(&bare) {
                p.reason = format!("{} (set by {})", p.reason, env_var_name(&bare));
            }
            p
        };
        (
            self.problems.into_iter().map(annotate).collect(),
            self.warnings.into_iter().map(annotate).collect(),
        )
    }
}

/// Whether an environment variable name is one of ours (`LCS_BRIDGE__…`, any case).
pub(crate) fn is_ours(name: &str) -> bool {
    let prefix = format!("{ENV_PREFIX}__");
    name.len() > prefix.len()
        && name
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
}

/// `xmpp.secret` → `LCS_BRIDGE__XMPP__SECRET`.
pub(crate) fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}__{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

fn strip_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0usize;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Reads the file, checks its TOML syntax, merges the environment over it with the `config`
/// crate and returns the root table. `None` after reporting when that is impossible.
pub(crate) fn read_root<I>(path: &Path, env: I, diag: &mut Diag) -> Option<Table>
where
    I: IntoIterator<Item = (String, String)>,
{
    let file_key = path.display().to_string();
    let text = match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                diag.problem(
                    file_key,
                    format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
                );
                return None;
            }
        },
        Err(e) => {
            diag.problem(file_key, format!("cannot read: {}", io_reason(&e)));
            return None;
        }
    };
    // The `config` crate's own parse error is multi-line and has no line number we can reach;
    // parse once with `toml` to report the position.
    if let Err(e) = toml::from_str::<toml::Table>(&text) {
        let at = match e.span() {
            Some(span) => {
                let (line, col) = line_col(&text, span.start);
                format!(" at line {line}, column {col}")
            }
            None => String::new(),
        };
        diag.problem(
            file_key,
            format!("TOML syntax error{at}: {}", e.message().trim()),
        );
        return None;
    }
    let env: config::Map<String, String> = env.into_iter().filter(|(k, _)| is_ours(k)).collect();
    // The same key mapping as the `config` crate's `Environment` source (lowercase, `__` → `.`),
    // to name the variable in problems about keys it set.
    let prefix_len = ENV_PREFIX.len() + 2;
    for name in env.keys() {
        if let Some(rest) = name.get(prefix_len..) {
            diag.from_env.insert(rest.to_lowercase().replace("__", "."));
        }
    }
    let built = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .separator("__")
                .source(Some(env)),
        )
        .build()
        .and_then(|c| c.try_deserialize::<config::Map<String, Value>>());
    match built {
        Ok(map) => Some(Table::new(String::new(), map, "")),
        Err(e) => {
            diag.problem(file_key, config_error_reason(&e));
            None
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A short reason for an I/O error.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        _ => e.to_string(),
    }
}

/// A one-line reason for a `config` crate error, without its own key and origin decorations.
fn config_error_reason(e: &config::ConfigError) -> String {
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        config::ConfigError::At { error, .. } => config_error_reason(error),
        config::ConfigError::Message(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Describes a value's kind for type errors.
fn kind_name(v: &Value) -> String {
    match &v.kind {
        ValueKind::Nil => "nothing".to_owned(),
        ValueKind::Boolean(b) => format!("boolean {b}"),
        ValueKind::I64(i) => format!("integer {i}"),
        ValueKind::I128(i) => format!("integer {i}"),
        ValueKind::U64(i) => format!("integer {i}"),
        ValueKind::U128(i) => format!("integer {i}"),
        ValueKind::Float(f) => format!("float {f}"),
        ValueKind::String(s) => format!("string {s:?}"),
        ValueKind::Table(_) => "a table".to_owned(),
        ValueKind::Array(_) => "an array".to_owned(),
    }
}

/// Outcome of taking one key: `Err(Reported)` means a problem was already reported for it.
pub(crate) type Field<T> = Result<Option<T>, Reported>;

/// Marker: the problem with this value has been reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported;

/// One table of the configuration being walked: known keys are taken out, what is left at
/// [`Table::finish`] is unknown.
#[derive(Debug)]
pub(crate) struct Table {
    /// Dotted path of this table (`""` for the root, `federation.partners[0]`).
    path: String,
    /// Path used for the list of known keys (`federation.partners[]`).
    known_path: String,
    map: BTreeMap<String, Value>,
    taken: Vec<&'static str>,
}

impl Table {
    /// An empty table at `path` (a section that is not in the file).
    pub(crate) fn empty(path: &str) -> Self {
        Table::new(path.to_owned(), config::Map::new(), path)
    }

    fn new(path: String, map: config::Map<String, Value>, known_path: &str) -> Self {
        Table {
            path,
            known_path: known_path.to_owned(),
            map: map.into_iter().collect(),
            taken: Vec::new(),
        }
    }

    /// Dotted path of `key` in this table.
    pub(crate) fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn take(&mut self, key: &'static str, diag: &mut Diag) -> Option<Value> {
        self.taken.push(key);
        diag.known.insert(join(&self.known_path, key));
        self.map.remove(key)
    }

    /// Takes `key`, which must be one of this table's keys in [`keys::ALL`].
    fn take_key(&mut self, key: &Key, kind: Kind, diag: &mut Diag) -> Option<Value> {
        debug_assert_eq!(
            key.section, self.known_path,
            "{} read in the wrong table",
            key.path
        );
        debug_assert_eq!(key.kind, kind, "{} read as another kind", key.path);
        self.take(key.name, diag)
    }

    fn type_error(&self, key: &str, expected: &str, found: &Value, diag: &mut Diag) -> Reported {
        diag.problem(
            self.key(key),
            format!("expected {expected}, found {}", kind_name(found)),
        );
        Reported
    }

    /// A string (the environment gives only strings, so none is a number here).
    pub(crate) fn string(&mut self, key: &Key, diag: &mut Diag) -> Field<String> {
        let Some(v) = self.take_key(key, Kind::Text, diag) else {
            return Ok(None);
        };
        let key = key.name;
        match v.kind {
            ValueKind::String(s) => Ok(Some(s)),
            _ => Err(self.type_error(key, "a string", &v, diag)),
        }
    }

    /// An integer (a string of digits, as from the environment, is accepted).
    pub(crate) fn int(&mut self, key: &Key, diag: &mut Diag) -> Field<i64> {
        let Some(v) = self.take_key(key, Kind::Integer, diag) else {
            return Ok(None);
        };
        let key = key.name;
        let parsed = match &v.kind {
            ValueKind::I64(i) => Some(*i),
            ValueKind::U64(i) => i64::try_from(*i).ok(),
            ValueKind::I128(i) => i64::try_from(*i).ok(),
            ValueKind::U128(i) => i64::try_from(*i).ok(),
            ValueKind::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match parsed {
            Some(i) => Ok(Some(i)),
            None => Err(self.type_error(key, "an integer", &v, diag)),
        }
    }

    /// A boolean (`"true"`/`"false"` strings, as from the environment, are accepted).
    pub(crate) fn bool(&mut self, key: &Key, diag: &mut Diag) -> Field<bool> {
        let Some(v) = self.take_key(key, Kind::Boolean, diag) else {
            return Ok(None);
        };
        let key = key.name;
        let parsed = match &v.kind {
            ValueKind::Boolean(b) => Some(*b),
            ValueKind::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        };
        match parsed {
            Some(b) => Ok(Some(b)),
            None => Err(self.type_error(key, "true or false", &v, diag)),
        }
    }

    /// A list of strings; a single string is split at commas (how the environment gives lists).
    pub(crate) fn strings(&mut self, key: &Key, diag: &mut Diag) -> Field<Vec<String>> {
        let Some(v) = self.take_key(key, Kind::TextList, diag) else {
            return Ok(None);
        };
        let key = key.name;
        let full = self.key(key);
        match v.kind {
            ValueKind::String(s) => Ok(Some(
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            ValueKind::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut bad = false;
                for (i, item) in items.into_iter().enumerate() {
                    match item.kind {
                        ValueKind::String(s) => out.push(s),
                        _ => {
                            diag.problem(
                                format!("{full}[{i}]"),
                                format!("expected a string, found {}", kind_name(&item)),
                            );
                            bad = true;
                        }
                    }
                }
                if bad { Err(Reported) } else { Ok(Some(out)) }
            }
            _ => Err(self.type_error(key, "a list of strings", &v, diag)),
        }
    }

    /// A sub-table (`[section]`).
    pub(crate) fn table(&mut self, key: &'static str, diag: &mut Diag) -> Field<Table> {
        let Some(v) = self.take(key, diag) else {
            return Ok(None);
        };
        let path = self.key(key);
        let known = join(&self.known_path, key);
        match v.kind {
            ValueKind::Table(map) => Ok(Some(Table::new(path, map, &known))),
            _ => Err(self.type_error(key, "a table", &v, diag)),
        }
    }

    /// An array of tables (`[[section.key]]`).
    pub(crate) fn tables(&mut self, key: &Key, diag: &mut Diag) -> Field<Vec<Table>> {
        let Some(v) = self.take_key(key, Kind::TableList, diag) else {
            return Ok(None);
        };
        let key = key.name;
        let path = self.key(key);
        let known = format!("{}[]", join(&self.known_path, key));
        match v.kind {
            ValueKind::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut bad = false;
                for (i, item) in items.into_iter().enumerate() {
                    match item.kind {
                        ValueKind::Table(map) => {
                            out.push(Table::new(format!("{path}[{i}]"), map, &known));
                        }
                        _ => {
                            diag.problem(
                                format!("{path}[{i}]"),
                                format!("expected a table, found {}", kind_name(&item)),
                            );
                            bad = true;
                        }
                    }
                }
                if bad { Err(Reported) } else { Ok(Some(out)) }
            }
            _ => Err(self.type_error(key, "an array of tables", &v, diag)),
        }
    }

    /// Reports every key that was not taken as unknown, with a hint when it is close to a known
    /// key of the same table ([`keys::names_in`]).
    pub(crate) fn finish(self, diag: &mut Diag) {
        let known = keys::names_in(&self.known_path);
        debug_assert_eq!(
            self.taken, known,
            "the walker must take the keys::ALL keys of {:?}, in their order",
            self.known_path
        );
        for key in self.map.keys() {
            let hint = closest(key, &known);
            let reason = match hint {
                Some(h) => {
                    diag.suggested.insert(join(&self.path, h));
                    format!("unknown key (did you mean \"{h}\"?)")
                }
                None => "unknown key".to_owned(),
            };
            diag.problem(join(&self.path, key), reason);
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The known key closest to `key` if it is a plausible misspelling (edit distance ≤ 2, or ≤ 1
/// for short keys, ignoring case).
pub(crate) fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let key_l = key.to_ascii_lowercase();
    let max = if key.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (edit_distance(&key_l, k), *k))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[n][m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("scret", "secret"), 1);
        assert_eq!(edit_distance("levle", "level"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("scret", &["secret", "secret_file", "host"]),
            Some("secret")
        );
        assert_eq!(closest("colour", &["secret", "host"]), None);
        assert_eq!(closest("hst", &["host", "port"]), Some("host"));
        assert_eq!(closest("Port", &["host", "port"]), Some("port"));
    }

    #[test]
    fn env_names() {
        assert_eq!(env_var_name("xmpp.secret"), "LCS_BRIDGE__XMPP__SECRET");
        assert_eq!(
            env_var_name("sip.max_header_bytes"),
            "LCS_BRIDGE__SIP__MAX_HEADER_BYTES"
        );
        assert!(is_ours("LCS_BRIDGE__XMPP__SECRET"));
        assert!(is_ours("lcs_bridge__xmpp__secret"));
        assert!(!is_ours("LCS_BRIDGE__"));
        assert!(!is_ours("LCS_BRIDGEX"));
        assert!(!is_ours("PATH"));
        assert_eq!(
            strip_indices("federation.partners[3].edge"),
            "federation.partners.edge"
        );
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_col("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_col("a\nbc\nd", 5), (3, 1));
    }
}
