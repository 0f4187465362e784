//! Control: what operators steer and read, beside the data's path.
//!
//! - [`session`]: the SessionManager, one ingestion session fleet-wide, which opens and closes
//!   the intake.
//! - [`deadletters`]: the DeadLetterOffice: list, show, replay and purge dead letters.
//!
//! What `/health` and `/ready` say is [`crate::health`]: every stage writes it, so it sits with
//! the shared ground below the stages.

pub mod deadletters;
pub mod session;
