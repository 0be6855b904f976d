//! `Store::launches_write` (PostgreSQL, when `LOBSTER_TEST_POSTGRES_URL` is set): a batch
//! of launches in one statement is written whole or not at all, and batches written at once
//! by two servers never overbook a host.

use crate::contract_tests::{
    cpu_cores_used, new_task, res, sample_instance, server_pairs, stores, with_pool,
};
use crate::launches::ADDRESS_TO_COME;
use crate::*;
use lobster_core::capacity::Resources;
use lobster_core::fleet::Fleet;

/// A launch of `cores` on wil-cpu-03 as the app writes it before the statement: creating,
/// no address yet, its task's parameters waiting for one.
fn launch(id: &str, name: &str, cores: i64) -> (InstanceRow, NewTask) {
    let instance = InstanceRow {
        name: name.into(),
        status: "creating".into(),
        power_status: "stopped".into(),
        ip_address: None,
        active_task_id: Some(format!("t-{id}")),
        ready_at: None,
        resources: res(cores),
        ..sample_instance(id, "a1")
    };
    let task = NewTask {
        instance_id: Some(id.into()),
        account_id: "a1".into(),
        params: format!(r#"{{"vm_uuid":"{id}",{ADDRESS_TO_COME}}}"#),
        ..new_task(&format!("t-{id}"), 7)
    };
    (instance, task)
}

/// A batch's rows, for `LaunchBatch` to borrow.
struct Rows {
    instances: Vec<InstanceRow>,
    tasks: Vec<NewTask>,
}

impl Rows {
    fn of(launches: &[(InstanceRow, NewTask)]) -> Rows {
        Rows {
            instances: launches.iter().map(|(i, _)| i.clone()).collect(),
            tasks: launches.iter().map(|(_, t)| t.clone()).collect(),
        }
    }

    /// The batch in us-east-1, at time 7.
    fn batch<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        adds: &'a [(String, Resources)],
    ) -> LaunchBatch<'a> {
        LaunchBatch {
            region: "us-east-1",
            instances: &self.instances,
            tasks: &self.tasks,
            lease,
            adds,
            now: 7,
            skip_held: false,
        }
    }
}

async fn write(
    store: &Store,
    launches: &[(InstanceRow, NewTask)],
    lease: Option<&Lease>,
    adds: &[(String, Resources)],
) -> Result<LaunchesWritten, lobster_core::Error> {
    let rows = Rows::of(launches);
    store.launches_write(&rows.batch(lease, adds)).await
}

/// What a look at the batch's instances finds (as after a connection lost mid-statement).
async fn found(store: &Store, launches: &[(InstanceRow, NewTask)]) -> Option<Vec<String>> {
    let rows = Rows::of(launches);
    store.launches_found(&rows.batch(None, &[])).await.unwrap()
}

fn on_cpu_host(cores: i64) -> Vec<(String, Resources)> {
    vec![("wil-cpu-03".into(), res(cores))]
}

/// Nothing of the batch is anywhere: instances, tasks, addresses.
async fn nothing_of(store: &Store, ids: &[&str]) {
    let held = store.ip_assignments().await.unwrap();
    for id in ids {
        assert_eq!(store.instance_by_id(id).await.unwrap(), None);
        assert_eq!(store.task_by_id(&format!("t-{id}")).await.unwrap(), None);
        assert!(held.iter().all(|(_, i)| i != id));
    }
}

