//! Outbound HTTP clients the actors call.

pub mod ms4;
