"""Tests of receiver/query/."""
