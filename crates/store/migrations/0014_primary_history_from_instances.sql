-- A primary address is held for exactly its instance's life (taken with the instance,
-- released when it ends), so its period is read off the instance row (`Store::ip_history`)
-- and is no longer written to the history: a row and an index entry less in every launch.
-- The history keeps the additional addresses' periods. The primaries' rows go, so that
-- each period has one source.
DELETE FROM ip_history WHERE is_primary = 1
