//! Launching instances: standard (by instance type and region) and custom (exact shape, on a
//! named host or anywhere in a region). Placement, capacity and IP reservation, the instance
//! row and its create task are written in one transaction.

use crate::{App, Turn};
use lobster_core::auth::{Caller, Permission};
use lobster_core::capacity::{custom_shape_problems, placement_order, Resources};
use lobster_core::fleet::Template;
use lobster_core::{ids, Error, FieldError};
use lobster_store::{instance_task_params, Backend, HostRow, InstanceRow, IpClaim, NewTask, Tx};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

pub(crate) mod one_statement;

/// A standard launch, already schema-checked by the dialect.
#[derive(Debug, Clone, Default)]
pub struct LaunchInstance {
    pub region: String,
    pub instance_type: String,
    pub ssh_key: Option<String>,
    pub password: Option<String>,
    pub username: Option<String>,
    pub name: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub template_name: Option<String>,
    pub iso_url: Option<String>,
}

#[derive(Debug, Clone)]
pub enum CustomTarget {
    Host(String),
    Region {
        region: String,
        gpu_model: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct LaunchCustom {
    pub target: CustomTarget,
    pub resources: Resources,
    pub instance_type: Option<String>,
    pub name: Option<String>,
    pub username: Option<String>,
    pub template_name: Option<String>,
    pub iso_url: Option<String>,
    pub ssh_key: Option<String>,
    pub password: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub struct Launched {
    pub instance: InstanceRow,
    pub task_id: String,
    pub credentials: Option<Credentials>,
}

/// Everything decided before the transaction starts.
struct Plan {
    /// The new instance's id, chosen first so that a generated name can carry it.
    id: String,
    region: String,
    hosts: Vec<String>,
    resources: Resources,
    gpu_model_of: Vec<Option<String>>,
    instance_type: Option<String>,
    price: i64,
    template: Option<Template>,
    iso_url: Option<String>,
    username: String,
    ssh_key: Option<String>,
    password: Option<String>,
    generated_password: bool,
    name: String,
    metadata: Option<BTreeMap<String, String>>,
    /// What to say when no candidate host has room.
    conflict: Error,
}

impl App {
    /// Plans on the hosts as read a moment ago when there is such a read (see
    /// `seen_hosts`); refuses for want of room only when a plan on a fresh read does too.
    pub async fn instance_launch(
        &self,
        caller: &Caller,
        cmd: LaunchInstance,
    ) -> Result<Launched, Error> {
        if let Some(hosts) = self.seen_hosts.recent() {
            match self.instance_launch_on(caller, cmd.clone(), &hosts).await {
                Err(Error::Conflict { .. }) => {}
                done => return done,
            }
        }
        let hosts = self.seen_hosts.fresh(&self.store).await?;
        self.instance_launch_on(caller, cmd, &hosts).await
    }

    /// For tests: how long a read of the hosts is planned on (100 ms unless set).
    #[doc(hidden)]
    pub fn hold_host_reads(&self, max_age: std::time::Duration) {
        self.seen_hosts.hold(max_age);
    }

    async fn instance_launch_on(
        &self,
        caller: &Caller,
        cmd: LaunchInstance,
        hosts: &[HostRow],
    ) -> Result<Launched, Error> {
        caller.require(Permission::InstanceWrite)?;
        let fleet = &self.fleet;
        let (Some(itype), Some(_)) = (
            fleet.instance_type(&cmd.instance_type),
            fleet.region(&cmd.region),
        ) else {
            return Err(self.invalid_type_or_region());
        };
        let r = itype.resources();
        let candidates = candidates(hosts, &cmd.region, &r, itype.gpu_model.as_deref());
        let template =
            self.pick_template(cmd.template_name.as_deref(), cmd.iso_url.is_some(), r.gpus)?;
        let (username, password, generated) = credentials(&template, cmd.username, cmd.password);
        auth_method_required(&template, &cmd.ssh_key, &password)?;
        let id = ids::new_instance_id();
        let name = cmd.name.unwrap_or_else(|| auto_name(&itype.name, &id));
        let plan = Plan {
            id,
            region: cmd.region,
            gpu_model_of: candidates.iter().map(|h| h.gpu_model.clone()).collect(),
            hosts: candidates.into_iter().map(|h| h.id).collect(),
            resources: r,
            instance_type: Some(itype.name.clone()),
            price: itype.price_cents_per_hour,
            template,
            iso_url: cmd.iso_url,
            username,
            ssh_key: cmd.ssh_key,
            password,
            generated_password: generated,
            name,
            metadata: cmd.metadata,
            conflict: Error::conflict(
                "resource_conflict",
                "Requested resources not available in specified region",
            ),
        };
        self.launch(caller, plan).await
    }

    pub async fn instance_launch_custom(
        &self,
        caller: &Caller,
        cmd: LaunchCustom,
    ) -> Result<Launched, Error> {
        caller.require(Permission::InstanceWrite)?;
        caller.require(Permission::Staff)?;
        let r = cmd.resources;
        let problems = custom_shape_problems(&r);
        if !problems.is_empty() {
            let details: serde_json::Map<String, Value> = problems
                .into_iter()
                .map(|(f, m)| (f.to_string(), json!(m)))
                .collect();
            return Err(Error::bad_request_with(
                "invalid_request",
                "Invalid resource specifications",
                Value::Object(details),
            ));
        }
        let hosts = self.store.host_list().await?;
        let (region, candidates, conflict) = match &cmd.target {
            CustomTarget::Host(id) => {
                let h = hosts
                    .iter()
                    .find(|h| &h.id == id && self.fleet.host(id).is_some())
                    .ok_or_else(|| {
                        let valid: Vec<_> = self.fleet.hosts.iter().map(|h| h.id.clone()).collect();
                        Error::bad_request_with(
                            "invalid_request",
                            format!("Unknown host {id}"),
                            json!({ "valid_hosts": valid }),
                        )
                    })?;
                let free = h.free();
                let conflict = Error::Conflict {
                    code: "resource_conflict",
                    message: "Requested resources not available on specified host".into(),
                    details: Some(json!({ "available_resources": {
                        "cores": free.cores, "memory": free.memory_gb, "storage": free.disk_gb, "gpus": free.gpus
                    }})),
                };
                let fits = h.status == "available"
                    && r.fits_in(&free)
                    && (r.gpus == 0 || h.gpu_model.is_some());
                let c = if fits { vec![h.clone()] } else { vec![] };
                (h.region.clone(), c, conflict)
            }
            CustomTarget::Region { region, gpu_model } => {
                if self.fleet.region(region).is_none() {
                    return Err(self.invalid_type_or_region());
                }
                let c = candidates(&hosts, region, &r, gpu_model.as_deref());
                let conflict = Error::conflict(
                    "resource_conflict",
                    "Requested resources not available in specified region",
                );
                (region.clone(), c, conflict)
            }
        };
        let template =
            self.pick_template(cmd.template_name.as_deref(), cmd.iso_url.is_some(), r.gpus)?;
        let (username, password, generated) = credentials(&template, cmd.username, cmd.password);
        auth_method_required(&template, &cmd.ssh_key, &password)?;
        let price = match cmd
            .instance_type
            .as_deref()
            .and_then(|t| self.fleet.instance_type(t))
        {
            Some(t) => t.price_cents_per_hour,
            None => self.fleet.custom_price(&r),
        };
        let id = ids::new_instance_id();
        let name = cmd.name.unwrap_or_else(|| auto_name("custom", &id));
        let plan = Plan {
            id,
            region,
            gpu_model_of: candidates.iter().map(|h| h.gpu_model.clone()).collect(),
            hosts: candidates.into_iter().map(|h| h.id).collect(),
            resources: r,
            instance_type: cmd.instance_type,
            price,
            template,
            iso_url: cmd.iso_url,
            username,
            ssh_key: cmd.ssh_key,
            password,
            generated_password: generated,
            name,
            metadata: cmd.metadata,
            conflict,
        };
        self.launch(caller, plan).await
    }

    fn invalid_type_or_region(&self) -> Error {
        let types: Vec<_> = self
            .fleet
            .instance_types
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let regions: Vec<_> = self.fleet.regions.iter().map(|r| r.name.clone()).collect();
        Error::bad_request_with(
            "invalid_request",
            "Invalid instance type or region specified",
            json!({ "valid_instance_types": types, "valid_regions": regions }),
        )
    }

    /// The named template, or the default for the shape; none when booting from an ISO alone.
    fn pick_template(
        &self,
        name: Option<&str>,
        has_iso: bool,
        gpus: i64,
    ) -> Result<Option<Template>, Error> {
        let name = match name {
            Some(n) => n,
            None if has_iso => return Ok(None),
            None => self.fleet.default_template_for(gpus),
        };
        match self.fleet.template(name) {
            Some(t) => Ok(Some(t.clone())),
            None => {
                let valid: Vec<_> = self
                    .fleet
                    .templates
                    .iter()
                    .map(|t| t.name.clone())
                    .collect();
                Err(Error::bad_request_with(
                    "invalid_request",
                    format!("Unknown template {name}"),
                    json!({ "valid_templates": valid }),
                ))
            }
        }
    }

    /// Takes an IP, writes the instance and its create task, and reserves capacity on the
    /// first candidate host with room, all in one transaction: the launches that arrive
    /// while one batch is written share the next (`launch_batch`); a launch the batch could
    /// not place is written alone (`launch_one`), which gives it its own answer.
    async fn launch(&self, caller: &Caller, p: Plan) -> Result<Launched, Error> {
        if p.hosts.is_empty() {
            return Err(p.conflict);
        }
        // Read before the write, not after: once the launch is written, a failed read must
        // not answer it as failed (a retry would make a second instance). Teams are never
        // renamed, so the name read now is the name stored.
        let team_name = self.caller_team_name(caller).await?;
        let queued = Queued {
            caller: caller.clone(),
            plan: p,
            task_id: ids::new_task_id(),
        };
        let write = |batch: Vec<Queued>| launch_batch(self.turn(), batch);
        let (instance, q) = match self.launches.submit(queued, write).await {
            Some(written) => written?,
            None => {
                return Err(Error::Internal(
                    "the launch batch ended without an answer".into(),
                ))
            }
        };
        let q = *q;
        let Queued {
            plan: p, task_id, ..
        } = q;
        let credentials = match (p.generated_password, p.password) {
            (true, Some(password)) => Some(Credentials {
                username: p.username,
                password,
            }),
            _ => None,
        };
        let instance = InstanceRow {
            team_name,
            ..instance
        };
        Ok(Launched {
            instance,
            task_id,
            credentials,
        })
    }
}

impl App {
    /// The name of the caller's team (None without one), as a launch's answer carries it.
    async fn caller_team_name(&self, caller: &Caller) -> Result<Option<String>, Error> {
        let Some(team_id) = &caller.team_id else {
            return Ok(None);
        };
        let team = self.store.team_find(&caller.account_id, team_id).await?;
        Ok(team.filter(|t| &t.id == team_id).map(|t| t.name))
    }
}

fn no_address() -> Error {
    Error::conflict(
        "resource_conflict",
        "No IP addresses available in the specified region",
    )
}

/// Launches written in one batch at most: 29 values per instance row, within every
/// database's limit on bound values.
pub(crate) const MOST: usize = 64;

/// A launch waiting for its batch.
pub(crate) struct Queued {
    caller: Caller,
    plan: Plan,
    task_id: String,
}

/// A launch's answer from its batch: the instance as written (and the launch, for what the
/// answer reports beyond the row), or why it was refused.
pub(crate) type Written = Result<(InstanceRow, Box<Queued>), Error>;

/// Writes a turn's launches: on SQLite a lone launch in a transaction of its own; more (on
/// PostgreSQL, any number: there a batch is one statement, a round trip, where a lone launch's
/// transaction takes six: +4 % launches a second in a burst, docs/benchmarks.md, session 18)
/// in one transaction of a few multi-row statements (`write_batch`), then, one by one, any
/// the batch left out (no room or address left for it once the others were placed, or the
/// batch's write failed as a whole, say on a name already taken), so that each of those
/// gets the answer a lone launch would.
async fn launch_batch(turn: Turn, batch: Vec<Queued>) -> Vec<Written> {
    let batch: Vec<Box<Queued>> = batch.into_iter().map(Box::new).collect();
    let written = match batch.len() {
        1 if turn.store.backend() != Backend::Postgres => Ok(vec![None]),
        _ => write_batch(&turn, &batch).await,
    };
    let what = ("launch", &turn.batched.launches);
    let done = |q, instance| Ok((instance, q));
    turn.settle(what, batch, written, done, |q| turn.launch_one(q))
        .await
}

/// Times a lone launch is tried when PostgreSQL fails it only for bad luck (a deadlock it
/// broke by failing this transaction: nothing of it was written).
const LAUNCH_TRIES: usize = 3;

impl Turn {
    /// One launch in a transaction of its own; its error is its answer (409 when no
    /// candidate has room or the region has no free address). A lone launch inserts its
    /// instance (and its name) before it waits for a host, so a batch on another server
    /// holding that host and writing the same name can deadlock with it; then it is tried
    /// again rather than answered 503; so is one that found no connection to be had (nothing
    /// was sent). Not a database that gave no answer to what was sent: the outcome is
    /// unknown, and another try would only wait as long again.
    async fn launch_one(&self, q: Box<Queued>) -> Written {
        let mut tries = 1;
        loop {
            match self.launch_one_try(&q).await {
                Err(Error::Unavailable(_) | Error::Unanswered { sent: false, .. })
                    if tries < LAUNCH_TRIES =>
                {
                    tries += 1
                }
                Ok(Some(instance)) => return Ok((instance, q)),
                Ok(None) => return Err(q.plan.conflict),
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of `launch_one`: the instance written, or None when no candidate had room.
    async fn launch_one_try(&self, q: &Queued) -> Result<Option<InstanceRow>, Error> {
        let (caller, p, task_id) = (&q.caller, &q.plan, &q.task_id);
        let now = self.now;
        let mut tx = self.store.begin().await?;
        let claim = IpClaim {
            instance_id: &p.id,
            interface_name: "net0",
            is_primary: true,
        };
        let Some(ip) = tx.ip_allocate(&p.region, &claim, now).await? else {
            // Its batch may have been written after all, with the last free address: its
            // instance then exists, and the launch is answered as written, not refused.
            tx.rollback().await?;
            return self
                .written_before(&p.id)
                .await?
                .map(Some)
                .ok_or_else(no_address);
        };
        // Written as if placed on the best candidate; moved below in the rare case that a
        // concurrent launch took its room since the candidates were read.
        let mut instance = p.instance_row(caller, 0, ip, task_id, now);
        if let Err(e) = tx.instance_insert(&instance).await {
            tx.rollback().await?;
            return self.written_before(&p.id).await?.map(Some).ok_or(e);
        }
        let mut task = p.create_task(caller, &instance, task_id, self.max_attempts, now);
        let lease = self.lease(1);
        tx.tasks_insert_leased(std::slice::from_ref(&task), lease.as_ref())
            .await?;
        // The host row last: every launch that fits the best host updates that one row, and on
        // PostgreSQL its lock is held until commit, so launches on one host queue behind each
        // other for exactly the statements between this one and COMMIT (measured: with three
        // statements after it, 240 launches/s; see docs/benchmarks.md).
        let Some(ci) = reserve_first_fit(&mut tx, p).await? else {
            return Ok(None);
        };
        if ci != 0 {
            instance.host_id = p.hosts[ci].clone();
            instance.gpu_model = p.gpu_model_on(ci);
            tx.instance_rehost(
                &instance.id,
                &instance.host_id,
                instance.gpu_model.as_deref(),
            )
            .await?;
            task.params = instance_task_params(&instance);
            tx.task_params(task_id, &task.params).await?;
        }
        tx.commit().await?;
        self.hand_over(lease, vec![(task, instance.clone())]);
        Ok(Some(instance))
    }
}

impl Turn {
    /// The instance `id` if it is written already. A lone launch whose insert failed asks:
    /// its batch may have been written after all (the connection lost after the commit, and
    /// the look that would have found it failed too). Its id is new, so only that batch can
    /// have written it; answered as another's name, the client would be refused, or, planned
    /// again on a fresh read under a new id, given a second instance with the first left
    /// running. (Its task was written leased to this server and not handed over: it runs
    /// once that lease is reclaimed.)
    async fn written_before(&self, id: &str) -> Result<Option<InstanceRow>, Error> {
        Ok(self.store.instances_by_ids(&[id]).await?.into_iter().next())
    }
}

/// Writes a batch of launches in one transaction: the hosts read, each launch placed in
/// memory on its first candidate with room, addresses taken for the placed ones, then their
/// instances, tasks and the hosts' reservations written at once. The reservation re-checks
/// every host's room, so a batch can only fail as a whole, never overbook. The instances
/// written, in the batch's order; None for a launch left to go alone. On PostgreSQL the same
/// in one statement per region (`one_statement`), where round trips, not the database's
/// work, bound the transaction.
async fn write_batch(w: &Turn, batch: &[Box<Queued>]) -> Result<Vec<Option<InstanceRow>>, Error> {
    if w.store.backend() == Backend::Postgres {
        return Ok(one_statement::write_batch(w, batch).await);
    }
    let (max_attempts, now) = (w.max_attempts, w.now);
    let mut tx = w.store.begin().await?;
    let placed = place_in_memory(&mut tx, batch).await?;
    let addresses = take_addresses(&mut tx, batch, &placed, now).await?;
    let mut instances = Vec::new();
    let mut tasks = Vec::new();
    let mut adds: BTreeMap<String, Resources> = BTreeMap::new();
    let mut out = vec![None; batch.len()];
    for (k, q) in batch.iter().enumerate() {
        let (Some(ci), Some(ip)) = (placed[k], addresses[k].clone()) else {
            continue;
        };
        let instance = q.plan.instance_row(&q.caller, ci, ip, &q.task_id, now);
        tasks.push(
            q.plan
                .create_task(&q.caller, &instance, &q.task_id, max_attempts, now),
        );
        let add = adds.entry(instance.host_id.clone()).or_default();
        *add = add.plus(&q.plan.resources);
        instances.push(instance.clone());
        out[k] = Some(instance);
    }
    tx.instances_insert(&instances).await?;
    let lease = w.lease(tasks.len());
    tx.tasks_insert_leased(&tasks, lease.as_ref()).await?;
    let adds: Vec<(String, Resources)> = adds.into_iter().collect();
    tx.hosts_reserve(&adds).await?;
    tx.commit().await?;
    w.hand_over(lease, tasks.into_iter().zip(instances).collect());
    Ok(out)
}

/// Each launch's candidate index on the hosts as read in the transaction: the first with
/// room once the launches before it in the batch are counted; None when none has room.
async fn place_in_memory(tx: &mut Tx, batch: &[Box<Queued>]) -> Result<Vec<Option<usize>>, Error> {
    let launches: Vec<&Queued> = batch.iter().map(|q| &**q).collect();
    let hosts = tx.hosts_read(&candidate_ids(&launches)).await?;
    Ok(place(hosts, &launches))
}

/// Every candidate host of the launches, once each.
fn candidate_ids<'q>(launches: &[&'q Queued]) -> Vec<&'q str> {
    let mut ids: Vec<&str> = launches
        .iter()
        .flat_map(|q| q.plan.hosts.iter().map(String::as_str))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Each launch's candidate index on `hosts`: the first available one with room once the
/// launches before it are counted; None when none has room.
fn place(hosts: Vec<HostRow>, launches: &[&Queued]) -> Vec<Option<usize>> {
    let mut free: HashMap<String, Resources> = hosts
        .into_iter()
        .filter(|h| h.status == "available")
        .map(|h| (h.id.clone(), h.free()))
        .collect();
    launches
        .iter()
        .map(|q| {
            let want = &q.plan.resources;
            let ci = q
                .plan
                .hosts
                .iter()
                .position(|h| free.get(h).is_some_and(|f| want.fits_in(f)))?;
            let f = free.get_mut(&q.plan.hosts[ci]).expect("found above");
            *f = f.minus(want);
            Some(ci)
        })
        .collect()
}

/// An address for each placed launch, region by region, in the batch's order; None for a
/// launch not placed or beyond what its region's pool had free.
async fn take_addresses(
    tx: &mut Tx,
    batch: &[Box<Queued>],
    placed: &[Option<usize>],
    now: i64,
) -> Result<Vec<Option<String>>, Error> {
    let mut by_region: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (k, q) in batch.iter().enumerate() {
        if placed[k].is_some() {
            by_region.entry(q.plan.region.as_str()).or_default().push(k);
        }
    }
    let mut out = vec![None; batch.len()];
    for (region, ks) in by_region {
        let claims: Vec<IpClaim> = ks
            .iter()
            .map(|&k| IpClaim {
                instance_id: &batch[k].plan.id,
                interface_name: "net0",
                is_primary: true,
            })
            .collect();
        let got = tx.ips_allocate(region, &claims, now).await?;
        for (k, ip) in ks.into_iter().zip(got) {
            out[k] = Some(ip);
        }
    }
    Ok(out)
}

/// Index of the candidate host now reserved, or None when none has room. The first pass
/// passes over hosts whose row another launch holds until its commit (PostgreSQL), so
/// concurrent launches spread over the next-best hosts instead of queueing for the best one;
/// the second waits, so a launch is refused only when no candidate has room. It first locks
/// the candidates with room in id order, as every writer of several hosts does: waiting on
/// each in turn, in the candidates' order, it would keep each one it found full locked
/// (PostgreSQL keeps the lock an update waited for even when the row no longer matches)
/// while waiting for the next.
async fn reserve_first_fit(tx: &mut Tx, p: &Plan) -> Result<Option<usize>, Error> {
    for (i, h) in p.hosts.iter().enumerate() {
        if tx.host_reserve_unless_busy(h, &p.resources).await? {
            return Ok(Some(i));
        }
    }
    let ids: Vec<&str> = p.hosts.iter().map(String::as_str).collect();
    tx.hosts_lock_with_room(&ids, &p.resources).await?;
    for (i, h) in p.hosts.iter().enumerate() {
        if tx.host_reserve(h, &p.resources).await? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

impl Plan {
    fn gpu_model_on(&self, candidate: usize) -> Option<String> {
        if self.resources.gpus > 0 {
            self.gpu_model_of[candidate].clone()
        } else {
            None
        }
    }

    /// The new instance's row, placed on candidate `ci`.
    fn instance_row(
        &self,
        caller: &Caller,
        ci: usize,
        ip: String,
        task_id: &str,
        now: i64,
    ) -> InstanceRow {
        let metadata = self
            .metadata
            .as_ref()
            .map(|m| serde_json::to_string(m).expect("string map"));
        InstanceRow {
            id: self.id.clone(),
            account_id: caller.account_id.clone(),
            team_id: caller.team_id.clone(),
            team_name: None,
            name: self.name.clone(),
            host_id: self.hosts[ci].clone(),
            region: self.region.clone(),
            instance_type: self.instance_type.clone(),
            template_name: self.template.as_ref().map(|t| t.name.clone()),
            iso_url: self.iso_url.clone(),
            os_type: Some(
                self.template
                    .as_ref()
                    .map_or("custom".into(), |t| t.os_type.clone()),
            ),
            resources: self.resources,
            gpu_model: self.gpu_model_on(ci),
            price_cents_per_hour: self.price,
            status: "creating".into(),
            power_status: "stopped".into(),
            ip_address: Some(ip),
            username: self.username.clone(),
            ssh_key: self.ssh_key.clone(),
            password: self.password.clone(),
            metadata,
            active_task_id: Some(task_id.to_string()),
            created_at: now,
            updated_at: now,
            ready_at: None,
            deleted_at: None,
        }
    }

    fn create_task(
        &self,
        caller: &Caller,
        i: &InstanceRow,
        task_id: &str,
        max_attempts: i64,
        now: i64,
    ) -> NewTask {
        NewTask {
            id: task_id.to_string(),
            account_id: caller.account_id.clone(),
            team_id: caller.team_id.clone(),
            instance_id: Some(i.id.clone()),
            operation: "create_instance".into(),
            params: instance_task_params(i),
            message: "Allocating resources".into(),
            max_attempts,
            now,
        }
    }
}

fn candidates(
    hosts: &[HostRow],
    region: &str,
    r: &Resources,
    gpu_model: Option<&str>,
) -> Vec<HostRow> {
    let free: Vec<_> = hosts.iter().map(HostRow::as_free).collect();
    placement_order(&free, region, r, gpu_model)
        .into_iter()
        .filter_map(|f| hosts.iter().find(|h| h.id == f.host_id).cloned())
        .collect()
}

/// Username and password after template defaults; Windows gets a generated password when the
/// request has none (returned once, in `credentials`).
fn credentials(
    t: &Option<Template>,
    username: Option<String>,
    password: Option<String>,
) -> (String, Option<String>, bool) {
    let windows = t.as_ref().is_some_and(Template::is_windows);
    let default_user = t
        .as_ref()
        .and_then(|t| t.default_username.clone())
        .unwrap_or_else(|| "ubuntu".into());
    let username = username.unwrap_or(default_user);
    match password {
        Some(p) => (username, Some(p), false),
        None if windows => (username, Some(ids::new_password(16)), true),
        None => (username, None, false),
    }
}

fn auth_method_required(
    t: &Option<Template>,
    ssh_key: &Option<String>,
    password: &Option<String>,
) -> Result<(), Error> {
    let windows = t.as_ref().is_some_and(Template::is_windows);
    if windows || ssh_key.is_some() || password.is_some() {
        return Ok(());
    }
    Err(Error::Invalid(vec![FieldError::new(
        &["body"],
        "value_error",
        "Value error, one authentication method is required: ssh_key or password",
    )]))
}

/// The type's name and the instance's id: unique by construction. (A random 8-digit suffix
/// collided about once in 10,000 launches, the benchmark found, and answered a spurious 409
/// to a request that named nothing.)
fn auto_name(prefix: &str, id: &str) -> String {
    format!("{}-{id}", prefix.replace('_', "-"))
}
