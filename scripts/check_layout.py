"""Checks that keep the source tree's structure honest; run by scripts/test.sh.

- README.md states the same minimum Rust version as Cargo.toml's ``rust-version``;
- ``src/lib.rs`` declares exactly the modules that exist under ``src/``;
- no Rust source file is over 700 lines (split it along its seams instead);
- the sequence driver carries no ``clippy::too_many_arguments`` allowance (pass a
  context struct instead);
- outside tests (``tests.rs`` files and files under a ``tests/`` folder), the Rust code
  has no ``.unwrap()``, and ``panic!``/``unreachable!`` only where ``PANICS_ALLOWED``
  says why (an ``.expect("...")`` states an internal invariant
  that validated input cannot break; bad input is an ``Error``, never a panic).

Usage: ``python scripts/check_layout.py`` from anywhere; exits 1 with the reasons.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 700

# (file, text of the line): the only panics outside tests, each not reachable from input.
PANICS_ALLOWED = {
    # Re-raises another team member's panic instead of waiting for it forever.
    ("src/team/mod.rs", 'panic!("a member of the step team panicked");'),
    # The tape holds layer 0's input unless it kept an x digest (checked just above).
    ("src/sequence/mod.rs",
     '(None, None) => unreachable!("layer 0 without input implies an x digest"),'),
}


def code_outside_tests(path: Path) -> list[tuple[int, str]]:
    """The numbered lines of a Rust file before its ``#[cfg(test)]`` module."""
    lines = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() == "#[cfg(test)]":
            break
        lines.append((n, line.strip()))
    return lines


def problems() -> list[str]:
    """Every violation found, as one line each."""
    found: list[str] = []
    cargo = (ROOT / "Cargo.toml").read_text()
    msrv = re.search(r'^rust-version\s*=\s*"([^"]+)"', cargo, re.MULTILINE)
    readme = (ROOT / "README.md").read_text()
    stated = re.findall(r"Rust >= ([0-9.]+)", readme)
    if msrv is None:
        found.append("Cargo.toml: no rust-version")
    elif stated != [msrv.group(1)] * len(stated) or not stated:
        found.append(f"README.md states Rust {stated}, Cargo.toml rust-version {msrv.group(1)}")

    src = ROOT / "src"
    lib = (src / "lib.rs").read_text()
    declared = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;", lib, re.MULTILINE))
    present = {p.stem for p in src.glob("*.rs") if p.name != "lib.rs"}
    present |= {p.parent.name for p in src.glob("*/mod.rs")}
    if declared != present:
        found.append(
            f"src/lib.rs declares {sorted(declared)}, src/ holds {sorted(present)}"
        )

    for path in sorted(src.rglob("*.rs")):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            found.append(f"{path.relative_to(ROOT)}: {n} lines (> {MAX_LINES})")
    for path in sorted((src / "sequence").rglob("*.rs")):
        if "too_many_arguments" in path.read_text():
            found.append(f"{path.relative_to(ROOT)}: a too_many_arguments allowance")
    for path in sorted(src.rglob("*.rs")):
        rel = str(path.relative_to(ROOT))
        if path.name == "tests.rs" or path.parent.name == "tests":
            continue
        for n, line in code_outside_tests(path):
            if line.startswith("//"):
                continue
            if ".unwrap()" in line:
                found.append(f"{rel}:{n}: .unwrap() (return an Error, or .expect an invariant)")
            if ("panic!(" in line or "unreachable!(" in line) and (rel, line) not in PANICS_ALLOWED:
                found.append(f"{rel}:{n}: a panic not in PANICS_ALLOWED: {line}")
    return found


def main() -> int:
    """Prints the problems and returns the exit status."""
    found = problems()
    for line in found:
        print(f"check_layout: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
