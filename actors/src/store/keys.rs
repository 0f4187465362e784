//! Every Redis key name, built in one place from `redis.prefix`.
//!
//! Put a Redis Cluster hash tag inside the prefix (`{ms1}:`) and every key of one pipeline lands
//! in one slot, which keeps the MULTI/EXEC hand-offs and the Lua scripts legal on a cluster.

/// Consumer group that moves inbound entries to the outbound stream.
pub const PROCESSORS: &str = "processors";
/// Consumer group that delivers outbound entries to MS4.
pub const SENDERS: &str = "senders";

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Source messages waiting to be turned into records.
    pub fn inbound(&self) -> String {
        format!("{}stream:inbound", self.prefix)
    }

    /// MS4 records waiting to be delivered.
    pub fn outbound(&self) -> String {
        format!("{}stream:outbound", self.prefix)
    }

    /// Dead letters: entries that cannot be processed or that MS4 rejected.
    pub fn dlq(&self) -> String {
        format!("{}stream:dlq", self.prefix)
    }

    /// Idempotency mark of one record key.
    pub fn seen(&self, idempotency_key: &str) -> String {
        format!("{}seen:{}", self.prefix, idempotency_key)
    }

    /// Theoretical arrival time of the next permit of a rate budget (GCRA).
    pub fn rate_tat(&self, budget: &str) -> String {
        format!("{}ratelimit:{}:tat", self.prefix, budget)
    }

    /// Until when every holder of a rate budget is paused (a Retry-After).
    pub fn rate_pause(&self, budget: &str) -> String {
        format!("{}ratelimit:{}:pause", self.prefix, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_prefix_with_its_hash_tag() {
        let k = Keys::new("{ms1}:");
        assert_eq!(k.inbound(), "{ms1}:stream:inbound");
        assert_eq!(k.dlq(), "{ms1}:stream:dlq");
        assert_eq!(k.seen("<a@b>"), "{ms1}:seen:<a@b>");
        assert_eq!(k.rate_tat("ms4"), "{ms1}:ratelimit:ms4:tat");
    }
}
