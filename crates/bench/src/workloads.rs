//! The workloads, per target, and the table they produce.

use crate::load::{drive, once, percentile_ms, Budget, Req, Stat};
use crate::servers::{self, Proc, KEY};
use crate::Args;
use bytes::Bytes;
use http_body_util::Full;
use lobster_store::Store;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One line of the table.
struct Row {
    target: String,
    workload: &'static str,
    rps: f64,
    p50: f64,
    p99: f64,
    ok: u64,
    errors: u64,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn add(&mut self, target: &str, workload: &'static str, s: &Stat) {
        eprintln!(
            "{target:<22} {workload:<24} {:>10.0} req/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ({} ok, {} errors)",
            s.rps(),
            s.pct_ms(50.0),
            s.pct_ms(99.0),
            s.ok,
            s.errors
        );
        self.rows.push(Row {
            target: target.into(),
            workload,
            rps: s.rps(),
            p50: s.pct_ms(50.0),
            p99: s.pct_ms(99.0),
            ok: s.ok,
            errors: s.errors,
        });
        for f in &s.failures {
            self.note(format!("{target} {workload}: failed with {f}"));
        }
    }

    fn note(&mut self, n: String) {
        eprintln!("{n}");
        self.notes.push(n);
    }

    fn rps(&self, target: &str, workload: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.target == target && r.workload == workload)
            .map(|r| r.rps)
    }
}

pub async fn run_all(args: &Args) {
    let mut report = Report::default();
    let t = Duration::from_secs(args.seconds);
    let hello = servers::hello().await;
    let addr = hello.addr;
    let s = drive(addr, args.connections, Budget::Time(t), false, move |_| {
        get(addr, "/hello", None)
    })
    .await;
    report.add("axum hello", "GET one", &s);
    hello.stop().await;
    for backend in &args.backends {
        quiesce(&args.postgres_url, &mut report).await;
        let dir = tempfile::tempdir().unwrap();
        let url = match backend.as_str() {
            "sqlite" => format!("sqlite://{}/bench.db", dir.path().display()),
            "postgres" => fresh_schema(&args.postgres_url).await,
            "none" => continue,
            other => panic!("unknown backend {other:?}"),
        };
        bench_lobster(
            args,
            &format!("lobster {backend}"),
            dir.path(),
            &url,
            &mut report,
        )
        .await;
        if backend == "postgres" {
            drop_schema(&args.postgres_url, &url).await;
        }
    }
    if args.moto_server.exists() {
        quiesce(&args.postgres_url, &mut report).await;
        bench_moto(args, &mut report).await;
    } else {
        report.note(format!(
            "moto skipped: {} not found (scripts/bench.sh installs it)",
            args.moto_server.display()
        ));
    }
    print_table(&report, args);
}

/// Starts each target from a quiet machine: the files the last target wrote flushed to disk
/// (`sync`), and PostgreSQL's dirty pages written out (`CHECKPOINT`). Why: the SQLite run's
/// 100,000 instances, and the last PostgreSQL run's dropped schema, were still being written
/// out while the next target ran, and its launches, each waiting on a WAL flush, paid for
/// it: PostgreSQL's launches ran 8-15 % slower after the SQLite run than alone
/// (docs/benchmarks.md, session 24). A CHECKPOINT needs a superuser (or `pg_checkpoint`);
/// without one the run goes on and says so.
async fn quiesce(pg_base: &str, r: &mut Report) {
    if std::env::var_os("LOBSTER_BENCH_NO_QUIESCE").is_some() {
        return;
    }
    if let Err(e) = std::process::Command::new("sync").status() {
        r.note(format!("could not run sync: {e}"));
    }
    if let Err(e) = on_base(pg_base, "CHECKPOINT").await {
        r.note(format!("no CHECKPOINT before the next target: {e}"));
    }
}

fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> Req {
    request(addr, "GET", path, key, Bytes::new(), None)
}

