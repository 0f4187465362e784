//! Byte-budgeted stream reads at the store, against a real redis-server: whichever way entries
//! are read (new, a consumer's own pending ones after a restart, claimed from a dead consumer),
//! one read returns no more bytes than the budget, or one entry alone when that entry is bigger;
//! and every entry is read exactly once.

use ms1_actors::store::read_budget::entry_bytes;
use ms1_actors::store::{Entry, ReadBudget, Scan, Store};
use ms1_sim::redis_launcher::start_loopback;

const MIB: u64 = 1024 * 1024;
const STREAM: &str = "t:stream";
const GROUP: &str = "g";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Adds entries whose payload has these sizes.
async fn add(store: &Store, sizes: &[usize]) {
    let entries: Vec<Vec<(&str, String)>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| vec![("n", i.to_string()), ("payload", "x".repeat(n))])
        .collect();
    store.add_entries(STREAM, &entries).await.unwrap();
    let all = store.len(STREAM).await.unwrap();
    assert_eq!(all as usize, sizes.len());
}

fn bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(entry_bytes).sum()
}

fn numbers(entries: &[Entry]) -> Vec<usize> {
    entries
        .iter()
        .map(|e| e.field("n").unwrap().parse().unwrap())
        .collect()
}

#[test]
fn every_kind_of_read_stays_within_the_byte_budget_and_reads_each_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = start_loopback(&dir.path().join("redis"), None, false).unwrap();
    runtime().block_on(async {
        let store = Store::open(&redis.url(), "t:").unwrap();
        store.ensure_group(STREAM, GROUP).await.unwrap();
        // 20 entries of 3 MB, one of 20 MB in the middle, 30 small ones.
        let mut sizes = vec![3 * MIB as usize; 20];
        sizes.insert(10, 20 * MIB as usize);
        sizes.extend(std::iter::repeat_n(1_000, 30));
        add(&store, &sizes).await;
        let budget = ReadBudget::new(500, 8 * MIB);

        // New entries, the way the BatchProcessor reads them: at most 8 MiB a read (two 3 MB
        // entries), the 20 MB one alone, the small ones together.
        let mut seen = Vec::new();
        let mut reads = Vec::new();
        loop {
            let (got, _) = store
                .read_new_budgeted(STREAM, GROUP, "a", budget, None)
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            let b = bytes(&got);
            assert!(
                b <= 8 * MIB || got.len() == 1,
                "a read of {} entries holds {b} bytes",
                got.len()
            );
            reads.push(got.len());
            seen.extend(numbers(&got));
        }
        assert_eq!(
            seen,
            (0..sizes.len()).collect::<Vec<_>>(),
            "each once, in order"
        );
        assert!(reads.contains(&1), "the 20 MB entry moved alone: {reads:?}");
        assert!(
            *reads.last().unwrap() >= 30,
            "small entries are read together: {reads:?}"
        );

        // A blocking read on an empty stream waits, then returns what arrived.
        let blocking = store.blocking().unwrap();
        let (got, _) = blocking
            .read_new_budgeted(STREAM, GROUP, "a", budget, Some(50))
            .await
            .unwrap();
        assert!(got.is_empty());

        // Consumer `a` "restarts": its own pending entries (all of them: nothing was
        // acknowledged) are re-read in budgeted steps.
        let mut own = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
            let (next, got) = store
                .read_budgeted(STREAM, GROUP, "a", Scan::Own, &cursor, budget)
                .await
                .unwrap();
            assert!(bytes(&got) <= 8 * MIB || got.len() == 1);
            own.extend(numbers(&got));
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        assert_eq!(own, (0..sizes.len()).collect::<Vec<_>>());

        // Consumer `a` dies: `b` claims its idle entries in budgeted steps.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let claim = Scan::Claim { min_idle_ms: 20 };
        let mut claimed = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
            let (next, got) = store
                .read_budgeted(STREAM, GROUP, "b", claim, &cursor, budget)
                .await
                .unwrap();
            assert!(bytes(&got) <= 8 * MIB || got.len() == 1);
            claimed.extend(numbers(&got));
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        assert_eq!(claimed, (0..sizes.len()).collect::<Vec<_>>());
        // They are b's now: a's own scan finds none.
        let (_, left) = store
            .read_budgeted(STREAM, GROUP, "a", Scan::Own, "0-0", budget)
            .await
            .unwrap();
        assert!(left.is_empty());

        // A top-up read (work already held) takes only what fits, never a first entry over.
        add_more(&store).await;
        let top_up = ReadBudget::new(500, 8 * MIB).after(1, 6 * MIB).unwrap();
        let (got, full) = store
            .read_new_budgeted(STREAM, GROUP, "b", top_up, Some(50))
            .await
            .unwrap();
        assert!(
            got.is_empty(),
            "a 3 MB entry does not fit in the 2 MiB left"
        );
        assert!(full, "the budget, not the stream, ended the read");
    });
}

