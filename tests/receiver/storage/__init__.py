"""Tests of receiver/storage/."""
