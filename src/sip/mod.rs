//! SIP codec (no I/O).

pub mod builder;
pub mod diagnostics;
pub mod dialog;
pub mod error;
pub mod framing;
pub mod header;
pub mod message;
pub mod method;
pub mod params;
pub mod sdp;
pub mod status;
pub mod transaction;
pub mod uri;
