//! The daemon shell of ms1-ingestor: configuration, telemetry, HTTP edges, the simulators and
//! the private Redis launcher. The engine is the `ms1-actors` crate.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dovecot_launcher;
pub mod http;
pub mod private_ca;
pub mod redis_launcher;
pub mod sim;
pub mod synthetic;
pub mod systemd;
pub mod telemetry;
