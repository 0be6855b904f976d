//! Rendered list bodies, kept beside the store's read cache. A list the store serves from
//! memory comes back as the same `Arc` until something in it changes; the body written for
//! that `Arc` is then the body for the next request too, so a list of 10,000 instances is
//! serialized once per change instead of once per request (that was nearly all of such a
//! request's time).
//!
//! An entry is found by the identity of the rows it was written from (the allocation, which
//! its `Weak` keeps from being reused) and by the variant of the view (what in the body
//! depends on the caller). A body is kept only for rows the store's cache holds too: rows
//! read afresh for one request would never be asked for again.

use axum::body::Bytes;
use std::sync::{Arc, Mutex, Weak};

/// Bodies kept at most, in bytes, over all entries.
const MAX_BYTES: usize = 64 << 20;
/// Entries kept at most.
const MAX_ENTRIES: usize = 64;

struct Entry<T> {
    rows: Weak<T>,
    variant: u8,
    body: Bytes,
}

pub struct Rendered<T> {
    entries: Mutex<Vec<Entry<T>>>,
}

impl<T> Default for Rendered<T> {
    fn default() -> Self {
        Rendered {
            entries: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Rendered<T> {
    /// The body written for `rows` in `variant`, written by `render` unless kept.
    pub fn body(&self, rows: &Arc<T>, variant: u8, render: impl FnOnce(&T) -> Bytes) -> Bytes {
        if let Some(b) = self.kept(rows, variant) {
            return b;
        }
        // Bodies of rows the store dropped are never asked for again: let them go now rather
        // than at the next keep (a list too long to keep may not bring one for a long time).
        self.forget_dropped();
        let body = render(rows);
        // One holder is the caller; another means the store's cache holds these rows.
        if Arc::strong_count(rows) > 1 && body.len() <= MAX_BYTES {
            self.keep(rows, variant, body.clone());
        }
        body
    }

    fn kept(&self, rows: &Arc<T>, variant: u8) -> Option<Bytes> {
        let entries = self.entries.lock().expect("rendered lock");
        entries
            .iter()
            .find(|e| e.variant == variant && std::ptr::eq(e.rows.as_ptr(), Arc::as_ptr(rows)))
            .map(|e| e.body.clone())
    }

    fn forget_dropped(&self) {
        let mut entries = self.entries.lock().expect("rendered lock");
        entries.retain(|e| e.rows.strong_count() > 0);
    }

    fn keep(&self, rows: &Arc<T>, variant: u8, body: Bytes) {
        let mut entries = self.entries.lock().expect("rendered lock");
        let mut held: usize = entries.iter().map(|e| e.body.len()).sum();
        while !entries.is_empty() && (entries.len() >= MAX_ENTRIES || held + body.len() > MAX_BYTES)
        {
            held -= entries.remove(0).body.len();
        }
        entries.push(Entry {
            rows: Arc::downgrade(rows),
            variant,
            body,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_body_is_written_once_per_rows_and_variant() {
        let r: Rendered<Vec<u32>> = Rendered::default();
        let rows = Arc::new(vec![1, 2]);
        let _store_holds = rows.clone();
        let writes = Cell::new(0);
        let render = |v: &Vec<u32>| {
            writes.set(writes.get() + 1);
            Bytes::from(format!("{v:?}"))
        };
        assert_eq!(r.body(&rows, 0, render), "[1, 2]");
        assert_eq!(r.body(&rows, 0, render), "[1, 2]");
        assert_eq!(writes.get(), 1);
        r.body(&rows, 1, render);
        assert_eq!(writes.get(), 2, "another variant is another body");
        // New rows (the list changed): written again, even if equal.
        let changed = Arc::new(vec![1, 2]);
        let _held = changed.clone();
        r.body(&changed, 0, render);
        assert_eq!(writes.get(), 3);
    }

    #[test]
    fn rows_only_this_request_holds_are_not_kept_and_dropped_rows_are_forgotten() {
        let r: Rendered<Vec<u32>> = Rendered::default();
        let alone = Arc::new(vec![7]);
        r.body(&alone, 0, |_| Bytes::from_static(b"x"));
        assert_eq!(r.len(), 0);
        let rows = Arc::new(vec![1]);
        let store = rows.clone();
        r.body(&rows, 0, |_| Bytes::from_static(b"a"));
        assert_eq!(r.len(), 1);
        drop((rows, store));
        // Even a body not kept (rows only its request holds) lets the dropped ones go.
        let unkept = Arc::new(vec![2]);
        r.body(&unkept, 0, |_| Bytes::from_static(b"b"));
        assert_eq!(r.len(), 0, "the entry for dropped rows went");
    }

    #[test]
    fn entries_are_bounded() {
        let r: Rendered<Vec<usize>> = Rendered::default();
        let mut held = vec![];
        for k in 0..MAX_ENTRIES + 5 {
            let rows = Arc::new(vec![k]);
            held.push(rows.clone());
            r.body(&rows, 0, |_| Bytes::from_static(b"."));
        }
        assert_eq!(r.len(), MAX_ENTRIES);
    }
}
