-- The send API's rate limit and daily recipient quota, shared by every instance (issue 16):
-- in each process's memory, N instances behind a load balancer allowed N times the rate and
-- N times the quota. One row per caller (an API key, or an address when keys are off).

-- A token bucket per caller: `tokens` as of `updated_at`, refilled at the rate on each take.
CREATE TABLE send_rate_buckets (
    caller      text PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Recipients sent per caller per UTC day.
CREATE TABLE send_quota_days (
    caller  text NOT NULL,
    day     date NOT NULL,
    used    integer NOT NULL,
    PRIMARY KEY (caller, day)
);

-- Takes one request from the caller's bucket (rate per second, burst): returns NULL when
-- allowed, else the seconds until a request would be. One statement, so that concurrent takes
-- from several instances queue on the row and none is counted twice or lost.
CREATE FUNCTION take_send_token(p_caller text, p_rate double precision, p_burst integer)
RETURNS double precision
    LANGUAGE plpgsql AS $$
DECLARE
    left_after double precision;
    available double precision;
BEGIN
    INSERT INTO send_rate_buckets AS b (caller, tokens, updated_at)
    VALUES (p_caller, p_burst - 1, clock_timestamp())
    ON CONFLICT (caller) DO UPDATE SET
        tokens = least(p_burst::double precision, b.tokens
                       + extract(epoch FROM clock_timestamp() - b.updated_at) * p_rate) - 1,
        updated_at = clock_timestamp()
    WHERE least(p_burst::double precision, b.tokens
                + extract(epoch FROM clock_timestamp() - b.updated_at) * p_rate) >= 1
    RETURNING tokens INTO left_after;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT least(p_burst::double precision,
                 b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at) * p_rate)
    INTO available FROM send_rate_buckets b WHERE b.caller = p_caller;
    RETURN (1 - available) / p_rate;
END
$$;

-- Takes `p_units` recipients from the caller's quota of `p_day`: false (nothing taken) when
-- they are more than what is left.
CREATE FUNCTION take_send_quota(p_caller text, p_day date, p_units integer, p_per_day integer)
RETURNS boolean
    LANGUAGE plpgsql AS $$
BEGIN
    IF p_units > p_per_day THEN
        RETURN false;
    END IF;
    INSERT INTO send_quota_days AS q (caller, day, used) VALUES (p_caller, p_day, p_units)
    ON CONFLICT (caller, day) DO UPDATE SET used = q.used + excluded.used
    WHERE q.used + excluded.used <= p_per_day;
    RETURN FOUND;
END
$$;
