//! PostgreSQL: a batch of launches placed on the hosts as read now and written region by
//! region, each region's launches in one statement (`Store::launches_write`): two round trips
//! instead of a transaction's eight, which bound the batch (docs/benchmarks.md, session 12).

use super::{candidate_ids, place, Queued};
use crate::Turn;
use lobster_core::capacity::Resources;
use lobster_store::{instance_task_params, InstanceRow, LaunchBatch, LaunchesWritten, NewTask};
use std::collections::BTreeMap;

/// The instances written, in the batch's order; None for a launch left to go alone: one
/// with no room on the hosts as read, in a region whose pool ran short, or in a region
/// whose statement failed (say on a name already taken; other regions' launches written by
/// then stay written, so a failure is never the whole batch's answer).
pub(super) async fn write_batch(w: &Turn, batch: &[Box<Queued>]) -> Vec<Option<InstanceRow>> {
    let mut by_region: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (k, q) in batch.iter().enumerate() {
        by_region.entry(q.plan.region.as_str()).or_default().push(k);
    }
    let mut out = vec![None; batch.len()];
    for (region, ks) in by_region {
        let launches: Vec<&Queued> = ks.iter().map(|&k| &*batch[k]).collect();
        let written = write_region(w, region, &launches).await;
        for (k, instance) in ks.into_iter().zip(written) {
            out[k] = instance;
        }
    }
    out
}

/// One region's launches. A statement that found a host full or gone (another server
/// reserved on it since the read) is placed again on a fresh read, once.
async fn write_region(w: &Turn, region: &str, launches: &[&Queued]) -> Vec<Option<InstanceRow>> {
    for _ in 0..2 {
        let Ok(hosts) = w.store.hosts_read(&candidate_ids(launches)).await else {
            break;
        };
        let placed = place(hosts, launches);
        match write_placed(w, region, launches, &placed).await {
            Attempt::Written(written) => return written,
            Attempt::HostFull => continue,
            Attempt::NotWritten => break,
        }
    }
    vec![None; launches.len()]
}

/// How writing a region's placed launches ended.
enum Attempt {
    /// Each launch's instance as written; None for one not placed (all None when none was).
    Written(Vec<Option<InstanceRow>>),
    /// Nothing written: a host had no room left (or was no longer available).
    HostFull,
    /// Nothing written for another reason: too few addresses, a failure.
    NotWritten,
}

async fn write_placed(
    w: &Turn,
    region: &str,
    launches: &[&Queued],
    placed: &[Option<usize>],
) -> Attempt {
    let (max_attempts, now) = (w.max_attempts, w.now);
    let mut instances = Vec::new();
    let mut tasks: Vec<NewTask> = Vec::new();
    let mut macs = Vec::new();
    let mut adds: BTreeMap<String, Resources> = BTreeMap::new();
    let mut which = Vec::new();
    for (k, q) in launches.iter().enumerate() {
        let Some(ci) = placed[k] else { continue };
        // The address is the statement's to take: written as null until then.
        let mut instance = q
            .plan
            .instance_row(&q.caller, ci, String::new(), &q.task_id, now);
        instance.ip_address = None;
        tasks.push(
            q.plan
                .create_task(&q.caller, &instance, &q.task_id, max_attempts, now),
        );
        macs.push(lobster_core::ip::mac_for(&q.plan.id, "net0"));
        let add = adds.entry(instance.host_id.clone()).or_default();
        *add = add.plus(&q.plan.resources);
        instances.push(instance);
        which.push(k);
    }
    let mut out = vec![None; launches.len()];
    if instances.is_empty() {
        return Attempt::Written(out);
    }
    let lease = w.lease(tasks.len());
    let adds: Vec<(String, Resources)> = adds.into_iter().collect();
    let b = LaunchBatch {
        region,
        instances: &instances,
        tasks: &tasks,
        macs: &macs,
        lease: lease.as_ref(),
        adds: &adds,
        now,
    };
    let addresses = match w.store.launches_write(&b).await {
        Ok(LaunchesWritten::Written(a)) => a,
        Ok(LaunchesWritten::NoRoom) => return Attempt::HostFull,
        Ok(LaunchesWritten::NoAddresses) | Err(_) => return Attempt::NotWritten,
    };
    // As written: the statement put each address in its instance and its task's parameters.
    for ((instance, task), (address, &k)) in instances
        .iter_mut()
        .zip(tasks.iter_mut())
        .zip(addresses.into_iter().zip(&which))
    {
        instance.ip_address = Some(address);
        task.params = instance_task_params(instance);
        out[k] = Some(instance.clone());
    }
    w.hand_over(lease, tasks.into_iter().zip(instances).collect());
    Attempt::Written(out)
}
