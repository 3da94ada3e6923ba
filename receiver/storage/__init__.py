"""Postgres: the pool, the migration runner, wake-ups through LISTEN/NOTIFY, and every SQL
statement the hub runs, as named functions grouped by the tables they serve. Imports only
`normalizers`, `config` and `metrics`; never the web layer or a feature."""
