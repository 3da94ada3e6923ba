"""Reading what happened: messages and their timelines, inbound replies, raw callbacks,
statistics, health and metrics. Imports the web layer and storage; no other feature."""
