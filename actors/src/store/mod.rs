//! The only code that speaks to Redis.
//!
//! A [`Store`] wraps a redis-rs [`ConnectionManager`], which reconnects by itself after Redis
//! restarts; callers see a [`StoreError`] for the commands that failed meanwhile and retry (or
//! let their supervisor restart them). Blocking reads (`XREADGROUP … BLOCK`) get a connection of
//! their own ([`Store::blocking`]) with no response timeout, because commands queue behind a
//! BLOCK on a shared connection.
//!
//! - [`streams`]: consumer groups, reads, claims, acknowledgements, the hand-offs.
//! - [`dlq`]: the dead-letter stream.
//! - [`ratelimit`]: the shared rate budgets (Lua scripts).

pub mod dlq;
pub mod imap;
pub mod keys;
pub mod poll;
pub mod ratelimit;
pub mod session;
pub mod streams;
pub mod webhook;

pub use dlq::DeadLetter;
pub use keys::Keys;
pub use streams::{Entry, FollowUp, Handoff, OutboundRecord};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// A Redis failure, as the engine sees it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl StoreError {
    /// True when the consumer group (or its stream) vanished: recreate and carry on.
    pub fn is_missing_group(&self) -> bool {
        matches!(self, StoreError::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Connection to one Redis (or one pipeline prefix on it).
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    client: redis::Client,
    keys: Keys,
    ratelimit: ratelimit::Scripts,
    poll: poll::PollScripts,
}

/// Longest a non-blocking command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Opens a store on `url`. The connection is made lazily and remade after failures, so a
    /// daemon can start while Redis is still down.
    pub fn open(url: &str, prefix: &str) -> StoreResult<Self> {
        let client = redis::Client::open(url)?;
        let conn = Self::manager(&client, Some(RESPONSE_TIMEOUT))?;
        Ok(Self {
            conn,
            client,
            keys: Keys::new(prefix),
            ratelimit: ratelimit::Scripts::new(),
            poll: poll::PollScripts::new(),
        })
    }

    fn manager(
        client: &redis::Client,
        response_timeout: Option<Duration>,
    ) -> StoreResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(response_timeout)
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        Ok(ConnectionManager::new_lazy_with_config(
            client.clone(),
            config,
        )?)
    }

    /// A store with a connection of its own and no response timeout, for `BLOCK` reads.
    pub fn blocking(&self) -> StoreResult<Self> {
        Ok(Self {
            conn: Self::manager(&self.client, None)?,
            client: self.client.clone(),
            keys: self.keys.clone(),
            ratelimit: self.ratelimit.clone(),
            poll: self.poll.clone(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `PING`: is Redis reachable now?
    pub async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }
}
