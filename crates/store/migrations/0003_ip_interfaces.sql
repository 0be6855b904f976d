ALTER TABLE ip_addresses ADD COLUMN interface_name TEXT;

ALTER TABLE ip_addresses ADD COLUMN mac_address TEXT;

ALTER TABLE ip_addresses ADD COLUMN is_primary BIGINT NOT NULL DEFAULT 0
