//! Group commit for the end of create and delete tasks. Every launch ends with a write (task
//! COMPLETED, instance rented), every delete with another (task COMPLETED, instance deleted,
//! capacity and addresses given back); written one by one, those writes were most of the
//! engine's database work. A task that is ready to finish queues its end; the ends that come
//! while one write is under way share the next (see `lobster_store::group`).

use lobster_core::Error;
use lobster_store::group::GroupCommit;
use lobster_store::{Created, CreatedEnd, Deleted, Store};

pub(crate) struct Finisher {
    created: GroupCommit<Created, Result<CreatedEnd, String>>,
    deleted: GroupCommit<Deleted, Result<bool, String>>,
}

impl Default for Finisher {
    fn default() -> Self {
        Finisher {
            created: GroupCommit::new("create end", MOST),
            deleted: GroupCommit::new("delete end", MOST),
        }
    }
}

/// What a finished create's task says.
pub(crate) const CREATED: &str = "VM created successfully";
/// What a finished delete's task says.
pub(crate) const DELETED: &str = "VM deleted successfully";

/// Ends written in one statement at most: within every database's limit on bound values.
const MOST: usize = 256;

impl Finisher {
    /// Writes this create's end, with whatever else is queued when its turn comes.
    pub(crate) async fn finish_created(
        &self,
        store: &Store,
        now: impl Fn() -> i64,
        item: Created,
    ) -> Result<CreatedEnd, Error> {
        let write = |items: Vec<Created>| {
            let (store, now) = (store.clone(), now());
            async move {
                match store.task_finish_created(CREATED, now, &items).await {
                    Ok(ends) => ends.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e.to_string()); items.len()],
                }
            }
        };
        answered(self.created.submit(item, write).await)
    }

    /// Writes this delete's end, with whatever else is queued when its turn comes: true when
    /// written, false when the lease was lost (nothing written).
    pub(crate) async fn finish_deleted(
        &self,
        store: &Store,
        now: impl Fn() -> i64,
        item: Deleted,
    ) -> Result<bool, Error> {
        let write = |items: Vec<Deleted>| {
            let (store, now) = (store.clone(), now());
            async move {
                match store.task_finish_deleted(DELETED, now, &items).await {
                    Ok(ends) => ends.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e.to_string()); items.len()],
                }
            }
        };
        answered(self.deleted.submit(item, write).await)
    }
}

fn answered<T>(answer: Option<Result<T, String>>) -> Result<T, Error> {
    match answer {
        Some(r) => r.map_err(Error::Internal),
        None => Err(Error::Internal(
            "the batch write ended without an answer".into(),
        )),
    }
}
