"""Tests of receiver/sending/."""
