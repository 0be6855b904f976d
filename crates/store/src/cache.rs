//! A read cache for the requests tenants make most: one instance, the instance list, and (on
//! PostgreSQL) the API key every request presents.
//!
//! Why: on PostgreSQL every `GET /instances/{id}` cost two round trips, and this machine's
//! PostgreSQL answers about 15,000 primary-key reads a second (pgbench -S, 32 clients): no
//! arrangement of queries reaches 20,000 GETs a second. The answer most control planes give
//! (Kubernetes' watch cache, Nomad's state store) is to serve reads from memory that writes
//! invalidate. Here:
//!
//! - **This server's writes** invalidate before the writing request answers (`Tx::commit`
//!   evicts every instance the transaction wrote), so a client always reads its own writes.
//! - **Other servers' writes** arrive as PostgreSQL notifications on a channel per schema.
//!   They are sent after commit, batched, by a task of the writing server (a NOTIFY inside
//!   the writing transaction takes a database-wide lock for its commit: pgbench measured
//!   3,341 → 1,206 updates a second with it). Typically a write elsewhere is seen here within
//!   a millisecond.
//! - **Announcements go out only when another server listens.** Every listening server
//!   says so on the channel (`h:<its id>`) when it starts listening and every `HELLO_EVERY`;
//!   a server that has listened for `LISTENED_FOR` without hearing another's hello within
//!   `PRESENT_FOR` is alone, and its invalidations are applied here but not sent (the
//!   others answer a new server's first hello at once). Why: with one server (the common
//!   deployment) each announcement was a transaction and two wake-ups in PostgreSQL with no
//!   one to hear it, about a tenth of its CPU in a burst of launches (docs/benchmarks.md,
//!   session 17). A server that starts listening keeps its cache off for `GRACE` after its
//!   first hello, so that the others hear it before it keeps anything: a write they commit
//!   after hearing it is announced, one committed before is in what it reads once on. A
//!   server whose hellos stop (dead, or its announcing connection down) is taken for gone
//!   after `PRESENT_FOR`; if it is in fact still serving, what it serves is bounded by `TTL`,
//!   as below.
//! - **Anything missed** (the writing server died between commit and notification, a
//!   connection silently dead) is bounded by a time to live: an entry is at most `TTL` old.
//! - While the listening connection is down the cache is off (every read goes to the
//!   database), and it starts empty when the connection comes back.
//! - A fill never resurrects a stale row: a read notes the invalidation count before it asks
//!   the database, and its result is kept only if nothing invalidated that row (or, for a
//!   list, any instance) since.
//!
//! Key revocations are announced inside the revoking transaction (they are rare, and a
//! revoked key must stop working everywhere). On SQLite the admin CLI revokes keys from its
//! own process: keys are kept only while an inotify watch on the database's directory hears
//! no write, drained before every key lookup (see `watch`); instances are written only by the
//! serving process (one per SQLite file).

use crate::watch::{DbWatch, Drained};
use crate::{InstanceRow, KeyRow, Scope};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The oldest an entry may be when read.
pub(crate) const TTL: Duration = Duration::from_secs(1);
/// Bounds on what is held (a row is about a kilobyte).
const MAX_INSTANCES: usize = 20_000;
const MAX_LISTS: usize = 64;
/// A list longer than this is not kept (it would crowd out everything else).
const MAX_LIST_ROWS: usize = 10_000;
/// The rows all kept lists hold together (64 lists of 1,000, or 6 of 10,000).
const MAX_LISTED_ROWS: usize = 64_000;
const MAX_KEYS: usize = 10_000;
/// How many recent invalidations a fill is checked against; a read that saw more than this
/// many go by is not kept.
const RECENT: usize = 4_096;
/// A PostgreSQL notification's payload must stay under 8,000 bytes.
const PAYLOAD: usize = 7_000;
/// How often a listening server says so on the channel (see the module comment).
pub(crate) const HELLO_EVERY: Duration = Duration::from_secs(1);
/// How long after another server's last hello it is taken to be there.
const PRESENT_FOR: Duration = Duration::from_secs(3);
/// How long a server listens before it may find itself alone: the others answer its first
/// hello with theirs at once, and say hello every `HELLO_EVERY` anyway.
const LISTENED_FOR: Duration = Duration::from_millis(1_500);
/// How long a server that has just said hello waits before it keeps anything.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// What a notification names, on the wire: `i:<instance id>`, `k` (every key), `*`, or
/// `h:<server id>` (a server listening, not an invalidation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    Instance(String),
    Keys,
    All,
    Hello(String),
}

