"""`python -m bench.serve --port N`: the hub as `sms-receiver serve` runs it, plus the bench's
reference routes (/bench/ceiling, /bench/naive), for `make bench` only."""

from __future__ import annotations

import argparse
import sys

from bench import routes
from normalizers.registry import DEFAULT_REGISTRY
from receiver.cli import serve_command
from receiver.config import Settings
from receiver.logs import configure_logging, configured_secrets


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.serve")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings()
    configure_logging(settings.log_level, configured_secrets(settings))
    return serve_command(settings, "127.0.0.1", args.port, DEFAULT_REGISTRY, routes.add_routes)


if __name__ == "__main__":
    sys.exit(main())
