"""Both local packages install and import, with the licence metadata the README promises."""
from importlib import metadata


def _licence(dist: str) -> str:
    meta = metadata.metadata(dist)
    return meta.get("License-Expression") or meta.get("License") or ""


def test_packages_import_with_licences():
    import ivon
    import peft

    assert peft.__file__ and ivon.__file__
    assert _licence("peft") == "Apache-2.0"
    assert _licence("ivon") == "GPL-3.0-or-later"
