//! The translation core: no I/O, no clock.

pub mod address;
pub mod errors;
pub mod pidf;
pub mod presence;
pub mod tables;
