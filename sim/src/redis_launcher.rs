//! The redis-servers of the demo, the tests and the benchmarks (for now the daemon's
//! launcher, [`ms1_ingestor::private_redis`], under the names the tests use).

use ms1_ingestor::private_redis::PrivateRedis;
pub use ms1_ingestor::private_redis::{free_port, PrivateCluster, RedisTls};
use std::path::Path;

/// Loopback TCP with no password, on `port` (a free one when `None`).
pub fn start_loopback(
    dir: &Path,
    port: Option<u16>,
    remove_dir: bool,
) -> anyhow::Result<PrivateRedis> {
    PrivateRedis::start(dir, port, remove_dir)
}

/// TLS only, with `tls`'s certificates and password, on a free port.
pub fn start_tls(dir: &Path, tls: &RedisTls, remove_dir: bool) -> anyhow::Result<PrivateRedis> {
    PrivateRedis::start_tls(dir, tls, remove_dir)
}
