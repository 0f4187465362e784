//! What an operator looks at (the console, `GET /queues`, `GET /sources`, `GET /rates`): every
//! stream's consumer groups and consumers, each source's state as Redis holds it, and the
//! recent delivery and MS4 request counts. Reads only; one pipeline per question.

/// A string reply, or `None` (nil, or not a string).
fn as_string(v: Value) -> Option<String> {
    super::entry::as_string(v).ok()
}
use super::entry::pairs;
use super::{Store, StoreResult};
use redis::Value;

/// One consumer of a group, as `XINFO CONSUMERS` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Since its last attempted interaction (read or claim), in ms: a dead daemon's consumer
    /// keeps growing here.
    pub idle_ms: u64,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupInfo {
    pub name: String,
    pub pending: u64,
    /// Entries not yet delivered to the group (`None`: Redis cannot tell).
    pub lag: Option<u64>,
    pub consumers: Vec<ConsumerInfo>,
}

/// One stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    /// Its name without the prefix (`inbound`, `outbound`, `dlq`, `parked:{mailbox}`, …).
    pub name: String,
    pub length: u64,
    /// Age of its oldest entry, in ms (`None`: empty).
    pub oldest_age_ms: Option<u64>,
    pub groups: Vec<GroupInfo>,
}

/// A source's state as Redis holds it (the same on every daemon).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceRecord {
    /// The daemon (consumer name) holding its poller lease, if any.
    pub lease_holder: Option<String>,
    /// When its cursor was last written: its last poll that got through (ms since the epoch).
    pub cursor_updated_ms: Option<u64>,
    /// Messages it queued today (UTC).
    pub messages_today: u64,
    /// Parked entries waiting for Graph to serve the mailbox again, and why.
    pub parked_entries: u64,
    pub parked_reason: Option<String>,
    /// Its Graph subscription's expiry (RFC 3339), with webhooks.
    pub subscription_expires: Option<String>,
    /// What its poller (on the lease holder) last said it does: `polling`, `idle`,
    /// `retrying` or `refused`; since when, and why.
    pub poller_state: Option<String>,
    pub poller_since_ms: Option<u64>,
    pub poller_reason: Option<String>,
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => Some((*n).max(0) as u64),
        other => as_string(other.clone())?.parse().ok(),
    }
}

