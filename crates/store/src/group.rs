//! Group commit. Writes that arrive while another is under way queue; whoever finds the
//! queue free next writes everything queued by then in one go (one transaction, a few
//! multi-row statements), so a burst of N requests costs a few writes rather than N. No timer:
//! a lone request writes at once. Used for the ends of create and delete tasks (engine) and for
//! launches and enqueued commands (app).
//!
//! When a write ends with items queued, their callers are told and the first to look takes
//! the queue. (Measured against a turn lock that callers queued on, first come first served:
//! +5 % PostgreSQL launches, docs/benchmarks.md, session 18. Two writes under way at once, the
//! second only once as many items were queued as the first carried, gained nothing: each
//! statement then waited longer on the database by as much as the overlap saved.)

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// A write under way this long is logged, and again each time as long again. It is not
/// cancelled (a write may rightly wait on a row another server holds), but an operator
/// sees which queue is held and for how long, instead of requests that silently never end.
const SLOW_WRITE: Duration = Duration::from_secs(10);

pub struct GroupCommit<I, O> {
    state: Arc<Mutex<State<I, O>>>,
    /// Told when a write ends while items are queued: their callers look again.
    ended: Arc<Notify>,
    /// Items per write at most (the rest wait for the next write: every waiter looks again
    /// when one ends, so nothing is left behind).
    most: usize,
    /// What is written, for the log ("launch", "create end", ...).
    what: &'static str,
    /// `SLOW_WRITE` (shorter in tests).
    slow: Duration,
}

