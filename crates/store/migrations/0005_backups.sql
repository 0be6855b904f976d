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
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX backups_account ON backups (account_id, created_at);

CREATE INDEX backups_instance ON backups (instance_id, created_at)
