//! Hears, without reading the database, that some process may have written a SQLite file:
//! the signal that lets the serving process keep API keys in memory on SQLite.
//!
//! Why: every request looks its key up. On SQLite that read is a read transaction, and each
//! one takes and drops POSIX locks on the WAL index (`fcntl`): 8 % of the server's time in
//! `GET /instances/{id}`. Keys cannot simply be kept, because the admin CLI revokes them
//! from its own process and a revocation must take effect on the next request (DESIGN
//! invariant 5). An inotify watch on the database's directory tells of every write to the
//! database, its WAL, its journal or its signal file (`<db>-keys`) by any process on this
//! machine (SQLite's locking needs one machine anyway). The kernel queues the event inside
//! the writer's `write()`. A commit's WAL frames are written before the commit is visible
//! (SQLite publishes it in the shared-memory index, which raises no event), so a request
//! could hear the frames, read the row as it was and keep it; hence a revocation writes the
//! signal file after its commit (`tell`), before the revoking command returns. A request
//! that drains the queue before it looks in the cache therefore sees every revocation that
//! finished before it began. Draining an empty queue is one non-blocking `read` that fails
//! with `EAGAIN`, far cheaper than the locks it saves. This server's own writes trigger it
//! too: while it writes, keys are read from the database as before.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An inotify watch on the directory holding one SQLite file.
pub(crate) struct DbWatch {
    fd: OwnedFd,
    /// The file's name: events for other files in the directory are not about it (its WAL
    /// and journal are named after it).
    name: Vec<u8>,
}

/// What a drain found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing was written since the last drain.
    Quiet,
    /// The database (or its WAL or journal) was written, or events were lost.
    Changed,
    /// The watch is gone (its directory was removed, moved or unmounted): it can no longer
    /// tell of writes.
    Broken,
}

/// The events that mean "this file may have changed"; the directory's own removal, move or
/// unmount also arrive (as `IN_IGNORED`, `IN_DELETE_SELF`, …).
const EVENTS: u32 = libc::IN_MODIFY
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

const GONE: u32 = libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_UNMOUNT;

/// The fixed part of `struct inotify_event` (wd, mask, cookie, len).
const HEADER: usize = 16;

/// Tells every watch on the database at `path` that something changed that a read of it
/// may have missed: a write to its signal file, made after the change committed.
pub(crate) fn tell(path: &str) -> Result<(), lobster_core::Error> {
    // Beside the real file, where the watch is (`DbWatch::open`): through a symbolic link
    // the signal would land beside the link, where no watch hears it.
    let real = std::fs::canonicalize(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string());
    let signal = format!("{real}-keys");
    std::fs::write(&signal, b"keys changed\n")
        .map_err(|e| lobster_core::Error::Internal(format!("signal file {signal}: {e}")))
}

impl DbWatch {
    /// A watch for the SQLite file at `path`, or `None` where inotify is not available (or
    /// its per-user limit is reached): then keys are simply not kept.
    pub(crate) fn open(path: &str) -> Option<DbWatch> {
        // The real file: SQLite puts its WAL beside the file a symbolic link points to.
        let real = std::fs::canonicalize(path).ok()?;
        let name = real.file_name()?.as_bytes().to_vec();
        let dir = CString::new(
            real.parent()
                .unwrap_or(Path::new("/"))
                .as_os_str()
                .as_bytes(),
        )
        .ok()?;
        // SAFETY: plain system calls; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a fresh descriptor no one else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `dir` is a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), EVENTS) };
        (wd >= 0).then_some(DbWatch { fd, name })
    }

    /// Reads every queued event without waiting.
    pub(crate) fn drain(&self) -> Drained {
        let mut found = Drained::Quiet;
        // Aligned for `inotify_event`; room for many events per read.
        let mut buf = [0u64; 512];
        loop {
            let len = std::mem::size_of_val(&buf);
            // SAFETY: reads at most `len` bytes into `buf`, which we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), len) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => found,
                    Some(libc::EINTR) => continue,
                    _ => Drained::Broken,
                };
            }
            if n == 0 {
                // Not something inotify does; a watch that reads nothing tells nothing.
                return Drained::Broken;
            }
            // SAFETY: the kernel wrote `n` bytes of `buf`.
            let bytes =
                unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            match self.judge(bytes) {
                Drained::Broken => return Drained::Broken,
                Drained::Changed => found = Drained::Changed,
                Drained::Quiet => {}
            }
        }
    }

    /// What a buffer of events says about the file.
    fn judge(&self, mut bytes: &[u8]) -> Drained {
        let mut found = Drained::Quiet;
        while bytes.len() >= HEADER {
            let word =
                |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
            let (mask, len) = (word(4), word(12) as usize);
            let end = (HEADER + len).min(bytes.len());
            let name = &bytes[HEADER..end];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if mask & GONE != 0 {
                return Drained::Broken;
            }
            // A lost event could have been about the file; a name starting with the file's
            // is the file, its `-wal`, `-shm` or `-journal`.
            if mask & libc::IN_Q_OVERFLOW != 0 || name.starts_with(&self.name) {
                found = Drained::Changed;
            }
            bytes = &bytes[end..];
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_to_the_file_or_its_wal_is_heard_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("lobster.db");
        std::fs::write(&db, b"x").unwrap();
        let w = DbWatch::open(db.to_str().unwrap()).expect("inotify");
        assert_eq!(w.drain(), Drained::Quiet);
        std::fs::write(dir.path().join("other.log"), b"x").unwrap();
        assert_eq!(
            w.drain(),
            Drained::Quiet,
            "another file is not the database"
        );
        std::fs::write(dir.path().join("lobster.db-wal"), b"x").unwrap();
        assert_eq!(w.drain(), Drained::Changed);
        assert_eq!(w.drain(), Drained::Quiet, "a drain empties the queue");
        std::fs::write(&db, b"y").unwrap();
        assert_eq!(w.drain(), Drained::Changed);
    }

    #[test]
    fn telling_is_heard() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("lobster.db");
        std::fs::write(&db, b"x").unwrap();
        let w = DbWatch::open(db.to_str().unwrap()).expect("inotify");
        assert_eq!(w.drain(), Drained::Quiet);
        tell(db.to_str().unwrap()).unwrap();
        assert_eq!(w.drain(), Drained::Changed);
    }

    #[test]
    fn a_removed_directory_breaks_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).unwrap();
        let db = sub.join("lobster.db");
        std::fs::write(&db, b"x").unwrap();
        let w = DbWatch::open(db.to_str().unwrap()).expect("inotify");
        std::fs::remove_dir_all(&sub).unwrap();
        assert_eq!(w.drain(), Drained::Broken);
    }
}
