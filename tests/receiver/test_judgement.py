"""A normaliser's version: the same in every process, whatever it imported, and changed by a
change of the provider's module."""

from __future__ import annotations

import subprocess
import sys

from normalizers.registry import DEFAULT_REGISTRY
from receiver.judgement import normalizer_version

PRINT_VERSION = (
    "from receiver.judgement import normalizer_version;"
    "from normalizers.registry import DEFAULT_REGISTRY;"
    "print(normalizer_version('apicontrol', DEFAULT_REGISTRY['apicontrol']))"
)


def version_in_a_process(first_import: str) -> str:
    ran = subprocess.run(
        [sys.executable, "-c", first_import + PRINT_VERSION],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return ran.stdout.decode().strip()


def test_a_version_does_not_depend_on_what_else_the_process_imported() -> None:
    alone = version_in_a_process("")
    with_everything = version_in_a_process("import receiver.cli;")
    assert (
        alone == with_everything == normalizer_version("apicontrol", DEFAULT_REGISTRY["apicontrol"])
    )
    assert alone.startswith("apicontrol@")
    assert len(alone.split("@")[1]) == 8


def test_each_provider_has_a_version_of_its_own() -> None:
    versions = {normalizer_version(name, p) for name, p in DEFAULT_REGISTRY.items()}
    assert len({v.split("@")[1] for v in versions}) == len(DEFAULT_REGISTRY)
