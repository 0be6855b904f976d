CREATE TABLE backups (
    volid TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    instance_name TEXT NOT NULL,
    storage TEXT NOT NULL,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    format TEXT NOT NULL,
    notes TEXT,
    status TEXT NOT NULL,
    task_id TEXT,
    origin TEXT NOT NULL DEFAULT 'manual',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX backups_account ON backups (account_id, created_at);

CREATE INDEX backups_instance ON backups (instance_id, created_at)
;

CREATE TABLE backup_schedules (
    instance_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    frequency TEXT NOT NULL,
    hour_utc BIGINT NOT NULL,
    minute_utc BIGINT NOT NULL,
    day_of_week BIGINT NOT NULL,
    day_of_month BIGINT NOT NULL,
    retention_count BIGINT NOT NULL,
    next_run_at BIGINT,
    last_run_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX backup_schedules_due ON backup_schedules (next_run_at)