CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    digest TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    staff BIGINT NOT NULL DEFAULT 0,
    team_id TEXT REFERENCES teams(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    gpu_model TEXT,
    status TEXT NOT NULL,
    cores_total BIGINT NOT NULL,
    memory_total BIGINT NOT NULL,
    disk_total BIGINT NOT NULL,
    gpus_total BIGINT NOT NULL,
    cores_used BIGINT NOT NULL DEFAULT 0 CHECK (cores_used >= 0),
    memory_used BIGINT NOT NULL DEFAULT 0 CHECK (memory_used >= 0),
    disk_used BIGINT NOT NULL DEFAULT 0 CHECK (disk_used >= 0),
    gpus_used BIGINT NOT NULL DEFAULT 0 CHECK (gpus_used >= 0)
);

CREATE TABLE ip_addresses (
    address TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    seq BIGINT NOT NULL,
    instance_id TEXT,
    assigned_at BIGINT
);

CREATE INDEX ip_addresses_free ON ip_addresses (region, seq) WHERE instance_id IS NULL;

CREATE INDEX ip_addresses_instance ON ip_addresses (instance_id);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    team_id TEXT,
    name TEXT NOT NULL,
    host_id TEXT NOT NULL,
    region TEXT NOT NULL,
    instance_type TEXT,
    template_name TEXT,
    iso_url TEXT,
    os_type TEXT,
    cores BIGINT NOT NULL,
    memory_gb BIGINT NOT NULL,
    disk_gb BIGINT NOT NULL,
    gpus BIGINT NOT NULL,
    gpu_model TEXT,
    price_cents_per_hour BIGINT NOT NULL,
    status TEXT NOT NULL,
    power_status TEXT NOT NULL,
    ip_address TEXT,
    username TEXT NOT NULL,
    ssh_key TEXT,
    password TEXT,
    metadata TEXT,
    active_task_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    ready_at BIGINT,
    deleted_at BIGINT
);

CREATE INDEX instances_account ON instances (account_id, created_at);

CREATE UNIQUE INDEX instances_live_name ON instances (account_id, name)
    WHERE status IN ('creating', 'rented', 'terminating');

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    team_id TEXT,
    instance_id TEXT,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    message TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    run_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE INDEX tasks_claim ON tasks (status, run_after);

CREATE INDEX tasks_account ON tasks (account_id, created_at)
