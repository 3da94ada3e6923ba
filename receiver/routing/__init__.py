"""Routing: which providers carry a message that names none (the routes, their choice rules, the
providers' health), the routes' operator API and files. It lies below sending, which asks it."""