/// `req` from a client that takes gzipped answers, as curl's `--compressed`, Python's
/// requests and Go's net/http do by default (the body is counted, not decoded, as wrk does).
fn gzip_ok(mut req: Req) -> Req {
    req.headers_mut().insert(
        "accept-encoding",
        hyper::header::HeaderValue::from_static("gzip, deflate"),
    );
    req
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Bytes,
    content_type: Option<&str>,
) -> Req {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Full::new(body)).unwrap()
}

const LAUNCH: &str = r#"{"region":"us-east-1","instance_type":"v1_cpu_small","ssh_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBench bench@lobster"}"#;

fn launch(addr: SocketAddr) -> Req {
    request(
        addr,
        "POST",
        "/api/v1/instances/launch-instance",
        Some(KEY),
        Bytes::from_static(LAUNCH.as_bytes()),
        Some("application/json"),
    )
}

fn vm_ids(bodies: &[Bytes]) -> Vec<String> {
    bodies
        .iter()
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter_map(|v| v["vm_uuid"].as_str().map(String::from))
        .collect()
}

/// Until no task is pending or running (counted in one cheap query: this polls the server's
/// own database while it works).
async fn wait_idle(store: &Store) {
    while store.task_open_count().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Launches `n` instances; the accepted rate, then the rate and latency through COMPLETED
/// (from the tasks' own created/finished times).
async fn launches(args: &Args, p: &Proc, store: &Store, n: u64) -> Launched {
    let since = now_ms() - 1;
    let postgres = store.backend() == lobster_store::Backend::Postgres;
    let wal_before = match postgres {
        true => wal_written(&args.postgres_url).await,
        false => None,
    };
    let cpu_before = machine_cpu_ms();
    let accepted = drive(p.addr, args.connections, Budget::Count(n), true, {
        let addr = p.addr;
        move |_| launch(addr)
    })
    .await;
    wait_idle(store).await;
    // The machine's CPU per launch, accepted through COMPLETED, all processes (server,
    // database, this client): a steadier measure than the rate on a shared 2-core machine.
    let cpu_us = machine_cpu_ms()
        .zip(cpu_before)
        .map(|(a, b)| (a - b) * 1000.0 / n as f64);
    let wal_after = match postgres {
        true => wal_written(&args.postgres_url).await,
        false => None,
    };
    let wal = wal_before.zip(wal_after);
    let tasks: Vec<_> = store
        .task_all()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.operation == "create_instance" && t.created_at >= since)
        .collect();
    let first = tasks.iter().map(|t| t.created_at).min().unwrap_or(0);
    let last = tasks
        .iter()
        .filter_map(|t| t.finished_at)
        .max()
        .unwrap_or(0);
    let mut lat: Vec<u32> = tasks
        .iter()
        .filter(|t| t.status == "COMPLETED")
        .filter_map(|t| t.finished_at.map(|f| ((f - t.created_at) * 1000) as u32))
        .collect();
    lat.sort_unstable();
    let completed = lat.len() as f64;
    let rate = completed / ((last - first).max(1) as f64 / 1000.0);
    let ids = vm_ids(&accepted.bodies);
    Launched {
        accepted,
        rate,
        lat,
        ids,
        cpu_us,
        wal,
    }
}

/// PostgreSQL's WAL position in bytes (the whole cluster's), or None when it cannot be read.
/// Its growth over a phase is what the phase wrote: unlike a rate, it does not move with
/// the machine's speed, so it shows a change in the work per launch that noise would hide.
async fn wal_written(url: &str) -> Option<i64> {
    let sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS b";
    let rows = on_base(url, sql).await.ok()?;
    sqlx::Row::try_get::<i64, _>(rows.first()?, "b").ok()
}

/// Runs `sql` on a connection of its own to the database at `url`, and closes it: the
/// bench's own statements beside the servers (a CHECKPOINT, a schema made or dropped, the
/// WAL's position). Its rows.
async fn on_base(url: &str, sql: &str) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    let rows = sqlx::query(sql).fetch_all(&pool).await;
    pool.close().await;
    rows
}

