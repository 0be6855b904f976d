-- Claiming looks for the oldest expired lease, then the earliest due pending task, each by an
-- index range scan with LIMIT 1 (with a single OR'ed condition ordered by created_at, every
-- claim sorted all due tasks: quadratic under a backlog of 100,000 launches).
CREATE INDEX tasks_lease ON tasks (status, lease_until);
