"""The send API: validation, its rate limit and Idempotency-Key, provider calls and retries,
and storing what providers answer. Imports the web layer and storage; no other feature."""
