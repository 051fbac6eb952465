//! The packed key (`KeyText`) behaves as the pair of strings it replaces.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use proptest::prelude::*;

use super::super::{KeyText, key};

/// Short strings over a small alphabet, so that equal prefixes and equal pairs are frequent;
/// "@" and ":" as in JIDs and AORs, and the empty string.
fn part() -> impl Strategy<Value = String> {
    "[ab@:é]{0,4}"
}

proptest! {
    #[test]
    fn packed_key_agrees_with_the_pair(
        (l1, r1) in (part(), part()),
        (l2, r2) in (part(), part()),
    ) {
        let (a, b) = (KeyText::new(&l1, &r1), KeyText::new(&l2, &r2));
        prop_assert_eq!(a.local(), l1.as_str());
        prop_assert_eq!(a.remote(), r1.as_str());
        prop_assert_eq!(a.cmp(&b), (&l1, &r1).cmp(&(&l2, &r2)));
        prop_assert_eq!(a == b, (&l1, &r1) == (&l2, &r2));
        let hasher = RandomState::new();
        if a == b {
            prop_assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        }
    }
}

/// ("ab", "c") and ("a", "bc") are one text: the split keeps them apart, and the order is the
/// pair's (a user's subscriptions come before a longer user's).
#[test]
fn same_text_other_split() {
    let (a, b) = (key("ab".into(), "c".into()), key("a".into(), "bc".into()));
    assert_ne!(a, b);
    assert!(b < a);
    assert!(key("a".into(), "z".into()) < key("a@".into(), String::new()));
    assert_eq!(format!("{a:?}"), r#"Key("ab", "c")"#);
}
