-- `serve` and `worker` may run as a role that cannot change the schema (managed Postgres: the
-- migrations are applied once by a deploy step with an owner's role, `sms-receiver migrate`).
-- What they do that needs the owner's rights, dropping time partitions and looking into a
-- default partition, goes through these functions (and making partitions through 0016's
-- create_partitions), run with their owner's rights (SECURITY DEFINER) and a fixed
-- search_path; each checks that what it is asked to touch is a partition of one of the
-- partitioned tables.

-- Drops one partition (not the default one) of a partitioned table.
CREATE FUNCTION drop_partition(p_table text, p_partition text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM partitioned_table(p_table);
    IF NOT EXISTS (SELECT 1 FROM table_partitions(p_table) p WHERE p.name = p_partition) THEN
        RAISE EXCEPTION '% is not a partition of %', p_partition, p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('DROP TABLE %I', p_partition);
END
$$;

-- Whether the default partition of a partitioned table holds a row.
CREATE FUNCTION default_partition_has_rows(p_table text) RETURNS boolean
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    found boolean;
BEGIN
    PERFORM partitioned_table(p_table);
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', p_table || '_default') INTO found;
    RETURN found;
END
$$;

-- Only the roles the owner grants it to may call them (not PUBLIC, as functions are by default).
REVOKE EXECUTE ON FUNCTION drop_partition(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION default_partition_has_rows(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION create_partitions(text, timestamptz, timestamptz) FROM PUBLIC;
