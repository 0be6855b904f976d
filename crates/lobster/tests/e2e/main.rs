//! End-to-end tests through HTTP: the real router, store and engine, the `sim` driver.
//! Runs on SQLite, and on PostgreSQL when `LOBSTER_TEST_POSTGRES_URL` is set.

mod support;

mod auth;
mod backups;
mod catalog;
mod console;
mod engine;
mod firewall;
mod history;
mod instances;
mod ips;
mod isolation;
mod launch;
mod launch_custom;
mod migrate;
mod power;
mod rate;
mod schedules;
mod tasks;
mod teams;
mod timestamps;
