"""The imperative shell: HTTP app, storage, CLI. All I/O lives here."""
