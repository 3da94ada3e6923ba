"""Tests of receiver/http/."""
