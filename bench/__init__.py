"""`make bench`: the benchmark's scenarios, reference routes and their serve (dev only)."""
