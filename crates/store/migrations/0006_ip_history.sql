CREATE TABLE ip_history (
    address TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    interface_name TEXT NOT NULL,
    is_primary BIGINT NOT NULL,
    assigned_at BIGINT NOT NULL,
    released_at BIGINT
);

CREATE INDEX ip_history_instance ON ip_history (instance_id)
