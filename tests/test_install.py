"""The suite runs against the installed wheel in CI, never the source tree."""

import os
from pathlib import Path

import bptt
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not os.environ.get("BPTT_EXPECT_INSTALLED"),
                    reason="only meaningful when the suite runs against an installed wheel")
def test_imported_from_installed_wheel():
    pkg = Path(bptt.__file__).resolve()
    core = Path(bptt._core.__file__).resolve()
    assert "site-packages" in pkg.parts, pkg
    assert REPO / "python" not in pkg.parents, pkg
    assert core.parent == pkg.parent


def test_version_is_the_crate_version():
    cargo = (REPO / "Cargo.toml").read_text()
    line = next(ln for ln in cargo.splitlines() if ln.startswith("version"))
    assert bptt.__version__ == line.split('"')[1]
