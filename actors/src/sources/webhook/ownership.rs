//! Subscriptions follow the poller leases: the daemon holding a mailbox's lease keeps its
//! subscription (adopts the stored one when it takes the lease, stops renewing when it loses
//! it), and asks Graph for expiries spread by mailbox, so that renewals do not come together.

use super::{Renew, WebhookReceiver};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::watch;

/// How long `webhook:subscription-id:{id}` outlives the subscription's expiry (a late
/// notification still finds its mailbox).
pub(super) const ID_KEPT_AFTER_EXPIRY: Duration = Duration::from_secs(3_600);

/// The expiry to ask Graph for: `renew_before` plus a share of the rest of the lifetime
/// between one half and all of it, chosen by the mailbox (its rendezvous weight), so that
/// subscriptions created together (2,000 at a daemon's start) renew spread over half the
/// window instead of in the same minute, and each mailbox keeps its own rhythm.
pub(crate) fn spread_expiration(
    mailbox: &str,
    now: DateTime<Utc>,
    lifetime: Duration,
    renew_before: Duration,
) -> DateTime<Utc> {
    let window = lifetime.saturating_sub(renew_before);
    let share = crate::sources::fleet::weight(mailbox, "subscription") as f64 / u64::MAX as f64;
    let ahead = renew_before + window.mul_f64(0.5 + share / 2.0);
    // At most `lifetime` (≤ 7 days, validated): far from chrono's limits.
    now + chrono::Duration::milliseconds(ahead.as_millis() as i64)
}

impl WebhookReceiver {
    /// Keeps the subscriptions of the mailboxes this daemon holds now.
    pub(super) fn subscribe_all(&mut self, ctx: &mut Context<Self>) {
        let held = self.held.borrow_and_update().clone();
        self.follow(&held, ctx);
    }

    /// Follows the leases: adopts the subscription of a mailbox newly held, stops renewing
    /// that of one no longer held (the new holder adopts it; it is not deleted).
    fn follow(&mut self, held: &BTreeSet<String>, ctx: &mut Context<Self>) {
        if !(self.http_ready && self.wanted) {
            return;
        }
        let lost: Vec<String> = self.owned.difference(held).cloned().collect();
        for mailbox in lost {
            self.owned.remove(&mailbox);
            if let Some(timer) = self.timers.remove(&mailbox) {
                ctx.cancel_future(timer);
            }
            tracing::info!(%mailbox, "lease gone: the new holder renews this subscription");
        }
        for mailbox in self.settings.graph.all_mailboxes() {
            if held.contains(&mailbox) && self.owned.insert(mailbox.clone()) {
                ctx.notify(Adopt { mailbox });
            }
        }
    }

    /// Follows `held` from now on: each change of the leases this daemon holds.
    pub(super) fn watch_leases(
        &self,
        mut held: watch::Receiver<BTreeSet<String>>,
        ctx: &mut Context<Self>,
    ) {
        let changed = async move {
            let open = held.changed().await.is_ok();
            (held, open)
        };
        ctx.spawn(changed.into_actor(self).map(|(mut held, open), act, ctx| {
            let now = held.borrow_and_update().clone();
            act.follow(&now, ctx);
            if open {
                act.watch_leases(held, ctx);
            }
        }));
    }
}

/// This daemon took a mailbox's lease: renew its stored subscription (or create one).
#[derive(Message)]
#[rtype(result = "()")]
struct Adopt {
    mailbox: String,
}

impl Handler<Adopt> for WebhookReceiver {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Adopt, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let mailbox = msg.mailbox;
        let load = {
            let mailbox = mailbox.clone();
            async move { store.load_subscription(&mailbox).await }
        };
        Box::pin(load.into_actor(self).map(move |stored, act, ctx| {
            if !act.owned.contains(&mailbox) {
                return; // The lease went again meanwhile.
            }
            match stored {
                Ok(Some(s)) => {
                    tracing::info!(%mailbox, expires = %s.expiration, "adopted the stored subscription");
                    act.subscriptions.insert(s.id, mailbox.clone());
                    act.arm_renewal(&mailbox, &s.expiration, ctx);
                }
                Ok(None) => ctx.notify(Renew {
                    mailbox,
                    recreate: true,
                }),
                Err(e) => {
                    tracing::warn!(%mailbox, error = %e, "cannot read the stored subscription; trying again");
                    ctx.notify_later(Adopt { mailbox }, Duration::from_secs(5));
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn two_thousand_subscriptions_created_together_renew_spread_over_half_the_window() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let lifetime = Duration::from_secs(4_320 * 60);
        let renew_before = Duration::from_secs(3_600);
        let mut per_minute: HashMap<i64, usize> = HashMap::new();
        for i in 0..2_000 {
            let mailbox = format!("invoices-{i}@contoso.example");
            let e = spread_expiration(&mailbox, now, lifetime, renew_before);
            assert_eq!(e, spread_expiration(&mailbox, now, lifetime, renew_before));
            let renew_in = (e - now).num_seconds() - 3_600;
            let window = 4_320 * 60 - 3_600;
            assert!((window / 2..=window).contains(&renew_in), "{renew_in}");
            *per_minute.entry(renew_in / 60).or_default() += 1;
        }
        // 2,000 over ~2,130 minutes: a few a minute at most, never all at once.
        let busiest = per_minute.values().max().copied().unwrap_or(0);
        assert!(busiest <= 8, "{busiest} renewals in one minute");
        // A short lifetime still leaves time before the renewal (no renewal loop).
        let e = spread_expiration("m@x", now, Duration::from_secs(60), Duration::from_secs(50));
        assert!((55..=60).contains(&(e - now).num_seconds()));
    }
}
