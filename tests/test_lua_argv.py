"""Each Redis script reads its ARGV where its layout in proxy_core/stores/lua_argv.py puts them.

The header of every script names its layout and lists the positions; the script reads what follows
the named arguments from ``local rest = <first position>``. These tests read the scripts as text
(no Redis needed) and fail when a layout gains, loses or reorders an argument and its script (or
its header) is not changed with it.
"""

from __future__ import annotations

import re
from importlib.resources import files

import pytest

from proxy_core.stores.lua_argv import LAYOUTS, ArgvLayout

LUA = files("proxy_core.stores") / "lua"
SCRIPTS = sorted(p.name.removesuffix(".lua") for p in LUA.iterdir() if p.name.endswith(".lua")
                 and not p.name.startswith("_"))
_HEADER_LAYOUT = re.compile(r"ARGV, layout (\w+) in proxy_core/stores/lua_argv\.py:(.*)", re.DOTALL)
_NAMED = re.compile(r"(?<!\w)\[(\d+)\] (\w+)")
_REST = re.compile(r"(?<!\w)\[(\d+) \.\.\]")
_LITERAL = re.compile(r"ARGV\[\s*(\d+)\s*\]")
_OFFSET = re.compile(r"ARGV\[\s*\d+\s*[-+]")
_LOCAL_REST = re.compile(r"^local rest = (\d+)$", re.MULTILINE)


def _parts(script: str) -> tuple[str, str]:
    """The script's leading comment (one text) and its code without comments."""
    text = (LUA / f"{script}.lua").read_text(encoding="utf-8")
    lines = text.splitlines()
    header: list[str] = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line.removeprefix("--").strip())
    code = "\n".join(line.split("--", 1)[0].rstrip() for line in lines)
    return " ".join(header), code


def _layout(script: str) -> tuple[ArgvLayout, str, str]:
    header, code = _parts(script)
    match = _HEADER_LAYOUT.search(header)
    assert match, f"{script}.lua: its header does not name its layout (ARGV, layout NAME in …lua_argv.py: …)"
    layout = LAYOUTS.get(match.group(1))
    assert layout is not None, f"{script}.lua names {match.group(1)}, which lua_argv.py does not declare"
    assert layout.script == script, f"{script}.lua names {match.group(1)}, the layout of {layout.script}.lua"
    return layout, match.group(2), code


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_header_lists_the_layouts_positions(script: str) -> None:
    layout, described, _ = _layout(script)
    listed = [(int(position), name) for position, name in _NAMED.findall(described)]
    assert listed == [(layout.index(name), name) for name in layout.names]
    rest = [int(position) for position in _REST.findall(described)]
    assert rest == ([layout.first_rest] if layout.rest else [])


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_script_reads_named_arguments_only_where_the_layout_puts_them(script: str) -> None:
    layout, _, code = _layout(script)
    positions = {int(n) for n in _LITERAL.findall(code)}
    outside = sorted(n for n in positions if not layout.lead < n < layout.first_rest)
    assert not outside, f"{script}.lua reads ARGV{outside}, outside its named arguments"
    assert not _OFFSET.search(code), f"{script}.lua: an offset past the named arguments is written as a number"
    rest = [int(n) for n in _LOCAL_REST.findall(code)]
    assert rest == ([layout.first_rest] if layout.rest else []), (
        f"{script}.lua: `local rest = {layout.first_rest}` must mark where its {layout.rest or 'nothing'} starts"
    )


def test_every_layout_has_its_script() -> None:
    named = {_layout(script)[0] for script in SCRIPTS}
    for name, layout in LAYOUTS.items():
        assert layout.script in SCRIPTS, name
        if layout not in named:  # a second way to call a script: a shorter prefix of its layout
            full = next(other for other in named if other.script == layout.script)
            assert full.names[: len(layout.names)] == layout.names, name
            assert not layout.rest, name


def test_build_puts_arguments_in_layout_order_and_refuses_any_other_set() -> None:
    layout = ArgvLayout("demo", ("a", "b"), rest="more")
    assert layout.build(["x", "y"], b=2, a=1) == [1, 2, "x", "y"]
    assert (layout.index("a"), layout.index("b"), layout.first_rest) == (3, 4, 5)
    with pytest.raises(TypeError):
        layout.build(a=1)
    with pytest.raises(TypeError):
        layout.build(a=1, b=2, c=3)
    with pytest.raises(TypeError):
        ArgvLayout("demo", ("a",)).build(["x"], a=1)