#[tokio::test]
async fn a_batch_of_launches_in_one_statement_is_written_whole_or_not_at_all() {
    for (store, _d) in stores().await {
        if store.backend() != Backend::Postgres {
            assert!(
                write(&store, &[launch("vm0", "web-0", 2)], None, &on_cpu_host(2))
                    .await
                    .is_err()
            );
            continue;
        }
        with_pool(&store, "10.9.0.1-10.9.0.3").await;
        store.account_create("a1", "acme", 0).await.unwrap();
        let lease = Lease {
            owner: "w1".into(),
            until: 30_007,
        };
        let first = [launch("vm0", "web-0", 2), launch("vm1", "web-1", 2)];
        assert_eq!(found(&store, &first).await, None);
        let got = write(&store, &first, Some(&lease), &on_cpu_host(4)).await;
        let addresses = vec!["10.9.0.1".to_string(), "10.9.0.2".to_string()];
        assert_eq!(got.unwrap(), LaunchesWritten::Written(addresses.clone()));
        assert_eq!(found(&store, &first).await, Some(addresses.clone()));
        for address in &addresses {
            // Written by the statement, as the server computes it.
            assert_eq!(
                crate::contract_tests::stored_mac(&store, address).await,
                Some(lobster_core::ip::mac_for_address(address))
            );
        }

        for ((instance, task), address) in first.iter().zip(&addresses) {
            let want = InstanceRow {
                ip_address: Some(address.clone()),
                ..instance.clone()
            };
            assert_eq!(
                store.instance_by_id(&instance.id).await.unwrap(),
                Some(want)
            );
            let params = format!(
                r#"{{"vm_uuid":"{}","ip_address":"{address}"}}"#,
                instance.id
            );
            let want = NewTask {
                params,
                ..task.clone()
            };
            let stored = store.task_by_id(&task.id).await.unwrap().unwrap();
            assert_eq!(stored, want.leased_row(&lease));
        }
        let mut held = store.ip_assignments().await.unwrap();
        held.sort();
        assert_eq!(
            held,
            [
                ("10.9.0.1".into(), "vm0".into()),
                ("10.9.0.2".into(), "vm1".into())
            ]
        );
        assert_eq!(store.ip_history("a1").await.unwrap().len(), 2);
        // Read off the instances: a primary has no history row of its own.
        let rows: (i64,) = sqlx::query_as("SELECT count(*) FROM ip_history")
            .fetch_one(store.reader())
            .await
            .unwrap();
        assert_eq!(rows.0, 0);
        assert_eq!(cpu_cores_used(&store).await, 4);

        // One address left for two launches.
        let short = [launch("vm2", "web-2", 2), launch("vm3", "web-3", 2)];
        let got = write(&store, &short, None, &on_cpu_host(4)).await;
        assert_eq!(got.unwrap(), LaunchesWritten::NoAddresses);
        assert_eq!(found(&store, &short).await, None);
        nothing_of(&store, &["vm2", "vm3"]).await;
        assert_eq!(cpu_cores_used(&store).await, 4);

        // 60 cores free on wil-cpu-03.
        let big = [launch("vm4", "web-4", 61)];
        let got = write(&store, &big, None, &on_cpu_host(61)).await;
        assert_eq!(got.unwrap(), LaunchesWritten::NoRoom);
        nothing_of(&store, &["vm4"]).await;
        assert_eq!(cpu_cores_used(&store).await, 4);

        // Two hosts, one of them full: nothing on either. (One address is left, so one
        // launch; the additions stand for a batch's.)
        let adds = vec![
            ("wil-cpu-03".into(), res(61)),
            ("wil-gpu-26".into(), res(2)),
        ];
        let got = write(&store, &[launch("vm7", "web-7", 2)], None, &adds).await;
        assert_eq!(got.unwrap(), LaunchesWritten::NoRoom);
        nothing_of(&store, &["vm7"]).await;
        let hosts = store.host_list().await.unwrap();
        let gpu = hosts.iter().find(|h| h.id == "wil-gpu-26").unwrap();
        assert_eq!((cpu_cores_used(&store).await, gpu.used.cores), (4, 0));

        // What the statement relies on is checked before it runs: a host once, a task each.
        let two = [launch("vm7", "web-7", 2), launch("vm8", "web-8", 2)];
        let twice = vec![("wil-cpu-03".into(), res(1)), ("wil-cpu-03".into(), res(1))];
        assert!(write(&store, &two, None, &twice).await.is_err());
        let mut rows = Rows::of(&two);
        rows.tasks.pop();
        let adds = on_cpu_host(4);
        assert!(store
            .launches_write(&rows.batch(None, &adds))
            .await
            .is_err());
        nothing_of(&store, &["vm7", "vm8"]).await;

        // A name already live fails the statement: nothing written.
        let taken = [launch("vm5", "web-0", 2)];
        assert!(write(&store, &taken, None, &on_cpu_host(2)).await.is_err());
        nothing_of(&store, &["vm5"]).await;
        assert_eq!(cpu_cores_used(&store).await, 4);

        // The address none of those took is still there, pending task and all.
        let last = [launch("vm6", "web-6", 2)];
        let got = write(&store, &last, None, &on_cpu_host(2)).await;
        assert_eq!(
            got.unwrap(),
            LaunchesWritten::Written(vec!["10.9.0.3".into()])
        );
        let task = store.task_by_id("t-vm6").await.unwrap().unwrap();
        assert_eq!((task.status.as_str(), task.attempts), ("PENDING", 0));
        assert_eq!(cpu_cores_used(&store).await, 6);
    }
}

