//! `lobster admin …`: operator commands on the same database as a running server.

use crate::config::Config;
use clap::Subcommand;
use lobster_app::admin::NewKey;
use lobster_app::App;
use lobster_core::clock::{system_clock, Timestamp};
use lobster_driver::sim::{SimConfig, SimDriver};
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Accounts (organisations).
    #[command(subcommand)]
    Account(AccountCmd),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Teams inside an account.
    #[command(subcommand)]
    Team(TeamCmd),
    /// Copies this SQLite deployment (--data-dir / --database-url) into an empty PostgreSQL
    /// database, in one transaction, and checks every table's row count.
    MigrateSqliteToPostgres {
        /// `postgres://…` of the target.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Creates an account and prints its id.
    Create {
        name: String,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Creates a key; the secret is printed alone on the last line, once.
    Create {
        #[arg(long)]
        account: String,
        /// owner, admin, member or viewer.
        #[arg(long, default_value = "member")]
        role: String,
        /// Operator key: may use staff-only endpoints.
        #[arg(long)]
        staff: bool,
        /// Limit the key to one team (id or name).
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        expires_in_days: Option<i64>,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Revokes a key by id or prefix; effective on the next request.
    Revoke { key: String },
}

#[derive(Debug, Subcommand)]
pub enum TeamCmd {
    Create {
        #[arg(long)]
        account: String,
        name: String,
    },
    List {
        #[arg(long)]
        account: String,
    },
}

fn ts(ms: Option<i64>) -> String {
    ms.map(|t| Timestamp(t).rfc3339())
        .unwrap_or_else(|| "-".into())
}

pub async fn run(cfg: Config, cmd: AdminCmd) -> Result<(), String> {
    // Operator commands never touch a host; the driver here is only there to build the app.
    let driver = Arc::new(SimDriver::new(SimConfig::instant()));
    let app: Arc<App> = crate::serve::build(&cfg, driver, system_clock()).await?;
    let e = |e: lobster_core::Error| e.to_string();
    match cmd {
        AdminCmd::Account(AccountCmd::Create { name }) => {
            let a = app.account_create(&name).await.map_err(e)?;
            println!("{}", a.id);
        }
        AdminCmd::Account(AccountCmd::List) => {
            for a in app.account_list().await.map_err(e)? {
                println!("{}\t{}\t{}", a.id, a.name, ts(Some(a.created_at)));
            }
        }
        AdminCmd::Key(KeyCmd::Create {
            account,
            role,
            staff,
            team,
            expires_in_days,
            name,
        }) => {
            let k = NewKey {
                account,
                role: Some(role),
                staff,
                team,
                expires_in_days,
                name,
            };
            let (row, secret) = app.key_create(k).await.map_err(e)?;
            println!(
                "key {} for account {} (role {}{}{})",
                row.id,
                row.account_id,
                row.role,
                if row.staff { ", staff" } else { "" },
                row.team_id
                    .as_deref()
                    .map(|t| format!(", team {t}"))
                    .unwrap_or_default()
            );
            println!("Store it now; it is not shown again:");
            println!("{secret}");
        }
        AdminCmd::Key(KeyCmd::List { account }) => {
            for k in app.key_list(account.as_deref()).await.map_err(e)? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}…\t{}\t{}\t{}\tstaff={}\tteam={}\texpires={}\t{}",
                    k.id,
                    k.prefix,
                    k.account_id,
                    k.name,
                    k.role,
                    k.staff,
                    k.team_id.as_deref().unwrap_or("-"),
                    ts(k.expires_at),
                    state
                );
            }
        }
        AdminCmd::Key(KeyCmd::Revoke { key }) => {
            app.key_revoke(&key).await.map_err(e)?;
            println!("revoked {key}");
        }
        AdminCmd::Team(TeamCmd::Create { account, name }) => {
            let t = app.team_create(&account, &name).await.map_err(e)?;
            println!("{}", t.id);
        }
        AdminCmd::MigrateSqliteToPostgres { to } => {
            if !cfg.database_url.starts_with("sqlite:") || !to.starts_with("postgres") {
                return Err("migrate-sqlite-to-postgres copies a sqlite:// source into a postgres:// target".into());
            }
            let target = lobster_store::Store::connect(&to).await.map_err(e)?;
            let copied = app.store().copy_to(&target).await.map_err(e)?;
            let (src, dst) = (
                app.store().table_counts().await.map_err(e)?,
                target.table_counts().await.map_err(e)?,
            );
            let moved = copy_checked(&copied, &src, &dst)?;
            println!("migrated: every table's row count matches");
            if moved {
                println!(
                    "note: the source changed during the copy (a server kept running): what it \
                     wrote after the snapshot is not in the target; for a final copy, stop every \
                     server, empty the target and run this again"
                );
            }
            target.close().await;
        }
        AdminCmd::Team(TeamCmd::List { account }) => {
            for t in app.team_list(&account).await.map_err(e)? {
                println!("{}\t{}", t.id, t.name);
            }
        }
    }
    app.store().close().await;
    Ok(())
}

/// Prints each table's counts and checks the copy against the snapshot it read (`copied`):
/// the target must hold exactly that. Whether the live source moved since (a server left
/// running wrote after the snapshot): not a failed copy, and a second run would be refused
/// (the target no longer empty), but the operator is told.
fn copy_checked(
    copied: &[(&'static str, u64)],
    src: &[(&'static str, i64)],
    dst: &[(&'static str, i64)],
) -> Result<bool, String> {
    let mut moved = false;
    for ((table, n), (_, m)) in src.iter().zip(dst) {
        let c = copied
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, c)| *c)
            .unwrap_or(0);
        println!("{table}\tcopied {c}\tsource {n}\ttarget {m}");
        let c = i64::try_from(c).unwrap_or(i64::MAX);
        if c != *m {
            return Err(format!(
                "{table}: {c} rows copied but {m} in the target; the target is not a copy"
            ));
        }
        moved |= c != *n;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::copy_checked;

    /// A copy is judged by what it read: a source that grew since is said, not a failure; a
    /// target that does not hold what was copied is one.
    #[test]
    fn a_copy_is_checked_against_its_snapshot() {
        let copied = [("accounts", 1), ("instances", 5)];
        let same = [("accounts", 1), ("instances", 5)];
        let grown = [("accounts", 1), ("instances", 6)];
        assert_eq!(copy_checked(&copied, &same, &same), Ok(false));
        assert_eq!(copy_checked(&copied, &grown, &same), Ok(true));
        assert!(copy_checked(&copied, &same, &grown).is_err());
    }
}
