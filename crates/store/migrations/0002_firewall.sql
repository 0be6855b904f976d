CREATE TABLE firewalls (
    instance_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
)
