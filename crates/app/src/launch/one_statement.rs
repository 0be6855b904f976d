//! PostgreSQL: a batch of launches placed on the hosts as read now and written region by
//! region, each region's launches in one statement (`Store::launches_write`): two round trips
//! instead of a transaction's eight, which bound the batch (docs/benchmarks.md, session 12).

use super::{candidate_ids, place, Queued};
use crate::Turn;
use lobster_core::capacity::Resources;
use lobster_store::{
    instance_task_params, HostRow, InstanceRow, LaunchBatch, LaunchesWritten, NewTask,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How long hosts read for a batch are used to place the next batches (with this server's
/// own reservations added) before they are read again.
const VIEW_FOR: Duration = Duration::from_secs(1);

/// The hosts as the launch batches last read them, with what this server's batches have
/// reserved on them since. Why: the read of the hosts before each batch was a round trip,
/// about a fifth of a batch's turn in a burst of launches (docs/benchmarks.md, session 17),
/// while the batch's statement re-checks every host's room on its latest row anyway. A view
/// that shows room since taken (by another server, by a launch written alone) costs a
/// statement that writes nothing and a placement on a fresh read; one that misses room
/// since given back (a delete) leaves a launch unplaced, and it is written alone, on the
/// database's own answer. Never wrong, at worst slower; and at most `VIEW_FOR` old.
/// (`seen_hosts` is the fleet as launches order their candidates, read for every launch
/// path; this is the candidates' rooms as the batches place on them, kept with this
/// server's reservations.)
#[derive(Default)]
pub(crate) struct HostView(Mutex<HashMap<String, (HostRow, Instant)>>);

impl HostView {
    fn view(&self) -> std::sync::MutexGuard<'_, HashMap<String, (HostRow, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hosts `ids`, when every one was read within `VIEW_FOR`.
    fn get(&self, ids: &[&str]) -> Option<Vec<HostRow>> {
        let view = self.view();
        ids.iter()
            .map(|id| {
                let (row, at) = view.get(*id)?;
                (at.elapsed() < VIEW_FOR).then(|| row.clone())
            })
            .collect()
    }

    fn put(&self, hosts: &[HostRow]) {
        let now = Instant::now();
        let mut view = self.view();
        for h in hosts {
            view.insert(h.id.clone(), (h.clone(), now));
        }
    }

    /// A batch reserved `adds` (one entry per host).
    fn reserved(&self, adds: &[(String, Resources)]) {
        let mut view = self.view();
        for (id, r) in adds {
            if let Some((row, _)) = view.get_mut(id) {
                row.used = row.used.plus(r);
            }
        }
    }

    fn forget(&self, ids: &[&str]) {
        let mut view = self.view();
        for id in ids {
            view.remove(*id);
        }
    }
}

/// One region's launches, placed on the view of the hosts (`HostView`), else on a fresh
/// read. A statement that found a host full or gone (another server reserved on it since
/// the read) is placed again on a fresh read, once.
async fn write_region(w: &Turn, region: &str, launches: &[&Queued]) -> Vec<Option<InstanceRow>> {
    let ids = candidate_ids(launches);
    for _ in 0..2 {
        let mut placed = w.host_view.get(&ids).map(|hosts| place(hosts, launches));
        // A launch the view has no room for is placed on a fresh read (room may have been
        // given back since); one still without room then goes alone.
        if placed.as_ref().is_none_or(|p| p.contains(&None)) {
            let Ok(hosts) = w.store.hosts_read(&ids).await else {
                break;
            };
            w.host_view.put(&hosts);
            placed = Some(place(hosts, launches));
        }
        let placed = placed.expect("placed on the view or a read");
        match write_placed(w, region, launches, &placed).await {
            Attempt::Written(written) => return written,
            // A lone launch passed over a held host: the lone path places it past that one.
            Attempt::HostFull if launches.len() == 1 => {
                w.host_view.forget(&ids);
                break;
            }
            Attempt::HostFull => w.host_view.forget(&ids),
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
        lease: lease.as_ref(),
        adds: &adds,
        now,
        skip_held: launches.len() == 1,
    };
    let addresses = match w.store.launches_write(&b).await {
        Ok(LaunchesWritten::Written(a)) => {
            w.host_view.reserved(&adds);
            a
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, cores_used: i64) -> HostRow {
        let total = Resources {
            cores: 8,
            memory_gb: 64,
            disk_gb: 1000,
            gpus: 0,
        };
        HostRow {
            id: id.into(),
            region: "us-east-1".into(),
            gpu_model: None,
            status: "available".into(),
            total,
            used: Resources {
                cores: cores_used,
                ..Default::default()
            },
        }
    }

    /// The view answers only for hosts all read within `VIEW_FOR`, adds this server's
    /// reservations, and forgets hosts a statement found full.
    #[test]
    fn the_view_serves_fresh_reads_with_this_servers_reservations() {
        let v = HostView::default();
        assert!(v.get(&["h1"]).is_none(), "never read");
        v.put(&[host("h1", 2), host("h2", 0)]);
        assert!(v.get(&["h1", "h3"]).is_none(), "h3 never read");
        let add = Resources {
            cores: 3,
            ..Default::default()
        };
        v.reserved(&[("h1".to_string(), add)]);
        let got = v.get(&["h1", "h2"]).unwrap();
        assert_eq!((got[0].used.cores, got[1].used.cores), (5, 0));
        v.forget(&["h2"]);
        assert!(v.get(&["h1", "h2"]).is_none());
        assert!(v.get(&["h1"]).is_some());
        let old = Instant::now().checked_sub(VIEW_FOR).unwrap();
        v.view().get_mut("h1").unwrap().1 = old;
        assert!(v.get(&["h1"]).is_none(), "read too long ago");
    }
}
