use clap::{Parser, Subcommand};
use lobster::admin::AdminCmd;
use lobster::config::{self, CommonArgs};

// glibc's malloc showed up as a quarter of the server's CPU time in profiles of list
// requests (arena lock contention between worker threads and the SQLite threads); mimalloc
// keeps allocation thread-local. Numbers in docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lobster: a self-hosted control plane for GPU and CPU clouds.
#[derive(Debug, Parser)]
#[command(name = "lobster", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs the control plane (HTTP APIs and task workers).
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, env = "LOBSTER_LISTEN")]
        listen: Option<String>,
        /// Hypervisor driver (default `sim`).
        #[arg(long, env = "LOBSTER_DRIVER")]
        driver: Option<String>,
    },
    /// Operator commands: accounts, teams, API keys.
    #[command(subcommand)]
    Admin(AdminCmd),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOBSTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve { listen, driver } => {
                let cfg = config::load(&cli.common, listen, driver)?;
                lobster::serve::run(cfg).await
            }
            Cmd::Admin(cmd) => {
                let cfg = config::load(&cli.common, None, None)?;
                lobster::admin::run(cfg, cmd).await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
