//! Stanza error conditions: the closed set of RFC 6120 §8.3.3 defined conditions, with their
//! wire names (RFC 6120 §8.3.2 element names), used by the error mapping of RFC 7247 §7
//! (see `mappings/errors.toml` and [`crate::core::tables::ErrorTable`]).
//!
//! `payment-required` (RFC 3920) is deliberately absent: RFC 6120 §8.3.3 removed it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// One RFC 6120 §8.3.3 stanza error condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// §8.3.3.1 `bad-request`
    BadRequest,
    /// §8.3.3.2 `conflict`
    Conflict,
    /// §8.3.3.3 `feature-not-implemented`
    FeatureNotImplemented,
    /// §8.3.3.4 `forbidden`
    Forbidden,
    /// §8.3.3.5 `gone`
    Gone,
    /// §8.3.3.6 `internal-server-error`
    InternalServerError,
    /// §8.3.3.7 `item-not-found`
    ItemNotFound,
    /// §8.3.3.8 `jid-malformed`
    JidMalformed,
    /// §8.3.3.9 `not-acceptable`
    NotAcceptable,
    /// §8.3.3.10 `not-allowed`
    NotAllowed,
    /// §8.3.3.11 `not-authorized`
    NotAuthorized,
    /// §8.3.3.12 `policy-violation`
    PolicyViolation,
    /// §8.3.3.13 `recipient-unavailable`
    RecipientUnavailable,
    /// §8.3.3.14 `redirect`
    Redirect,
    /// §8.3.3.15 `registration-required`
    RegistrationRequired,
    /// §8.3.3.16 `remote-server-not-found`
    RemoteServerNotFound,
    /// §8.3.3.17 `remote-server-timeout`
    RemoteServerTimeout,
    /// §8.3.3.18 `resource-constraint`
    ResourceConstraint,
    /// §8.3.3.19 `service-unavailable`
    ServiceUnavailable,
    /// §8.3.3.20 `subscription-required`
    SubscriptionRequired,
    /// §8.3.3.21 `undefined-condition`
    UndefinedCondition,
    /// §8.3.3.22 `unexpected-request`
    UnexpectedRequest,
}

/// A token that is not an RFC 6120 §8.3.3 condition name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stanza error condition \"{0}\"")]
pub struct UnknownCondition(pub String);

impl Condition {
    /// Every condition, in RFC 6120 §8.3.3 order.
    pub const ALL: [Condition; 22] = [
        Condition::BadRequest,
        Condition::Conflict,
        Condition::FeatureNotImplemented,
        Condition::Forbidden,
        Condition::Gone,
        Condition::InternalServerError,
        Condition::ItemNotFound,
        Condition::JidMalformed,
        Condition::NotAcceptable,
        Condition::NotAllowed,
        Condition::NotAuthorized,
        Condition::PolicyViolation,
        Condition::RecipientUnavailable,
        Condition::Redirect,
        Condition::RegistrationRequired,
        Condition::RemoteServerNotFound,
        Condition::RemoteServerTimeout,
        Condition::ResourceConstraint,
        Condition::ServiceUnavailable,
        Condition::SubscriptionRequired,
        Condition::UndefinedCondition,
        Condition::UnexpectedRequest,
    ];

