//! Outbound HTTP clients the actors call.

pub mod graph;
pub mod imap;
pub mod ms4;
pub mod oauth;
pub mod xoauth2;
