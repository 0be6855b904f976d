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
        let (tx, rx) = oneshot::channel();
        self.queue.lock().expect("queue lock").push((item, tx));
        let turn = Arc::clone(&self.turn).lock_owned().await;
        let batch = std::mem::take(&mut *self.queue.lock().expect("queue lock"));
        if batch.is_empty() {
            // An earlier turn wrote ours too.
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
        match rx.await {
            Ok(r) => r.map_err(Error::Internal),
            Err(_) => Err(Error::Internal(
                "the batch write ended without an answer".into(),
            )),
        }
    }
}
