"""Tenants: the operator's API over the applications that share the hub (made, enabled or
disabled, their providers, limits and numbers). Imports the web layer and storage; no other
feature."""
