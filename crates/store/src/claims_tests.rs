//! `Store::instances_claim_queue` (PostgreSQL, when `LOBSTER_TEST_POSTGRES_URL` is set):
//! claims and their tasks in one statement, the tasks' parameters exactly as the app writes
//! them on SQLite.

use crate::contract_tests::{sample_instance, stores};
use crate::*;
use lobster_core::fleet::Fleet;

fn claim(id: &str, account: &str, task: &str) -> Claim {
    Claim {
        scope: Scope {
            account_id: account.into(),
            team_id: None,
        },
        id: id.into(),
        task_id: task.into(),
        new_status: "terminating".into(),
    }
}

#[tokio::test]
async fn claims_and_their_tasks_are_written_in_one_statement() {
    for (store, _d) in stores().await {
        let c = claim("i1", "a1", "t1");
        let one = [ClaimFor {
            claim: &c,
            operation: "delete_instance",
        }];
        if store.backend() != Backend::Postgres {
            assert!(store
                .instances_claim_queue(&one, "Queued", 3, None, 5)
                .await
                .is_err());
            continue;
        }
        store.fleet_sync(&Fleet::demo()).await.unwrap();
        store.account_create("a1", "acme", 0).await.unwrap();
        // i2's host and address test the parameters' escaping and null.
        let rows = [
            sample_instance("i1", "a1"),
            InstanceRow {
                name: "web-2".into(),
                host_id: "wil\"cpu-é\\03".into(),
                ip_address: None,
                ..sample_instance("i2", "a1")
            },
            InstanceRow {
                name: "web-3".into(),
                ..sample_instance("i3", "a1")
            },
        ];
        let mut tx = store.begin().await.unwrap();
        for r in &rows {
            tx.instance_insert(r).await.unwrap();
        }
        tx.commit().await.unwrap();
        let lease = Lease {
            owner: "w1".into(),
            until: 30_005,
        };
        let claims = [
            claim("i1", "a1", "t1"),
            claim("i2", "a1", "t2"),
            claim("i3", "a2", "t3"), // not a2's
            claim("nope", "a1", "t4"),
            claim("i1", "a1", "t5"), // i1 twice: one claim takes it
        ];
        let ops: Vec<ClaimFor> = claims
            .iter()
            .map(|claim| ClaimFor {
                claim,
                operation: "delete_instance",
            })
            .collect();
        let got = store
            .instances_claim_queue(&ops, "Queued", 3, Some(&lease), 5)
            .await
            .unwrap();
        let took: Vec<bool> = got.iter().map(Option::is_some).collect();
        assert_eq!(&took[1..4], [true, false, false]);
        assert!(took[0] != took[4], "one claim of i1 takes it: {took:?}");
        for (c, got) in claims.iter().zip(&got) {
            let Some(got) = got else {
                assert_eq!(store.task_by_id(&c.task_id).await.unwrap(), None);
                continue;
            };
            let stored = store.instance_by_id(&c.id).await.unwrap().unwrap();
            assert_eq!(got.instance, stored);
            assert_eq!(
                (stored.status.as_str(), stored.active_task_id.as_deref()),
                ("terminating", Some(c.task_id.as_str()))
            );
            let before = rows.iter().find(|r| r.id == c.id).unwrap();
            assert_eq!(got.params, instance_task_params(before));
            let want = NewTask {
                id: c.task_id.clone(),
                account_id: "a1".into(),
                team_id: None,
                instance_id: Some(c.id.clone()),
                operation: "delete_instance".into(),
                params: got.params.clone(),
                message: "Queued".into(),
                max_attempts: 3,
                now: 5,
            };
            let task = store.task_by_id(&c.task_id).await.unwrap().unwrap();
            assert_eq!(task, want.leased_row(&lease));
        }
        // A look at the claims' tasks (as after a connection lost mid-statement) finds what
        // the statement answered.
        assert_eq!(store.claims_found(&ops).await.unwrap(), got);
        let i3 = store.instance_by_id("i3").await.unwrap().unwrap();
        assert_eq!((i3.status.as_str(), i3.active_task_id), ("rented", None));

        // Without a lease the task is pending; a busy instance is not claimed again.
        let again = claim("i3", "a1", "t6");
        let busy = claim("i1", "a1", "t7");
        let ops = [
            ClaimFor {
                claim: &again,
                operation: "power_off",
            },
            ClaimFor {
                claim: &busy,
                operation: "power_off",
            },
        ];
        let got = store
            .instances_claim_queue(&ops, "Queued", 3, None, 6)
            .await
            .unwrap();
        assert!(got[0].is_some() && got[1].is_none());
        let task = store.task_by_id("t6").await.unwrap().unwrap();
        assert_eq!(
            (task.status.as_str(), task.attempts, task.operation.as_str()),
            ("PENDING", 0, "power_off")
        );
    }
}
