-- A schedule keeps day_of_week and day_of_month as the client gave them, NULL when not given
-- (the documents type both "integer or null"): stored with their defaults (Monday, the 1st),
-- they were answered back as values the client never set, which a client that reads back
-- what it sent (Terraform) takes for a change. The defaults now apply only when the next run
-- is computed. Rows written before keep the values they were stored with.
CREATE TABLE backup_schedules_v11 (
    instance_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    frequency TEXT NOT NULL,
    hour_utc BIGINT NOT NULL,
    minute_utc BIGINT NOT NULL,
    day_of_week BIGINT,
    day_of_month BIGINT,
    retention_count BIGINT NOT NULL,
    next_run_at BIGINT,
    last_run_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

INSERT INTO backup_schedules_v11 (instance_id, account_id, enabled, frequency, hour_utc,
    minute_utc, day_of_week, day_of_month, retention_count, next_run_at, last_run_at,
    created_at, updated_at)
SELECT instance_id, account_id, enabled, frequency, hour_utc, minute_utc, day_of_week,
    day_of_month, retention_count, next_run_at, last_run_at, created_at, updated_at
FROM backup_schedules;

DROP TABLE backup_schedules;

ALTER TABLE backup_schedules_v11 RENAME TO backup_schedules;

CREATE INDEX backup_schedules_due ON backup_schedules (next_run_at)