/// Two servers write twelve batches of 8 cores at once on a host of 64: exactly eight are
/// written, each whole, and the host's reservation is what they placed.
#[tokio::test]
async fn batches_written_at_once_by_two_servers_never_overbook_a_host() {
    for (a, b, _d) in server_pairs().await {
        if a.backend() != Backend::Postgres {
            continue;
        }
        with_pool(&a, "10.9.0.1-10.9.0.200").await;
        a.account_create("a1", "acme", 0).await.unwrap();
        let mut runs = tokio::task::JoinSet::new();
        for k in 0..12 {
            let store = if k % 2 == 0 { a.clone() } else { b.clone() };
            runs.spawn(async move {
                let batch = [
                    launch(&format!("vm{k}a"), &format!("web-{k}a"), 4),
                    launch(&format!("vm{k}b"), &format!("web-{k}b"), 4),
                ];
                let got = write(&store, &batch, None, &on_cpu_host(8)).await.unwrap();
                (batch, got)
            });
        }
        let mut written = 0;
        for (batch, got) in runs.join_all().await {
            match got {
                LaunchesWritten::Written(addresses) => {
                    written += 1;
                    assert_eq!(addresses.len(), 2);
                    for (i, _) in &batch {
                        assert!(a.instance_by_id(&i.id).await.unwrap().is_some());
                    }
                }
                LaunchesWritten::NoRoom => {
                    let ids: Vec<&str> = batch.iter().map(|(i, _)| i.id.as_str()).collect();
                    nothing_of(&a, &ids).await;
                }
                LaunchesWritten::NoAddresses => panic!("200 addresses for 24 launches"),
            }
        }
        assert_eq!(written, 8);
        assert_eq!(cpu_cores_used(&a).await, 64);
        let held = a.ip_assignments().await.unwrap();
        assert_eq!(held.len(), 16);
        let mut addresses: Vec<&String> = held.iter().map(|(ip, _)| ip).collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), 16);
    }
}

/// A server's address search starts past the last address it took; when too few are free
/// past there (another server added one below: released addresses go to the back, so it
/// takes a pool's growth), the statement searches again from the pool's start instead of
/// refusing.
#[tokio::test]
async fn a_batch_short_of_addresses_past_the_hint_searches_the_whole_pool() {
    for (a, b, _d) in server_pairs().await {
        if a.backend() != Backend::Postgres {
            continue;
        }
        let mut fleet = with_pool(&a, "10.9.0.1-10.9.0.3").await;
        a.account_create("a1", "acme", 0).await.unwrap();
        let first = [launch("vm0", "web-0", 1), launch("vm1", "web-1", 1)];
        let got = write(&a, &first, None, &on_cpu_host(2)).await.unwrap();
        assert_eq!(
            got,
            LaunchesWritten::Written(vec!["10.9.0.1".into(), "10.9.0.2".into()])
        );
        // The other server adds an address first in the pools: a's hint still points past
        // 10.9.0.2.
        fleet.regions[0].ip_pools = vec!["10.9.0.9-10.9.0.9".into(), "10.9.0.1-10.9.0.3".into()];
        b.fleet_sync(&fleet).await.unwrap();
        let next = [launch("vm2", "web-2", 1), launch("vm3", "web-3", 1)];
        let got = write(&a, &next, None, &on_cpu_host(2)).await.unwrap();
        assert_eq!(
            got,
            LaunchesWritten::Written(vec!["10.9.0.9".into(), "10.9.0.3".into()])
        );
    }
}

/// A batch written again (as when the first answer was lost with its connection) fails on
/// its instances' ids; the look that follows finds it written, with the first write's
/// addresses, and nothing is written twice.
#[tokio::test]
async fn a_batch_whose_answer_was_lost_is_found_written() {
    for (store, _d) in stores().await {
        if store.backend() != Backend::Postgres {
            continue;
        }
        store.fleet_sync(&Fleet::demo()).await.unwrap();
        store.account_create("a1", "acme", 0).await.unwrap();
        let first = [launch("vm0", "web-0", 2), launch("vm1", "web-1", 2)];
        let got = write(&store, &first, None, &on_cpu_host(4)).await.unwrap();
        let again = write(&store, &first, None, &on_cpu_host(4)).await.unwrap();
        assert_eq!(again, got);
        assert_eq!(store.ip_assignments().await.unwrap().len(), 2);
        assert_eq!(cpu_cores_used(&store).await, 4);
    }
}

