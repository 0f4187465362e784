//! Control: what operators steer and read, beside the data's path.
//!
//! - [`session`]: the SessionManager, one ingestion session fleet-wide, which opens and closes
//!   the intake.
//! - [`deadletters`]: the DeadLetterOffice: list, show, replay and purge dead letters.
//! - [`inspect`]: the Inspector: streams, sources and rates as the operator sees them.
//!
//! What `/health` and `/ready` say is [`crate::health`]: every stage writes it, so it sits with
//! the shared ground below the stages.

pub mod deadletters;
pub mod inspect;
pub mod session;
