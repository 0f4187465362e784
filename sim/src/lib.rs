//! The dev tools of ms1-ingestor, apart from the production daemon: simulators of the services
//! it talks to (MS4, Microsoft Graph, and a real Dovecot for IMAP), the demo, synthetic invoice
//! mail and load, and the launchers of the throwaway servers the tests, the demo and the
//! benchmarks run on (redis-servers on loopback, over TLS and as a cluster; Dovecot; a private
//! CA). The `ms1-sim` binary runs them; the daemon's integration tests use this library.

pub mod demo;
pub mod dovecot_launcher;
pub mod fetch_loop;
pub mod graph;
pub mod graph_fetch;
pub mod histogram;
pub mod imap;
pub mod ms4;
pub mod private_ca;
pub mod process;
pub mod redis_launcher;
pub mod serve;
pub mod synthetic;
pub mod wait;
