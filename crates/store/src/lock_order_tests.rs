//! PostgreSQL (when `LOBSTER_TEST_POSTGRES_URL` is set): statements that update several
//! hosts lock them in id order, as a batch of launches does, and batches of claims lock
//! their instances in id order. Each test holds one row in another transaction, lets the
//! statement wait for it, and checks that a row before it in the statement's own order
//! (and in the table) but later by id is not held meanwhile: locked in any other order, a
//! writer holding the first row would wait for the second while the statement waits for
//! the first (a deadlock PostgreSQL breaks after a second by failing one of them).

use crate::contract_tests::{delete_task, new_task, res, sample_instance, stores};
use crate::*;
use lobster_core::capacity::Resources;
use lobster_core::fleet::Fleet;
use std::future::Future;

/// Before `px1` by id; after it in the table (the demo fleet lists px1 first).
const FIRST: &str = "phl-gpu-01";
const LATER: &str = "px1";

/// Two rows of a table: the one held, first by id, and one later by id.
struct Rows {
    table: &'static str,
    first: &'static str,
    later: &'static str,
}

const HOSTS: Rows = Rows {
    table: "hosts",
    first: FIRST,
    later: LATER,
};

/// Runs `statement` while another transaction holds `FIRST`; once the statement waits for
/// it, `LATER` must be free. Then the holder lets go and the statement must succeed.
async fn waits_holding_nothing_after<F, Fut>(store: &Store, statement: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<(), lobster_core::Error>> + Send + 'static,
{
    waits_holding_nothing_after_in(store, &HOSTS, statement).await
}

/// As `waits_holding_nothing_after`, for the rows `rows`.
async fn waits_holding_nothing_after_in<F, Fut>(store: &Store, rows: &Rows, statement: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<(), lobster_core::Error>> + Send + 'static,
{
    let mut holder = store.begin().await.unwrap();
    let pid = backend_pid(&mut holder).await;
    let lock = format!(
        "SELECT id FROM {} WHERE id = $1 FOR NO KEY UPDATE",
        rows.table
    );
    holder.q(&lock).bind(rows.first).fetch_all().await.unwrap();
    let run = tokio::spawn(statement(store.clone()));
    blocked_by(store, pid).await;
    let later = lockable_now(store, rows.table, "id", rows.later).await;
    holder.rollback().await.unwrap();
    run.await.unwrap().unwrap();
    assert!(
        later.is_ok(),
        "{} was held while waiting for {}: {later:?}",
        rows.later,
        rows.first
    );
}

/// Whether another transaction could lock the row of `table` whose `key` is `value` at
/// once (an error when some transaction holds it).
async fn lockable_now(
    store: &Store,
    table: &str,
    key: &str,
    value: &str,
) -> Result<usize, lobster_core::Error> {
    let mut tx = store.begin().await.unwrap();
    let sql = format!("SELECT {key} FROM {table} WHERE {key} = $1 FOR NO KEY UPDATE NOWAIT");
    let got = tx.q(&sql).bind(value).fetch_all().await.map(|r| r.len());
    tx.rollback().await.unwrap();
    got
}

/// The server process of the transaction `tx` (whose locks `blocked_by` watches).
pub(crate) async fn backend_pid(tx: &mut Tx) -> i64 {
    let row = tx
        .q("SELECT pg_backend_pid()::bigint AS pid")
        .fetch_one()
        .await
        .unwrap();
    get_i64(&row, "pid").unwrap()
}

/// Returns once some statement waits for a lock the backend `pid` holds (polled: the
/// waiting itself is the event to see).
pub(crate) async fn blocked_by(store: &Store, pid: i64) {
    for _ in 0..4000 {
        let mut tx = store.begin().await.unwrap();
        let row = tx
            .q("SELECT count(*)::bigint AS n FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))")
            .bind(pid)
            .fetch_one()
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        if get_i64(&row, "n").unwrap() > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("nothing ever waited for the locks of {pid}");
}

/// The shares of `LATER` and `FIRST`, in that order (neither id order nor the reverse can
/// be left to the caller).
fn shares(cores: i64) -> Vec<(String, Resources)> {
    vec![(LATER.into(), res(cores)), (FIRST.into(), res(cores))]
}

async fn postgres_with_fleet() -> Vec<Store> {
    let mut out = Vec::new();
    for (store, _dir) in stores().await {
        if store.backend() == Backend::Postgres {
            store.fleet_sync(&Fleet::demo()).await.unwrap();
            out.push(store);
        }
    }
    out
}

#[tokio::test]
async fn releasing_several_hosts_locks_them_in_id_order() {
    for store in postgres_with_fleet().await {
        let mut tx = store.begin().await.unwrap();
        tx.hosts_reserve(&shares(2)).await.unwrap();
        tx.commit().await.unwrap();
        waits_holding_nothing_after(&store, |s| async move {
            let mut tx = s.begin().await?;
            tx.hosts_release(&shares(1)).await?;
            tx.commit().await
        })
        .await;
        let used: Vec<i64> = store
            .host_list()
            .await
            .unwrap()
            .iter()
            .filter(|h| h.id == FIRST || h.id == LATER)
            .map(|h| h.used.cores)
            .collect();
        assert_eq!(used, [1, 1]);
    }
}

#[tokio::test]
async fn reserving_on_several_hosts_locks_them_in_id_order() {
    for store in postgres_with_fleet().await {
        waits_holding_nothing_after(&store, |s| async move {
            let mut tx = s.begin().await?;
            tx.hosts_reserve(&shares(3)).await?;
            tx.commit().await
        })
        .await;
    }
}

#[tokio::test]
async fn fleet_sync_locks_the_hosts_in_id_order() {
    for store in postgres_with_fleet().await {
        waits_holding_nothing_after(
            &store,
            |s| async move { s.fleet_sync(&Fleet::demo()).await },
        )
        .await;
    }
}

/// `i1` and `i2`, rented, of account a1: `i2` first in the table.
const INSTANCES: Rows = Rows {
    table: "instances",
    first: "i1",
    later: "i2",
};

async fn rented_instances(store: &Store) {
    store.account_create("a1", "acme", 0).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    for (k, id) in [INSTANCES.later, INSTANCES.first].iter().enumerate() {
        let row = InstanceRow {
            name: format!("web-{k}"),
            ..sample_instance(id, "a1")
        };
        tx.instance_insert(&row).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// Claims of `i2` then `i1` (the order neither id order nor the table's would give).
fn claims() -> Vec<Claim> {
    [(INSTANCES.later, "k2"), (INSTANCES.first, "k1")]
        .iter()
        .map(|(id, task)| Claim {
            scope: Scope {
                account_id: "a1".into(),
                team_id: None,
            },
            id: (*id).into(),
            task_id: (*task).into(),
            new_status: "terminating".into(),
        })
        .collect()
}

#[tokio::test]
async fn a_batch_of_claims_locks_its_instances_in_id_order() {
    for store in postgres_with_fleet().await {
        rented_instances(&store).await;
        waits_holding_nothing_after_in(&store, &INSTANCES, |s| async move {
            let mut tx = s.begin().await?;
            let got = tx.instances_claim(&claims(), 9).await?;
            assert!(got.iter().all(Option::is_some), "{got:?}");
            tx.commit().await
        })
        .await;
    }
}

#[tokio::test]
async fn claims_queued_in_one_statement_lock_their_instances_in_id_order() {
    for store in postgres_with_fleet().await {
        rented_instances(&store).await;
        waits_holding_nothing_after_in(&store, &INSTANCES, |s| async move {
            let claims = claims();
            let with: Vec<ClaimFor> = claims
                .iter()
                .map(|claim| ClaimFor {
                    claim,
                    operation: "delete_instance",
                })
                .collect();
            let got = s.instances_claim_queue(&with, "Queued", 3, None, 9).await?;
            assert!(got.iter().all(Option::is_some), "{got:?}");
            Ok(())
        })
        .await;
    }
}

/// An instance read for a decision inside a transaction is held to its commit: another
/// transaction's lock on it waits (two address assignments would otherwise both pick the
/// same next interface).
#[tokio::test]
async fn an_instance_read_for_a_write_is_held_to_commit() {
    for store in postgres_with_fleet().await {
        rented_instances(&store).await;
        let scope = Scope {
            account_id: "a1".into(),
            team_id: None,
        };
        let mut reader = store.begin().await.unwrap();
        let got = reader.instance_get(&scope, INSTANCES.first).await.unwrap();
        assert!(got.is_some());
        let held = lockable_now(&store, "instances", "id", INSTANCES.first).await;
        reader.rollback().await.unwrap();
        assert!(held.is_err(), "the instance was not held: {held:?}");
    }
}

/// A restore queued from a backup holds the backup `available` to its commit: a delete's
/// transition of it waits, and then sees the restore's task.
#[tokio::test]
async fn a_backup_held_for_a_restore_waits_out_its_delete() {
    for store in postgres_with_fleet().await {
        rented_instances(&store).await;
        let backup = backup_row("local:backup/v1");
        let mut tx = store.begin().await.unwrap();
        tx.backup_insert(&backup).await.unwrap();
        tx.commit().await.unwrap();
        let mut restore = store.begin().await.unwrap();
        assert!(restore.backup_hold_available(&backup.volid).await.unwrap());
        let held = lockable_now(&store, "backups", "volid", &backup.volid).await;
        restore.rollback().await.unwrap();
        assert!(held.is_err(), "the backup was not held: {held:?}");
    }
}

/// A deadlock PostgreSQL breaks by failing one transaction is answered as `Unavailable`
/// (503: nothing was written, try again), not as an internal error.
#[tokio::test]
async fn a_deadlock_is_answered_as_unavailable() {
    for store in postgres_with_fleet().await {
        let lock = "SELECT id FROM hosts WHERE id = $1 FOR NO KEY UPDATE";
        let mut one = store.begin().await.unwrap();
        one.q(lock).bind(FIRST).fetch_all().await.unwrap();
        let mut two = store.begin().await.unwrap();
        let pid = backend_pid(&mut two).await;
        two.q(lock).bind(LATER).fetch_all().await.unwrap();
        let waits = tokio::spawn(async move {
            let got = one.q(lock).bind(LATER).fetch_all().await.map(|_| ());
            let _ = one.rollback().await;
            got
        });
        blocked_by(&store, pid).await;
        let second = two.q(lock).bind(FIRST).fetch_all().await.map(|_| ());
        let _ = two.rollback().await;
        let first = waits.await.unwrap();
        let failed: Vec<_> = [first, second]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            matches!(failed[0], lobster_core::Error::Unavailable(_)),
            "{failed:?}"
        );
    }
}

/// A lone launch that found every candidate busy locks those with room, in id order,
/// before it reserves on one (`Tx::hosts_lock_with_room`); a full one it neither waits for
/// nor holds.
#[tokio::test]
async fn a_lone_launch_waiting_for_its_candidates_locks_them_in_id_order() {
    for store in postgres_with_fleet().await {
        waits_holding_nothing_after(&store, |s| async move {
            let mut tx = s.begin().await?;
            tx.hosts_lock_with_room(&[LATER, FIRST], &res(1)).await?;
            tx.commit().await
        })
        .await;
        // FIRST (96 cores) has no room for 100: held elsewhere, it is passed over.
        let mut holder = store.begin().await.unwrap();
        holder.hosts_lock(&[FIRST]).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        // Bounded: waiting for FIRST would wait for this test's own holder, for good.
        let bound = std::time::Duration::from_secs(30);
        let big = res(100);
        let locked = tx.hosts_lock_with_room(&[LATER, FIRST], &big);
        let locked = tokio::time::timeout(bound, locked).await;
        locked.expect("waited for a full host").unwrap();
        assert!(lockable_now(&store, "hosts", "id", LATER).await.is_err());
        tx.rollback().await.unwrap();
        holder.rollback().await.unwrap();
    }
}

/// The end of a delete locks its instance's host before it ends the instance: a batch of
/// launches holding the host and writing the same name again waits for the ending
/// instance's name, so the other order could deadlock. While the host is held elsewhere,
/// the end waits without having touched the instance.
#[tokio::test]
async fn a_delete_end_locks_the_host_before_the_instance() {
    for store in postgres_with_fleet().await {
        store.account_create("a1", "acme", 0).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let row = InstanceRow {
            status: "terminating".into(),
            active_task_id: Some("t-d1".into()),
            ip_address: None,
            ..sample_instance("d1", "a1")
        };
        tx.instance_insert(&row).await.unwrap();
        assert!(tx.host_reserve("wil-cpu-03", &res(2)).await.unwrap());
        tx.task_insert(&delete_task("d1", 1)).await.unwrap();
        tx.commit().await.unwrap();
        store.task_claim("w1", 9, 60_000).await.unwrap().unwrap();
        let mut holder = store.begin().await.unwrap();
        let pid = backend_pid(&mut holder).await;
        holder
            .q("SELECT id FROM hosts WHERE id = $1 FOR NO KEY UPDATE")
            .bind("wil-cpu-03")
            .fetch_all()
            .await
            .unwrap();
        let s = store.clone();
        let end = tokio::spawn(async move {
            let items = [Deleted {
                task_id: "t-d1".into(),
                instance_id: "d1".into(),
                owner: "w1".into(),
            }];
            s.task_finish_deleted("VM deleted", 5, &items).await
        });
        blocked_by(&store, pid).await;
        let instance = lockable_now(&store, "instances", "id", "d1").await;
        holder.rollback().await.unwrap();
        assert_eq!(end.await.unwrap().unwrap(), [true]);
        assert!(instance.is_ok(), "the instance was held: {instance:?}");
    }
}

/// The other side of a restore's hold: a delete's transition of the backup waits for the
/// restore's transaction and, once it commits, sees the restore's task.
#[tokio::test]
async fn a_delete_waiting_on_a_restore_sees_its_task() {
    for store in postgres_with_fleet().await {
        rented_instances(&store).await;
        let volid = "local:backup/v2";
        let mut tx = store.begin().await.unwrap();
        tx.backup_insert(&backup_row(volid)).await.unwrap();
        tx.commit().await.unwrap();
        let mut restore = store.begin().await.unwrap();
        let pid = backend_pid(&mut restore).await;
        assert!(restore.backup_hold_available(volid).await.unwrap());
        let s = store.clone();
        let delete = tokio::spawn(async move {
            let mut tx = s.begin().await.unwrap();
            let moved = tx
                .backup_transition(volid, "available", "deleting", Some("t-del"), 9)
                .await
                .unwrap();
            let queued = tx.backup_restores_queued(volid).await.unwrap();
            tx.rollback().await.unwrap();
            (moved, queued)
        });
        blocked_by(&store, pid).await;
        restore
            .task_insert(&NewTask {
                instance_id: Some(INSTANCES.first.into()),
                operation: "restore_backup".into(),
                params: serde_json::json!({ "volid": volid }).to_string(),
                ..new_task("t-restore", 8)
            })
            .await
            .unwrap();
        restore.commit().await.unwrap();
        assert_eq!(delete.await.unwrap(), (true, true));
    }
}

/// An available backup of `i1`.
fn backup_row(volid: &str) -> BackupRow {
    BackupRow {
        volid: volid.into(),
        account_id: "a1".into(),
        instance_id: INSTANCES.first.into(),
        instance_name: "web-1".into(),
        storage: "local".into(),
        size_bytes: 1,
        format: "vma.zst".into(),
        notes: None,
        status: "available".into(),
        task_id: None,
        origin: "manual".into(),
        created_at: 0,
        updated_at: 0,
    }
}