async fn add_more(store: &Store) {
    let entries = vec![vec![
        ("n", "99".to_string()),
        ("payload", "y".repeat(3 * MIB as usize)),
    ]];
    store.add_entries(STREAM, &entries).await.unwrap();
}

/// Issue 14: new inbound entries are read with a plain XREADGROUP while no large one is there
/// (store::large): every producer counts the large entries it writes, and a plain read takes at
/// most as many entries as fit the budget at the largest small size. Large entries arriving
/// between reads, and uncounted ones already there when the reader starts, are read within
/// the budget all the same; each entry once, in order.
#[test]
fn plain_reads_of_new_inbound_entries_stay_within_the_byte_budget() {
    use ms1_actors::store::large::{FastRead, LARGE_ENTRY_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let redis = start_loopback(&dir.path().join("redis"), None, false).unwrap();
    runtime().block_on(async {
        let store = Store::open(&redis.url(), "t:").unwrap();
        let inbound = store.keys().inbound();
        store.ensure_group(&inbound, GROUP).await.unwrap();
        let entry =
            |n: usize, size: usize| vec![("n", n.to_string()), ("payload", "x".repeat(size))];
        // Written uncounted (as by an older daemon) before the reader starts: 5 of 3 MB.
        let early: Vec<_> = (0..5).map(|n| entry(n, 3 * MIB as usize)).collect();
        store.add_entries(&inbound, &early).await.unwrap();
        let mut fast = FastRead::start(&store)
            .await
            .unwrap()
            .expect("a single server");
        let budget = ReadBudget::new(500, 8 * MIB);
        let (mut seen, mut plain_reads, mut next) = (Vec::new(), 0, 5);
        read_all(&store, &mut fast, budget, &mut seen).await;
        // 2,000 small entries with large ones among them, written while reading.
        for round in 0..2 {
            let mut batch = Vec::new();
            for i in 0..500 {
                let size = if i % 25 == 7 { 3 * MIB as usize } else { 1_000 };
                batch.push(entry(next, size));
                next += 1;
            }
            store.add_inbound(&batch).await.unwrap();
            let reads = read_all(&store, &mut fast, budget, &mut seen).await;
            // Small entries only now: read plainly, up to the count that fits.
            let small: Vec<_> = (0..300)
                .map(|_| {
                    next += 1;
                    entry(next - 1, 1_000)
                })
                .collect();
            store.add_inbound(&small).await.unwrap();
            let (got, _) = store
                .read_new_fast(Some(&mut fast), &inbound, GROUP, "a", budget, None)
                .await
                .unwrap();
            let most = (8 * MIB / (LARGE_ENTRY_BYTES + 41)) as usize;
            assert_eq!(
                got.len(),
                most,
                "round {round}: a plain read takes {most} (reads before: {reads:?})"
            );
            plain_reads += 1;
            seen.extend(numbers(&got));
            read_all(&store, &mut fast, budget, &mut seen).await;
        }
        assert_eq!(plain_reads, 2);
        // A blocking read on the caught-up stream waits for the first entry, then tops up
        // plainly: 300 small entries arrive at once (one MULTI/EXEC), one read takes the most.
        let writer = store.clone();
        let late: Vec<_> = (next..next + 300).map(|n| entry(n, 1_000)).collect();
        next += 300;
        let write = async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            writer.add_inbound(&late).await.unwrap();
        };
        let blocking = store.blocking().unwrap();
        let read =
            blocking.read_new_fast(Some(&mut fast), &inbound, GROUP, "a", budget, Some(5_000));
        let ((got, _), ()) = tokio::join!(async { read.await.unwrap() }, write);
        let most = (8 * MIB / (LARGE_ENTRY_BYTES + 41)) as usize;
        assert_eq!(
            got.len(),
            most,
            "the first entry waited for, the rest topped up plainly"
        );
        seen.extend(numbers(&got));
        read_all(&store, &mut fast, budget, &mut seen).await;
        assert_eq!(seen, (0..next).collect::<Vec<_>>(), "each once, in order");
    });
}

/// Reads new inbound entries until none is left, asserting each read's bytes; returns the
/// number of entries of each read.
async fn read_all(
    store: &Store,
    fast: &mut ms1_actors::store::large::FastRead,
    budget: ReadBudget,
    seen: &mut Vec<usize>,
) -> Vec<usize> {
    let inbound = store.keys().inbound();
    let mut reads = Vec::new();
    loop {
        let (got, _) = store
            .read_new_fast(Some(&mut *fast), &inbound, GROUP, "a", budget, None)
            .await
            .unwrap();
        if got.is_empty() {
            return reads;
        }
        let b = bytes(&got);
        assert!(
            b <= budget.max_bytes || got.len() == 1,
            "a read of {} entries holds {b} bytes",
            got.len()
        );
        reads.push(got.len());
        seen.extend(numbers(&got));
    }
}
