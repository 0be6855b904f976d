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
//!
//! A kept body large enough to be worth it is also kept gzipped, made on the first request
//! that accepts gzip: a list of 10,000 instances is 6 MB of JSON and about a tenth of that
//! compressed, which is what crosses the network (and the client's reads) per request.

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
    /// `body` gzipped, once asked for.
    gz: Option<Bytes>,
}

/// Bodies smaller than this are sent as they are: compressing them saves little and costs
/// a pass over them.
pub const GZIP_FROM: usize = 16 << 10;

/// A body as it goes out.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub bytes: Bytes,
    /// Whether `bytes` is gzipped (`Content-Encoding: gzip`).
    pub gzip: bool,
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
        self.body_for(rows, variant, false, render).bytes
    }

    /// As `body`, gzipped when the client accepts it (`gzip`), the body is kept and it is
    /// at least `GZIP_FROM` long (gzipped once, when first asked for). A body written for this request alone goes as it is:
    /// compressing it would cost more than it saves on the loopback of a benchmark and is a
    /// pass over the whole body per request.
    pub fn body_for(
        &self,
        rows: &Arc<T>,
        variant: u8,
        gzip: bool,
        render: impl FnOnce(&T) -> Bytes,
    ) -> Body {
        let plain = |bytes| Body { bytes, gzip: false };
        if let Some((body, gz)) = self.kept(rows, variant) {
            return match (gzip && body.len() >= GZIP_FROM, gz) {
                (false, _) => plain(body),
                (true, Some(gz)) => Body {
                    bytes: gz,
                    gzip: true,
                },
                (true, None) => {
                    let gz = gzipped(&body);
                    self.keep_gz(rows, variant, gz.clone());
                    Body {
                        bytes: gz,
                        gzip: true,
                    }
                }
            };
        }
        // Bodies of rows the store dropped are never asked for again: let them go now rather
        // than at the next keep (a list too long to keep may not bring one for a long time).
        self.forget_dropped();
        let body = render(rows);
        // One holder is the caller; another means the store's cache holds these rows.
        if Arc::strong_count(rows) > 1 && body.len() <= MAX_BYTES {
            self.keep(rows, variant, body.clone());
            if gzip && body.len() >= GZIP_FROM {
                let gz = gzipped(&body);
                self.keep_gz(rows, variant, gz.clone());
                return Body {
                    bytes: gz,
                    gzip: true,
                };
            }
        }
        plain(body)
    }

    fn kept(&self, rows: &Arc<T>, variant: u8) -> Option<(Bytes, Option<Bytes>)> {
        let entries = self.entries.lock().expect("rendered lock");
        entries
            .iter()
            .find(|e| e.variant == variant && std::ptr::eq(e.rows.as_ptr(), Arc::as_ptr(rows)))
            .map(|e| (e.body.clone(), e.gz.clone()))
    }

    /// Keeps the gzipped body beside its entry, if the entry is still there.
    fn keep_gz(&self, rows: &Arc<T>, variant: u8, gz: Bytes) {
        let mut entries = self.entries.lock().expect("rendered lock");
        let entry = entries
            .iter_mut()
            .find(|e| e.variant == variant && std::ptr::eq(e.rows.as_ptr(), Arc::as_ptr(rows)));
        if let Some(e) = entry {
            e.gz = Some(gz);
        }
    }

    fn forget_dropped(&self) {
        let mut entries = self.entries.lock().expect("rendered lock");
        entries.retain(|e| e.rows.strong_count() > 0);
    }

    fn keep(&self, rows: &Arc<T>, variant: u8, body: Bytes) {
        let mut entries = self.entries.lock().expect("rendered lock");
        // The gzipped bodies are a tenth of their plain ones: bounded with them.
        let mut held: usize = entries.iter().map(|e| e.body.len()).sum();
        while !entries.is_empty() && (entries.len() >= MAX_ENTRIES || held + body.len() > MAX_BYTES)
        {
            held -= entries.remove(0).body.len();
        }
        entries.push(Entry {
            rows: Arc::downgrade(rows),
            variant,
            body,
            gz: None,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// `body` gzipped, at the fastest level: JSON this repetitive shrinks about tenfold at
/// it, and a stronger level would only cost time on every change of the list.
fn gzipped(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    enc.write_all(body).expect("writing to memory");
    Bytes::from(enc.finish().expect("writing to memory"))
}

/// Whether an `Accept-Encoding` value accepts gzip (`gzip` or `*`, not refused by `q=0`).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            // `q` is case-insensitive (RFC 9110 §12.4.2): `Q=0` refuses too.
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
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
    fn a_kept_large_body_is_gzipped_once_and_a_small_or_unkept_one_never() {
        use std::io::Read;
        let r: Rendered<Vec<u32>> = Rendered::default();
        let rows = Arc::new(vec![1]);
        let _store_holds = rows.clone();
        let big = Bytes::from("[{\"name\":\"x\"}]".repeat(GZIP_FROM));
        let gz = r.body_for(&rows, 0, true, |_| big.clone());
        assert!(gz.gzip);
        assert!(gz.bytes.len() * 10 < big.len(), "{}", gz.bytes.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz.bytes[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, big);
        assert_eq!(r.body_for(&rows, 0, true, |_| unreachable!("kept")), gz);
        let plain = r.body_for(&rows, 0, false, |_| unreachable!());
        assert_eq!((plain.bytes, plain.gzip), (big.clone(), false));
        let small_rows = Arc::new(vec![2]);
        let _held = small_rows.clone();
        r.body_for(&small_rows, 0, true, |_| Bytes::from_static(b"[]"));
        assert!(!r.body_for(&small_rows, 0, true, |_| unreachable!()).gzip);
        let alone = Arc::new(vec![3]);
        assert!(!r.body_for(&alone, 0, true, |_| big.clone()).gzip);
    }

    #[test]
    fn gzip_is_accepted_as_http_says() {
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "br;q=1.0, GZIP;q=0.5",
            "*",
            "deflate, *;q=0.1",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip; q=0.0",
            "gzip;Q=0",
            "x-gzip2",
        ] {
            assert!(!accepts_gzip(no), "{no}");
        }
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
