//! Control: what operators steer and read, beside the data's path.
//!
//! - [`session`]: the SessionManager, one ingestion session fleet-wide, which opens and closes
//!   the intake.
//! - [`health`]: what `/health` and `/ready` say, written by every stage.
//! - [`deadletters`]: the DeadLetterOffice: list, show, replay and purge dead letters.

pub mod deadletters;
pub mod health;
pub mod session;
