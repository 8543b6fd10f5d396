"""Both local packages install and import, with the licence metadata the README promises."""
from importlib import metadata


def test_packages_import_with_licences():
    import ivon
    import peft

    assert peft.__file__ and ivon.__file__
    assert "Apache" in metadata.metadata("peft")["License"]
    assert "GPL-3.0" in metadata.metadata("ivon")["License"]
