//! The pipeline: from the inbound stream to MS4.
//!
//! ```text
//! [inbound stream] ─▶ processor ─▶ [outbound stream] ─▶ sender ─▶ MS4
//!                         └─────────▶ [dead letters] ◀─────┘
//!                    ratelimiter: the shared MS4 and Graph budgets in Redis
//! ```
//!
//! - [`processor`]: the BatchProcessor turns entries into MS4 records (idempotency marks,
//!   content-conflict checks, mailbox parking).
//! - [`sender`]: the MS4Sender posts records in batches, retries, dead-letters what MS4 refuses.
//! - [`ratelimiter`]: the RateLimiter hands out permits from budgets every daemon shares.

pub(crate) mod processor;
pub(crate) mod ratelimiter;
pub(crate) mod sender;
