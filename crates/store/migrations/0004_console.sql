CREATE TABLE console_tickets (
    digest TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    host TEXT NOT NULL,
    port BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
)