struct State<I, O> {
    /// Each item with its sequence number and where its output goes.
    queue: Vec<(u64, I, oneshot::Sender<O>)>,
    /// The next item's sequence number.
    next: u64,
    /// Items up to this sequence number have been taken by a write (or dropped, cancelled).
    taken: u64,
    /// Whether a write is under way.
    writing: bool,
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// A queue of writes of `what`, at most `most` items each.
    pub fn new(what: &'static str, most: usize) -> Self {
        GroupCommit {
            state: Arc::new(Mutex::new(State {
                queue: Vec::new(),
                next: 1,
                taken: 0,
                writing: false,
            })),
            ended: Arc::new(Notify::new()),
            most: most.max(1),
            what,
            slow: SLOW_WRITE,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<I, O>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` and waits for its output. When this caller finds a write may start, `write`
    /// gets the oldest queued items, in arrival order, at most `most` (this caller's own among
    /// them unless `most` others were queued before it), and must answer one output per item,
    /// in the same order. None when the write ended without
    /// answering (it panicked).
    ///
    /// The write runs as a task of its own: if this caller is cancelled, the others in the
    /// batch still get their write and their answer. `write` may be called more than once by
    /// one caller: its first write may leave its own item for the next.
    pub async fn submit<W, F>(&self, item: I, write: W) -> Option<O>
    where
        W: Fn(Vec<I>) -> F,
        F: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        let seq = {
            let mut st = self.state();
            let seq = st.next;
            st.next += 1;
            st.queue.push((seq, item, tx));
            seq
        };
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the look, so that an end between the look and the wait wakes
            // it, and so does the end of a write this caller starts below without its own item.
            ended.as_mut().enable();
            if let Some(batch) = self.start(seq) {
                self.spawn(batch, &write);
            }
            // Only once this item is taken (by this caller's write or another's) is its answer
            // all that is left to wait for. The write this caller started takes the oldest
            // `most` items, which need not include its own: a caller that arrives as a write
            // ends, before the callers that end woke have looked, finds them all still queued.
            // Taken as answered, such an item was left queued with no write under way (99 of
            // 100 launches answered, docs/benchmarks.md, sessions 19 and 20).
            if self.state().taken >= seq {
                return rx.await.ok();
            }
            tokio::select! {
                answer = &mut rx => return answer.ok(),
                _ = ended => {}
            }
        }
    }

    /// The batch a write starts with now (marked as under way), or None: this item was taken
    /// already, or a write is under way.
    fn start(&self, seq: u64) -> Option<Vec<(I, oneshot::Sender<O>)>> {
        let mut st = self.state();
        if st.taken >= seq || st.writing {
            return None;
        }
        // A cancelled caller's item must not be written after it stopped waiting (an engine
        // run cancelled because its lease was lost; a launch whose client went away).
        st.queue.retain(|(_, _, reply)| !reply.is_closed());
        if st.queue.is_empty() {
            return None;
        }
        let n = st.queue.len().min(self.most);
        let batch: Vec<(u64, I, oneshot::Sender<O>)> = st.queue.drain(..n).collect();
        st.taken = batch.last().map(|(s, _, _)| *s).unwrap_or(st.taken);
        if st.queue.is_empty() {
            // Items cancelled behind the last taken one count as taken too.
            st.taken = st.next - 1;
        }
        st.writing = true;
        Some(batch.into_iter().map(|(_, i, r)| (i, r)).collect())
    }

    /// Runs the write of `batch` as a task of its own; its end is told to the queue's waiters.
    fn spawn<W, F>(&self, batch: Vec<(I, oneshot::Sender<O>)>, write: &W)
    where
        W: Fn(Vec<I>) -> F,
        F: Future<Output = Vec<O>> + Send + 'static,
    {
        let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        let written = write(items);
        let landed = Landed {
            state: Arc::clone(&self.state),
            ended: Arc::clone(&self.ended),
        };
        let (what, slow, n) = (self.what, self.slow, replies.len());
        tokio::spawn(async move {
            let _landed = landed;
            let outputs = watched(what, n, slow, written).await;
            debug_assert_eq!(outputs.len(), replies.len());
            for (reply, out) in replies.into_iter().zip(outputs) {
                let _ = reply.send(out);
            }
        });
    }

    /// Whether a write is under way.
    pub fn writing(&self) -> bool {
        self.state().writing
    }

    /// Items queued and not yet taken by a write.
    pub fn waiting(&self) -> usize {
        self.state().queue.len()
    }
}

/// Runs `write` (a write of `n` items of `what`), logging each time it has been under way
/// another `slow`.
async fn watched<F: Future>(what: &str, n: usize, slow: Duration, write: F) -> F::Output {
    tokio::pin!(write);
    let started = Instant::now();
    loop {
        tokio::select! {
            out = &mut write => return out,
            _ = tokio::time::sleep(slow) => tracing::warn!(
                "a {what} write of {n} item(s) has been under way for {} ms; its queue waits",
                started.elapsed().as_millis()
            ),
        }
    }
}

/// A write under way; dropped when it ended (answered, or panicked): the queue's waiters are
/// told, so that one of them starts the next write.
struct Landed<I, O> {
    state: Arc<Mutex<State<I, O>>>,
    ended: Arc<Notify>,
}

impl<I, O> Drop for Landed<I, O> {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.writing = false;
        let queued = !st.queue.is_empty();
        drop(st);
        if queued {
            self.ended.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue<O>(g: &GroupCommit<u32, O>, item: u32) -> oneshot::Receiver<O>
    where
        O: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let mut st = g.state();
        let seq = st.next;
        st.next += 1;
        st.queue.push((seq, item, tx));
        rx
    }

    fn items<O>(batch: &Option<Vec<(u32, oneshot::Sender<O>)>>) -> Vec<u32> {
        let b = batch.as_ref().expect("a write may start");
        b.iter().map(|(i, _)| *i).collect()
    }

    fn ended<O: Send + 'static>(g: &GroupCommit<u32, O>) {
        g.state().writing = false;
    }

    #[test]
    fn an_item_whose_caller_is_gone_is_not_written() {
        let g: GroupCommit<u32, u32> = GroupCommit::new("test", 8);
        let gone = queue(&g, 0);
        let _live = queue(&g, 1);
        drop(gone);
        assert_eq!(items(&g.start(2)), [1]);
        assert_eq!(g.waiting(), 0);
    }

    /// A write takes at most its limit, in arrival order; no second write starts while one is
    /// under way; an item taken by another caller's write is not this caller's to start.
    #[test]
    fn a_write_takes_at_most_its_limit_and_the_rest_in_order() {
        let g: GroupCommit<u32, ()> = GroupCommit::new("test", 256);
        let _receivers: Vec<_> = (0..300).map(|k| queue(&g, k)).collect();
        assert_eq!(items(&g.start(1)).len(), 256);
        assert!(g.start(300).is_none(), "a write is under way");
        assert!(g.writing());
        ended(&g);
        assert!(g.start(200).is_none(), "item 200 was taken");
        let rest = g.start(300);
        assert_eq!(items(&rest).len(), 44);
        assert_eq!(items(&rest)[0], 256);
        ended(&g);
        assert!(g.start(300).is_none(), "nothing left");
        assert_eq!(g.waiting(), 0);
    }

    /// Callers that queue while a write is under way share the next and each gets its own
    /// output.
    #[tokio::test(flavor = "current_thread")]
    async fn callers_queued_during_a_write_share_the_next_and_each_gets_its_answer() {
        let g: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new("test", 64));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let write =
            |sizes: Arc<Mutex<Vec<usize>>>,
             held: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>| {
                move |items: Vec<u32>| {
                    let (sizes, held) = (sizes.clone(), held.clone());
                    async move {
                        sizes.lock().unwrap().push(items.len());
                        // The first write waits until the others have queued.
                        if let Some(h) = held.lock().await.take() {
                            let _ = h.await;
                        }
                        items.into_iter().map(|i| i * 10).collect()
                    }
                }
            };
        let first = tokio::spawn({
            let (g, s, h) = (g.clone(), sizes.clone(), held.clone());
            async move { g.submit(1, write(s, h)).await }
        });
        while sizes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let mut rest = vec![];
        for k in 2..=5 {
            let (g, s, h) = (g.clone(), sizes.clone(), held.clone());
            rest.push(tokio::spawn(async move { g.submit(k, write(s, h)).await }));
        }
        while g.waiting() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some(10));
        for (k, r) in rest.into_iter().enumerate() {
            assert_eq!(r.await.unwrap(), Some((k as u32 + 2) * 10));
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4]);
    }

    /// A caller that arrives as a write ends, before the callers that end woke have looked,
    /// starts the next write with the oldest `most` items, not its own; its own is written
    /// next, not left queued with no write under way.
    #[tokio::test(flavor = "current_thread")]
    async fn a_caller_whose_write_leaves_out_its_own_item_still_gets_its_answer() {
        let g: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new("test", 2));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let write = |sizes: Arc<Mutex<Vec<usize>>>| {
            move |items: Vec<u32>| {
                sizes.lock().unwrap().push(items.len());
                async move { items.into_iter().map(|i| i * 10).collect() }
            }
        };
        // A write under way; two callers queue behind it.
        g.state().writing = true;
        let submit = |k: u32| {
            let (g, s) = (g.clone(), sizes.clone());
            tokio::spawn(async move { g.submit(k, write(s)).await })
        };
        let (b, c) = (submit(2), submit(3));
        while g.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        // The write ends; before the two look again, a third caller comes.
        ended(&g);
        let d = submit(4);
        assert_eq!(b.await.unwrap(), Some(20));
        assert_eq!(c.await.unwrap(), Some(30));
        // Without its own write the third is never answered: a bounded wait, in turns of
        // this single-threaded runtime, not in time.
        let mut looks = 0;
        while !d.is_finished() {
            looks += 1;
            assert!(
                looks < 10_000,
                "the third caller's item was left queued: {} waiting, writing {}",
                g.waiting(),
                g.writing()
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(d.await.unwrap(), Some(40));
        assert_eq!(*sizes.lock().unwrap(), vec![2, 1]);
        assert_eq!(g.waiting(), 0);
    }

    /// A write that panics answers its callers None, and the next write still starts.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_that_panics_leaves_the_queue_to_the_next() {
        let g: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new("test", 64));
        let boom = |_: Vec<u32>| async move {
            panic!("the write failed");
            #[allow(unreachable_code)]
            Vec::new()
        };
        assert_eq!(g.submit(1, boom).await, None);
        assert!(!g.writing());
        let ok = |items: Vec<u32>| async move { items };
        assert_eq!(g.submit(2, ok).await, Some(2));
    }

    /// A write held past the limit is logged with its queue's name and size, and still
    /// answers once it ends.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_held_long_is_logged_and_still_answers() {
        let log = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut g: GroupCommit<u32, u32> = GroupCommit::new("launch", 64);
        g.slow = Duration::from_millis(5);
        let g = Arc::new(g);
        let (release, held) = oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let write = move |items: Vec<u32>| {
            let held = held.clone();
            async move {
                if let Some(h) = held.lock().await.take() {
                    let _ = h.await;
                }
                items
            }
        };
        let submitted = tokio::spawn({
            let g = g.clone();
            async move { g.submit(7, write).await }
        });
        let logged = || String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        // The write is held until the warning is written: this waits for it (a missing
        // warning fails after far longer than the 5 ms it takes).
        let mut looks = 0;
        while !logged().contains("a launch write of 1 item(s) has been under way for") {
            looks += 1;
            assert!(looks < 10_000, "no such warning: {:.300}", logged());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        assert_eq!(submitted.await.unwrap(), Some(7));
        assert!(!g.writing());
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
