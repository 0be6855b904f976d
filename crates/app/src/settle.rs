//! A write turn's answers once its batch was written (or failed): see `Turn::settle`.

use crate::Turn;
use lobster_core::Error;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

impl Turn {
    /// A turn's answers, in order: each member the batch wrote (`Some`) answered by `done`;
    /// each it left out (`None`, or every one when the batch's write failed as a whole)
    /// written alone by `alone`, so that it gets the answer it would get without company.
    /// The batched ones are counted in `counter` when the turn had company; a lone member
    /// the batch's statement wrote (PostgreSQL's launches and commands) in `Batched::lone`.
    pub(crate) async fn settle<I, O, T, Fut>(
        &self,
        (what, counter): (&str, &AtomicU64),
        batch: Vec<I>,
        written: Result<Vec<Option<O>>, Error>,
        done: impl Fn(I, O) -> Result<T, Error>,
        alone: impl FnMut(I) -> Fut,
    ) -> Vec<Result<T, Error>>
    where
        O: Clone,
        Fut: Future<Output = Result<T, Error>>,
    {
        if let Ok(w) = &written {
            let n = w.iter().filter(|w| w.is_some()).count() as u64;
            match batch.len() {
                1 => self.batched.lone.fetch_add(n, Ordering::Relaxed),
                _ => counter.fetch_add(n, Ordering::Relaxed),
            };
        }
        answers(what, batch, written, done, alone).await
    }
}

/// `Turn::settle`'s answers. Except when the database did not answer
/// (`Error::Unanswered`), to the batch's write or to a member's write alone: then that
/// answer goes at once to every member not yet answered. Written alone one after another,
/// each would wait out the statement bound in turn, the last of a batch of 64 launches half
/// an hour after its client gave up.
async fn answers<I, O, T, Fut>(
    what: &str,
    batch: Vec<I>,
    written: Result<Vec<Option<O>>, Error>,
    done: impl Fn(I, O) -> Result<T, Error>,
    mut alone: impl FnMut(I) -> Fut,
) -> Vec<Result<T, Error>>
where
    O: Clone,
    Fut: Future<Output = Result<T, Error>>,
{
    // The database's words when it did not answer: (message, whether anything was sent).
    let mut silent: Option<(String, bool)> = None;
    let written = written.unwrap_or_else(|e| {
        match e {
            Error::Unanswered { message, sent } => silent = Some((message, sent)),
            e => tracing::warn!(error = %e, batch = batch.len(), "{what} batch failed; writing each alone"),
        }
        vec![None; batch.len()]
    });
    let mut out = Vec::with_capacity(batch.len());
    for (item, w) in batch.into_iter().zip(written) {
        let answer = match (w, &silent) {
            (Some(o), _) => done(item, o),
            (None, Some((message, sent))) => Err(Error::Unanswered {
                message: message.clone(),
                sent: *sent,
            }),
            (None, None) => alone(item).await,
        };
        if let Err(Error::Unanswered { message, sent }) = &answer {
            silent.get_or_insert_with(|| (message.clone(), *sent));
        }
        out.push(answer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn silent() -> Error {
        Error::Unanswered {
            message: "the database gave no answer within 300 ms; try again".into(),
            sent: true,
        }
    }

    /// Runs `answers` over members 1..=n, the members written alone recorded in `tried`;
    /// `alone_fails` makes a member's write alone unanswered.
    async fn run(
        written: Result<Vec<Option<u32>>, Error>,
        n: u32,
        alone_fails: impl Fn(u32) -> bool,
    ) -> (Vec<Result<u32, Error>>, Vec<u32>) {
        let tried = RefCell::new(Vec::new());
        let alone = |i: u32| {
            tried.borrow_mut().push(i);
            let fails = alone_fails(i);
            async move {
                match fails {
                    true => Err(silent()),
                    false => Ok(i * 100),
                }
            }
        };
        let got = answers("test", (1..=n).collect(), written, |_, o| Ok(o), alone).await;
        (got, tried.into_inner())
    }

    #[tokio::test]
    async fn a_batch_the_database_did_not_answer_answers_every_member_so_without_writing_any_alone()
    {
        let (got, tried) = run(Err(silent()), 4, |_| false).await;
        assert!(
            tried.is_empty(),
            "written alone after the silence: {tried:?}"
        );
        assert_eq!(got.len(), 4);
        for a in &got {
            assert!(
                matches!(a, Err(Error::Unanswered { sent: true, message }) if message.contains("no answer")),
                "{a:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_member_alone_the_database_did_not_answer_ends_the_writes_of_the_rest() {
        // The batch wrote 1 and 3; 2 and 4 go alone. 2's write gets no answer: 3 keeps the
        // batch's answer, and 4 is not tried.
        let written = Ok(vec![Some(10), None, Some(30), None]);
        let (got, tried) = run(written, 4, |i| i == 2).await;
        assert_eq!(tried, vec![2]);
        assert_eq!(got[0].as_ref().ok(), Some(&10));
        assert!(got[1].as_ref().is_err_and(Error::is_unanswered));
        assert_eq!(got[2].as_ref().ok(), Some(&30));
        assert!(got[3].as_ref().is_err_and(Error::is_unanswered));
    }

    #[tokio::test]
    async fn any_other_failure_of_the_batch_still_writes_each_alone() {
        let busy = Error::Unavailable("the database was busy; nothing was written".into());
        let (got, tried) = run(Err(busy), 3, |_| false).await;
        assert_eq!(tried, vec![1, 2, 3]);
        let got: Vec<u32> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, vec![100, 200, 300]);
    }
}
