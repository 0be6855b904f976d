//! Configuration: built-in defaults, then a TOML file (`--config`), then `LOBSTER_*`
//! environment variables and command-line flags (clap merges those two, flags first).

use lobster_core::fleet::Fleet;
use lobster_driver::sim::SimConfig;
use lobster_driver::timed::CallLimits;
use lobster_engine::EngineConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub driver: Option<String>,
    pub engine: EngineSection,
    pub driver_timeouts: DriverTimeouts,
    pub rate_limit: RateLimitSection,
    pub sim: SimConfig,
    /// The whole fleet; the demo fleet when absent.
    pub fleet: Option<Fleet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub workers: usize,
    /// Tasks a worker claims at once and runs side by side.
    pub batch: usize,
    /// How often the backup scheduler looks for due schedules.
    pub scheduler_seconds: u64,
    pub lease_seconds: i64,
    pub poll_ms: u64,
    pub max_attempts: i64,
    /// How far this server's clock may be from the database's while it takes task leases;
    /// unset: an eighth of the lease; 0: not checked (one server alone needs no agreement).
    pub max_clock_skew_ms: Option<i64>,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        EngineSection {
            workers: d.workers,
            batch: d.batch,
            scheduler_seconds: 30,
            lease_seconds: d.lease_ms / 1000,
            poll_ms: d.poll_ms,
            max_attempts: d.max_attempts,
            max_clock_skew_ms: None,
        }
    }
}

impl EngineSection {
    pub fn to_engine(&self) -> EngineConfig {
        EngineConfig {
            workers: self.workers.max(1),
            batch: self.batch.clamp(1, 256),
            lease_ms: self.lease_seconds.max(1) * 1000,
            poll_ms: self.poll_ms.max(10),
            max_attempts: self.max_attempts.max(1),
            handoff: EngineConfig::default().handoff,
            max_clock_skew_ms: match self.max_clock_skew_ms {
                None => EngineConfig::clock_bound(self.lease_seconds.max(1) * 1000),
                Some(ms) if ms <= 0 => None,
                Some(ms) => Some(ms),
            },
        }
    }
}

/// Requests per API key and minute, counted across every server on the database.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    /// 0: no limit (the default: the Blue Lobster API documents none).
    pub requests_per_minute: u64,
}

/// How long a driver call may go unanswered before it is given up (a transient failure:
/// the task retries it). Seconds; at least 1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverTimeouts {
    /// Health, stats, console, power state, looking for a backup.
    pub read_seconds: u64,
    /// Power, firewall, addresses, destroy, deleting a backup.
    pub change_seconds: u64,
    /// Create, backup, restore (they copy disks).
    pub long_seconds: u64,
}

impl Default for DriverTimeouts {
    fn default() -> Self {
        let d = CallLimits::default();
        DriverTimeouts {
            read_seconds: d.read.as_secs(),
            change_seconds: d.change.as_secs(),
            long_seconds: d.long.as_secs(),
        }
    }
}

impl DriverTimeouts {
    pub fn to_limits(&self) -> CallLimits {
        let s = |n: u64| std::time::Duration::from_secs(n.max(1));
        CallLimits {
            read: s(self.read_seconds),
            change: s(self.change_seconds),
            long: s(self.long_seconds),
        }
    }
}

/// Flags and environment, as clap parsed them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, env = "LOBSTER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the embedded SQLite database.
    #[arg(long, env = "LOBSTER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://…` or `postgres://…`; overrides --data-dir.
    #[arg(long, env = "LOBSTER_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub scheduler_seconds: u64,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub driver: String,
    pub engine: EngineConfig,
    pub driver_limits: CallLimits,
    /// Requests per API key and minute; 0: no limit.
    pub rate_limit_per_minute: u64,
    pub sim: SimConfig,
    pub fleet: Fleet,
}

pub fn load(
    args: &CommonArgs,
    listen: Option<String>,
    driver: Option<String>,
) -> Result<Config, String> {
    let file = match &args.config {
        Some(p) => read_file(p)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("lobster-data"));
    let database_url = args
        .database_url
        .clone()
        .or(file.database_url)
        .unwrap_or_else(|| format!("sqlite://{}/lobster.db", data_dir.display()));
    Ok(Config {
        listen: listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        database_url,
        data_dir,
        driver: driver.or(file.driver).unwrap_or_else(|| "sim".into()),
        engine: file.engine.to_engine(),
        scheduler_seconds: file.engine.scheduler_seconds.max(1),
        driver_limits: file.driver_timeouts.to_limits(),
        rate_limit_per_minute: file.rate_limit.requests_per_minute,
        sim: file.sim,
        fleet: file.fleet.unwrap_or_else(Fleet::demo),
    })
}

