//! The servers under test, each its own process: `lobster serve`, the moto EC2 emulator and
//! the bare axum endpoint (this binary's `hello` subcommand).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const KEY: &str = "bench-key-0123456789abcdefgh";

pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    /// Resident set size in MiB, from /proc.
    pub fn rss_mib(&self) -> f64 {
        let pid = self.child.id().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A fleet with room for far more than the benchmark launches: one region, a /14 of
/// addresses (262,000), ten large CPU hosts, one instance type.
const FLEET: &str = r#"
[engine]
workers = 4
lease_seconds = 30
poll_ms = 500
max_attempts = 3

[sim]
failure_rate = 0.0
[sim.delays_ms]
create = 0
start = 0
shutdown = 0
stop = 0
reboot = 0
destroy = 0

[fleet]
default_gpu_template = "UBUNTU-22-04"
default_cpu_template = "UBUNTU-22-04"
custom_pricing = { cents_per_vcpu = 1, cents_per_8gb_memory = 1, cents_per_gpu = 40 }
[[fleet.regions]]
name = "us-east-1"
description = "Wilmington, DE"
city = "Wilmington"
state = "DE"
ip_pools = ["10.0.0.0/14"]
[[fleet.instance_types]]
name = "v1_cpu_small"
description = "Small CPU instance"
price_cents_per_hour = 5
vcpus = 2
memory_gib = 8
storage_gib = 40
gpus = 0
[[fleet.templates]]
name = "UBUNTU-22-04"
vmid = 100
display_name = "Ubuntu 22.04"
os_type = "linux"
has_nvidia = false
"#;

fn fleet_toml() -> String {
    let mut s = FLEET.to_string();
    for n in 0..10 {
        s.push_str(&format!(
            "[[fleet.hosts]]\nid = \"bench-{n:02}\"\nregion = \"us-east-1\"\ncores = 1000000\n\
             memory_gb = 4000000\ndisk_gb = 20000000\ngpus = 0\n"
        ));
    }
    s
}

/// `lobster serve` on `database_url` with the sim driver at zero latency.
pub async fn lobster(bin: &Path, dir: &Path, database_url: &str) -> Proc {
    let cfg = dir.join("bench.toml");
    std::fs::write(&cfg, fleet_toml()).unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .arg("--config")
        .arg(&cfg)
        .args(["--database-url", database_url])
        .env("LOBSTER_BOOTSTRAP_KEY", KEY)
        // Warnings too: a write held for long (`GroupCommit`) says which queue waits.
        .env("LOBSTER_LOG", "warn");
    spawn_announced(cmd).await
}

/// This binary's bare axum endpoint, in its own process.
pub async fn hello() -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["hello", "--listen", "127.0.0.1:0"]);
    spawn_announced(cmd).await
}

/// Starts a server that prints `http://host:port` on its first line of output.
async fn spawn_announced(mut cmd: Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .next_line()
        .await
        .unwrap()
        .expect("server printed nothing");
    // Keep reading so that the server never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .trim_end_matches('/')
        .parse()
        .expect("address");
    Proc { child, addr }
}

/// The moto server (EC2 emulator) on a free port; ready once it accepts connections.
pub async fn moto(moto_server: &Path) -> Proc {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new(moto_server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", moto_server.display()));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Proc { child, addr }
}

/// Serves `GET /hello` until killed: the floor, what an HTTP round trip costs here.
pub async fn serve_hello(listen: &str) {
    let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    println!("hello on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}