/// The ms part of a stream entry id (`<ms>-<seq>`).
fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl Store {
    /// `name` (without the prefix), its length, its oldest entry's age, its groups and
    /// their consumers.
    pub async fn stream_info(&self, name: &str, now_ms: u64) -> StoreResult<StreamInfo> {
        let key = format!("{}stream:{name}", self.keys.prefix());
        let (length, first): (u64, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&key)
            .cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        let oldest_age_ms = match first {
            Value::Array(entries) => entries
                .into_iter()
                .next()
                .and_then(|e| match e {
                    Value::Array(mut parts) if !parts.is_empty() => as_string(parts.remove(0)),
                    _ => None,
                })
                .and_then(|id| id_ms(&id))
                .map(|ms| now_ms.saturating_sub(ms)),
            _ => None,
        };
        let mut groups = Vec::new();
        for (group, pending, lag) in self.groups(&key).await? {
            let consumers = self.consumers(&key, &group).await?;
            groups.push(GroupInfo {
                name: group,
                pending,
                lag,
                consumers,
            });
        }
        Ok(StreamInfo {
            name: name.to_string(),
            length,
            oldest_age_ms,
            groups,
        })
    }

    /// `XINFO CONSUMERS`.
    async fn consumers(&self, stream: &str, group: &str) -> StoreResult<Vec<ConsumerInfo>> {
        let v: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(group)
            .query_async(&mut self.conn())
            .await?;
        let Value::Array(list) = v else {
            return Ok(vec![]);
        };
        Ok(list
            .into_iter()
            .map(|c| {
                let mut info = ConsumerInfo {
                    name: String::new(),
                    pending: 0,
                    idle_ms: 0,
                };
                for (k, v) in pairs(c) {
                    match k.as_str() {
                        "name" => info.name = as_string(v).unwrap_or_default(),
                        "pending" => info.pending = int(&v).unwrap_or(0),
                        "idle" => info.idle_ms = int(&v).unwrap_or(0),
                        _ => {}
                    }
                }
                info
            })
            .collect())
    }

    /// The parked mailboxes' streams (`parked:{mailbox}`), by name without the prefix.
    pub async fn parked_streams(&self) -> StoreResult<Vec<String>> {
        let names: Vec<String> = redis::cmd("HKEYS")
            .arg(self.keys.parked())
            .query_async(&mut self.conn())
            .await?;
        Ok(names.into_iter().map(|m| format!("parked:{m}")).collect())
    }

    /// Each source's state in Redis. `sources` are `(name, lease name)`: a Graph mailbox's
    /// lease and cursor go by its name, an IMAP source's by `imap:{name}`.
    pub async fn source_records(
        &self,
        sources: &[(String, String)],
        now_ms: u64,
    ) -> StoreResult<Vec<SourceRecord>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(self.keys.intake_today(now_ms));
        for (name, lease) in sources {
            pipe.cmd("GET").arg(self.keys.poller_lease(lease));
            pipe.cmd("HGET")
                .arg(self.keys.cursor(lease))
                .arg("updated_ms");
            pipe.cmd("HGET").arg(self.keys.parked()).arg(name);
            pipe.cmd("XLEN").arg(self.keys.parked_entries(name));
            pipe.cmd("HGET")
                .arg(self.keys.subscription(name))
                .arg("expiration");
            pipe.cmd("HMGET")
                .arg(self.keys.poller_state(lease))
                .arg("state")
                .arg("since_ms")
                .arg("reason");
        }
        let mut answers: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
        let today: std::collections::HashMap<String, u64> = pairs(answers.remove(0))
            .into_iter()
            .filter_map(|(k, v)| Some((k, int(&v)?)))
            .collect();
        let mut out = Vec::with_capacity(sources.len());
        let mut it = answers.into_iter();
        for (name, _) in sources {
            let mut next = || it.next().unwrap_or(Value::Nil);
            let (lease, cursor, parked, parked_len, subscription) =
                (next(), next(), next(), next(), next());
            let poller: Vec<Value> = match next() {
                Value::Array(v) => v,
                _ => Vec::new(),
            };
            let mut poller = poller.into_iter();
            let (state, since, reason) = (poller.next(), poller.next(), poller.next());
            let parked_reason = as_string(parked).map(|json| {
                serde_json::from_str::<super::park::ParkState>(&json)
                    .map(|s| s.reason)
                    .unwrap_or(json)
            });
            out.push(SourceRecord {
                // Lease tokens are `{consumer}:{instance}`.
                lease_holder: as_string(lease)
                    .map(|t| t.rsplit_once(':').map_or(t.clone(), |(c, _)| c.to_string())),
                cursor_updated_ms: int(&cursor),
                messages_today: today.get(name).copied().unwrap_or(0),
                parked_entries: int(&parked_len).unwrap_or(0),
                parked_reason,
                subscription_expires: as_string(subscription),
                poller_state: state.and_then(as_string),
                poller_since_ms: since.as_ref().and_then(int),
                poller_reason: reason.and_then(as_string).filter(|r| !r.is_empty()),
            });
        }
        Ok(out)
    }

    /// Records what the poller of `lease` does now (see [`SourceRecord::poller_state`]).
    pub(crate) async fn record_poller(
        &self,
        lease: &str,
        state: &str,
        reason: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<()> {
        let _: () = redis::cmd("HSET")
            .arg(self.keys.poller_state(lease))
            .arg("state")
            .arg(state)
            .arg("since_ms")
            .arg(now_ms)
            .arg("reason")
            .arg(reason.unwrap_or(""))
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Records delivered to MS4 in each of the last `minutes` minutes, oldest first, as
    /// `(minute start ms, count)`; the current minute last.
    pub async fn delivered_per_minute(
        &self,
        minutes: u64,
        now_ms: u64,
    ) -> StoreResult<Vec<(u64, u64)>> {
        let this = now_ms - now_ms % 60_000;
        let starts: Vec<u64> = (0..minutes)
            .rev()
            .map(|back| this.saturating_sub(back * 60_000))
            .collect();
        let keys: Vec<String> = starts
            .iter()
            .map(|m| self.keys.delivered_in_minute(*m))
            .collect();
        let counts: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await?;
        Ok(starts
            .into_iter()
            .zip(counts)
            .map(|(m, n)| (m, n.unwrap_or(0)))
            .collect())
    }

    /// Permits of `budget` granted in the last 60 seconds, by Redis' clock (every daemon's).
    pub async fn permits_last_minute(&self, budget: &str) -> StoreResult<u64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.conn()).await?;
        let now = secs * 1_000_000 + micros;
        Ok(redis::cmd("ZCOUNT")
            .arg(self.keys.rate_log(budget))
            .arg(now.saturating_sub(60_000_000))
            .arg("+inf")
            .query_async(&mut self.conn())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_give_their_time_and_pairs_read_both_protocols() {
        assert_eq!(id_ms("1764500000000-3"), Some(1_764_500_000_000));
        assert_eq!(id_ms("x"), None);
        let resp2 = Value::Array(vec![
            Value::BulkString(b"name".to_vec()),
            Value::BulkString(b"d1".to_vec()),
            Value::BulkString(b"idle".to_vec()),
            Value::Int(42),
        ]);
        let resp3 = Value::Map(vec![(Value::SimpleString("pending".into()), Value::Int(3))]);
        let p = pairs(resp2);
        assert_eq!(p[0].0, "name");
        assert_eq!(int(&p[1].1), Some(42));
        assert_eq!(int(&pairs(resp3)[0].1), Some(3));
    }
}
