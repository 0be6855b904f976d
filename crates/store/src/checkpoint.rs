//! WAL checkpoints off the write path (SQLite file).
//!
//! SQLite's default is for the connection whose commit takes the WAL past 1,000 pages to
//! copy the WAL back into the database file there and then, fsyncs included, while it still
//! holds the one write lock. Profiled during deletes that was a tenth of the server's CPU,
//! all of it on the path every write queues for, and each such commit stalled every writer
//! behind it. Here a thread of its own, on a connection of its own, runs a PASSIVE checkpoint
//! (it never blocks the writer or readers) every `EVERY`, on the other core. The writer's own
//! automatic checkpoint stays as a bound, raised to `WRITER_BOUND` pages, for when writes
//! outrun this thread: a PASSIVE checkpoint cannot reset a WAL that keeps growing.

use rusqlite::{Connection, OpenFlags};
#[cfg(test)]
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

/// How often the checkpointer looks; a look with nothing to copy reads one header.
const EVERY: Duration = Duration::from_millis(50);

/// Pages the WAL may reach before the writer checkpoints inline (40 MB of 4 KiB pages).
pub(crate) const WRITER_BOUND: u32 = 10_000;

/// Starts the checkpointer for the database at `path`; it ends once `writer` is dropped.
pub(crate) fn spawn(
    path: &str,
    writer: Weak<tokio::sync::Mutex<Connection>>,
) -> Option<std::thread::JoinHandle<()>> {
    let path = path.to_string();
    let run = move || {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(&path, flags) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("checkpointer: cannot open {path}: {e}; the writer checkpoints");
                return;
            }
        };
        while writer.strong_count() > 0 {
            std::thread::sleep(EVERY);
            if let Err(e) = passive(&conn) {
                tracing::warn!("checkpoint of {path}: {e}");
            }
        }
    };
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(run)
        .map_err(|e| tracing::warn!("checkpointer not started: {e}; the writer checkpoints"))
        .ok()
}

/// Copies what the WAL holds into the database file, as far as readers allow; the pages
/// copied.
pub(crate) fn passive(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db").to_string_lossy().into_owned();
        (dir, path)
    }

    /// The writer leaves the WAL to the checkpointer (up to its bound), and a checkpoint
    /// from the checkpointer's own connection copies all of it while the writer stays open.
    /// (The writer's connection without its checkpointer thread: that one, running between
    /// two inserts, would start the WAL over and leave fewer pages to count.)
    #[test]
    fn the_writer_leaves_the_wal_to_a_checkpoint_from_another_connection() {
        let (_dir, path) = temp_db();
        drop(Connection::open(&path).unwrap());
        let c = crate::exec::writer_connection(&path).unwrap();
        let bound: i64 = c
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(bound, WRITER_BOUND as i64);
        {
            c.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
            // About 1,500 pages: past SQLite's default bound of 1,000, under ours.
            for _ in 0..300 {
                c.execute("INSERT INTO t VALUES (zeroblob(20000))", [])
                    .unwrap();
            }
        }
        let other = Connection::open(&path).unwrap();
        let (log, copied): (i64, i64) = other
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert!(
            log > 1_000,
            "the writer checkpointed inline: {log} pages left"
        );
        assert_eq!(copied, log);
        assert_eq!(
            passive(&other).unwrap(),
            log,
            "nothing new: the same frames"
        );
    }

    /// After a burst has been checkpointed, the writer's next write starts the WAL over and
    /// cuts the file back to `WAL_KEPT_BYTES`.
    #[test]
    fn a_checkpointed_burst_does_not_stay_on_disk() {
        let (_dir, path) = temp_db();
        drop(Connection::open(&path).unwrap());
        let w = crate::exec::open_writer(&path).unwrap();
        let wal = format!("{path}-wal");
        let kept = u64::from(crate::exec::WAL_KEPT_BYTES);
        {
            let c = w.blocking_lock();
            c.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
            c.execute_batch("BEGIN").unwrap();
            // About 70 MB of pages in one transaction.
            for _ in 0..3_500 {
                c.execute("INSERT INTO t VALUES (zeroblob(20000))", [])
                    .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
        }
        assert!(std::fs::metadata(&wal).unwrap().len() > kept);
        // Until a checkpoint has copied all of it (this thread's or the checkpointer's: while
        // that one runs, this one reports busy).
        let other = Connection::open(&path).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let copied_all =
            std::iter::from_fn(|| (std::time::Instant::now() < deadline).then_some(())).any(|_| {
                let (busy, log, copied): (i64, i64, i64) = other
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .unwrap();
                let done = busy == 0 && log >= 0 && copied == log;
                if !done {
                    std::thread::sleep(Duration::from_millis(10));
                }
                done
            });
        assert!(copied_all, "the WAL was never checkpointed");
        w.blocking_lock()
            .execute("INSERT INTO t VALUES (zeroblob(10))", [])
            .unwrap();
        let size = std::fs::metadata(&wal).unwrap().len();
        assert!(size <= kept, "the WAL stayed at {size} bytes");
    }

    #[test]
    fn the_checkpointer_ends_with_its_writer() {
        let (_dir, path) = temp_db();
        let w = Arc::new(tokio::sync::Mutex::new(Connection::open(&path).unwrap()));
        let t = spawn(&path, Arc::downgrade(&w)).expect("started");
        drop(w);
        t.join().unwrap();
    }
}
