-- Requests counted per API key and one-minute window, shared by every server on the
-- database (each reserves a share of a window's limit at a time: `Store::rate_reserve`).
CREATE TABLE rate_windows (
    key_id TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_start)
);
