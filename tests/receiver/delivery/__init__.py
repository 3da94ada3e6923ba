"""Tests of receiver/delivery/."""
