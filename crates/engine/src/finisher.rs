//! Group commit for the end of create tasks. Every launch ends with a write (task COMPLETED,
//! instance rented); written one by one, those writes were most of the engine's database
//! work. A create that is ready to finish queues its end; the creates that finish while one
//! write is under way share the next (see `lobster_store::group`).

use lobster_core::Error;
use lobster_store::group::GroupCommit;
use lobster_store::{Created, CreatedEnd, Store};

pub(crate) struct Finisher {
    group: GroupCommit<Created, Result<CreatedEnd, String>>,
}

impl Default for Finisher {
    fn default() -> Self {
        Finisher {
            group: GroupCommit::new(MOST),
        }
    }
}

/// What a finished create's task says.
pub(crate) const CREATED: &str = "VM created successfully";

/// Ends written in one statement at most: within every database's limit on bound values.
const MOST: usize = 256;

impl Finisher {
    /// Writes this create's end, with whatever else is queued when its turn comes.
    pub(crate) async fn finish(
        &self,
        store: &Store,
        worker: &str,
        now: impl FnOnce() -> i64,
        item: Created,
    ) -> Result<CreatedEnd, Error> {
        let write = |items: Vec<Created>| {
            let (store, worker, now) = (store.clone(), worker.to_string(), now());
            async move {
                match store
                    .task_finish_created(&worker, CREATED, now, &items)
                    .await
                {
                    Ok(ends) => ends.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e.to_string()); items.len()],
                }
            }
        };
        match self.group.submit(item, write).await {
            Some(r) => r.map_err(Error::Internal),
            None => Err(Error::Internal(
                "the batch write ended without an answer".into(),
            )),
        }
    }
}
