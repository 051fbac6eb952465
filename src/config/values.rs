//! Converting one value taken from a table: defaults, ranges and words from its entry in
//! [`super::keys`], paths, free text, lists of domains and DNS servers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::VerificationLevel;
use super::checks;
use super::keys::Key;
use super::reader::{Diag, Field, Reported};

const REQUIRED: &str = "required key is missing";

/// Applies a conversion to a present value, reporting its failure under `key`.
pub(crate) fn conv<T, U>(
    diag: &mut Diag,
    key: &str,
    field: Field<T>,
    f: impl FnOnce(T) -> Result<U, String>,
) -> Field<U> {
    match field {
        Ok(Some(v)) => match f(v) {
            Ok(u) => Ok(Some(u)),
            Err(reason) => {
                diag.problem(key, reason);
                Err(Reported)
            }
        },
        Ok(None) => Ok(None),
        Err(r) => Err(r),
    }
}

pub(crate) fn or_default<U>(field: Field<U>, default: U) -> Option<U> {
    match field {
        Ok(Some(v)) => Some(v),
        Ok(None) => Some(default),
        Err(Reported) => None,
    }
}

/// Like [`or_default`], with a default that had to be parsed (`None` if that failed).
pub(crate) fn or_parsed<U>(field: Field<U>, default: Option<U>) -> Option<U> {
    match field {
        Ok(Some(v)) => Some(v),
        Ok(None) => default,
        Err(Reported) => None,
    }
}

pub(crate) fn required<U>(diag: &mut Diag, key: &str, field: Field<U>) -> Option<U> {
    match field {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            diag.missing(key, REQUIRED);
            None
        }
        Err(Reported) => None,
    }
}

/// An integer within `key.range` (the message adds `key.why`), or `key`'s default.
pub(crate) fn ranged(diag: &mut Diag, key: &Key, field: Field<i64>) -> Option<u64> {
    let (lo, hi) = key.range.unwrap_or((0, u64::MAX));
    let why = key.why;
    let field = conv(diag, key.path, field, |n| match u64::try_from(n) {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("must be between {lo} and {hi}{why}, not {n}")),
    });
    or_default(field, key.default_int())
}

/// An integer that is 0 (off) or within `key.range`, or `key`'s default; `None` inside for 0.
pub(crate) fn ranged_or_off(diag: &mut Diag, key: &Key, field: Field<i64>) -> Option<Option<u64>> {
    debug_assert!(key.zero_is_off, "{}", key.path);
    let (lo, hi) = key.range.unwrap_or((0, u64::MAX));
    let field = conv(diag, key.path, field, |n| match u64::try_from(n) {
        Ok(0) => Ok(None),
        Ok(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
        _ => Err(format!("must be 0 (off) or between {lo} and {hi}, not {n}")),
    });
    let default = key.default_int();
    or_default(field, (default != 0).then_some(default))
}

/// `key`'s words (`key.choices`, each with its value), converted at `at` (the key's path, with
/// the index of its array entry).
pub(crate) fn pick<T: Copy>(
    diag: &mut Diag,
    at: &str,
    key: &Key,
    field: Field<String>,
    words: &[(&str, T)],
) -> Field<T> {
    debug_assert!(
        words
            .iter()
            .map(|(w, _)| *w)
            .eq(key.choices.iter().copied()),
        "{}: the words differ from keys::ALL",
        key.path
    );
    conv(diag, at, field, |s| word(&s, words))
}

/// A word of `key` ([`pick`]), or the value of `key`'s default word when unset.
pub(crate) fn choice<T: Copy>(
    diag: &mut Diag,
    key: &Key,
    field: Field<String>,
    words: &[(&str, T)],
) -> Option<T> {
    match pick(diag, key.path, key, field, words) {
        Ok(Some(v)) => Some(v),
        Ok(None) => default_word(key, words),
        Err(Reported) => None,
    }
}

/// The value of `key`'s default word.
pub(crate) fn default_word<T: Copy>(key: &Key, words: &[(&str, T)]) -> Option<T> {
    let default = key.default_text();
    words.iter().find(|(w, _)| *w == default).map(|(_, v)| *v)
}

pub(crate) fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// A path: relative ones are resolved against the configuration file's directory.
pub(crate) fn path_value(base: &Path, s: String) -> Result<PathBuf, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    let p = PathBuf::from(s);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}

/// One of a few lowercase words.
pub(crate) fn word<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let wanted = s.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(w, _)| *w == wanted)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = choices.iter().map(|(w, _)| format!("{w:?}")).collect();
            let list = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} or {last}", rest.join(", "))
                }
                _ => names.join(""),
            };
            format!("must be {list}, not {s:?}")
        })
}

/// `verification_level` words.
pub(crate) const LEVELS: &[(&str, VerificationLevel)] = &[
    ("verified", VerificationLevel::Verified),
    ("unverified", VerificationLevel::Unverified),
    ("omit", VerificationLevel::Omit),
];

/// Free text shown to people: no control characters, bounded length.
pub(crate) fn text(s: String, max: usize) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    if s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(s)
}

/// A list of `IP:port` DNS servers: each well-formed, none twice; empty is allowed.
pub(crate) fn dns_server_list(
    diag: &mut Diag,
    key: &str,
    field: Field<Vec<String>>,
) -> Field<Vec<SocketAddr>> {
    let items = match field {
        Ok(Some(items)) => items,
        Ok(None) => return Ok(None),
        Err(r) => return Err(r),
    };
    // Indexed like `items` (`None` for a bad entry) so that duplicates name the right index.
    let mut out: Vec<Option<SocketAddr>> = Vec::with_capacity(items.len());
    let mut bad = false;
    for (i, item) in items.iter().enumerate() {
        match checks::dns_server(item) {
            Ok(a) => {
                if let Some(j) = out.iter().position(|o| *o == Some(a)) {
                    diag.problem(
                        format!("{key}[{i}]"),
                        format!("\"{a}\" is already listed at {key}[{j}]"),
                    );
                    bad = true;
                }
                out.push(Some(a));
            }
            Err(reason) => {
                diag.problem(format!("{key}[{i}]"), reason);
                bad = true;
                out.push(None);
            }
        }
    }
    if bad {
        Err(Reported)
    } else {
        Ok(Some(out.into_iter().flatten().collect()))
    }
}

/// A list of domains: each well-formed, none twice; `at_least_one` for required lists.
pub(crate) fn domain_list(
    diag: &mut Diag,
    key: &str,
    field: Field<Vec<String>>,
) -> Field<Vec<String>> {
    let Ok(Some(items)) = field else {
        return field;
    };
    if items.is_empty() {
        diag.problem(key, "must list at least one domain");
        return Err(Reported);
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    let mut bad = false;
    for (i, item) in items.iter().enumerate() {
        match checks::domain(item) {
            Ok(d) => {
                if let Some(j) = out.iter().position(|o| *o == d) {
                    diag.problem(
                        format!("{key}[{i}]"),
                        format!("{d:?} is already listed at {key}[{j}]"),
                    );
                    bad = true;
                }
                out.push(d);
            }
            Err(reason) => {
                diag.problem(format!("{key}[{i}]"), reason);
                bad = true;
                out.push(String::new());
            }
        }
    }
    if bad { Err(Reported) } else { Ok(Some(out)) }
}