/// What `launches` measured.
struct Launched {
    accepted: Stat,
    /// Launches through COMPLETED per second.
    rate: f64,
    /// Latency through COMPLETED, sorted, in microseconds.
    lat: Vec<u32>,
    ids: Vec<String>,
    cpu_us: Option<f64>,
    /// PostgreSQL's WAL position before and after the launches (accepted through COMPLETED).
    wal: Option<(i64, i64)>,
}

/// The machine's busy CPU time so far (all cores, all processes) from /proc/stat, in
/// milliseconds: the work a phase cost, whatever ran it and however it was scheduled (a
/// steadier measure than a rate on a loaded 2-core machine).
fn machine_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq: busy is all but idle and iowait (steal, the
    // hypervisor's, is not this machine's work).
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| v.get(i)).sum();
    Some(busy as f64 * 10.0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// GET one instance and the list (of 100 at this point), each for the timed budget.
async fn small_reads(args: &Args, target: &str, addr: SocketAddr, one: String, r: &mut Report) {
    let t = Duration::from_secs(args.seconds);
    let s = drive(addr, args.connections, Budget::Time(t), false, move |_| {
        get(addr, &one, Some(KEY))
    })
    .await;
    r.add(target, "GET one", &s);
    let s = drive(addr, args.connections, Budget::Time(t), false, move |_| {
        get(addr, "/api/v1/instances", Some(KEY))
    })
    .await;
    r.add(target, "list of 100", &s);
}

async fn bench_lobster(
    args: &Args,
    target: &str,
    dir: &std::path::Path,
    url: &str,
    r: &mut Report,
) {
    let t = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let p = servers::lobster(&args.lobster, dir, url).await;
    r.note(format!(
        "{target}: started in {:.1} s (fleet sync of 262,000 addresses included)",
        started.elapsed().as_secs_f64()
    ));
    let store = Store::connect_uncached(url).await.unwrap();
    let addr = p.addr;
    // 100 instances, then reads.
    let ids = launches(args, &p, &store, 100).await.ids;
    let one = format!("/api/v1/instances/{}", ids[0]);
    let (status, _) = once(addr, get(addr, &one, Some(KEY))).await;
    assert_eq!(status, 200, "GET {one}");
    if !args.writes_only {
        small_reads(args, target, addr, one, r).await;
    }
    if args.reads_only {
        p.stop().await;
        return;
    }
    // 9,900 more: the launch rates.
    let Launched {
        accepted,
        rate,
        lat,
        ids: launched,
        cpu_us,
        wal,
    } = launches(args, &p, &store, 9_900).await;
    if let Some(us) = cpu_us {
        r.note(format!(
            "{target}: the machine's CPU per launch (9,900, accepted through COMPLETED, all processes): {us:.0} µs"
        ));
    }
    if let Some((from, to)) = wal {
        // The positions, for `pg_waldump -s … -e … --stats=record` on what they wrote.
        let lsn = |b: i64| format!("{:X}/{:X}", b >> 32, b & 0xffff_ffff);
        r.note(format!(
            "{target}: PostgreSQL's WAL per launch (the same 9,900): {:.0} bytes (from {} to {})",
            (to - from) as f64 / 9_900.0,
            lsn(from),
            lsn(to)
        ));
    }
    r.add(target, "launch accepted", &accepted);
    r.rows.push(Row {
        target: target.into(),
        workload: "launch to COMPLETED",
        rps: rate,
        p50: percentile_ms(&lat, 50.0),
        p99: percentile_ms(&lat, 99.0),
        ok: lat.len() as u64,
        errors: 9_900 - lat.len() as u64,
    });
    eprintln!(
        "{target:<22} launch to COMPLETED      {rate:>10.0} /s     p50 {:>8.2} ms  p99 {:>8.2} ms",
        percentile_ms(&lat, 50.0),
        percentile_ms(&lat, 99.0)
    );
    if !args.writes_only {
        let s = drive(addr, 4, Budget::Time(t), false, move |_| {
            get(addr, "/api/v1/instances", Some(KEY))
        })
        .await;
        r.add(target, "list of 10,000", &s);
        let s = drive(addr, 4, Budget::Time(t), false, move |_| {
            gzip_ok(get(addr, "/api/v1/instances", Some(KEY)))
        })
        .await;
        r.add(target, "list of 10,000 (gzip)", &s);
    }
    let s = deletes(args, addr, ids.clone()).await;
    r.add(target, "delete accepted", &s);
    wait_idle(&store).await;
    // 100 deletes take a few tens of milliseconds: a rate from them is mostly noise. The
    // same again with 2,000 (moto's 100 take seconds already).
    let mut launched = launched.into_iter();
    let gone: Vec<String> = launched.by_ref().take(2_000).collect();
    let n_gone = gone.len() as u64;
    let s = deletes(args, addr, gone).await;
    r.add(target, "delete accepted (2,000)", &s);
    wait_idle(&store).await;
    // A cloud's steady state: launches and deletes interleaved, each delete giving an
    // address back while launches take them; at the size `--big` fills to, if any.
    let old: Vec<String> = launched.take(CHURN as usize / 2).collect();
    if args.big <= 10_000 {
        let s = churn(args, addr, old.clone()).await;
        r.add(target, "churn (launch + delete)", &s);
        wait_idle(&store).await;
    }
    if args.big > 10_000 {
        // The churn launched as many as it deleted.
        let more = args.big - 10_000 + ids.len() as u64 + n_gone;
        let t0 = Instant::now();
        let accepted = launches(args, &p, &store, more).await.accepted;
        for f in &accepted.failures {
            r.note(format!("{target} bulk launches: failed with {f}"));
        }
        let held = store
            .instance_all()
            .await
            .unwrap()
            .iter()
            .filter(|i| i.status == "rented")
            .count();
        r.note(format!(
            "{target}: {} more launches in {:.0} s; now holds {held} instances; RSS {:.0} MiB",
            accepted.ok,
            t0.elapsed().as_secs_f64(),
            p.rss_mib()
        ));
        let all = store.instance_all().await.unwrap();
        let id = all
            .iter()
            .find(|i| i.status == "rented")
            .unwrap()
            .id
            .clone();
        let one = format!("/api/v1/instances/{id}");
        let s = drive(addr, args.connections, Budget::Time(t), false, move |_| {
            get(addr, &one, Some(KEY))
        })
        .await;
        r.add(target, "GET one (at 100k)", &s);
        r.note(format!(
            "{target}: RSS after GET one at {held} instances: {:.0} MiB",
            p.rss_mib()
        ));
        let s = churn(args, addr, old).await;
        r.add(target, "churn (launch + delete)", &s);
    }
    p.stop().await;
}

/// EC2's query protocol, as the AWS CLI sends it (moto reads the service and region from
/// the credential scope and does not check the signature).
fn ec2(addr: SocketAddr, form: String) -> Req {
    let mut req = request(
        addr,
        "POST",
        "/",
        None,
        Bytes::from(form),
        Some("application/x-www-form-urlencoded; charset=utf-8"),
    );
    let h = req.headers_mut();
    h.insert("x-amz-date", "20261123T000000Z".parse().unwrap());
    h.insert(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDBENCH/20261123/us-east-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
            .parse()
            .unwrap(),
    );
    req
}

fn tags(body: &[u8], tag: &str) -> Vec<String> {
    let s = String::from_utf8_lossy(body);
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    s.split(&open)
        .skip(1)
        .filter_map(|p| p.split(&close).next().map(String::from))
        .collect()
}

async fn bench_moto(args: &Args, r: &mut Report) {
    let t = Duration::from_secs(args.seconds);
    let target = "moto EC2";
    let p = servers::moto(&args.moto_server).await;
    let addr = p.addr;
    let (status, body) = once(
        addr,
        ec2(
            addr,
            "Action=DescribeImages&Version=2016-11-15&Owner.1=amazon".into(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let ami = tags(&body, "imageId").into_iter().next().expect("an AMI");
    let ami2 = ami.clone();
    let run = move |_| {
        ec2(
            addr,
            format!("Action=RunInstances&Version=2016-11-15&ImageId={ami}&MinCount=1&MaxCount=1&InstanceType=t2.micro"),
        )
    };
    let s = drive(
        addr,
        args.connections,
        Budget::Count(100),
        true,
        run.clone(),
    )
    .await;
    let ids: Vec<String> = s
        .bodies
        .iter()
        .flat_map(|b| tags(b, "instanceId"))
        .collect();
    assert_eq!(ids.len(), 100, "moto launched {}", ids.len());
    let first = ids[0].clone();
    let s = drive(addr, args.connections, Budget::Time(t), false, move |_| {
        ec2(
            addr,
            format!("Action=DescribeInstances&Version=2016-11-15&InstanceId.1={first}"),
        )
    })
    .await;
    r.add(target, "GET one", &s);
    let s = drive(addr, args.connections, Budget::Time(t), false, move |_| {
        ec2(addr, "Action=DescribeInstances&Version=2016-11-15".into())
    })
    .await;
    r.add(target, "list of 100", &s);
    if args.reads_only {
        p.stop().await;
        return;
    }
    // moto launches under a hundred a second: 1,000 single launches are measured, and the rest of
    // the 10,000 are made 500 per call.
    let cpu_before = machine_cpu_ms();
    let s = drive(addr, args.connections, Budget::Count(1_000), true, run).await;
    let singles: Vec<String> = s
        .bodies
        .iter()
        .flat_map(|b| tags(b, "instanceId"))
        .collect();
    if let Some(ms) = machine_cpu_ms().zip(cpu_before).map(|(a, b)| a - b) {
        r.note(format!(
            "{target}: the machine's CPU per launch (1,000 RunInstances, all processes): {:.0} µs",
            ms
        ));
    }
    r.add(target, "launch accepted", &s);
    let bulk = drive(addr, 1, Budget::Count(18), false, move |_| {
        ec2(
            addr,
            format!("Action=RunInstances&Version=2016-11-15&ImageId={ami2}&MinCount=500&MaxCount=500&InstanceType=t2.micro"),
        )
    })
    .await;
    assert_eq!(bulk.errors, 0, "moto bulk launches failed");
    // moto has no asynchronous creation: an instance is usable once RunInstances answers.
    r.rows.push(Row {
        target: target.into(),
        workload: "launch to COMPLETED",
        rps: s.rps(),
        p50: s.pct_ms(50.0),
        p99: s.pct_ms(99.0),
        ok: s.ok,
        errors: s.errors,
    });
    let s = drive(addr, 4, Budget::Time(t), false, move |_| {
        ec2(addr, "Action=DescribeInstances&Version=2016-11-15".into())
    })
    .await;
    r.add(target, "list of 10,000", &s);
    let s = drive(addr, 4, Budget::Time(t), false, move |_| {
        gzip_ok(ec2(
            addr,
            "Action=DescribeInstances&Version=2016-11-15".into(),
        ))
    })
    .await;
    r.add(target, "list of 10,000 (gzip)", &s);
    let s = moto_terminate(args, addr, ids).await;
    r.add(target, "delete accepted", &s);
    // The sample the throughput is compared on: 100 deletes are a burst of a few tens of
    // milliseconds on lobster (the ramp of its connections, not a rate), so lobster's 2,000
    // are compared with these 1,000, each a sample of a second or more.
    let s = moto_terminate(args, addr, singles).await;
    r.add(target, "delete accepted (1,000)", &s);
    r.note(format!(
        "moto EC2: RSS at 10,000 instances: {:.0} MiB",
        p.rss_mib()
    ));
    p.stop().await;
}

/// Terminates each of `ids` in moto once, as fast as it answers.
async fn moto_terminate(args: &Args, addr: SocketAddr, ids: Vec<String>) -> Stat {
    let n = ids.len() as u64;
    drive(addr, args.connections, Budget::Count(n), false, move |i| {
        ec2(
            addr,
            format!(
                "Action=TerminateInstances&Version=2016-11-15&InstanceId.1={}",
                ids[i as usize]
            ),
        )
    })
    .await
}

/// A URL whose connections use a new, empty schema of the database at `base`.
async fn fresh_schema(base: &str) -> String {
    let schema = format!("bench_{}", now_ms());
    on_base(base, &format!("CREATE SCHEMA {schema}"))
        .await
        .expect("PostgreSQL: a schema for the run");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Requests of the churn workload: half launches, half deletes of older instances.
const CHURN: u64 = 6_000;

/// Launches and deletes alternately (a delete of each of `old`, a launch beside each), as
/// fast as they are accepted.
async fn churn(args: &Args, addr: SocketAddr, old: Vec<String>) -> Stat {
    let n = 2 * old.len() as u64;
    drive(addr, args.connections, Budget::Count(n), false, move |i| {
        if i % 2 == 0 {
            return launch(addr);
        }
        let path = format!("/api/v1/instances/{}", old[(i / 2) as usize]);
        request(addr, "DELETE", &path, Some(KEY), Bytes::new(), None)
    })
    .await
}

/// Deletes each of `ids` once, as fast as they are accepted.
async fn deletes(args: &Args, addr: SocketAddr, ids: Vec<String>) -> Stat {
    let n = ids.len() as u64;
    drive(addr, args.connections, Budget::Count(n), false, move |i| {
        let path = format!("/api/v1/instances/{}", ids[i as usize]);
        request(addr, "DELETE", &path, Some(KEY), Bytes::new(), None)
    })
    .await
}

/// Drops the schema `fresh_schema` made for `url` (a filled one holds 100,000 instances and
/// 262,000 addresses: left behind, every later run's PostgreSQL works around it).
/// `LOBSTER_BENCH_KEEP_SCHEMA=1` keeps it, to look at its tables and plans afterwards.
async fn drop_schema(base: &str, url: &str) {
    let Some(schema) = url.rsplit("search_path%3D").next() else {
        return;
    };
    if std::env::var_os("LOBSTER_BENCH_KEEP_SCHEMA").is_some() {
        eprintln!("kept schema {schema} (LOBSTER_BENCH_KEEP_SCHEMA)");
        return;
    }
    if let Err(e) = on_base(base, &format!("DROP SCHEMA {schema} CASCADE")).await {
        eprintln!("could not drop {schema}: {e}");
    }
}

fn print_table(r: &Report, args: &Args) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("Machine: {cores} cores ({cpu}). Load: {} connections, {} s per timed workload, from a one-thread client process on the same machine.\n", args.connections, args.seconds);
    println!("| target | workload | req/s | p50 ms | p99 ms | ok | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            row.target, row.workload, row.rps, row.p50, row.p99, row.ok, row.errors
        );
    }
    println!();
    let workloads = [
        "GET one",
        "list of 100",
        "list of 10,000",
        "list of 10,000 (gzip)",
        "launch accepted",
        "launch to COMPLETED",
        "delete accepted",
    ];
    for backend in &args.backends {
        let target = format!("lobster {backend}");
        for w in workloads {
            if let (Some(a), Some(m)) = (r.rps(&target, w), r.rps("moto EC2", w)) {
                println!("- {target} / moto, {w}: {:.0}×", a / m);
            }
            // The larger samples of deletes: lobster's 2,000 against moto's 1,000.
            if w == "delete accepted" {
                let big = r.rps(&target, "delete accepted (2,000)");
                if let (Some(a), Some(m)) = (big, r.rps("moto EC2", "delete accepted (1,000)")) {
                    println!(
                        "- {target} / moto, delete accepted (2,000 vs 1,000): {:.0}×",
                        a / m
                    );
                }
            }
        }
        if let (Some(a), Some(h)) = (r.rps(&target, "GET one"), r.rps("axum hello", "GET one")) {
            println!(
                "- {target} GET one / axum hello: {:.2} (hello is {:.2}× faster)",
                a / h,
                h / a
            );
        }
    }
    println!();
    for n in &r.notes {
        println!("- {n}");
    }
}
