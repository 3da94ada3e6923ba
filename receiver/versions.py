"""Which version of a provider's normaliser made an event: `provider@` and the first 8 hex
digits of the SHA-256 of its module's source and of the shared modules it reads with. It changes
whenever the code that reads the provider's callbacks changes, without anyone having to bump it,
so a correction run can say which events came from which version."""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

from normalizers.base import Provider

# What every provider module reads with: a change here can change any provider's events.
SHARED_MODULES = ("normalizers.base", "normalizers.events", "normalizers.encoding")


def normalizer_version(name: str, provider: Provider) -> str:
    return f"{name}@{_source_digest(type(provider).__module__)}"


@functools.cache
def _source_digest(module_name: str) -> str:
    digest = hashlib.sha256()
    for name in (module_name, *SHARED_MODULES):
        module = sys.modules.get(name)
        source = getattr(module, "__file__", None)
        if source is not None:
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:8]
