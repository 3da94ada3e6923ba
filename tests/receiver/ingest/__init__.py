"""Tests of receiver/ingest/."""
