//! The only code that speaks to Redis.
//!
//! A [`Store`] talks to one Redis server through a redis-rs [`ConnectionManager`], or to a Redis
//! Cluster through a redis-rs [`ClusterConnection`] (`redis.cluster = true`); both reconnect by
//! themselves after a server restarts, and callers see a [`StoreError`] for the commands that
//! failed meanwhile and retry (or let their supervisor restart them). Blocking reads
//! (`XREADGROUP … BLOCK`) get a connection of their own ([`Store::blocking`]) with no response
//! timeout, because commands queue behind a BLOCK on a shared connection.
//!
//! On a cluster every key of a pipeline shares the hash tag of `redis.prefix` ([`keys`]), so
//! each MULTI/EXEC and each Lua script runs on the one master that owns that slot: redis-rs
//! routes a transaction by its first key (and refuses, before sending, one whose commands map
//! to different slots) and a script by its first declared key, and loads a script on every
//! node (`SCRIPT LOAD` goes to all of them) when a node answers `NOSCRIPT`. Single commands
//! follow MOVED/ASK; a transaction that meets a moved slot comes back aborted (EXECABORT), as
//! any failed hand-off does, and its caller retries it once the slot map is refreshed.
//!
//! - [`streams`]: consumer groups, reads, claims, acknowledgements, the hand-offs;
//!   [`outbound`]: the records of the outbound stream, an entry holding one MS4 batch.
//! - [`dlq`]: the dead-letter stream.
//! - [`ratelimit`]: the shared rate budgets (Lua scripts).
//! - [`fleet`]: which daemons of a fleet are alive (heartbeats).
//! - [`lease`], [`poll`], [`imap`]: poller leases, Graph cursors and pages, IMAP cursors and
//!   chunks.
//! - [`schema`]: every stream's field names; [`keys`]: every key's name.

mod access;
pub(crate) mod copies;
pub mod dlq;
pub mod entry;
pub(crate) mod fleet;
pub(crate) mod imap;
pub mod inspect;
pub(crate) mod keys;
pub mod large;
pub(crate) mod lease;
pub(crate) mod marks;
pub(crate) mod outbound;
pub(crate) mod park;
pub(crate) mod poll;
pub(crate) mod ratelimit;
pub mod read_budget;
pub mod schema;
pub(crate) mod session;
pub mod streams;
pub mod webhook;

pub use access::describe_refusal;
pub(crate) use dlq::DeadLetter;
pub use entry::Entry;
pub(crate) use keys::Keys;
pub(crate) use outbound::{FollowUp, OutboundRecord};
pub use read_budget::{ReadBudget, Scan};
pub(crate) use streams::Handoff;

use crate::settings::RedisSettings;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use std::sync::Arc;
use std::time::Duration;

/// A Redis failure, as the engine sees it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    /// A password or TLS setting that cannot be used (a file that does not parse, …).
    #[error("{0}")]
    Access(String),
}

pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Connection to one Redis (or one pipeline prefix on it), or to a Redis Cluster.
#[derive(Clone)]
pub struct Store {
    conn: Connection,
    target: Target,
    keys: Keys,
    // The Lua scripts, shared: a `Script` holds its source text, and every poller holds a few
    // clones of the store (2,000 mailboxes once cost ~40 KB each in copied scripts).
    ratelimit: Arc<ratelimit::Scripts>,
    lease: Arc<lease::LeaseScripts>,
    poll: Arc<poll::PollScripts>,
    imap_page: Arc<redis::Script>,
    /// Until when marks of versions before may exist (see [`marks`]), once Redis told.
    legacy_marks_until: Arc<std::sync::OnceLock<u64>>,
}

/// Where the store's Redis is, kept to open further connections ([`Store::blocking`]).
#[derive(Clone)]
enum Target {
    /// One redis-server.
    Single(Arc<redis::Client>),
    /// A Redis Cluster, reached through its seed nodes: the client of the normal connection
    /// (for [`Store::verify`]) and the one for the connections of [`Store::blocking`], which
    /// wait as long as a `BLOCK` read may.
    Cluster {
        normal: Arc<ClusterClient>,
        blocking: Arc<ClusterClient>,
    },
}

