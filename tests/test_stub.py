"""The hand-written stub ``_core.pyi`` ships with the package and says what the Rust says.

Signatures are checked by ``python -m mypy.stubtest bptt._core`` in scripts/test.sh; this
file checks what stubtest does not: the stub is installed next to the module, and every
docstring in it equals the one on the compiled item (the ``///`` comment in
src/python/).
"""

import ast
import inspect
from pathlib import Path

import bptt
import pytest

STUB = Path(bptt._core.__file__).with_name("_core.pyi")


def _stub_docs() -> dict[str, str]:
    """Docstrings of the stub: module (""), functions, classes and their members."""
    tree = ast.parse(STUB.read_text())
    docs = {"": ast.get_docstring(tree)}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            docs[node.name] = ast.get_docstring(node)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        docs[f"{node.name}.{item.name}"] = ast.get_docstring(item)
    return docs


def _runtime(name: str) -> object:
    obj: object = bptt._core
    for part in filter(None, name.split(".")):
        obj = getattr(obj, part)
    return obj


def test_stub_is_installed_with_the_module():
    assert STUB.is_file(), STUB
    assert (STUB.parent / "py.typed").is_file()


@pytest.mark.parametrize("name", sorted(_stub_docs()) if STUB.is_file() else [])
def test_stub_docstring_matches_the_compiled_one(name):
    stub_doc = _stub_docs()[name]
    runtime_doc = inspect.getdoc(_runtime(name))
    assert stub_doc is not None, f"{name or 'module'}: the stub has no docstring"
    assert inspect.cleandoc(stub_doc) == runtime_doc, name or "module"


def test_every_export_is_in_the_stub():
    docs = _stub_docs()
    exported = [n for n in bptt._core.__all__ if not n.startswith("__")]
    assert sorted(n for n in exported if n not in docs) == []
