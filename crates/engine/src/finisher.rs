//! Group commit for the end of create tasks. Every launch ends with a write (task COMPLETED,
//! instance rented); written one by one, those writes were most of the engine's database
//! work. A create that is ready to finish queues its end and waits for its turn to write;
//! whoever gets the turn writes everything queued by then in one go, so the creates that
//! finish while one write is under way share the next. No timer: a lone create writes at
//! once.

use lobster_core::Error;
use lobster_store::{Created, CreatedEnd, Store};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<CreatedEnd, String>>;

#[derive(Default)]
pub(crate) struct Finisher {
    queue: Mutex<Vec<(Created, Reply)>>,
    /// Held while a batch is written.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// What a finished create's task says.
pub(crate) const CREATED: &str = "VM created successfully";

impl Finisher {
    /// Writes this create's end, with whatever else is queued when its turn comes.
    pub(crate) async fn finish(
        &self,
        store: &Store,
        worker: &str,
        now: impl FnOnce() -> i64,
        item: Created,
    ) -> Result<CreatedEnd, Error> {
        let (tx, mut rx) = oneshot::channel();
        self.queue.lock().expect("queue lock").push((item, tx));
        // An earlier turn may write ours: then the answer comes before the turn does.
        let turn = tokio::select! {
            answer = &mut rx => return answered(answer),
            turn = Arc::clone(&self.turn).lock_owned() => turn,
        };
        let batch = self.take();
        if batch.is_empty() {
            drop(turn);
        } else {
            // The write runs as a task of its own: if this waiter's run is cancelled (its
            // lease lost), the others in the batch still get their write and their answer.
            let (store, worker, now) = (store.clone(), worker.to_string(), now());
            tokio::spawn(async move {
                let _turn = turn;
                let items: Vec<Created> = batch.iter().map(|(c, _)| c.clone()).collect();
                let ends = store
                    .task_finish_created(&worker, CREATED, now, &items)
                    .await
                    .map_err(|e| e.to_string());
                for (k, (_, reply)) in batch.into_iter().enumerate() {
                    let _ = reply.send(ends.as_ref().map(|e| e[k]).map_err(Clone::clone));
                }
            });
        }
        answered(rx.await)
    }

    /// What is queued, at most `MOST` (the rest waits for the next turn: every waiter takes
    /// one, so nothing is left behind), leaving out the ends whose waiter is gone: a run
    /// cancelled because its lease was lost must not have its end written later, perhaps
    /// after this server claimed the task again for a run still under way.
    fn take(&self) -> Vec<(Created, Reply)> {
        let mut queue = self.queue.lock().expect("queue lock");
        queue.retain(|(_, reply)| !reply.is_closed());
        let n = queue.len().min(MOST);
        queue.drain(..n).collect()
    }
}

/// Ends written in one statement at most: within every database's limit on bound values.
const MOST: usize = 256;

fn answered(
    answer: Result<Result<CreatedEnd, String>, oneshot::error::RecvError>,
) -> Result<CreatedEnd, Error> {
    match answer {
        Ok(r) => r.map_err(Error::Internal),
        Err(_) => Err(Error::Internal(
            "the batch write ended without an answer".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(k: usize) -> Created {
        Created {
            task_id: format!("t{k}"),
            instance_id: format!("i{k}"),
            firewall_version: -1,
        }
    }

    /// A waiter that is gone (its run cancelled when its lease was lost) has its end left
    /// out of the next write.
    #[test]
    fn the_end_of_a_cancelled_run_is_not_written() {
        let f = Finisher::default();
        let (gone, rx_gone) = oneshot::channel();
        let (live, _rx_live) = oneshot::channel();
        f.queue.lock().unwrap().push((item(0), gone));
        f.queue.lock().unwrap().push((item(1), live));
        drop(rx_gone);
        let batch = f.take();
        let ids: Vec<&str> = batch.iter().map(|(c, _)| c.task_id.as_str()).collect();
        assert_eq!(ids, ["t1"]);
        assert!(f.queue.lock().unwrap().is_empty());
    }

    /// One write takes at most `MOST` ends; the rest wait, in order, for the next turn.
    #[test]
    fn a_write_takes_at_most_its_limit() {
        let f = Finisher::default();
        let mut receivers = vec![];
        for k in 0..MOST + 44 {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            f.queue.lock().unwrap().push((item(k), tx));
        }
        assert_eq!(f.take().len(), MOST);
        let rest = f.take();
        assert_eq!(rest.len(), 44);
        assert_eq!(rest[0].0.task_id, format!("t{MOST}"));
        assert!(f.take().is_empty());
    }
}
