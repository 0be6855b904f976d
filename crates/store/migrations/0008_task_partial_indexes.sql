-- Claims look only at pending tasks (by when they are due) and at processing ones (by when
-- their lease ends). Indexed on (status, ...), every finished task kept an entry in both
-- indexes, and each task's end moved two entries: on a busy server those indexes grew with
-- every task ever run and were among the pages every commit wrote. Partial indexes hold only
-- the work in flight, and a task's end removes one entry.
DROP INDEX tasks_claim;
DROP INDEX tasks_lease;
CREATE INDEX tasks_due ON tasks (run_after) WHERE status = 'PENDING';
CREATE INDEX tasks_leased ON tasks (lease_until) WHERE status = 'PROCESSING'
