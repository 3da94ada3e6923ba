"""Routes in a TOML file (`sms-receiver routes import|export`), for keeping them in version
control: one `[[route]]` table per route, in the order they are tried. An import makes the
routes exactly the file's, in one transaction, or changes nothing when any route is bad."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
import tomli_w
from pydantic import ValidationError

from receiver.http.bodies import field_errors
from receiver.storage import routes
from receiver.storage.routes import ROUTE_NAME_PATTERN, RouteSpec

EXAMPLE = """[[route]]
name = "uk"
match = { country = ["GB"] }
providers = ["swift", "carrierx"]
"""


class RoutesFileError(Exception):
    """A file that cannot be imported: every problem, each naming the route and the field."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def read_routes(text: str, known_providers: Collection[str]) -> list[tuple[str, RouteSpec]]:
    """The routes of a file, checked as the API checks them."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RoutesFileError([f"not TOML: {error}"]) from None
    unknown = sorted(set(document) - {"route"})
    if unknown:
        raise RoutesFileError([f"unknown top-level key {unknown[0]!r} (only [[route]] tables)"])
    tables = document.get("route", [])
    if not isinstance(tables, list):
        raise RoutesFileError(["`route` must be an array of tables: [[route]]"])
    problems: list[str] = []
    found: list[tuple[str, RouteSpec]] = []
    seen: set[str] = set()
    for index, table in enumerate(tables, start=1):
        name = table.get("name") if isinstance(table, dict) else None
        where = f"route {index}" + (f" ({name})" if isinstance(name, str) else "")
        if not isinstance(name, str) or not _is_name(name):
            problems.append(f"{where}: name: {routes.ROUTE_NAME_RULE}")
            continue
        if name in seen:
            problems.append(f"{where}: name: given twice")
            continue
        seen.add(name)
        fields = {key: value for key, value in table.items() if key != "name"}
        try:
            spec = RouteSpec.model_validate(fields)
        except ValidationError as error:
            problems += [f"{where}: {e['field']}: {e['error']}" for e in field_errors(error)]
            continue
        problems += [f"{where}: {p['field']}: {p['error']}" for p in spec.problems(known_providers)]
        found.append((name, spec))
    if problems:
        raise RoutesFileError(problems)
    return found


def _is_name(name: str) -> bool:
    return re.fullmatch(ROUTE_NAME_PATTERN, name) is not None


def routes_toml(rows: Sequence[asyncpg.Record]) -> str:
    """The routes as a file `read_routes` reads back to the same routes."""
    tables: list[dict[str, Any]] = []
    for row in rows:
        spec = RouteSpec.model_validate(json.loads(row["spec"]))
        tables.append({"name": row["name"], **spec.model_dump(mode="json", exclude_none=True)})
    return tomli_w.dumps({"route": tables}) if tables else "# no routes\n"