/// A connection of the store: to one server, or to a cluster (which routes each command, each
/// transaction and each script to the master owning its keys' slot). Cheap to clone: clones
/// share the underlying connections.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => Box::pin(paced(c.req_packed_command(cmd))),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => {
                Box::pin(paced(c.req_packed_commands(pipeline, offset, count)))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// On a cluster, a command that failed for want of a connection (no node reachable, the node
/// of its slot gone) is answered only after [`UNREACHABLE_PAUSE`]. The cluster client gives up
/// on an unreachable cluster within milliseconds, and a caller that tries again at once (a
/// supervisor restarting an actor) would spin; a single server's `ConnectionManager` paces
/// such failures by its reconnection delay, and this keeps a cluster to a similar pace.
async fn paced<T>(reply: redis::RedisFuture<'_, T>) -> redis::RedisResult<T> {
    let reply = reply.await;
    if let Err(e) = &reply {
        if e.is_unrecoverable_error() {
            tokio::time::sleep(UNREACHABLE_PAUSE).await;
        }
    }
    reply
}

/// See [`paced`].
const UNREACHABLE_PAUSE: Duration = Duration::from_millis(250);

/// Longest a non-blocking command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a connection attempt to one server (or one cluster node) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// On a cluster, longest a blocking read may take in all, retries after a node failure
/// included: the longest `BLOCK` the settings allow (`pipeline.block_ms` ≤ 60 s) plus
/// [`RESPONSE_TIMEOUT`]. (A single server's blocking connection needs no such bound: it fails
/// at once when the server is gone.)
const CLUSTER_BLOCKING_TIMEOUT: Duration = Duration::from_secs(65);

impl Store {
    /// Opens a store on the Redis `settings` name: one server (`redis.url`), or a Redis
    /// Cluster (`redis.cluster = true`, `redis.url` its seed nodes, comma-separated), with the
    /// password and TLS settings of [`access`] applied to every connection (the blocking ones
    /// of [`Store::blocking`] included).
    pub fn connect(settings: &RedisSettings) -> StoreResult<Self> {
        let access = access::Access::from_settings(settings)?;
        if settings.cluster {
            let seeds: Vec<&str> = settings
                .url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            Self::open_cluster_with(&seeds, &settings.prefix, &access)
        } else {
            Self::open_with(&settings.url, &settings.prefix, &access)
        }
    }

    /// Opens a store on the one Redis at `url`. The connection is made lazily and remade after
    /// failures, so a daemon can start while Redis is still down.
    pub fn open(url: &str, prefix: &str) -> StoreResult<Self> {
        Self::open_with(url, prefix, &access::Access::default())
    }

    fn open_with(url: &str, prefix: &str, access: &access::Access) -> StoreResult<Self> {
        let client = access.client(url)?;
        let conn = Connection::Single(Self::manager(&client, Some(RESPONSE_TIMEOUT))?);
        Ok(Self::with(conn, Target::Single(Arc::new(client)), prefix))
    }

    fn open_cluster_with(
        seeds: &[&str],
        prefix: &str,
        access: &access::Access,
    ) -> StoreResult<Self> {
        let normal = access
            .cluster_builder(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()?;
        // No response timeout per node (a BLOCK read is a slow answer, not a failure), and an
        // overall bound so that a read does not retry a dead node forever.
        let blocking = access
            .cluster_builder(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .overall_response_timeout(Some(CLUSTER_BLOCKING_TIMEOUT))
            .build()?;
        let conn = Connection::Cluster(Self::cluster_connection(&normal, Some(RESPONSE_TIMEOUT)));
        let blocking = Arc::new(blocking);
        Ok(Self::with(
            conn,
            Target::Cluster {
                normal: Arc::new(normal),
                blocking,
            },
            prefix,
        ))
    }

    fn with(conn: Connection, target: Target, prefix: &str) -> Self {
        Self {
            conn,
            target,
            keys: Keys::new(prefix),
            ratelimit: Arc::new(ratelimit::Scripts::new()),
            lease: Arc::new(lease::LeaseScripts::new()),
            poll: Arc::new(poll::PollScripts::new()),
            imap_page: Arc::new(imap::imap_page_script()),
            legacy_marks_until: Arc::default(),
        }
    }

    fn manager(
        client: &redis::Client,
        response_timeout: Option<Duration>,
    ) -> StoreResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(response_timeout)
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        Ok(ConnectionManager::new_lazy_with_config(
            client.clone(),
            config,
        )?)
    }

    /// A cluster connection that connects in the background (the first commands wait for it)
    /// and follows the cluster's topology from then on.
    fn cluster_connection(
        client: &ClusterClient,
        response_timeout: Option<Duration>,
    ) -> ClusterConnection {
        // The config's response timeout replaces the builder's per-node one; the overall
        // timeout stays the builder's.
        let mut config = ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT);
        if let Some(t) = response_timeout {
            config = config.set_response_timeout(t);
        }
        client.get_pending_async_connection_with_config(config)
    }