    /// The element name used on the wire (`urn:ietf:params:xml:ns:xmpp-stanzas`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::Conflict => "conflict",
            Condition::FeatureNotImplemented => "feature-not-implemented",
            Condition::Forbidden => "forbidden",
            Condition::Gone => "gone",
            Condition::InternalServerError => "internal-server-error",
            Condition::ItemNotFound => "item-not-found",
            Condition::JidMalformed => "jid-malformed",
            Condition::NotAcceptable => "not-acceptable",
            Condition::NotAllowed => "not-allowed",
            Condition::NotAuthorized => "not-authorized",
            Condition::PolicyViolation => "policy-violation",
            Condition::RecipientUnavailable => "recipient-unavailable",
            Condition::Redirect => "redirect",
            Condition::RegistrationRequired => "registration-required",
            Condition::RemoteServerNotFound => "remote-server-not-found",
            Condition::RemoteServerTimeout => "remote-server-timeout",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::ServiceUnavailable => "service-unavailable",
            Condition::SubscriptionRequired => "subscription-required",
            Condition::UndefinedCondition => "undefined-condition",
            Condition::UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type (`<error type='…'/>`) RFC 6120 §8.3.3 recommends for this condition.
    ///
    /// Where the RFC allows two, the first it names is taken: `feature-not-implemented` →
    /// `cancel` (or modify), `policy-violation` → `modify` (or wait), `unexpected-request` →
    /// `wait` (or modify), `remote-server-timeout` → `wait` (unless more permanent).
    /// `undefined-condition` allows any type; `cancel` is used.
    pub const fn error_type(self) -> ErrorType {
        match self {
            Condition::BadRequest
            | Condition::JidMalformed
            | Condition::NotAcceptable
            | Condition::PolicyViolation
            | Condition::Redirect => ErrorType::Modify,
            Condition::Forbidden
            | Condition::NotAuthorized
            | Condition::RegistrationRequired
            | Condition::SubscriptionRequired => ErrorType::Auth,
            Condition::RecipientUnavailable
            | Condition::RemoteServerTimeout
            | Condition::ResourceConstraint
            | Condition::UnexpectedRequest => ErrorType::Wait,
            Condition::Conflict
            | Condition::FeatureNotImplemented
            | Condition::Gone
            | Condition::InternalServerError
            | Condition::ItemNotFound
            | Condition::NotAllowed
            | Condition::RemoteServerNotFound
            | Condition::ServiceUnavailable
            | Condition::UndefinedCondition => ErrorType::Cancel,
        }
    }

    /// The xmpp-parsers form, for building a `<error/>` element. `gone` and `redirect` carry
    /// no new address (the SIP side gives none we could trust).
    pub fn to_defined_condition(self) -> DefinedCondition {
        match self {
            Condition::BadRequest => DefinedCondition::BadRequest,
            Condition::Conflict => DefinedCondition::Conflict,
            Condition::FeatureNotImplemented => DefinedCondition::FeatureNotImplemented,
            Condition::Forbidden => DefinedCondition::Forbidden,
            Condition::Gone => DefinedCondition::Gone { new_address: None },
            Condition::InternalServerError => DefinedCondition::InternalServerError,
            Condition::ItemNotFound => DefinedCondition::ItemNotFound,
            Condition::JidMalformed => DefinedCondition::JidMalformed,
            Condition::NotAcceptable => DefinedCondition::NotAcceptable,
            Condition::NotAllowed => DefinedCondition::NotAllowed,
            Condition::NotAuthorized => DefinedCondition::NotAuthorized,
            Condition::PolicyViolation => DefinedCondition::PolicyViolation,
            Condition::RecipientUnavailable => DefinedCondition::RecipientUnavailable,
            Condition::Redirect => DefinedCondition::Redirect { new_address: None },
            Condition::RegistrationRequired => DefinedCondition::RegistrationRequired,
            Condition::RemoteServerNotFound => DefinedCondition::RemoteServerNotFound,
            Condition::RemoteServerTimeout => DefinedCondition::RemoteServerTimeout,
            Condition::ResourceConstraint => DefinedCondition::ResourceConstraint,
            Condition::ServiceUnavailable => DefinedCondition::ServiceUnavailable,
            Condition::SubscriptionRequired => DefinedCondition::SubscriptionRequired,
            Condition::UndefinedCondition => DefinedCondition::UndefinedCondition,
            Condition::UnexpectedRequest => DefinedCondition::UnexpectedRequest,
        }
    }