impl Token {
    fn encode(&self) -> String {
        match self {
            Token::Instance(id) => format!("i:{id}"),
            Token::Keys => "k".into(),
            Token::All => "*".into(),
            Token::Hello(id) => format!("h:{id}"),
        }
    }

    fn decode(s: &str) -> Token {
        match s {
            "k" => Token::Keys,
            _ => match (s.strip_prefix("i:"), s.strip_prefix("h:")) {
                (Some(id), _) => Token::Instance(id.to_string()),
                (_, Some(id)) => Token::Hello(id.to_string()),
                // Unknown tokens (a newer server's) clear everything: safe.
                _ => Token::All,
            },
        }
    }
}

/// One read of a scope's list, shared by the requests that missed it together.
pub(crate) type ListFill = tokio::sync::OnceCell<Arc<Vec<InstanceRow>>>;

/// A list read under way: the epoch it began in, the read, and its starter's ticket.
type Filling = (u64, Arc<ListFill>, Ticket);

/// The invalidation count when a read began (`None` when the cache was off), and when it
/// began: an entry's age counts from before its read, so that what it holds is at most `TTL`
/// older than what the database held then (a revocation relies on it: `Store::key_revoke`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(Option<u64>, Instant);

struct Entry<T> {
    at: Instant,
    value: T,
}

impl<T: Clone> Entry<T> {
    fn fresh(&self, ttl: Duration) -> Option<T> {
        (self.at.elapsed() < ttl).then(|| self.value.clone())
    }
}

#[derive(Default)]
struct State {
    /// Invalidations applied so far.
    epoch: u64,
    /// The epoch of the last clear of everything.
    cleared_at: u64,
    /// The epoch of the last invalidation of any instance (lists depend on all of them).
    instances_at: u64,
    /// The epoch of the last invalidation of keys.
    keys_at: u64,
    /// The last `RECENT` instance invalidations, oldest first.
    recent: VecDeque<(u64, String)>,
    instances: HashMap<String, Entry<InstanceRow>>,
    lists: HashMap<Scope, Entry<Arc<Vec<InstanceRow>>>>,
    keys: HashMap<String, Entry<KeyRow>>,
}

impl State {
    fn apply(&mut self, t: &Token) {
        self.epoch += 1;
        match t {
            Token::Instance(id) => {
                self.instances.remove(id);
                self.lists.clear();
                self.instances_at = self.epoch;
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back((self.epoch, id.clone()));
            }
            Token::Keys => {
                self.keys.clear();
                self.keys_at = self.epoch;
            }
            // Not an invalidation; `Cache::receive` takes hellos out before this.
            Token::Hello(_) => {}
            Token::All => {
                self.instances.clear();
                self.lists.clear();
                self.keys.clear();
                self.recent.clear();
                self.cleared_at = self.epoch;
                self.instances_at = self.epoch;
                self.keys_at = self.epoch;
            }
        }
    }

    /// May a read that began at `since` keep what it read?
    fn unchanged_since(&self, since: u64, at: u64) -> bool {
        since >= self.cleared_at && since >= at
    }

    fn instance_unchanged_since(&self, since: u64, id: &str) -> bool {
        if since < self.cleared_at || self.epoch - since > self.recent.len() as u64 {
            return false;
        }
        !self
            .recent
            .iter()
            .rev()
            .take_while(|(e, _)| *e > since)
            .any(|(_, i)| i == id)
    }
}

