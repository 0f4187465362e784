//! The HTTP edges of the daemon. Handlers validate, send one message or read one shared value,
//! and map the answer to a status; no business logic lives here.

pub mod console;
pub mod control;
pub mod webhook;
