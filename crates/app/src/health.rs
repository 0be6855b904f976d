//! Health of the API's parts: database, task engine and driver.

use crate::App;

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: &'static str,
    pub database: &'static str,
    pub task_engine: &'static str,
    pub driver: &'static str,
    pub timestamp: i64,
}

impl App {
    pub async fn health(&self) -> Health {
        let now = self.now();
        let database = if self.store.ping().await.is_ok() {
            "operational"
        } else {
            "unavailable"
        };
        let poll = self.engine.config().poll_ms as i64;
        let task_engine = match self.engine.last_poll() {
            None => "stopped",
            // It takes no leases while its clock is off the database's.
            Some(_) if !self.engine.clock_ok() => "degraded",
            // A worker busy with a long driver call does not poll; allow a lease's worth.
            Some(t) if now - t <= poll * 4 + self.engine.config().lease_ms => "operational",
            Some(_) => "degraded",
        };
        let driver = if self.driver.health().await.is_ok() {
            "operational"
        } else {
            "unavailable"
        };
        let status = if database != "operational" {
            "unhealthy"
        } else if task_engine != "operational" || driver != "operational" {
            "degraded"
        } else {
            "healthy"
        };
        Health {
            status,
            database,
            task_engine,
            driver,
            timestamp: now,
        }
    }
}
