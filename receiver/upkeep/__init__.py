"""Keeping the data in shape over years: partitions made ahead and dropped past retention,
messages retired in batches, a number erased on request."""
