"""Providers' callbacks: the route, their authentication, the one judgement of a raw
callback's outcome, group commit, the local spool, and reprocessing. Imports the web layer and
storage; no other feature."""
