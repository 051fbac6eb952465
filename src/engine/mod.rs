//! The translation engine: XMPP stanzas and SIP edge events in, stanzas and SIP messages out.
//! Sans-IO like the edge core: every input takes `now`, timers come from `poll_timeout`.
//!
//! - [`im`]: session-mode instant messaging both ways (issue 4).

pub mod im;
