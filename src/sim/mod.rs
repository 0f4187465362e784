//! Simulators of the services ms1 talks to, for the demo, the tests and the benchmarks.

pub mod graph;
pub mod imap;
pub mod ms4;
