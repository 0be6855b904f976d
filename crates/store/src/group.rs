//! Group commit. Writes that arrive while another is under way queue; whoever gets the turn
//! next writes everything queued by then in one go (one transaction, a few multi-row
//! statements), so a burst of N requests costs a few writes rather than N. No timer: a lone
//! request writes at once. Used for the ends of create tasks (engine) and for launches (app).

use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub struct GroupCommit<I, O> {
    queue: Mutex<Vec<(I, oneshot::Sender<O>)>>,
    /// Held while a batch is written.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Items per write at most (the rest wait for the next turn: every waiter takes one, so
    /// nothing is left behind).
    most: usize,
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    pub fn new(most: usize) -> Self {
        GroupCommit {
            queue: Mutex::new(Vec::new()),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            most: most.max(1),
        }
    }

    /// Queues `item` and waits for its output. When this caller gets the turn first, `write`
    /// gets everything queued (this item included, in arrival order) and must answer one
    /// output per item, in the same order. None when the write ended without answering (it
    /// panicked).
    ///
    /// The write runs as a task of its own: if this caller is cancelled, the others in the
    /// batch still get their write and their answer.
    pub async fn submit<W, F>(&self, item: I, write: W) -> Option<O>
    where
        W: FnOnce(Vec<I>) -> F,
        F: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        self.queue.lock().expect("queue lock").push((item, tx));
        // An earlier turn may write ours: then the answer comes before the turn does.
        let turn = tokio::select! {
            answer = &mut rx => return answer.ok(),
            turn = Arc::clone(&self.turn).lock_owned() => turn,
        };
        let (items, replies): (Vec<I>, Vec<_>) = self.take().into_iter().unzip();
        if items.is_empty() {
            drop(turn);
        } else {
            let written = write(items);
            tokio::spawn(async move {
                let _turn = turn;
                let outputs = written.await;
                debug_assert_eq!(outputs.len(), replies.len());
                for (reply, out) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(out);
                }
            });
        }
        rx.await.ok()
    }

    /// Whether a write is under way (or a caller is taking the queue for one).
    pub fn writing(&self) -> bool {
        self.turn.try_lock().is_err()
    }

    /// Items queued and not yet taken by a write.
    pub fn waiting(&self) -> usize {
        self.queue.lock().expect("queue lock").len()
    }

    /// What is queued, at most `most`, leaving out the items whose caller is gone: a
    /// cancelled request must not be written later, after its caller stopped waiting (an
    /// engine run cancelled because its lease was lost; a launch whose client went away).
    fn take(&self) -> Vec<(I, oneshot::Sender<O>)> {
        let mut queue = self.queue.lock().expect("queue lock");
        queue.retain(|(_, reply)| !reply.is_closed());
        let n = queue.len().min(self.most);
        queue.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_whose_caller_is_gone_is_not_written() {
        let g: GroupCommit<u32, u32> = GroupCommit::new(8);
        let (gone, rx_gone) = oneshot::channel();
        let (live, _rx_live) = oneshot::channel();
        g.queue.lock().unwrap().push((0, gone));
        g.queue.lock().unwrap().push((1, live));
        drop(rx_gone);
        let batch: Vec<u32> = g.take().into_iter().map(|(i, _)| i).collect();
        assert_eq!(batch, [1]);
        assert!(g.queue.lock().unwrap().is_empty());
    }

    #[test]
    fn a_write_takes_at_most_its_limit_and_the_rest_in_order() {
        let g: GroupCommit<usize, ()> = GroupCommit::new(256);
        let mut receivers = vec![];
        for k in 0..300 {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            g.queue.lock().unwrap().push((k, tx));
        }
        assert_eq!(g.take().len(), 256);
        let rest = g.take();
        assert_eq!(rest.len(), 44);
        assert_eq!(rest[0].0, 256);
        assert!(g.take().is_empty());
    }

    /// Callers that queue while a write is under way share the next write, and each gets
    /// its own output.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_queued_during_a_write_share_the_next_and_each_gets_its_answer() {
        let g: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new(64));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let held = Arc::new(tokio::sync::Mutex::new(Some(held)));
        let write =
            |sizes: Arc<Mutex<Vec<usize>>>,
             held: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>| {
                move |items: Vec<u32>| async move {
                    sizes.lock().unwrap().push(items.len());
                    // The first write waits until the others have queued.
                    if let Some(h) = held.lock().await.take() {
                        let _ = h.await;
                    }
                    items.into_iter().map(|i| i * 10).collect()
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
        while g.queue.lock().unwrap().len() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some(10));
        for (k, r) in rest.into_iter().enumerate() {
            assert_eq!(r.await.unwrap(), Some((k as u32 + 2) * 10));
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4]);
    }
}
