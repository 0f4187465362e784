//! The daemon shell of ms1-ingestor: configuration, telemetry, HTTP edges, the operator verbs
//! and the daemon's private Redis launcher. The engine is the `ms1-actors` crate; the
//! simulators, the demo and the test launchers are the `ms1-sim` crate.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod private_redis;
pub mod systemd;
pub mod telemetry;
