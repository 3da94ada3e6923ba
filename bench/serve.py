"""`python -m bench.serve --port N`: the hub as `sms-receiver serve` runs it, plus the bench's
reference routes (/bench/ceiling, /bench/naive), for `make bench` only."""

from __future__ import annotations

import argparse
import sys

from bench import routes
from normalizers.registry import DEFAULT_REGISTRY
from receiver.cli import serve_command, settings_at_start


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.serve")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = settings_at_start(DEFAULT_REGISTRY)
    return serve_command(settings, "127.0.0.1", args.port, DEFAULT_REGISTRY, routes.add_routes)


if __name__ == "__main__":
    sys.exit(main())
