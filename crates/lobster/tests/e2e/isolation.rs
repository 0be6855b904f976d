//! No cross-tenant access anywhere in the served API, checked systematically: the operations
//! come from the OpenAPI document the server serves, not from a hand-written list, so a new
//! endpoint is probed as soon as it is documented (and one whose parameter this file cannot
//! map to a resource fails the test until it is taught which resource it names).
//!
//! Alice gets one of every resource a request can name: an instance (its create task), a
//! backup, an extra IP, a firewall rule, a backup schedule, a team, a console ticket. Bob then
//! calls every operation whose path or required query names a resource, with Alice's ids in
//! every such place, and also each variant that mixes his own ids with one of hers (his
//! instance, her backup). Every one of those calls must
//!
//! - be refused: not 2xx (and not 5xx);
//! - answer exactly what the same call answers for made-up ids of the same shapes (mapped back
//!   after), so that Bob cannot even learn that Alice's resources exist: no 400 or 409 about
//!   the state of an instance he cannot see;
//! - show none of Alice's ids, names, addresses or secrets, except the ids the request itself
//!   carried (error messages echo them: "Instance X not found").
//!
//! The same call with Bob's own ids (the control) shows that the request was a valid one, so
//! that its refusal with Alice's ids is for ownership alone and not for its body or its state.
//! All of it runs twice: with both tenants' instances running, then with both stopped (so that
//! power-on, for one, is probed in a state where it would succeed). Bob's list answers must
//! show nothing of Alice's, and Alice's resources (and her VM on the hypervisor) must read back
//! exactly as they were.

use crate::support::*;
use lobster_core::clock::{Clock, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Operations of the served document with a parameter in their path (29 when this was
/// written) and with a resource named only in a required query parameter (3: backup delete,
/// backup restore, backup notes). A parse that finds fewer fails.
const MIN_PATH_OPS: usize = 29;
const MIN_QUERY_OPS: usize = 3;
/// Calls Bob makes with at least one of Alice's ids, per phase (path and query operations and
/// their mixed variants: 40 when this was written).
const MIN_PROBES_PER_PHASE: usize = 40;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];
const DAY: i64 = 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Instance,
    Task,
    Team,
    Backup,
    Ip,
}

/// One tenant's resources, one of each kind.
#[derive(Clone, Debug)]
struct Ids {
    instance: String,
    task: String,
    team: String,
    backup: String,
    ip: String,
}

impl Ids {
    fn of(&self, k: Kind) -> &str {
        match k {
            Kind::Instance => &self.instance,
            Kind::Task => &self.task,
            Kind::Team => &self.team,
            Kind::Backup => &self.backup,
            Kind::Ip => &self.ip,
        }
    }

    /// Ids of the same shapes that name nothing.
    fn ghost(&self) -> Ids {
        let instance = lobster_core::ids::new_uuid();
        Ids {
            backup: self.backup.replace(&self.instance, &instance),
            instance,
            task: lobster_core::ids::new_task_id(),
            team: lobster_core::ids::new_uuid(),
            // The benchmarking range (RFC 2544): in no pool of the demo fleet.
            ip: "198.18.0.77".into(),
        }
    }