/// Keeps `value` under `key`, first making room if the map is full (expired entries go; if
/// that is not enough, everything goes: simpler than LRU, and a full cache is rare).
fn keep<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, Entry<V>>,
    (max, ttl): (usize, Duration),
    (key, at): (K, Instant),
    value: V,
) {
    if map.len() >= max {
        map.retain(|_, e| e.at.elapsed() < ttl);
        if map.len() >= max {
            map.clear();
        }
    }
    map.insert(key, Entry { at, value });
}

/// Who listens on the channel, as this server knows it (see the module comment).
#[derive(Default)]
struct Presence {
    /// Since when this server's listening connection is up (None while it is down).
    listening_since: Option<Instant>,
    /// Counts the starts and losses of the listening connection: a hello, or a switch on,
    /// meant for one listening does not apply to the next.
    generation: u64,
    /// The generation whose cache is to come on (after `GRACE` from its first hello).
    on_scheduled: Option<u64>,
    /// When each other server's hello was last heard (those heard within `PRESENT_FOR`).
    others: HashMap<String, Instant>,
    /// When this server's first hello of the current generation went out, and when its
    /// cache came on after it (tests check the grace between them).
    hello_at: Option<Instant>,
    on_at: Option<Instant>,
}

pub(crate) struct Cache {
    on: AtomicBool,
    /// This server's id in its hellos (its own come back to it and are not another's).
    id: String,
    presence: Mutex<Presence>,
    /// Asks the announcer for a hello now (the listening connection just came up).
    pub(crate) hello_now: Notify,
    /// `TTL`, in milliseconds (tests lengthen it so that a slow machine cannot expire what
    /// they check is held).
    ttl_ms: AtomicU64,
    /// Drops what other servers announce (for tests: a notification not yet delivered).
    #[cfg(test)]
    pub(crate) deaf: AtomicBool,
    /// Whether keys are kept and invalidations announced to other servers (PostgreSQL only;
    /// see the module comment). Without an announcer nothing may queue for one.
    shared: bool,
    /// SQLite: tells of writes by any process, so that keys can be kept (see `watch`);
    /// `watching` turns false for good if the watch breaks.
    watch: Option<DbWatch>,
    watching: AtomicBool,
    state: Mutex<State>,
    /// Reads of a scope's list under way, with the epoch they began at (see `list_fill`).
    /// Each scope's list read under way: its epoch, the read, and the ticket of the request
    /// that began it (the age of what it reads counts from there, whoever keeps it).
    fills: Mutex<HashMap<Scope, Filling>>,
    /// This server's invalidations waiting to be announced to the others (PostgreSQL).
    outbox: Mutex<Vec<Token>>,
    pub(crate) outbox_ready: Notify,
    /// Times the listening connection (re)started, tokens queued for announcement and
    /// tokens announced (sent or given up on): tests wait on these.
    pub(crate) listens: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) announced: AtomicU64,
    /// Payloads sent to the channel, and tokens not sent because no other server listens.
    pub(crate) sent: AtomicU64,
    pub(crate) unsent: AtomicU64,
    pub(crate) changed: Notify,
}

impl Cache {
    /// SQLite's cache (`shared` false) is on from the start; PostgreSQL's comes on when it
    /// listens.
    pub(crate) fn new(shared: bool) -> Arc<Cache> {
        Cache::build(shared, None)
    }

    /// SQLite's cache for a database file: keys are kept too, while `watch` hears no write.
    pub(crate) fn watching(watch: DbWatch) -> Arc<Cache> {
        Cache::build(false, Some(watch))
    }

