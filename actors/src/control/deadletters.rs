//! The DeadLetterOffice actor: lists, shows, replays and purges dead letters for the control
//! API and the CLI. A replay puts each entry back where it failed (inbound for entries that
//! could not be processed, outbound for records MS4 refused, markread for mark-read failures)
//! and removes it from the DLQ in the same MULTI/EXEC; the pipeline takes it from there.

use crate::store::dlq::DeadLetterFilter;
use crate::store::{Entry, Store, StoreError};
use actix::prelude::*;

/// Most dead letters one replay or purge touches.
pub(crate) const MAX_BATCH: usize = 100_000;

pub struct DeadLetterOffice {
    store: Store,
}

impl DeadLetterOffice {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

impl Actor for DeadLetterOffice {
    type Context = Context<Self>;
}

impl Supervised for DeadLetterOffice {}

/// A page of dead letters after `after` (exclusive; `None` from the start).
#[derive(Message)]
#[rtype(result = "Result<(Vec<Entry>, u64), StoreError>")]
pub struct ListDead {
    pub after: Option<String>,
    pub count: usize,
    pub filter: DeadLetterFilter,
}

#[derive(Message)]
#[rtype(result = "Result<Option<Entry>, StoreError>")]
pub struct GetDead(pub String);

#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct ReplayDead(pub DeadLetterFilter);

/// How many dead letters a filter selects (what a replay or purge of it would touch, up to
/// [`MAX_BATCH`]).
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct CountDead(pub DeadLetterFilter);

#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PurgeDead(pub DeadLetterFilter);

impl Handler<ListDead> for DeadLetterOffice {
    type Result = ResponseFuture<Result<(Vec<Entry>, u64), StoreError>>;

    fn handle(&mut self, msg: ListDead, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let total = store.len(&store.keys().dlq()).await?;
            let mut out = Vec::new();
            let mut start = msg.after.map_or("-".to_string(), |a| format!("({a}"));
            while out.len() < msg.count {
                let page = store.dlq_range(&start, 500).await?;
                let Some(last) = page.last() else { break };
                start = format!("({}", last.id);
                let full = page.len() == 500;
                out.extend(page.into_iter().filter(|e| msg.filter.matches(e)));
                if !full {
                    break;
                }
            }
            out.truncate(msg.count);
            Ok((out, total))
        })
    }
}

impl Handler<GetDead> for DeadLetterOffice {
    type Result = ResponseFuture<Result<Option<Entry>, StoreError>>;

    fn handle(&mut self, msg: GetDead, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.dlq_get(&msg.0).await })
    }
}

impl Handler<ReplayDead> for DeadLetterOffice {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, msg: ReplayDead, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let entries = store.dlq_select(&msg.0, MAX_BATCH).await?;
            let n = store.dlq_replay(&entries).await?;
            tracing::info!(replayed = n, "dead letters replayed");
            Ok(n)
        })
    }
}

impl Handler<CountDead> for DeadLetterOffice {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, msg: CountDead, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { Ok(store.dlq_select(&msg.0, MAX_BATCH).await?.len() as u64) })
    }
}

impl Handler<PurgeDead> for DeadLetterOffice {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, msg: PurgeDead, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let ids: Vec<String> = store
                .dlq_select(&msg.0, MAX_BATCH)
                .await?
                .into_iter()
                .map(|e| e.id)
                .collect();
            let n = store.dlq_delete(&ids).await?;
            tracing::info!(purged = n, "dead letters purged");
            Ok(n)
        })
    }
}
