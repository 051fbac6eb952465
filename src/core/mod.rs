//! The translation core: no I/O, no clock.

pub mod address;
pub mod errors;
pub mod im_text;
pub mod lang;
pub mod ms_presence;
pub mod names;
pub mod pidf;
pub mod presence;
pub mod tables;
pub mod xml;
pub mod xml_chars;
