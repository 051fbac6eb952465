//! Request methods (RFC 3261 §7.1, §27.4), with Microsoft's extension methods as first-class
//! members. [`crate::sip::message`] re-exports [`Method`]; the header codec
//! ([`crate::sip::header`], CSeq) uses it from here, below the message.

use std::fmt;

use super::error::ParseError;
use super::params::is_token;

/// A request method (RFC 3261 §7.1; case-sensitive token). Extension methods such as
/// Microsoft's `BENOTIFY` and `SERVICE` are first-class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Message,
    Subscribe,
    Notify,
    Info,
    Benotify,
    Service,
    Refer,
    Prack,
    Update,
    Publish,
    Other(Box<str>),
}

impl Method {
    #[inline]
    pub fn parse(s: &str) -> Result<Method, ParseError> {
        Ok(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "MESSAGE" => Method::Message,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "INFO" => Method::Info,
            "BENOTIFY" => Method::Benotify,
            "SERVICE" => Method::Service,
            "REFER" => Method::Refer,
            "PRACK" => Method::Prack,
            "UPDATE" => Method::Update,
            "PUBLISH" => Method::Publish,
            _ if is_token(s) => Method::Other(s.into()),
            _ => return Err(ParseError::BadMethod(s.to_owned())),
        })
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Message => "MESSAGE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Info => "INFO",
            Method::Benotify => "BENOTIFY",
            Method::Service => "SERVICE",
            Method::Refer => "REFER",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
