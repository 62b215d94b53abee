"""The README stays true: every ```python block in it runs, in order, in one namespace.

A block whose first line is ``# requires: mod1, mod2`` is skipped when one of those modules
cannot be imported (the PyTorch examples, in CI's environment without torch). Blocks run
lazily and at most once, so selecting one test (``-k``) still runs the blocks before it.
The Quickstart section must hold exactly the two commands the project promises.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
REQUIRES = re.compile(r"#\s*requires:\s*(.+)")

QUICKSTART = [
    ("python3 -m venv .venv && .venv/bin/pip install '.[plot]' && .venv/bin/python -m bptt "
     "demo --quick"),
    "bash scripts/test.sh",
]


def _blocks(lang: str) -> list[tuple[int, str]]:
    """(first line number, code) of every fenced block of ``lang``."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2))
            for m in FENCE.finditer(text) if m.group(1) == lang]


def _missing(code: str) -> list[str]:
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    m = REQUIRES.fullmatch(first.strip())
    if not m:
        return []
    mods = [s.strip() for s in m.group(1).split(",") if s.strip()]
    return [mod for mod in mods if importlib.util.find_spec(mod) is None]


PYTHON_BLOCKS = _blocks("python")


class _Runner:
    """Runs the README's python blocks in one namespace, each at most once, in order."""

    def __init__(self) -> None:
        self.namespace: dict[str, object] = {"__name__": "readme"}
        self.done: dict[int, str] = {}   # index -> "ok" / "skipped" / "failed"

    def run(self, upto: int) -> str:
        for i in range(upto + 1):
            if i in self.done:
                continue
            line, code = PYTHON_BLOCKS[i]
            if _missing(code):
                self.done[i] = "skipped"
                continue
            self.done[i] = "failed"
            # Leading newlines keep tracebacks pointing at README.md's own line numbers.
            code_obj = compile("\n" * (line - 1) + code, str(README), "exec")
            exec(code_obj, self.namespace)  # noqa: S102 -- running the README is the point
            self.done[i] = "ok"
        return self.done[upto]


@pytest.fixture(scope="module")
def runner() -> _Runner:
    return _Runner()


def test_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 8, "the README's tour lost its python blocks?"


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)),
                         ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS])
def test_python_block_runs(runner, index):
    missing = _missing(PYTHON_BLOCKS[index][1])
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    earlier = [PYTHON_BLOCKS[i][0] for i in range(index) if runner.done.get(i) == "failed"]
    if earlier:
        pytest.fail(f"an earlier block failed (README.md:{earlier[0]})")
    assert runner.run(index) == "ok"


def test_quickstart_is_the_two_promised_commands():
    text = README.read_text()
    section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    blocks = [code for lang, code in FENCE.findall(section) if lang == "bash"]
    assert len(blocks) == 1, "Quickstart: expected exactly one bash block"
    commands = [ln.strip() for ln in blocks[0].splitlines() if ln.strip()]
    assert commands == QUICKSTART
