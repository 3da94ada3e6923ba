"""Provider modules by their stable name (the name used in URLs, configuration and events)."""

from __future__ import annotations

from collections.abc import Mapping

from normalizers import apicontrol, carrierx, properties, swift, telecom23
from normalizers.base import Provider

Registry = Mapping[str, Provider]

DEFAULT_REGISTRY: Registry = {
    apicontrol.NAME: apicontrol.PROVIDER,
    carrierx.NAME: carrierx.PROVIDER,
    properties.NAME: properties.PROVIDER,
    swift.NAME: swift.PROVIDER,
    telecom23.NAME: telecom23.PROVIDER,
}
