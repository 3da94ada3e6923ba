"""The fixture corpus: real-shaped provider requests beside the exact events they must give.

Each `tests/fixtures/<provider>/<case>.json` holds:
  source       where the shape comes from (documentation page, or what it is modelled on)
  request      method, query, headers, body (an object/array is sent as JSON, a string as is)
  received_at  the receipt time given to the normaliser
  expected     the schema-v1 events, storage fields (raw_id, message_id, sequence,
               recipient_status) left out; or
  error        a fragment of the ParseError message, for payloads that must be refused
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from normalizers.base import CallbackRequest
from normalizers.events import Event

FIXTURES = Path(__file__).parent / "fixtures"
STORAGE_FIELDS = (
    "raw_id",
    "message_id",
    "sequence",
    "recipient_status",
    "tenant",
    "attempt",
    "details",
    "correction",
)


@dataclass(frozen=True)
class Case:
    provider: str
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.provider}/{self.name}"

    @property
    def method(self) -> str:
        return str(self.data["request"].get("method", "POST"))

    @property
    def query(self) -> str:
        return str(self.data["request"].get("query", ""))

    @property
    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = self.data["request"].get("headers", {})
        return headers

    @property
    def body(self) -> bytes:
        body = self.data["request"].get("body")
        if body is None:
            return b""
        if isinstance(body, str):
            return body.encode()
        return json.dumps(body).encode()

    @property
    def received_at(self) -> datetime:
        return datetime.fromisoformat(self.data["received_at"].replace("Z", "+00:00"))

    def callback_request(self, path_suffix: str = "") -> CallbackRequest:
        return CallbackRequest(
            method=self.method,
            path=f"/callbacks/{self.provider}{path_suffix}",
            query=self.query,
            headers=self.headers,
            body=self.body,
        )


def load_cases(provider: str | None = None) -> list[Case]:
    cases = []
    for path in sorted(FIXTURES.glob("*/*.json")):
        if provider is None or path.parent.name == provider:
            cases.append(Case(path.parent.name, path.stem, path, json.loads(path.read_text())))
    return cases


def comparable(event: Event) -> dict[str, Any]:
    """The event as the corpus states it: schema v1 without the fields storage fills in."""
    data = event.to_json()
    for name in STORAGE_FIELDS:
        data.pop(name)
    return data


def main(argv: list[str]) -> int:
    """`python -m tests.corpus [--write] FILE...`: print the events each case gives today; with
    --write, store them as the case's `expected` (then read the diff line by line before
    committing: the corpus is only worth what its review was)."""
    from normalizers.base import ParseError
    from normalizers.registry import DEFAULT_REGISTRY

    write = "--write" in argv
    for name in (arg for arg in argv if arg != "--write"):
        path = Path(name).resolve()
        case = Case(path.parent.name, path.stem, path, json.loads(path.read_text()))
        provider = DEFAULT_REGISTRY[case.provider]
        try:
            events = [
                comparable(e)
                for e in provider.parse_callback(case.callback_request(), case.received_at)
            ]
        except ParseError as error:
            print(f"{case.id}: ParseError: {error}")
            continue
        print(f"{case.id}: {json.dumps(events, indent=2, ensure_ascii=False)}")
        if write:
            case.data.pop("error", None)
            case.data["expected"] = events
            path.write_text(json.dumps(case.data, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
