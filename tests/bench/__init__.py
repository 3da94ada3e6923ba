"""Tests of bench/: its reference routes."""