fn read_file(p: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    file.check().map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(file)
}

/// A week, in seconds: the most any duration setting may be.
const WEEK: u64 = 7 * 24 * 3600;

impl FileConfig {
    /// Every number within what the server can use: a value past its range (a lease of
    /// 2^63 seconds overflows to a negative lease once in milliseconds) is refused by name,
    /// not wrapped or clamped behind the operator's back.
    fn check(&self) -> Result<(), String> {
        let e = &self.engine;
        let d = &self.driver_timeouts;
        let ranges: [(&str, i128, i128, i128); 11] = [
            ("engine.workers", e.workers as i128, 1, 1024),
            ("engine.batch", e.batch as i128, 1, 256),
            (
                "engine.scheduler_seconds",
                e.scheduler_seconds.into(),
                1,
                86_400,
            ),
            ("engine.lease_seconds", e.lease_seconds.into(), 1, 86_400),
            ("engine.poll_ms", e.poll_ms.into(), 10, 3_600_000),
            ("engine.max_attempts", e.max_attempts.into(), 1, 1_000),
            (
                "engine.max_clock_skew_ms",
                e.max_clock_skew_ms.unwrap_or(0).into(),
                0,
                3_600_000,
            ),
            (
                "driver_timeouts.read_seconds",
                d.read_seconds.into(),
                1,
                WEEK as i128,
            ),
            (
                "driver_timeouts.change_seconds",
                d.change_seconds.into(),
                1,
                WEEK as i128,
            ),
            (
                "driver_timeouts.long_seconds",
                d.long_seconds.into(),
                1,
                WEEK as i128,
            ),
            (
                "rate_limit.requests_per_minute",
                self.rate_limit.requests_per_minute.into(),
                0,
                10_000_000,
            ),
        ];
        for (name, v, lo, hi) in ranges {
            if v < lo || v > hi {
                return Err(format!("{name} = {v} is out of range ({lo} to {hi})"));
            }
        }
        // Two servers that each pass the clock check differ by at most twice the bound, and
        // a lease's heartbeat margin is a third of it: past a sixth of the lease, two servers
        // could both hold one task.
        let most = e.lease_seconds * 1000 / 6;
        if let Some(skew) = e.max_clock_skew_ms.filter(|&s| s > most) {
            return Err(format!(
                "engine.max_clock_skew_ms = {skew} is more than a sixth of engine.lease_seconds \
                 ({most} ms for a lease of {} s)",
                e.lease_seconds
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Creates the SQLite directory when the database lives there.
    pub fn prepare_storage(&self) -> Result<(), String> {
        if self.database_url.starts_with("sqlite:") {
            std::fs::create_dir_all(&self.data_dir)
                .map_err(|e| format!("cannot create {}: {e}", self.data_dir.display()))?;
            if let Some(path) = self.database_url.strip_prefix("sqlite://") {
                let path = path.split('?').next().unwrap_or(path);
                if let Some(parent) = Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_with_nothing_configured() {
        let c = load(&CommonArgs::default(), None, None).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://lobster-data/lobster.db");
        assert_eq!(c.driver, "sim");
        assert_eq!(c.fleet, Fleet::demo());
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.toml");
        std::fs::write(
            &p,
            "listen = \"0.0.0.0:9000\"\ndata_dir = \"/var/lib/x\"\n[engine]\nworkers = 2\nbatch = 8\n[sim]\nfailure_rate = 0.1\n[sim.delays_ms]\ncreate = 5\n",
        )
        .unwrap();
        let args = CommonArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let c = load(&args, None, None).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.database_url, "sqlite:///var/lib/x/lobster.db");
        assert_eq!(c.engine.workers, 2);
        assert_eq!(c.engine.batch, 8);
        assert_eq!(c.sim.delays_ms.create, 5);
        let args = CommonArgs {
            config: Some(p),
            database_url: Some("postgres://db/x".into()),
            ..Default::default()
        };
        let c = load(&args, Some("127.0.0.1:1".into()), None).unwrap();
        assert_eq!(
            (c.listen.as_str(), c.database_url.as_str()),
            ("127.0.0.1:1", "postgres://db/x")
        );
    }

    #[test]
    fn driver_timeouts_default_and_configure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.toml");
        std::fs::write(
            &p,
            "[driver_timeouts]\nchange_seconds = 60\nlong_seconds = 1\n",
        )
        .unwrap();
        let args = CommonArgs {
            config: Some(p),
            ..Default::default()
        };
        let c = load(&args, None, None).unwrap();
        let s = std::time::Duration::from_secs;
        // Unset keys keep their defaults; 0 is raised to the least limit, 1 s.
        assert_eq!(
            (
                c.driver_limits.read,
                c.driver_limits.change,
                c.driver_limits.long
            ),
            (s(30), s(60), s(1))
        );
        let c = load(&CommonArgs::default(), None, None).unwrap();
        assert_eq!(c.driver_limits, CallLimits::default());
    }

    /// `load` with `toml` as the configuration file.
    fn load_toml(toml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.toml");
        std::fs::write(&p, toml).unwrap();
        let args = CommonArgs {
            config: Some(p),
            ..Default::default()
        };
        load(&args, None, None)
    }

    /// The README's example configuration loads, and its fleet is valid.
    #[test]
    fn the_readmes_example_configuration_starts() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n[engine]").expect("the example") + "```toml\n".len();
        let len = readme[start..].find("```").unwrap();
        let c = load_toml(&readme[start..start + len]).unwrap();
        c.fleet.validate().unwrap();
        assert_eq!(c.fleet.default_cpu_template, "UBUNTU-22-04");
    }

    /// The clock bound keeps two servers that pass it within a third of a lease of each
    /// other (each at most a sixth off the database's): a larger one is refused by name.
    #[test]
    fn a_clock_bound_past_a_sixth_of_the_lease_is_refused() {
        assert!(load_toml("[engine]\nmax_clock_skew_ms = 5000\n").is_ok());
        let err = load_toml("[engine]\nmax_clock_skew_ms = 10000\n").unwrap_err();
        assert!(err.contains("engine.max_clock_skew_ms"), "{err}");
        assert!(load_toml("[engine]\nlease_seconds = 60\nmax_clock_skew_ms = 10000\n").is_ok());
    }

    #[test]
    fn the_clock_bound_follows_the_lease_unless_set() {
        let bound = |toml: &str| load_toml(toml).unwrap().engine.max_clock_skew_ms;
        assert_eq!(bound(""), Some(30_000 / 8));
        assert_eq!(bound("[engine]\nlease_seconds = 80\n"), Some(10_000));
        assert_eq!(bound("[engine]\nmax_clock_skew_ms = 2000\n"), Some(2_000));
        assert_eq!(bound("[engine]\nmax_clock_skew_ms = 0\n"), None);
    }

    #[test]
    fn numbers_out_of_range_are_errors_by_name() {
        let err = |toml: &str| load_toml(toml).err();
        let e = err("[engine]\nlease_seconds = 9223372036854775807\n").expect("refused");
        assert!(e.contains("engine.lease_seconds"), "{e}");
        let e = err("[engine]\nlease_seconds = 0\n").expect("refused");
        assert!(e.contains("engine.lease_seconds"), "{e}");
        let e = err("[engine]\npoll_ms = 9223372036854775807\n").expect("refused");
        assert!(e.contains("engine.poll_ms"), "{e}");
        let e = err("[driver_timeouts]\nlong_seconds = 99999999999\n").expect("refused");
        assert!(e.contains("driver_timeouts.long_seconds"), "{e}");
        assert_eq!(err("[engine]\nlease_seconds = 86400\nworkers = 8\n"), None);
        let e = err("[rate_limit]\nrequests_per_minute = 99999999999\n").expect("refused");
        assert!(e.contains("rate_limit.requests_per_minute"), "{e}");
        let c = load_toml("[rate_limit]\nrequests_per_minute = 600\n").unwrap();
        assert_eq!(c.rate_limit_per_minute, 600);
        assert_eq!(
            load(&CommonArgs::default(), None, None)
                .unwrap()
                .rate_limit_per_minute,
            0
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(load_toml("lisen = \"typo\"\n")
            .unwrap_err()
            .contains("lisen"));
    }
}
