"""The bot talks to proxy_core through one public surface: ``from proxy_core import ...`` of names in
``proxy_core.__all__``, never a submodule (its modules are its implementation, as httpx's are).
Tests share their helpers the same way: through harness modules (``tests/slack_harness.py``,
``tests/bot_harness.py``, ...), never by importing a test module."""

from __future__ import annotations

import ast
from pathlib import Path

import proxy_core

ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "bot"


def _proxy_core_imports(path: Path) -> list[tuple[int, str]]:
    """(line, what) of every import of proxy_core in ``path``, anywhere in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] == "proxy_core"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "proxy_core":
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names]
    return found


def test_the_bot_imports_only_proxy_cores_public_names() -> None:
    public = set(proxy_core.__all__)
    files = sorted(BOT.rglob("*.py"))
    assert files
    wrong = [
        f"{path.relative_to(BOT.parent)}:{line}: {what}"
        for path in files
        for line, what in _proxy_core_imports(path)
        if not what.startswith("from proxy_core import ") or what.split()[-1] not in public
    ]
    assert wrong == [], "bot/ must import from proxy_core itself, names in its __all__:\n" + "\n".join(wrong)


def test_every_public_name_is_there() -> None:
    assert len(set(proxy_core.__all__)) == len(proxy_core.__all__)
    for name in proxy_core.__all__:
        assert hasattr(proxy_core, name), name


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, ``from tests import x`` as ``tests.x``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_no_module_imports_a_test_module() -> None:
    files = sorted([*ROOT.joinpath("tests").glob("*.py"), *ROOT.joinpath("bench").glob("*.py")])
    assert files
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _imported_modules(path)
        if module.startswith("tests.test_")
    ]
    assert wrong == [], "shared test helpers belong in a harness module, not a test module:\n" + "\n".join(wrong)


SHARED_FIXTURES = {"fake", "slack", "make_gateway"}  # tests/conftest.py
OWN_FAKES = {  # modules that need a fake of their own, and why
    ("test_fake_slack.py", "slack"): "the fake's constructor is what it tests",
    ("test_http_server.py", "slack"): "one fake for the module, shared with its module-scoped server",
}


def test_test_modules_vary_the_shared_fixtures_instead_of_redefining_them() -> None:
    """A module may override ``fake_answer``/``gateway_settings`` or extend a shared fixture (take it as
    a parameter); a fixture of the same name built from scratch is a second copy."""
    wrong = []
    for path in sorted(ROOT.joinpath("tests").glob("test_*.py")):
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if (isinstance(node, ast.FunctionDef) and node.name in SHARED_FIXTURES
                    and node.name not in {a.arg for a in node.args.args}
                    and (path.name, node.name) not in OWN_FAKES):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}")
    assert wrong == [], "use the fixture in tests/conftest.py (see its docstring):\n" + "\n".join(wrong)