    fn build(shared: bool, watch: Option<DbWatch>) -> Arc<Cache> {
        Arc::new(Cache {
            on: AtomicBool::new(!shared),
            id: lobster_core::ids::new_uuid(),
            presence: Mutex::new(Presence::default()),
            hello_now: Notify::new(),
            ttl_ms: AtomicU64::new(TTL.as_millis() as u64),
            #[cfg(test)]
            deaf: AtomicBool::new(false),
            shared,
            watching: AtomicBool::new(watch.is_some()),
            watch,
            state: Mutex::new(State::default()),
            fills: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            outbox_ready: Notify::new(),
            listens: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            announced: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    pub(crate) fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    pub(crate) fn ticket(&self) -> Ticket {
        let st = self.state();
        Ticket(self.is_on().then_some(st.epoch), Instant::now())
    }

    pub(crate) fn instance(&self, id: &str) -> Option<InstanceRow> {
        if !self.is_on() {
            return None;
        }
        self.state().instances.get(id)?.fresh(self.ttl())
    }

    pub(crate) fn keep_instance(&self, t: Ticket, row: &InstanceRow) {
        let Some(since) = t.0 else { return };
        let mut st = self.state();
        if self.is_on() && st.instance_unchanged_since(since, &row.id) {
            let limits = (MAX_INSTANCES, self.ttl());
            keep(
                &mut st.instances,
                limits,
                (row.id.clone(), t.1),
                row.clone(),
            );
        }
    }

    pub(crate) fn list(&self, scope: &Scope) -> Option<Arc<Vec<InstanceRow>>> {
        if !self.is_on() {
            return None;
        }
        self.state().lists.get(scope)?.fresh(self.ttl())
    }

    /// Keeps a list read since `t`; answers the rows to serve: the rows last kept for the
    /// scope when they are equal (a list re-read only because its entry aged out), so that
    /// what callers derived from them (a rendered body) stays good for them.
    pub(crate) fn keep_list(
        &self,
        t: Ticket,
        scope: &Scope,
        rows: Arc<Vec<InstanceRow>>,
    ) -> Arc<Vec<InstanceRow>> {
        let Some(since) = t.0 else { return rows };
        if rows.len() > MAX_LIST_ROWS {
            return rows;
        }
        let previous = self.state().lists.get(scope).map(|e| e.value.clone());
        let rows = match previous {
            Some(p) if Arc::ptr_eq(&p, &rows) || *p == *rows => p,
            _ => rows,
        };
        self.keep_list_rows((since, t.1), scope, &rows);
        rows
    }

    /// The read of `scope`'s list to share: one begun at the same epoch as `t` (nothing was
    /// invalidated since it began, so its rows are as good as a kept list), else a new one.
    /// Why: when a kept list of 10,000 expires, every request that misses it at once read all
    /// of it again (each 100 ms of PostgreSQL's time). None when the cache is off.
    pub(crate) fn list_fill(self: &Arc<Self>, t: Ticket, scope: &Scope) -> Option<FillTurn> {
        let epoch = t.0?;
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        let (fill, began) = match fills.get(scope) {
            Some((e, f, began)) if *e == epoch => (f.clone(), *began),
            _ => {
                let f = Arc::new(ListFill::new());
                fills.insert(scope.clone(), (epoch, f.clone(), t));
                (f, t)
            }
        };
        Some(FillTurn {
            cache: self.clone(),
            scope: scope.clone(),
            fill,
            began,
        })
    }

    fn keep_list_rows(
        &self,
        (since, at): (u64, Instant),
        scope: &Scope,
        rows: &Arc<Vec<InstanceRow>>,
    ) {
        let mut st = self.state();
        if self.is_on() && st.unchanged_since(since, st.instances_at) {
            let ttl = self.ttl();
            let held = |st: &State| st.lists.values().map(|e| e.value.len()).sum::<usize>();
            if held(&st) + rows.len() > MAX_LISTED_ROWS {
                st.lists.retain(|_, e| e.at.elapsed() < ttl);
                if held(&st) + rows.len() > MAX_LISTED_ROWS {
                    st.lists.clear();
                }
            }
            keep(
                &mut st.lists,
                (MAX_LISTS, ttl),
                (scope.clone(), at),
                rows.clone(),
            );
        }
    }

    /// Whether keys may be kept: announced revocations (PostgreSQL) or a working watch.
    fn keeps_keys(&self) -> bool {
        self.shared || self.watching.load(Ordering::Acquire)
    }

    /// The key kept under `digest`. On SQLite the watch is drained first, under the state's
    /// lock: a request that finds the queue empty cannot see a key another request is about
    /// to drop for an event it just read.
    pub(crate) fn key(&self, digest: &str) -> Option<KeyRow> {
        if !self.keeps_keys() || !self.is_on() {
            return None;
        }
        let mut st = self.state();
        if let Some(w) = &self.watch {
            match w.drain() {
                Drained::Quiet => {}
                Drained::Changed => st.apply(&Token::Keys),
                Drained::Broken => {
                    self.watching.store(false, Ordering::Release);
                    st.apply(&Token::Keys);
                    return None;
                }
            }
        }
        st.keys.get(digest)?.fresh(self.ttl())
    }

    pub(crate) fn keep_key(&self, t: Ticket, digest: &str, row: &KeyRow) {
        let Some(since) = t.0 else { return };
        if !self.keeps_keys() {
            return;
        }
        let mut st = self.state();
        if self.is_on() && st.unchanged_since(since, st.keys_at) {
            let limits = (MAX_KEYS, self.ttl());
            keep(&mut st.keys, limits, (digest.to_string(), t.1), row.clone());
        }
    }

    /// Applies invalidations: this server's own (`announce`: queue them for the others) or
    /// another's.
    pub(crate) fn invalidate(&self, tokens: Vec<Token>, announce: bool) {
        if tokens.is_empty() {
            return;
        }
        {
            let mut st = self.state();
            for t in &tokens {
                st.apply(t);
            }
        }
        if announce && self.shared {
            self.queued.fetch_add(tokens.len() as u64, Ordering::AcqRel);
            self.outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(tokens);
            self.outbox_ready.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// This server wrote the instance outside a `Tx` (a single-statement write).
    pub(crate) fn wrote_instance(&self, id: &str) {
        self.invalidate(vec![Token::Instance(id.to_string())], true);
    }

    /// Applies a notification's payload from another server (or this one's, echoed); a
    /// hello from another server is noted, not applied.
    pub(crate) fn receive(&self, payload: &str) {
        #[cfg(test)]
        if self.deaf.load(Ordering::Acquire) {
            return;
        }
        let (hellos, tokens): (Vec<Token>, Vec<Token>) = payload
            .split(',')
            .map(Token::decode)
            .partition(|t| matches!(t, Token::Hello(_)));
        for h in hellos {
            let Token::Hello(id) = h else { continue };
            if id == self.id {
                continue;
            }
            let mut p = self.presence();
            p.others.retain(|_, at| at.elapsed() < PRESENT_FOR);
            // A server not heard from lately has just started listening: answer at once,
            // so that it knows of this one before it may find itself alone.
            if p.others.insert(id, Instant::now()).is_none() {
                self.hello_now.notify_one();
            }
            drop(p);
            self.changed.notify_waiters();
        }
        self.invalidate(tokens, false);
    }

    fn presence(&self) -> MutexGuard<'_, Presence> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no other server listens, as far as this one can tell: its own listening
    /// connection has been up for `LISTENED_FOR` and has heard no other server's hello
    /// within `PRESENT_FOR`. Without that connection it cannot tell, and is not alone.
    pub(crate) fn alone(&self) -> bool {
        let p = self.presence();
        let listened = p
            .listening_since
            .is_some_and(|since| since.elapsed() >= LISTENED_FOR);
        listened && p.others.values().all(|at| at.elapsed() >= PRESENT_FOR)
    }

    /// The hello to send now, with the generation it is for; None while not listening.
    pub(crate) fn hello(&self) -> Option<(String, u64)> {
        let p = self.presence();
        p.listening_since?;
        Some((Token::Hello(self.id.clone()).encode(), p.generation))
    }

    /// A hello for `generation` went out. Answers how long to wait before calling
    /// `switch_on(generation)`, the first time only (the cache is not on yet).
    pub(crate) fn said_hello(&self, generation: u64) -> Option<Duration> {
        let mut p = self.presence();
        if p.generation != generation || p.on_scheduled == Some(generation) {
            return None;
        }
        p.on_scheduled = Some(generation);
        p.hello_at = Some(Instant::now());
        Some(GRACE)
    }

    /// As if the listening connection had been up for `d` already (for tests).
    #[cfg(test)]
    pub(crate) fn pretend_listening_for(&self, d: Duration) {
        self.presence().listening_since = Instant::now().checked_sub(d);
    }

    /// When the cache came on after its first hello (for tests).
    #[cfg(test)]
    pub(crate) fn grace_kept(&self) -> Option<Duration> {
        let p = self.presence();
        Some(p.on_at?.duration_since(p.hello_at?))
    }

    /// The listening connection is down: nothing cached can be trusted to be invalidated.
    pub(crate) fn switch_off(&self) {
        // Under the presence lock: a `switch_on` of the lost connection cannot come between.
        let mut p = self.presence();
        p.listening_since = None;
        p.generation += 1;
        self.on.store(false, Ordering::Release);
        self.state().apply(&Token::All);
        drop(p);
        self.changed.notify_waiters();
    }

    /// The listening connection is up (again): say hello; the cache comes on `GRACE` after.
    pub(crate) fn listening(&self) {
        {
            let mut p = self.presence();
            p.listening_since = Some(Instant::now());
            p.generation += 1;
        }
        self.hello_now.notify_one();
    }

    /// `GRACE` has passed since the first hello of `generation`: start from empty, if that
    /// listening connection is still the one up.
    pub(crate) fn switch_on(&self, generation: u64) {
        let mut p = self.presence();
        if p.generation != generation || p.listening_since.is_none() {
            return;
        }
        p.on_at = Some(Instant::now());
        self.state().apply(&Token::All);
        self.on.store(true, Ordering::Release);
        drop(p);
        self.listens.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// The queued announcements, as notification payloads with the number of tokens each.
    pub(crate) fn take_outbox(&self) -> Vec<(String, u64)> {
        let tokens = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
        let mut payloads: Vec<(String, u64)> = Vec::new();
        for t in tokens {
            let s = t.encode();
            match payloads.last_mut() {
                Some((p, n)) if p.len() + 1 + s.len() <= PAYLOAD => {
                    p.push(',');
                    p.push_str(&s);
                    *n += 1;
                }
                _ => payloads.push((s, 1)),
            }
        }
        payloads
    }

    /// A payload of `n` tokens went out (or was given up on).
    pub(crate) fn announced(&self, n: u64) {
        self.announced.fetch_add(n, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

/// A share in a list read; the last one out (or the reader, once done) forgets the read.
pub(crate) struct FillTurn {
    cache: Arc<Cache>,
    scope: Scope,
    pub(crate) fill: Arc<ListFill>,
    /// The ticket of the request that began the read: what a request that joined it keeps
    /// the rows under, so that their age counts from before the read, not from the join.
    pub(crate) began: Ticket,
}

impl Drop for FillTurn {
    fn drop(&mut self) {
        let mut fills = self.cache.fills.lock().unwrap_or_else(|p| p.into_inner());
        if fills
            .get(&self.scope)
            .is_some_and(|(_, f, _)| Arc::ptr_eq(f, &self.fill))
        {
            fills.remove(&self.scope);
        }
    }
}

/// Whether `row` is one `scope` may see through `instance_get`: the SQL path's condition
/// (`account_id = ? [AND team_id = ?] AND status is live`), in Rust.
pub(crate) fn visible(scope: &Scope, row: &InstanceRow) -> bool {
    row.account_id == scope.account_id
        && scope
            .team_id
            .as_deref()
            .is_none_or(|t| row.team_id.as_deref() == Some(t))
        && matches!(row.status.as_str(), "creating" | "rented" | "terminating")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_after_an_invalidation_of_its_row_is_not_kept() {
        let mut st = State::default();
        let since = st.epoch;
        st.apply(&Token::Instance("a".into()));
        assert!(!st.instance_unchanged_since(since, "a"));
        assert!(st.instance_unchanged_since(since, "b"));
        st.apply(&Token::All);
        assert!(!st.instance_unchanged_since(since, "b"));
        assert!(st.instance_unchanged_since(st.epoch, "a"));
    }

    #[test]
    fn a_fill_that_saw_more_invalidations_than_are_remembered_is_not_kept() {
        let mut st = State::default();
        let since = st.epoch;
        for i in 0..=RECENT {
            st.apply(&Token::Instance(format!("x{i}")));
        }
        assert!(!st.instance_unchanged_since(since, "a"));
    }

    /// Lists of up to 10,000 rows are kept, but together they never hold more than the
    /// row budget (the memory bound).
    #[test]
    fn kept_lists_stay_within_the_row_budget() {
        let c = Cache::new(false);
        c.set_ttl(Duration::from_secs(3600));
        let rows = Arc::new(vec![
            crate::contract_tests::sample_instance("i", "a");
            MAX_LIST_ROWS
        ]);
        let scope = |k: usize| Scope {
            account_id: format!("a{k}"),
            team_id: None,
        };
        for k in 0..10 {
            c.keep_list(c.ticket(), &scope(k), rows.clone());
            let held: usize = c.state().lists.values().map(|e| e.value.len()).sum();
            assert!(held <= MAX_LISTED_ROWS, "{held} rows held");
            assert!(c.list(&scope(k)).is_some(), "the newest list is kept");
        }
        let too_long = Arc::new(vec![rows[0].clone(); MAX_LIST_ROWS + 1]);
        c.keep_list(c.ticket(), &scope(99), too_long);
        assert!(c.list(&scope(99)).is_none());
    }

    /// A list re-read after its entry aged out, and found equal, is served as the rows kept
    /// before (what was rendered from them stays good); a changed one replaces them.
    #[test]
    fn an_equal_re_read_keeps_the_rows_kept_before() {
        let c = Cache::new(false);
        let scope = Scope {
            account_id: "a".into(),
            team_id: None,
        };
        let row = crate::contract_tests::sample_instance("i", "a");
        let first = c.keep_list(c.ticket(), &scope, Arc::new(vec![row.clone()]));
        let again = c.keep_list(c.ticket(), &scope, Arc::new(vec![row.clone()]));
        assert!(Arc::ptr_eq(&first, &again));
        assert!(Arc::ptr_eq(&c.list(&scope).unwrap(), &first));
        let renamed = InstanceRow {
            name: "other".into(),
            ..row
        };
        let changed = c.keep_list(c.ticket(), &scope, Arc::new(vec![renamed]));
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(c.list(&scope).unwrap()[0].name, "other");
    }

    fn key_row() -> KeyRow {
        crate::contract_tests::sample_key()
    }

    /// SQLite: a key read before a write that another lookup has since heard (and dropped
    /// keys for) is not kept; one read after it is.
    #[test]
    fn a_key_read_before_a_heard_write_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        std::fs::write(&db, b"").unwrap();
        let c = Cache::watching(DbWatch::open(db.to_str().unwrap()).unwrap());
        c.set_ttl(Duration::from_secs(3600));
        let before = c.ticket();
        std::fs::write(dir.path().join("t.db-wal"), b"commit").unwrap();
        assert!(c.key("d1").is_none(), "this lookup hears the write");
        c.keep_key(before, "d1", &key_row());
        assert!(c.key("d1").is_none(), "the older read is not kept");
        c.keep_key(c.ticket(), "d1", &key_row());
        assert_eq!(c.key("d1"), Some(key_row()));
        std::fs::write(dir.path().join("t.db-wal"), b"revoke").unwrap();
        assert!(c.key("d1").is_none(), "a write drops kept keys");
    }

    /// A request can hear a revocation's WAL frames, read the key before the commit is
    /// visible and keep it; the signal written after the commit drops it again.
    #[test]
    fn a_key_kept_from_a_read_before_a_commit_was_visible_is_dropped_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        std::fs::write(&db, b"").unwrap();
        let c = Cache::watching(DbWatch::open(db.to_str().unwrap()).unwrap());
        c.set_ttl(Duration::from_secs(3600));
        std::fs::write(dir.path().join("t.db-wal"), b"frames").unwrap();
        assert!(c.key("d1").is_none(), "the frames are heard");
        c.keep_key(c.ticket(), "d1", &key_row());
        assert!(c.key("d1").is_some(), "the read before the commit was kept");
        crate::watch::tell(db.to_str().unwrap()).unwrap();
        assert!(
            c.key("d1").is_none(),
            "the signal after the commit drops it"
        );
    }

    /// Without a watch (SQLite in memory) or announcements, keys are never kept.
    #[test]
    fn a_cache_that_cannot_hear_revocations_keeps_no_keys() {
        let c = Cache::new(false);
        c.keep_key(c.ticket(), "d1", &key_row());
        assert!(c.key("d1").is_none());
    }

    /// Requests that miss a list together share one read, but only one begun since the
    /// last invalidation (a read begun before it could miss a write the requester made).
    #[test]
    fn list_reads_are_shared_only_within_an_epoch() {
        let c = Cache::new(false);
        let scope = Scope {
            account_id: "a".into(),
            team_id: None,
        };
        let began = c.ticket();
        let first = c.list_fill(began, &scope).unwrap();
        let later = Ticket(began.0, began.1 + Duration::from_millis(200));
        let joined = c.list_fill(later, &scope).unwrap();
        assert!(Arc::ptr_eq(&first.fill, &joined.fill));
        // The rows a joiner keeps are as old as the read it joined, not as its own request.
        assert_eq!(joined.began.1, began.1);
        c.invalidate(vec![Token::Instance("x".into())], false);
        let after = c.list_fill(c.ticket(), &scope).unwrap();
        assert!(!Arc::ptr_eq(&first.fill, &after.fill));
        drop((first, joined));
        assert_eq!(
            c.fills.lock().unwrap().len(),
            1,
            "the newer read is still shared"
        );
        drop(after);
        assert!(c.fills.lock().unwrap().is_empty());
    }

    /// Another server's first hello is answered at once (so that a server starting up learns
    /// of the others before it may find itself alone) and makes this one not alone; a hello
    /// heard again, or this server's own coming back, is not answered.
    #[tokio::test]
    async fn hellos_are_noted_and_a_new_servers_answered_at_once() {
        let c = Cache::new(true);
        let answered = |c: &Arc<Cache>| {
            let c = c.clone();
            async move {
                tokio::time::timeout(Duration::ZERO, c.hello_now.notified())
                    .await
                    .is_ok()
            }
        };
        assert!(!c.alone(), "not listening: cannot tell");
        c.listening();
        assert!(
            answered(&c).await,
            "the first hello of a listening connection"
        );
        assert!(!c.alone(), "not listened long enough");
        c.pretend_listening_for(Duration::from_secs(3600));
        assert!(c.alone());
        c.receive(&Token::Hello(c.id.clone()).encode());
        assert!(!answered(&c).await && c.alone(), "its own hello");
        c.receive("h:other,i:x");
        assert!(answered(&c).await, "a new server is answered");
        assert!(!c.alone());
        c.receive("h:other");
        assert!(!answered(&c).await, "a known one is not");
        assert_eq!(c.state().epoch, 1, "only the instance was invalidated");
    }

    #[test]
    fn a_cache_no_one_announces_for_queues_nothing() {
        let c = Cache::new(false);
        c.invalidate(vec![Token::Instance("a".into())], true);
        assert!(c.take_outbox().is_empty());
    }

    #[test]
    fn payloads_stay_under_the_notification_limit_and_round_trip() {
        let c = Cache::new(true);
        let ids: Vec<String> = (0..1000).map(|i| format!("inst-{i:020}")).collect();
        c.invalidate(ids.iter().cloned().map(Token::Instance).collect(), true);
        let payloads = c.take_outbox();
        assert!(payloads.len() > 1);
        let back: Vec<Token> = payloads
            .iter()
            .flat_map(|(p, _)| p.split(',').map(Token::decode))
            .collect();
        assert_eq!(payloads.iter().map(|(_, n)| n).sum::<u64>(), 1000);
        assert_eq!(
            back,
            ids.into_iter().map(Token::Instance).collect::<Vec<_>>()
        );
        assert!(payloads.iter().all(|(p, _)| p.len() <= PAYLOAD));
    }
}
