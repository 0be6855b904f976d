//! `lobster-bench`: starts each server under test in its own process and drives it over
//! HTTP from this one, with the same workloads: GET one instance, the list at 100 and at
//! 10,000 instances, launches accepted, launches through to COMPLETED, deletes accepted, and
//! the server's RSS once it holds `--big` instances. Targets: `lobster serve` on SQLite and
//! on PostgreSQL, the moto EC2 emulator (RunInstances, DescribeInstances, TerminateInstances)
//! and a bare axum "hello" as the floor. Prints a Markdown table (docs/benchmarks.md).

mod load;
mod servers;
mod workloads;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "lobster-bench")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The `lobster` binary to benchmark (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/lobster")]
    lobster: PathBuf,
    /// Which lobster backends to run: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// moto's server script; the comparison is skipped when it is missing.
    #[arg(long, default_value = "target/bench-venv/bin/moto_server")]
    moto_server: PathBuf,
    /// Seconds each timed workload runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent connections for the small requests.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Instances held when the server's memory is measured (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    big: u64,
    /// Only the reads (GET one, list of 100) after 100 launches: for profiling.
    #[arg(long)]
    reads_only: bool,
    /// Only the writes (launches, deletes) and no moto or hello: for profiling.
    #[arg(long)]
    writes_only: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the bare axum endpoint (started by the benchmark itself).
    Hello {
        #[arg(long)]
        listen: String,
    },
}

fn main() {
    let args = Args::parse();
    if let Some(Cmd::Hello { listen }) = &args.cmd {
        // The same runtime `lobster serve` uses: one worker thread per core.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(servers::serve_hello(listen));
        return;
    }
    // The load generator runs on one thread, leaving the other core to the server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(workloads::run_all(&args));
}