    /// The inverse of [`Condition::to_defined_condition`] (any new address is dropped).
    pub fn from_defined_condition(c: &DefinedCondition) -> Condition {
        match c {
            DefinedCondition::BadRequest => Condition::BadRequest,
            DefinedCondition::Conflict => Condition::Conflict,
            DefinedCondition::FeatureNotImplemented => Condition::FeatureNotImplemented,
            DefinedCondition::Forbidden => Condition::Forbidden,
            DefinedCondition::Gone { .. } => Condition::Gone,
            DefinedCondition::InternalServerError => Condition::InternalServerError,
            DefinedCondition::ItemNotFound => Condition::ItemNotFound,
            DefinedCondition::JidMalformed => Condition::JidMalformed,
            DefinedCondition::NotAcceptable => Condition::NotAcceptable,
            DefinedCondition::NotAllowed => Condition::NotAllowed,
            DefinedCondition::NotAuthorized => Condition::NotAuthorized,
            DefinedCondition::PolicyViolation => Condition::PolicyViolation,
            DefinedCondition::RecipientUnavailable => Condition::RecipientUnavailable,
            DefinedCondition::Redirect { .. } => Condition::Redirect,
            DefinedCondition::RegistrationRequired => Condition::RegistrationRequired,
            DefinedCondition::RemoteServerNotFound => Condition::RemoteServerNotFound,
            DefinedCondition::RemoteServerTimeout => Condition::RemoteServerTimeout,
            DefinedCondition::ResourceConstraint => Condition::ResourceConstraint,
            DefinedCondition::ServiceUnavailable => Condition::ServiceUnavailable,
            DefinedCondition::SubscriptionRequired => Condition::SubscriptionRequired,
            DefinedCondition::UndefinedCondition => Condition::UndefinedCondition,
            DefinedCondition::UnexpectedRequest => Condition::UnexpectedRequest,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Condition {
    type Err = UnknownCondition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Condition::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCondition(s.to_owned()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Condition::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {c}");
            assert_eq!(c.as_str().parse::<Condition>(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
            assert_eq!(
                Condition::from_defined_condition(&c.to_defined_condition()),
                c
            );
        }
        assert_eq!(seen.len(), 22);
    }

    #[test]
    fn error_types_follow_rfc_6120() {
        let got: Vec<(&str, String)> = Condition::ALL
            .iter()
            .map(|c| (c.as_str(), c.error_type().to_string()))
            .collect();
        let expected = [
            ("bad-request", "modify"),
            ("conflict", "cancel"),
            ("feature-not-implemented", "cancel"),
            ("forbidden", "auth"),
            ("gone", "cancel"),
            ("internal-server-error", "cancel"),
            ("item-not-found", "cancel"),
            ("jid-malformed", "modify"),
            ("not-acceptable", "modify"),
            ("not-allowed", "cancel"),
            ("not-authorized", "auth"),
            ("policy-violation", "modify"),
            ("recipient-unavailable", "wait"),
            ("redirect", "modify"),
            ("registration-required", "auth"),
            ("remote-server-not-found", "cancel"),
            ("remote-server-timeout", "wait"),
            ("resource-constraint", "wait"),
            ("service-unavailable", "cancel"),
            ("subscription-required", "auth"),
            ("undefined-condition", "cancel"),
            ("unexpected-request", "wait"),
        ];
        let expected: Vec<(&str, String)> = expected
            .iter()
            .map(|(c, t)| (*c, (*t).to_owned()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn from_str_errors_name_the_token() {
        for (input, message) in [
            (
                "payment-required",
                "unknown stanza error condition \"payment-required\"",
            ),
            (
                "Bad-Request",
                "unknown stanza error condition \"Bad-Request\"",
            ),
            ("", "unknown stanza error condition \"\""),
        ] {
            let err = input.parse::<Condition>().unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn serde_uses_kebab_case() {
        for c in Condition::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            let back: Condition = serde_json::from_str(&json).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn defined_condition_serialises_to_the_same_name() {
        use xmpp_parsers::minidom::Element;
        for c in Condition::ALL {
            let error = xmpp_parsers::stanza_error::StanzaError::new(
                xmpp_parsers::stanza_error::ErrorType::Cancel,
                c.to_defined_condition(),
                "en",
                "x",
            );
            let elem: Element = error.into();
            let child = elem
                .children()
                .find(|e| e.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && e.name() != "text")
                .unwrap();
            assert_eq!(child.name(), c.as_str());
        }
    }
}