    /// `(mine, theirs)` pairs to map one set onto another; a volid holds its instance's id, so
    /// it goes first.
    fn pairs<'a>(&'a self, to: &'a Ids) -> [(&'a str, &'a str); 5] {
        [
            (&self.backup, &to.backup),
            (&self.instance, &to.instance),
            (&self.task, &to.task),
            (&self.team, &to.team),
            (&self.ip, &to.ip),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Path,
    Query,
    Body,
}

/// A place in a request that names a tenant's resource.
#[derive(Debug)]
struct Slot {
    at: At,
    name: String,
    kind: Kind,
}

enum Fill {
    Of(Kind),
    Fixed(&'static str),
}

/// Which resource a parameter (or body field) names.
fn fill_for(name: &str, path: &str) -> Fill {
    match name {
        "instance_id" | "vm_uuid" | "target_vm_uuid" | "target_instance_id" => {
            Fill::Of(Kind::Instance)
        }
        "task_id" => Fill::Of(Kind::Task),
        "team_id" => Fill::Of(Kind::Team),
        "volid" | "backup_volid" => Fill::Of(Kind::Backup),
        "ip_address" => Fill::Of(Kind::Ip),
        // A position in the instance's own rule list, not a resource of its own: both
        // tenants have a rule at 0.
        "pos" => Fill::Fixed("0"),
        // A generic id names what the segment before it names.
        "id" => {
            let before = path.split("/{id}").next().unwrap_or("");
            match before.rsplit('/').next().unwrap_or("") {
                "instances" => Fill::Of(Kind::Instance),
                "tasks" => Fill::Of(Kind::Task),
                "teams" => Fill::Of(Kind::Team),
                "backups" => Fill::Of(Kind::Backup),
                other => panic!("{path}: which resource does {{id}} after {other:?} name? Teach isolation.rs"),
            }
        }
        _ => panic!(
            "{path}: no rule for the parameter {name:?}; say in isolation.rs which resource it names"
        ),
    }
}

/// Bodies the document does not describe but the handlers read (the reference's forms).
/// Without them the call is a 400 before any ownership check and would prove nothing.
fn undocumented_body(method: &str, path: &str) -> &'static [(&'static str, Kind)] {
    match (method, path) {
        ("post", "/api/v1/instances/{instance_id}/restore") => &[("backup_volid", Kind::Backup)],
        _ => &[],
    }
}

