"""The imperative shell, all I/O: features (ingest, sending, delivery, query) above the shared
web layer (http) and storage; app.py and cli.py assemble them (see the README's Layout)."""
