"""Routing: the send routes' operator API and files, and the providers' health."""
