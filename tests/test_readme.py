"""The README keeps up with the code: every setting is documented, and every provider's status
table is shown as the normaliser maps it."""

from __future__ import annotations

import importlib

from normalizers.registry import DEFAULT_REGISTRY
from receiver.config import ProviderSettings, Settings
from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_documents_every_setting() -> None:
    for name in Settings.model_fields:
        if name == "providers":  # as `<PROVIDER>__<FIELD>` variables, below
            continue
        assert f"`{name.upper()}`" in README, name
    for name in ProviderSettings.model_fields:
        assert f"`<PROVIDER>__{name.upper()}`" in README, name


def test_the_readme_shows_every_status_mapping() -> None:
    for name in DEFAULT_REGISTRY:
        module = importlib.import_module(f"normalizers.{name}")
        section = README.split(f"**{module.NAME}**", 1)[1].split("\n\n", 2)[1]
        for word, status in module.STATUS_MAP.items():
            row = next(line for line in section.splitlines() if f"`{word}`" in line)
            assert row.endswith(f"| `{status}` |"), (module.NAME, word)