    /// A connection of its own for `WATCH` … `MULTI`/`EXEC` on a single server (`None` on a
    /// cluster, whose connections reconnect and reroute underneath, which a WATCH cannot
    /// survive). Never reconnected underneath either: a WATCH lives and dies with its
    /// connection, so a broken one fails the transaction instead of running it unwatched.
    pub(crate) async fn watched_connection(
        &self,
    ) -> StoreResult<Option<redis::aio::MultiplexedConnection>> {
        let Target::Single(client) = &self.target else {
            return Ok(None);
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        Ok(Some(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        ))
    }

    /// A store with a connection of its own and no response timeout, for `BLOCK` reads.
    pub fn blocking(&self) -> StoreResult<Self> {
        let conn = match &self.target {
            Target::Single(client) => Connection::Single(Self::manager(client, None)?),
            Target::Cluster { blocking, .. } => {
                Connection::Cluster(Self::cluster_connection(blocking, None))
            }
        };
        Ok(Self {
            conn,
            ..self.clone()
        })
    }

    /// A store with a connection of its own (the same response timeout), for a client whose
    /// short commands must not queue behind the long ones others send on the shared connection.
    pub(crate) fn own_connection(&self) -> StoreResult<Self> {
        let conn = match &self.target {
            Target::Single(client) => {
                Connection::Single(Self::manager(client, Some(RESPONSE_TIMEOUT))?)
            }
            Target::Cluster { normal, .. } => {
                Connection::Cluster(Self::cluster_connection(normal, Some(RESPONSE_TIMEOUT)))
            }
        };
        Ok(Self {
            conn,
            ..self.clone()
        })
    }

    /// Connects once, now, on a connection of its own, and PINGs: the start-up check that
    /// tells a Redis that refuses this daemon (a wrong password, a certificate either side
    /// does not trust: see [`describe_refusal`]) from one that is merely down.
    pub async fn verify(&self) -> StoreResult<()> {
        match &self.target {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("PING").query_async::<()>(&mut c).await?;
            }
            Target::Cluster { normal, .. } => {
                let mut c = normal.get_async_connection().await?;
                let route = Route::with_key(self.keys.prefix(), SlotAddr::Master);
                c.route_command(
                    redis::cmd("PING"),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await?;
            }
        }
        Ok(())
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn conn(&self) -> Connection {
        self.conn.clone()
    }

    /// `PING`: is Redis reachable now? On a cluster, the master that owns this pipeline's slot
    /// is asked (the other masters may come and go without concern to this pipeline).
    pub async fn ping(&self) -> StoreResult<()> {
        let pong = match self.conn() {
            Connection::Single(mut c) => redis::cmd("PING").query_async(&mut c).await?,
            Connection::Cluster(mut c) => {
                let route = Route::with_key(self.keys.prefix(), SlotAddr::Master);
                c.route_command(
                    redis::cmd("PING"),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await?
            }
        };
        match pong {
            redis::Value::SimpleString(_) | redis::Value::BulkString(_) => Ok(()),
            other => Err(StoreError::Reply(format!("PING: {other:?}"))),
        }
    }
}