/// A batch inserts its instances in name order: two servers' batches (on different hosts)
/// naming the same instances in different orders would otherwise each hold a name the
/// other waits for. Here another transaction holds web-a, uncommitted, while a batch of
/// web-b then web-a waits for it: web-b must not be held meanwhile.
#[tokio::test]
async fn a_batch_inserts_its_instances_in_name_order() {
    if let Some(store) = postgres_with_pool("10.9.0.1-10.9.0.50").await {
        let named = |id: &str, name: &str| InstanceRow {
            name: name.into(),
            ..sample_instance(id, "a1")
        };
        let mut holder = store.begin().await.unwrap();
        let pid = crate::lock_order_tests::backend_pid(&mut holder).await;
        holder.instance_insert(&named("h1", "web-a")).await.unwrap();
        let s = store.clone();
        let run = tokio::spawn(async move {
            let batch = [launch("vm2", "web-b", 2), launch("vm1", "web-a", 2)];
            write(&s, &batch, None, &on_cpu_host(4)).await
        });
        crate::lock_order_tests::blocked_by(&store, pid).await;
        // A lock wait, not a slow statement, is what the timeout catches.
        let mut check = store.begin().await.unwrap();
        check
            .q("SET LOCAL lock_timeout = '200ms'")
            .execute()
            .await
            .unwrap();
        let web_b = check.instance_insert(&named("c1", "web-b")).await;
        check.rollback().await.unwrap();
        holder.rollback().await.unwrap();
        let got = run.await.unwrap().unwrap();
        assert!(web_b.is_ok(), "web-b was held: {web_b:?}");
        assert!(matches!(got, LaunchesWritten::Written(_)), "{got:?}");
    }
}

/// A batch that passes over held hosts answers "no room" at once while another transaction
/// holds its host's row, and writes nothing; once the row is free it is written.
#[tokio::test]
async fn a_batch_passing_over_held_hosts_answers_no_room_while_one_is_held() {
    if let Some(store) = postgres_with_pool("10.9.0.1-10.9.0.3").await {
        let mut holder = store.begin().await.unwrap();
        assert!(holder.host_reserve("wil-cpu-03", &res(0)).await.unwrap());
        let lone = [launch("vm0", "web-0", 2)];
        let rows = Rows::of(&lone);
        let adds = on_cpu_host(2);
        let skipping = LaunchBatch {
            skip_held: true,
            ..rows.batch(None, &adds)
        };
        assert_eq!(
            store.launches_write(&skipping).await.unwrap(),
            LaunchesWritten::NoRoom
        );
        nothing_of(&store, &["vm0"]).await;
        holder.rollback().await.unwrap();
        assert!(matches!(
            store.launches_write(&skipping).await.unwrap(),
            LaunchesWritten::Written(_)
        ));
        assert_eq!(cpu_cores_used(&store).await, 2);
    }
}

/// The run's PostgreSQL store, when it has one, with the addresses `range` and account a1:
/// for the tests of what only PostgreSQL's one statement does.
async fn postgres_with_pool(range: &str) -> Option<Store> {
    let (store, _) = stores()
        .await
        .into_iter()
        .find(|(s, _)| s.backend() == Backend::Postgres)?;
    with_pool(&store, range).await;
    store.account_create("a1", "acme", 0).await.unwrap();
    Some(store)
}

/// A batch statement that waits longer than the store's bound (here for a host row another
/// transaction holds) is ended by PostgreSQL itself, rolled back, before the store gives up on
/// it: once the row is free it does not go on to write launches already answered as failed.
#[tokio::test]
async fn a_batch_given_up_on_is_ended_by_the_database_too() {
    for (store, _d) in stores().await {
        if store.backend() != Backend::Postgres {
            continue;
        }
        // Before the batch connections open: their statement timeout follows the bound.
        store.set_statement_bound(std::time::Duration::from_millis(300));
        with_pool(&store, "10.9.0.1-10.9.0.3").await;
        store.account_create("a1", "acme", 0).await.unwrap();
        let mut holder = store.begin().await.unwrap();
        holder.hosts_lock(&["wil-cpu-03"]).await.unwrap();
        let waited = [launch("vm0", "web-0", 2)];
        assert!(write(&store, &waited, None, &on_cpu_host(2)).await.is_err());
        holder.rollback().await.unwrap();
        // A batch on the same host waits behind anything still queued for its row: once it
        // is written, the first one has ended, one way or the other.
        let next = [launch("vm1", "web-1", 2)];
        let got = write(&store, &next, None, &on_cpu_host(2)).await.unwrap();
        assert!(matches!(got, LaunchesWritten::Written(_)), "{got:?}");
        nothing_of(&store, &["vm0"]).await;
        assert_eq!(cpu_cores_used(&store).await, 2);
    }
}

/// PostgreSQL computes an address's MAC as the server does (`ip::mac_for_address`), for
/// addresses whose octets need every hex digit.
#[tokio::test]
async fn postgres_computes_the_mac_the_server_does() {
    let Some(store) = postgres_with_pool("10.9.0.1-10.9.0.2").await else {
        return;
    };
    for address in ["10.0.0.2", "98.115.241.74", "203.255.16.1", "192.0.2.254"] {
        let sql = format!("SELECT {} AS mac", crate::ips::pg_mac("$1::text"));
        let r = sqlx::query(&sql)
            .bind(address)
            .fetch_one(store.read_pool())
            .await
            .unwrap();
        let mac: String = sqlx::Row::get(&r, "mac");
        assert_eq!(mac, lobster_core::ip::mac_for_address(address), "{address}");
    }
}
