//! Task queries. Tasks are scoped like instances: another tenant's task is 404.

use crate::auth::scope;
use crate::App;
use lobster_core::auth::{Caller, Permission};
use lobster_core::Error;
use lobster_store::{TaskFilter, TaskRow};

impl App {
    pub async fn task_get(&self, caller: &Caller, id: &str) -> Result<TaskRow, Error> {
        caller.require(Permission::Read)?;
        self.store
            .task_get(&scope(caller), id)
            .await?
            .ok_or_else(|| Error::not_found("task", id))
    }

    /// Tasks of the last `days` days, newest first, at most `limit`; and the total matching.
    pub async fn task_list(
        &self,
        caller: &Caller,
        limit: i64,
        days: i64,
        status: Option<&str>,
    ) -> Result<(Vec<TaskRow>, i64), Error> {
        caller.require(Permission::Read)?;
        let filter = TaskFilter {
            since: self.now() - days * 86_400_000,
            status: status.map(str::to_string),
            limit,
        };
        self.store.task_list(&scope(caller), &filter).await
    }
}