/// A valid value for a required body field that names no resource.
fn body_value(name: &str, schema: &Value, hour: i64, now: Timestamp) -> Value {
    match name {
        "name" => json!("bob-probe"),
        "frequency" => json!("daily"),
        "hour_utc" => json!(hour),
        "type" => json!("in"),
        "action" => json!("ACCEPT"),
        "notes" => json!("bob probe notes"),
        "start_time" => json!(Timestamp(now.millis() - 30 * DAY).rfc3339()),
        "end_time" => json!(Timestamp(now.millis() + DAY).rfc3339()),
        _ => schema
            .get("example")
            .or_else(|| schema.get("default"))
            .cloned()
            .unwrap_or_else(|| match schema["type"].as_str() {
                Some("integer") => json!(1),
                Some("number") => json!(1.0),
                Some("boolean") => json!(true),
                _ => json!("x"),
            }),
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

struct Op {
    method: Method,
    path: String,
    /// Places naming a tenant resource, in the order path, query, body.
    slots: Vec<Slot>,
    /// Path parameters that name no tenant resource.
    fixed: Vec<(String, &'static str)>,
    /// The body's other fields; None: no body is sent.
    body: Option<Map<String, Value>>,
}

struct Req {
    url: String,
    body: Option<Value>,
    /// The ids the request carries (an answer may echo them).
    carried: Vec<String>,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Op {
    fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The request with slot `i` filled from `owners[i]`.
    fn request(&self, owners: &[&Ids]) -> Req {
        let mut url = self.path.clone();
        let mut query = vec![];
        let mut body = self.body.clone();
        let mut carried = vec![];
        for (slot, ids) in self.slots.iter().zip(owners) {
            let v = ids.of(slot.kind).to_string();
            match slot.at {
                At::Path => url = url.replace(&format!("{{{}}}", slot.name), &encode(&v)),
                At::Query => query.push(format!("{}={}", slot.name, encode(&v))),
                At::Body => {
                    body.get_or_insert_with(Map::new)
                        .insert(slot.name.clone(), json!(v));
                }
            }
            carried.push(v);
        }
        for (name, v) in &self.fixed {
            url = url.replace(&format!("{{{name}}}"), v);
        }
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        Req {
            url,
            body: body.map(Value::Object),
            carried,
        }
    }
}

/// Every operation of the document that names a tenant resource in its path or in a required
/// query parameter. Also the counts of each.
fn operations(doc: &Value, hour: i64, now: Timestamp) -> (Vec<Op>, usize, usize) {
    let (mut ops, mut in_path, mut in_query) = (vec![], 0, 0);
    let paths = doc["paths"]
        .as_object()
        .expect("paths in the served document");
    for (path, item) in paths {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let mut slots = vec![];
            let mut fixed = vec![];
            // Path parameters: whatever is in braces, declared or not.
            for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                match fill_for(name, path) {
                    Fill::Of(kind) => slots.push(Slot {
                        at: At::Path,
                        name: name.into(),
                        kind,
                    }),
                    Fill::Fixed(v) => fixed.push((name.to_string(), v)),
                }
            }
            let params = item["parameters"]
                .as_array()
                .into_iter()
                .chain(op["parameters"].as_array())
                .flatten();
            let mut query_slots = 0;
            for p in params {
                if p["in"] == "query" && p["required"] == true {
                    let name = p["name"].as_str().expect("parameter name");
                    match fill_for(name, path) {
                        Fill::Of(kind) => slots.push(Slot {
                            at: At::Query,
                            name: name.into(),
                            kind,
                        }),
                        Fill::Fixed(_) => panic!("{path}: fixed query parameter {name}"),
                    }
                    query_slots += 1;
                }
            }
            let has_path = slots.iter().any(|s| s.at == At::Path);
            if !has_path && query_slots == 0 {
                continue;
            }
            if has_path {
                in_path += 1;
            } else {
                in_query += 1;
            }
            let schema = op["requestBody"]["content"]["application/json"]["schema"].clone();
            let mut body = if schema.is_null() {
                (m == "post" || m == "put" || m == "patch").then(Map::new)
            } else {
                let s = resolve(doc, &schema);
                let mut b = Map::new();
                for name in s["required"].as_array().into_iter().flatten() {
                    let name = name.as_str().expect("field name");
                    match fill_for_body(name) {
                        Some(kind) => slots.push(Slot {
                            at: At::Body,
                            name: name.into(),
                            kind,
                        }),
                        None => {
                            let field = resolve(doc, &s["properties"][name]);
                            b.insert(name.into(), body_value(name, field, hour, now));
                        }
                    }
                }
                Some(b)
            };
            for (name, kind) in undocumented_body(m, path) {
                body.get_or_insert_with(Map::new);
                slots.push(Slot {
                    at: At::Body,
                    name: (*name).into(),
                    kind: *kind,
                });
            }
            ops.push(Op {
                method: m.to_uppercase().parse().expect("method"),
                path: path.clone(),
                slots,
                fixed,
                body,
            });
        }
    }
    (ops, in_path, in_query)
}

/// A body field naming a resource (only ids do; other fields get a plain valid value).
fn fill_for_body(name: &str) -> Option<Kind> {
    match name {
        "team_id" => Some(Kind::Team),
        "instance_id" | "target_instance_id" => Some(Kind::Instance),
        "volid" | "backup_volid" => Some(Kind::Backup),
        "task_id" => Some(Kind::Task),
        "ip_address" => Some(Kind::Ip),
        _ => None,
    }
}

/// `needle` in `hay` as a whole token: `192.0.2.2` is not in `192.0.2.25`.
fn contains_token(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Alice's secrets found in an answer. Those the request itself carried (or that are part of
/// what it carried: a volid holds its instance's id) may be echoed.
fn leaks(text: &str, secrets: &[String], carried: &[String]) -> Vec<String> {
    let mut echoed = carried.to_vec();
    echoed.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let mut without = text.to_string();
    for c in &echoed {
        without = without.replace(c.as_str(), "<echo>");
    }
    secrets
        .iter()
        .filter(|s| {
            let echoable = carried.iter().any(|c| c.contains(s.as_str()));
            contains_token(if echoable { &without } else { text }, s)
        })
        .cloned()
        .collect()
}

async fn send(t: &Tenant, method: &Method, r: &Req) -> (StatusCode, String) {
    let res = t.call(method.clone(), &r.url, r.body.clone()).await;
    let status = res.status();
    (status, res.text().await.unwrap_or_default())
}

/// An instance's resources for `t`: its team, a backup, an extra IP, a firewall rule and a
/// backup schedule. `tag` marks the free text (rule comment).
async fn furnish(
    app: &TestApp,
    t: &Tenant,
    id: &str,
    task: &str,
    team: &str,
    hour: i64,
    tag: &str,
) -> Ids {
    expect(
        t.put(
            &format!("/api/v1/instances/{id}/team"),
            json!({ "team_id": team }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let b = expect(
        t.post(&format!("/api/v1/instances/{id}/backup"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.clock.advance_ms(1000);
    app.drain().await;
    let ip = expect(
        t.post(&format!("/api/v1/instances/{id}/ips"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    let rule =
        json!({"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "comment": tag});
    expect(
        t.post(&format!("/api/v1/instances/{id}/firewall/rules"), rule)
            .await,
        StatusCode::OK,
    )
    .await;
    expect(
        t.post(
            &format!("/api/v1/instances/{id}/backup-schedule"),
            json!({"frequency": "daily", "hour_utc": hour}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    Ids {
        instance: id.into(),
        task: task.into(),
        team: team.into(),
        backup: b["volid"].as_str().expect("volid").into(),
        ip: ip["ip"]["ip_address"].as_str().expect("ip").into(),
    }
}

/// A fresh instance of Bob's with all its resources, stopped when `stopped`.
async fn bob_fixture(app: &TestApp, bob: &Tenant, team: &str, hour: i64, stopped: bool) -> Ids {
    let v = bob.launch("v1_cpu_small", "us-east-1").await;
    app.drain().await;
    let (id, task) = (
        v["vm_uuid"].as_str().unwrap(),
        v["task_id"].as_str().unwrap(),
    );
    let ids = furnish(app, bob, id, task, team, hour, "bob rule").await;
    if stopped {
        power(app, bob, id, "shutdown").await;
    }
    ids
}

async fn power(app: &TestApp, t: &Tenant, id: &str, verb: &str) {
    expect(
        t.post(&format!("/api/v1/instances/{id}/{verb}"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
}

/// What Alice reads of her own resources (status and body).
async fn alice_views(alice: &Tenant, a: &Ids) -> Vec<(String, Value)> {
    let i = &a.instance;
    let paths = [
        format!("/api/v1/instances/{i}"),
        format!("/api/v1/instances/{i}/ips"),
        format!("/api/v1/instances/{i}/firewall"),
        format!("/api/v1/instances/{i}/firewall/rules/0"),
        format!("/api/v1/instances/{i}/backup-schedule"),
        format!("/api/v1/instances/{i}/backups"),
        format!("/api/v1/teams/{}/instances", a.team),
        format!("/api/v1/tasks/{}", a.task),
        "/api/v1/instances".into(),
        "/api/v1/backups".into(),
        "/api/v1/backups/storage".into(),
        "/api/v1/tasks?days=7&limit=100".into(),
    ];
    let mut out = vec![];
    for p in paths {
        // Status and body, not asserted here: a change is reported with everything else.
        let r = alice.get(&p).await;
        let status = r.status().as_u16();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        out.push((p, json!({ "status": status, "body": body })));
    }
    out
}

#[derive(Default)]
struct Report {
    failures: Vec<String>,
    probes: usize,
    statuses: BTreeMap<u16, usize>,
    /// Operations whose control (Bob, his own ids) succeeded in some phase / failed in a phase.
    valid: BTreeSet<String>,
    invalid: BTreeMap<String, String>,
}

struct World<'a> {
    app: &'a TestApp,
    bob: &'a Tenant,
    alice: &'a Ids,
    ghost: &'a Ids,
    bob_team: &'a str,
    secrets: &'a [String],
    hour: i64,
}

/// Every operation, as Bob, with Alice's ids (and the mixed variants), then the control.
async fn phase(w: &World<'_>, ops: &[Op], stopped: bool, report: &mut Report) {
    let phase = if stopped { "stopped" } else { "running" };
    let mut mine: Option<Ids> = None;
    let mut probes = 0;
    for op in ops {
        if mine.is_none() {
            mine = Some(bob_fixture(w.app, w.bob, w.bob_team, w.hour, stopped).await);
        }
        let bob = mine.as_ref().expect("fixture");
        let n = op.slots.len();
        // All of Alice's ids; then, when there are several places, hers in one alone.
        let mut masks = vec![vec![true; n]];
        if n > 1 {
            masks.extend((0..n).map(|i| (0..n).map(|j| j == i).collect()));
        }
        for mask in masks {
            let pick = |who: &'static str| -> Vec<&Ids> {
                mask.iter()
                    .map(|&hers| match (hers, who) {
                        (true, "alice") => w.alice,
                        (true, _) => w.ghost,
                        (false, _) => bob,
                    })
                    .collect()
            };
            let variant = op
                .slots
                .iter()
                .zip(&mask)
                .map(|(s, &hers)| format!("{}={}", s.name, if hers { "alice" } else { "bob" }))
                .collect::<Vec<_>>()
                .join(", ");
            let what = format!("[{phase}] {} ({variant})", op.label());
            let req = op.request(&pick("alice"));
            let (status, text) = send(w.bob, &op.method, &req).await;
            let ghost_req = op.request(&pick("ghost"));
            let (g_status, mut g_text) = send(w.bob, &op.method, &ghost_req).await;
            for (g, a) in w.ghost.pairs(w.alice) {
                g_text = g_text.replace(g, a);
            }
            probes += 1;
            *report.statuses.entry(status.as_u16()).or_default() += 1;
            println!("{what} -> {status}");
            if status.is_success() {
                report.failures.push(format!(
                    "LEAK: {what}: Bob got {status} for Alice's resource: {} {}; body: {text}",
                    op.method, req.url
                ));
            } else if status.is_server_error() {
                report.failures.push(format!(
                    "{what}: server error {status} for Bob: {} {}; body: {text}",
                    op.method, req.url
                ));
            }
            if (status, &text) != (g_status, &g_text) {
                report.failures.push(format!(
                    "EXISTENCE: {what}: Alice's ids answer {status} {text}, ids that name nothing \
                     answer {g_status} {g_text} (made-up ids mapped back): Bob can tell hers exist"
                ));
            }
            let found = leaks(&text, w.secrets, &req.carried);
            if !found.is_empty() {
                report.failures.push(format!(
                    "LEAK: {what}: the answer ({status}) to {} {} shows Alice's {found:?}: {text}",
                    op.method, req.url
                ));
            }
        }
        // The control: the same call with Bob's own ids should be accepted.
        let req = op.request(&vec![bob; n]);
        let (status, text) = send(w.bob, &op.method, &req).await;
        println!("[{phase}] control {} -> {status}", op.label());
        if status.is_success() {
            report.valid.insert(op.label());
        } else {
            report.invalid.insert(
                format!("[{phase}] {}", op.label()),
                format!("{status} {text}"),
            );
        }
        if status.is_server_error() {
            report.failures.push(format!(
                "[{phase}] control {} {}: server error {status}: {text}",
                op.method, req.url
            ));
        }
        let found = leaks(&text, w.secrets, &[]);
        if !found.is_empty() {
            report.failures.push(format!(
                "LEAK: [{phase}] Bob's own {} {} shows Alice's {found:?}: {text}",
                op.method, req.url
            ));
        }
        w.app.drain().await;
        if op.method != Method::GET {
            // The control may have changed or removed what it acted on: a fresh set next time.
            let gone = mine.take().expect("fixture");
            w.bob
                .delete(&format!("/api/v1/instances/{}", gone.instance))
                .await;
        }
    }
    if let Some(left) = mine {
        w.bob
            .delete(&format!("/api/v1/instances/{}", left.instance))
            .await;
    }
    w.app.drain().await;
    assert!(
        probes >= MIN_PROBES_PER_PHASE,
        "[{phase}] only {probes} calls with Alice's ids (expected at least {MIN_PROBES_PER_PHASE})"
    );
    report.probes += probes;
}

/// Bob's list answers (every GET without a path parameter or required query) and the history
/// log: none of Alice's data. Alice's own answers to the same calls show hers (so that the
/// check can see it at all).
async fn lists(w: &World<'_>, alice: &Tenant, doc: &Value, report: &mut Report) {
    let now = w.app.clock.now();
    let window = |extra: Option<&str>| {
        let mut b = json!({
            "start_time": Timestamp(now.millis() - 30 * DAY).rfc3339(),
            "end_time": Timestamp(now.millis() + DAY).rfc3339(),
        });
        if let Some(i) = extra {
            b["instance_id"] = json!(i);
        }
        b
    };
    let mut calls: Vec<(Method, String, Option<Value>, Vec<String>)> = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(op) = item.get("get") else { continue };
        if path.contains('{') {
            continue;
        }
        let params: Vec<&Value> = op["parameters"].as_array().into_iter().flatten().collect();
        if params
            .iter()
            .any(|p| p["in"] == "query" && p["required"] == true)
        {
            continue;
        }
        calls.push((Method::GET, path.clone(), None, vec![]));
        // With the widest window the query allows, where it has one.
        let wide: Vec<String> = params
            .iter()
            .filter_map(|p| match p["name"].as_str() {
                Some("limit") => Some("limit=100".to_string()),
                Some("days") => Some("days=7".to_string()),
                _ => None,
            })
            .collect();
        if !wide.is_empty() {
            calls.push((
                Method::GET,
                format!("{path}?{}", wide.join("&")),
                None,
                vec![],
            ));
        }
    }
    assert!(
        calls.len() >= 8,
        "only {} list calls found in the document",
        calls.len()
    );
    calls.push((
        Method::POST,
        "/api/v1/instances/log".into(),
        Some(window(None)),
        vec![],
    ));
    calls.push((
        Method::POST,
        "/api/v1/instances/log".into(),
        Some(window(Some(&w.alice.instance))),
        vec![w.alice.instance.clone()],
    ));
    let mut seen_by_alice = String::new();
    for (method, url, body, carried) in &calls {
        let req = Req {
            url: url.clone(),
            body: body.clone(),
            carried: carried.clone(),
        };
        let (status, text) = send(w.bob, method, &req).await;
        println!("list {method} {url} -> {status}");
        if status.is_server_error() {
            report.failures.push(format!(
                "list {method} {url}: server error {status}: {text}"
            ));
        }
        let found = leaks(&text, w.secrets, carried);
        if !found.is_empty() {
            report.failures.push(format!(
                "LEAK: Bob's {method} {url} ({status}) shows Alice's {found:?}: {text}"
            ));
        }
        let (_, mine) = send(alice, method, &req).await;
        seen_by_alice.push_str(&mine);
    }
    for (what, s) in [
        ("instance", &w.alice.instance),
        ("backup", &w.alice.backup),
        ("task", &w.alice.task),
        ("team", &w.alice.team),
    ] {
        assert!(
            seen_by_alice.contains(s.as_str()),
            "Alice's own list answers do not show her {what} {s}: the list check sees nothing"
        );
    }
}

#[tokio::test]
async fn bob_can_reach_nothing_of_alices_through_any_documented_operation() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.tenant("alice").await, app.tenant("bob").await);
    let alice_team = app
        .app
        .team_create("alice", "alice secret team")
        .await
        .unwrap();
    let bob_team = app.app.team_create("bob", "bob team").await.unwrap();
    // Schedules due half a day away: none runs while the test does.
    let now = app.clock.now();
    let hour = (now.millis() / 3_600_000 + 12) % 24;

    // Alice: an instance with everything.
    let v = expect(
        alice
            .launch_body(json!({
                "region": "us-east-1", "instance_type": "v1_cpu_small", "ssh_key": SSH_KEY,
                "name": "alice-secret-vm", "metadata": {"owner": "alice-secret-metadata"},
            }))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    let (id, task) = (
        v["vm_uuid"].as_str().unwrap(),
        v["task_id"].as_str().unwrap(),
    );
    let a = furnish(
        &app,
        &alice,
        id,
        task,
        &alice_team.id,
        hour,
        "alice-secret-rule",
    )
    .await;
    expect(
        alice
            .put(
                &format!("/api/v1/backups/notes?volid={}", encode(&a.backup)),
                json!({"notes": "alice-secret-notes"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    expect(
        alice
            .put(
                &format!("/api/v1/instances/{id}/firewall"),
                json!({"enable": true}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    let console = expect(
        alice
            .post(&format!("/api/v1/instances/{id}/console"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    app.drain().await;
    let ghost = a.ghost();

    // What must never reach Bob.
    let inst = alice.instance(id).await;
    assert_eq!(inst["status"], "rented");
    let mut secrets: Vec<String> = vec![
        "alice".into(), // in every free text of hers: names, notes, comment, metadata
        a.instance.clone(),
        a.backup.clone(),
        a.team.clone(),
        a.ip.clone(),
        alice_team.name.clone(),
        alice.key.clone(),
        alice.key_id.clone(),
        inst["name"].as_str().unwrap().into(),
        inst["ip_address"].as_str().unwrap().into(),
        console["ticket"].as_str().unwrap().into(),
    ];
    let t = alice
        .get_json(&format!("/api/v1/tasks/{task}"), StatusCode::OK)
        .await;
    secrets.push(t["account_id"].as_str().unwrap().into());
    let tasks = alice
        .get_json("/api/v1/tasks?days=7&limit=100", StatusCode::OK)
        .await;
    for t in tasks["tasks"].as_array().unwrap() {
        secrets.push(t["task_id"].as_str().unwrap().into());
    }
    let ips = alice
        .get_json(&format!("/api/v1/instances/{id}/ips"), StatusCode::OK)
        .await;
    for ip in ips["ips"].as_array().unwrap() {
        secrets.push(ip["ip_address"].as_str().unwrap().into());
        secrets.push(ip["mac_address"].as_str().unwrap().into());
    }
    secrets.sort();
    secrets.dedup();
    let host = inst["host_id"].as_str().unwrap().to_string();

    // The operations, from the document the server serves (it needs no key).
    let doc = expect(
        app.raw(Method::GET, "/api/v1/openapi.json", None, None)
            .await,
        StatusCode::OK,
    )
    .await;
    let (ops, in_path, in_query) = operations(&doc, hour, app.clock.now());
    println!("{in_path} operations with a path parameter, {in_query} with a resource in the query");
    assert!(
        in_path >= MIN_PATH_OPS,
        "only {in_path} operations with a path parameter in the served document"
    );
    assert!(
        in_query >= MIN_QUERY_OPS,
        "only {in_query} operations naming a resource in the query"
    );

    let w = World {
        app: &app,
        bob: &bob,
        alice: &a,
        ghost: &ghost,
        bob_team: &bob_team.id,
        secrets: &secrets,
        hour,
    };
    let mut report = Report::default();
    for stopped in [false, true] {
        if stopped {
            power(&app, &alice, id, "shutdown").await;
        }
        let before = alice_views(&alice, &a).await;
        for (path, v) in &before {
            assert_eq!(v["status"], 200, "Alice's own {path}: {v}");
        }
        let vm_before = app.sim.vm(&host, id).expect("Alice's VM on its host");
        let backups_before = app.sim.backups().contains_key(&a.backup);
        phase(&w, &ops, stopped, &mut report).await;
        for ((path, was), (_, now)) in before.iter().zip(alice_views(&alice, &a).await) {
            if *was != now {
                report.failures.push(format!(
                    "Alice's {path} changed while Bob probed: was {was}, now {now}"
                ));
            }
        }
        if app.sim.vm(&host, id).as_ref() != Some(&vm_before) {
            report.failures.push(format!(
                "Alice's VM on {host} changed while Bob probed: was {vm_before:?}, now {:?}",
                app.sim.vm(&host, id)
            ));
        }
        assert!(backups_before);
        if !app.sim.backups().contains_key(&a.backup) {
            report
                .failures
                .push(format!("Alice's backup {} is gone", a.backup));
        }
        // Stop here on a leak: what follows assumes Alice's resources are intact.
        assert!(
            report.failures.is_empty(),
            "{} isolation failures:\n{}",
            report.failures.len(),
            report.failures.join("\n")
        );
    }
    power(&app, &alice, id, "power-on").await;
    lists(&w, &alice, &doc, &mut report).await;

    // Alice's resources as she left them.
    let inst = alice.instance(id).await;
    assert_eq!(
        (
            inst["status"].as_str(),
            inst["power_status"].as_str(),
            inst["name"].as_str()
        ),
        (Some("rented"), Some("running"), Some("alice-secret-vm"))
    );
    assert_eq!(inst["team_id"], json!(a.team));
    let fw = alice
        .get_json(&format!("/api/v1/instances/{id}/firewall"), StatusCode::OK)
        .await;
    assert_eq!(fw["enabled"], true);
    assert_eq!(fw["rules"].as_array().unwrap().len(), 1);
    assert_eq!(fw["rules"][0]["comment"], "alice-secret-rule");
    let b = alice
        .get_json(&format!("/api/v1/instances/{id}/backups"), StatusCode::OK)
        .await;
    assert_eq!(b["total"], 1);
    assert_eq!(
        (
            b["backups"][0]["volid"].as_str(),
            b["backups"][0]["notes"].as_str()
        ),
        (Some(a.backup.as_str()), Some("alice-secret-notes"))
    );
    let s = alice
        .get_json(
            &format!("/api/v1/instances/{id}/backup-schedule"),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (
            s["frequency"].as_str(),
            s["hour_utc"].as_i64(),
            s["enabled"].as_bool()
        ),
        (Some("daily"), Some(hour), Some(true))
    );
    let ips = alice
        .get_json(&format!("/api/v1/instances/{id}/ips"), StatusCode::OK)
        .await;
    assert_eq!(ips["ip_count"], 2);
    let team = alice
        .get_json(
            &format!("/api/v1/teams/{}/instances", a.team),
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        (team["team_name"].as_str(), team["total"].as_i64()),
        (Some("alice secret team"), Some(1))
    );

    println!(
        "{} calls with Alice's ids; statuses {:?}",
        report.probes, report.statuses
    );
    let never: Vec<_> = report
        .invalid
        .iter()
        .filter(|(k, _)| !report.valid.iter().any(|v| k.ends_with(v.as_str())))
        .collect();
    for (k, why) in &report.invalid {
        println!("control refused {k}: {why}");
    }
    assert!(
        report.failures.is_empty(),
        "{} isolation failures:\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
    // Each operation was accepted with Bob's own ids in one phase at least: its refusal with
    // Alice's was for ownership, not for the request. When this was written none needed an
    // invalid body: the restore body is one the document does not describe (see
    // `undocumented_body`), and the console is accepted only while running (its stopped-phase
    // control is a 400 `invalid_state`; Bob's probe with Alice's id is a 404 in both phases).
    assert!(
        never.is_empty(),
        "operations never accepted even with Bob's own ids (probed with an invalid request): {never:?}"
    );
}
