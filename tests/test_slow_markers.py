"""The slow marks of conftest.py name modules and tests that exist: a renamed test would otherwise silently
join the `-m "not slow"` subset (and make it slow)."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import SLOW_MODULES, SLOW_TESTS

TESTS = Path(__file__).resolve().parent


def test_every_listed_module_and_test_exists():
    for module in SLOW_MODULES | SLOW_TESTS.keys():
        assert (TESTS / module).is_file(), module
    for module, names in SLOW_TESTS.items():
        defined = set(re.findall(r"^def (test_\w+)\(", (TESTS / module).read_text(), re.M))
        assert names <= defined, f"{module}: {sorted(names - defined)} not defined"
