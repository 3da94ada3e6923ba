"""Pure provider translation: requests in, schema-v1 events out; no I/O, no clock."""

from normalizers.base import CallbackRequest, ParseError, Provider
from normalizers.events import Event, EventType, Status
from normalizers.registry import DEFAULT_REGISTRY, Registry

__all__ = [
    "DEFAULT_REGISTRY",
    "CallbackRequest",
    "Event",
    "EventType",
    "ParseError",
    "Provider",
    "Registry",
    "Status",
]
