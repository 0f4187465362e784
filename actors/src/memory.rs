//! The daemon's memory bound, as it follows from the settings.
//!
//! Every place that holds message bytes is bounded in bytes by a setting, so the daemon's peak
//! resident memory has an upper bound computed from those settings alone. `check-config` prints
//! it; the systemd unit's `MemoryMax=` must stay above it (docs/OPERATIONS.md, "Memory"); the benchmark
//! `scripts/bench.sh imap-burst` prints the measured peak beside it. The factors count the
//! copies each stage makes of the bytes it holds (measured, and rounded up):
//!
//! - **IMAP poller**, per source: one FETCH response of up to `F = max(imap.fetch_max_bytes,
//!   imap.max_message_bytes)` in async-imap's buffer (up to 2.5·F as it grows), its base64
//!   (4/3·F), and the previous chunk being written to Redis meanwhile (its base64, the
//!   transaction's (or script's) arguments and the encoded command: 4·F): **8·F**.
//! - **BatchProcessor**: one read of up to `R = max(pipeline.read_max_bytes, E)` where `E` is the
//!   largest inbound entry (a message of `imap.max_message_bytes` in base64, 4/3 of it): the
//!   reply buffer and the entries (2·R); with `ms4.include_raw` the records and their encoded
//!   hand-off (1.5·R); and the one entry being transformed (decoded, parsed, serialized: 3·E).
//! - **MS4Sender**: up to `S = ms4.max_in_flight_bytes` plus one record (a batch's first record
//!   may pass the budget alone), held as entries, as request bodies (while they grow) and in
//!   the HTTP client's buffers: **4·(S + record)**.
//! - **Base**: the runtime, actors, connections and metrics: 64 MiB.
//! - **Allocator**: a quarter of all the above: freed memory goes back to the system late and in
//!   pieces (fragmentation, per-thread arenas).

use crate::settings::Settings;

const MIB: u64 = 1024 * 1024;

/// The bound and its parts, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    pub base: u64,
    pub pollers: u64,
    pub processor: u64,
    pub sender: u64,
    pub allocator: u64,
}

impl MemoryBound {
    /// The bound that follows from `s` (see the module documentation).
    pub fn of(s: &Settings) -> Self {
        let imap = &s.imap;
        let fetch = imap.fetch_max_bytes.max(imap.max_message_bytes);
        let sources = imap.sources.len() as u64;
        // The largest inbound entry: an IMAP message in base64, or a Graph message (JSON,
        // bodies not selected: well under 1 MiB).
        let entry = if sources > 0 {
            imap.max_message_bytes.div_ceil(3) * 4
        } else {
            MIB
        };
        let read = s.pipeline.read_max_bytes.max(entry);
        let raw = s.ms4.include_raw;
        // A record carries the raw message (as JSON text, a little longer) only with include_raw.
        let record = if raw {
            imap.max_message_bytes * 21 / 20
        } else {
            MIB
        };
        let processor = 2 * read + if raw { read * 3 / 2 } else { 0 } + 3 * entry;
        let base = 64 * MIB;
        let pollers = sources * 8 * fetch;
        let sender = 4 * (s.ms4.max_in_flight_bytes + record);
        Self {
            base,
            pollers,
            processor,
            sender,
            allocator: (base + pollers + processor + sender) / 4,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.base + self.pollers + self.processor + self.sender + self.allocator
    }

    /// The bound in MiB, rounded up.
    pub(crate) fn total_mib(&self) -> u64 {
        self.total().div_ceil(MIB)
    }
}

impl std::fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b.div_ceil(MIB);
        write!(
            f,
            "{} MiB (base {} + IMAP pollers {} + processor {} + sender {} + allocator {})",
            self.total_mib(),
            mib(self.base),
            mib(self.pollers),
            mib(self.processor),
            mib(self.sender),
            mib(self.allocator)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ImapSource;

    #[test]
    fn the_bound_of_the_defaults_with_one_imap_source_fits_the_units_memory_max() {
        let mut s = Settings::default();
        s.imap.sources.push(ImapSource::default());
        let b = MemoryBound::of(&s);
        // F = 25 MiB, E = 33.3 MiB, R = 64 MiB, S = 32 MiB, record 1 MiB.
        assert_eq!(b.pollers, 8 * 25 * MIB);
        assert_eq!(b.processor, 2 * 64 * MIB + 3 * (25 * MIB).div_ceil(3) * 4);
        assert_eq!(b.sender, 4 * 33 * MIB);
        assert_eq!(
            b.allocator,
            (b.base + b.pollers + b.processor + b.sender) / 4
        );
        assert_eq!(b.total_mib(), 781, "{b}");
        s.ms4.include_raw = true;
        let raw = MemoryBound::of(&s);
        assert!(raw.total_mib() > b.total_mib());
        // config/ms1-ingestor.service: MemoryHigh=1100M holds the defaults, include_raw too.
        assert!(raw.total_mib() < 1100, "{raw}");
    }

    #[test]
    fn without_imap_sources_no_poller_memory_and_entries_are_small() {
        let b = MemoryBound::of(&Settings::default());
        assert_eq!(b.pollers, 0);
        assert_eq!(b.processor, 2 * 64 * MIB + 3 * MIB);
    }

    #[test]
    fn the_bound_grows_with_each_byte_setting() {
        let mut s = Settings::default();
        s.imap.sources.push(ImapSource::default());
        let b0 = MemoryBound::of(&s).total();
        s.pipeline.read_max_bytes *= 2;
        let b1 = MemoryBound::of(&s).total();
        s.ms4.max_in_flight_bytes *= 2;
        let b2 = MemoryBound::of(&s).total();
        s.imap.max_message_bytes *= 2;
        let b3 = MemoryBound::of(&s).total();
        assert!(b0 < b1 && b1 < b2 && b2 < b3);
    }
}
