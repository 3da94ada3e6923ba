-- `serve` and `worker` may run as a role that cannot change the schema (managed Postgres: the
-- migrations are applied once by a deploy step with an owner's role, `sms-receiver migrate`).
-- What they do that needs the owner's rights, making and dropping time partitions and looking
-- into a default partition, goes through these functions, run with their owner's rights
-- (SECURITY DEFINER) and a fixed search_path; each checks that what it is asked to touch is a
-- partition of one of the partitioned tables.

CREATE FUNCTION partitioned_table(p_table text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_table NOT IN ('events', 'raw_callbacks', 'delivery_attempts') THEN
        RAISE EXCEPTION '% is not a partitioned table of the hub', p_table
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

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

-- Making partitions: with the owner's rights too, for the tables of the hub only.
CREATE OR REPLACE FUNCTION create_partitions(p_table text, p_from timestamptz, p_until timestamptz)
RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    unit text := partition_unit(p_table);
    step interval := CASE unit WHEN 'month' THEN interval '1 month' ELSE interval '1 day' END;
    starts timestamp := date_trunc(unit, p_from AT TIME ZONE 'UTC');
    created integer := 0;
BEGIN
    PERFORM partitioned_table(p_table);
    WHILE starts <= p_until AT TIME ZONE 'UTC' LOOP
        IF to_regclass(partition_name(p_table, starts AT TIME ZONE 'UTC')) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                partition_name(p_table, starts AT TIME ZONE 'UTC'), p_table,
                starts AT TIME ZONE 'UTC', (starts + step) AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        starts := starts + step;
    END LOOP;
    RETURN created;
END
$$;

-- Only the roles the owner grants it to may call them (not PUBLIC, as functions are by default).
REVOKE EXECUTE ON FUNCTION drop_partition(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION default_partition_has_rows(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION create_partitions(text, timestamptz, timestamptz) FROM PUBLIC;
