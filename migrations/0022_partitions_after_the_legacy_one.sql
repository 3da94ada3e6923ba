-- A unit (a day, a month) that the legacy partition of 0016 already covers in part is not made:
-- made from now() in the hour before midnight (the legacy partition reaching the next hour, so
-- into the next day), it would overlap it and be refused, failing the upkeep (and, from 0016's
-- own call, the migration of a new database) for that hour. Units are still found by name first.
CREATE OR REPLACE FUNCTION create_partitions(p_table text, p_from timestamptz, p_until timestamptz)
RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    unit text := partition_unit(p_table);
    step interval := CASE unit WHEN 'month' THEN interval '1 month' ELSE interval '1 day' END;
    unit_start timestamp := date_trunc(unit, p_from AT TIME ZONE 'UTC');
    created integer := 0;
BEGIN
    PERFORM partitioned_table(p_table);
    WHILE unit_start <= p_until AT TIME ZONE 'UTC' LOOP
        IF to_regclass(partition_name(p_table, unit_start AT TIME ZONE 'UTC')) IS NULL
           AND NOT EXISTS (
               SELECT 1 FROM table_partitions(p_table) p
               WHERE p.starts < (unit_start + step) AT TIME ZONE 'UTC'
                 AND p.ends > unit_start AT TIME ZONE 'UTC') THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                partition_name(p_table, unit_start AT TIME ZONE 'UTC'), p_table,
                unit_start AT TIME ZONE 'UTC', (unit_start + step) AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
        unit_start := unit_start + step;
    END LOOP;
    RETURN created;
END
$$;
