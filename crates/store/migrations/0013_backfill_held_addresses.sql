-- Addresses held since before migration 3 were each their instance's primary, but 3 added
-- `is_primary` as 0 and set no interface: such a primary could be removed as an additional
-- address (`DELETE /instances/{id}/ips/{ip}`) and handed to another instance while its own
-- still showed it. Mark them as what they are.
UPDATE ip_addresses SET is_primary = 1, interface_name = COALESCE(interface_name, 'net0')
WHERE instance_id IS NOT NULL AND is_primary = 0 AND interface_name IS NULL
  AND address = (SELECT i.ip_address FROM instances i WHERE i.id = ip_addresses.instance_id);

-- Addresses held since before migration 6 have no history row, so they were never billed:
-- their holding is recorded from when they were assigned (or their instance created).
INSERT INTO ip_history (address, instance_id, interface_name, is_primary, assigned_at)
SELECT a.address, a.instance_id, COALESCE(a.interface_name, 'net0'), a.is_primary,
       COALESCE(a.assigned_at, i.created_at)
FROM ip_addresses a JOIN instances i ON i.id = a.instance_id
WHERE NOT EXISTS (SELECT 1 FROM ip_history h
                  WHERE h.address = a.address AND h.instance_id = a.instance_id
                    AND h.released_at IS NULL);
