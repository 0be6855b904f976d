-- A live instance is one not yet ended, and every end (deleted, failed) sets deleted_at. The
-- live-name index was partial on status, which made status an indexed column: no update of
-- it could be HOT on PostgreSQL, so a create's end (creating -> rented) and a command's claim
-- (rented -> terminating) each wrote a new entry in every index of instances. Partial on
-- deleted_at, only an instance's end moves index entries.
UPDATE instances SET deleted_at = updated_at
    WHERE deleted_at IS NULL AND status NOT IN ('creating', 'rented', 'terminating');
UPDATE instances SET deleted_at = NULL
    WHERE deleted_at IS NOT NULL AND status IN ('creating', 'rented', 'terminating');
DROP INDEX instances_live_name;
CREATE UNIQUE INDEX instances_live_name ON instances (account_id, name) WHERE deleted_at IS NULL
