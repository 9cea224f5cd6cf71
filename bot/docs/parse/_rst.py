"""reStructuredText (``.rst``): underlined (and overlined) section titles, directives resolved to
their text or dropped, literal blocks fenced, and inline roles and links reduced to plain text."""

from __future__ import annotations

import re
import textwrap

from bot.docs.parse._model import Block
from bot.docs.parse._normalise import collapse, restore
from bot.markdown_syntax import give_up, sub_tried

__all__ = ["parse_rst"]

_ADORNMENT = re.compile(r"""([=\-~^"'`#*+])\1{2,}[ \t]*""")
_EXPLICIT = re.compile(r"^(\s*)\.\.(?:\s+(.*))?$")
_DIRECTIVE = re.compile(r"([\w:.+-]+)::(?:\s+(.*))?$")
_TARGET = re.compile(r"^\s*\.\.\s+_(`[^`]+`|[^:]+):\s*(\S+)\s*$")
_OPTION = re.compile(r"^:[\w-]+:")
_DOC_FIELD = re.compile(r"^:(?:orphan|nocomments|nosearch|tocdepth)\b")
_CODE_DIRECTIVES = frozenset({"code", "code-block", "sourcecode"})
_ADMONITIONS = frozenset(
    {"attention", "caution", "danger", "error", "hint", "important", "note", "tip", "warning", "seealso"}
)
_VERSION_NOTES = {
    "versionadded": "New in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}
_BODY_ONLY = frozenset({"only", "ifconfig", "container", "figure", "compound", "glossary"})
_DROPPED = frozenset(
    {
        "toctree", "contents", "include", "literalinclude", "raw", "index", "meta", "highlight", "sectnum",
        "image", "class", "role", "default-role", "title", "header", "footer", "target-notes",
        "tabularcolumns", "currentmodule", "module", "program", "cssclass",
    }
)  # fmt: skip

# Inline markup. Every pattern is linear in the length of the text it reads, and must stay so (a
# file is text someone else wrote): where re.sub would try a pattern again from every position of
# a long failing run, sub_tried skips the tries that must fail.
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
# ":role:`content`", tried only where a run of role characters starts: the role is that run from its
# first ":" (the characters before it, group 1, are put back), and must end with ":". Tried from
# each ":" of a long run, as ":[\w:.+-]+:`" was, it would read the rest of the run from each.
_ROLE = re.compile(r"(?<![\w:.+-])([\w.+-]*+):(?=[\w:.+-]{2})[\w:.+-]*+(?<=:)`([^`]+)`")
# An explicit target, "title <target>": the title ends at a character other than a space (the
# lookbehind), so a long run of spaces is read once, not again after each of its spaces.
_ROLE_TARGET = re.compile(r"(.*?)(?<!\s)\s*<([^<>]+)>", re.DOTALL)
_EMBEDDED_LINK = re.compile(r"`([^`<]*?)(?<!\s)\s*<([^<>`]+)>`__?")
_NAMED_REF = re.compile(r"`([^`]+)`__?")
_INTERPRETED = re.compile(r"`([^`]+)`(?::[\w:.+-]+:)?")
_SIMPLE_REF = re.compile(r"(?<![\w`])([A-Za-z0-9][\w.-]*?)__?(?=[\s.,;:!?)\]'\"]|$)")
_SIMPLE_REF_START = re.compile(r"(?<![\w`])[A-Za-z0-9]")
_REF_RUN = re.compile(r"[\w.-]+")
_FOOTNOTE_REF = re.compile(r"\[([#*]?[\w-]*)\]_")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL)
_STRONG_START = re.compile(r"(?=\*\*\S)")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", re.DOTALL)
_EMPHASIS_START = re.compile(r"(?<![\w*])\*(?=[^\s*])")
_ESCAPE = re.compile(r"\\(.)")


def parse_rst(text: str) -> list[Block]:
    """Section titles are underlined (optionally also overlined); levels follow the order styles appear."""
    lines = text.split("\n")
    targets: dict[str, str] = {}
    for line in lines:
        target = _TARGET.match(line)
        if target and not target.group(2).endswith("_"):
            targets[target.group(1).strip("`").lower()] = target.group(2)
    styles: list[tuple[str, bool]] = []
    blocks: list[Block] = []
    level, heading = 0, ""
    body: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        nxt = lines[index + 1] if index + 1 < len(lines) else ""
        title: str | None = None
        if (
            _ADORNMENT.fullmatch(line)
            and index + 2 < len(lines)
            and nxt.strip()
            and not _ADORNMENT.fullmatch(nxt)
            and _ADORNMENT.fullmatch(lines[index + 2])
            and lines[index + 2][0] == line[0]
        ):
            title, style, consumed = nxt.strip(), (line[0], True), 3
        elif (
            line.strip()
            and not line[0].isspace()
            and not _ADORNMENT.fullmatch(line)
            and not _EXPLICIT.match(line)
            and _ADORNMENT.fullmatch(nxt)
            and len(nxt.rstrip()) >= min(len(line.rstrip()), 4)
        ):
            title, style, consumed = line.strip(), (nxt[0], False), 2
        if title is None:
            body.append(line)
            index += 1
            continue
        new_heading = collapse(_inline(title, targets, plain=True))
        if new_heading:
            if style not in styles:
                styles.append(style)
            blocks.append(Block(level, heading, None, _body(body, targets)))
            level, heading, body = styles.index(style) + 1, new_heading, []
        index += consumed
    blocks.append(Block(level, heading, None, _body(body, targets)))
    return blocks


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _indented_block_end(lines: list[str], start: int, parent_indent: int) -> int:
    """Index just past the last line, from ``start``, indented more than ``parent_indent``."""
    end = start
    for index in range(start, len(lines)):
        if lines[index].strip():
            if _indent(lines[index]) <= parent_indent:
                break
            end = index + 1
    return end


def _body(lines: list[str], targets: dict[str, str]) -> str:
    """reST body lines as plain-ish text: directives resolved or dropped, literal blocks fenced."""
    out: list[str] = []
    prose: list[str] = []  # the lines of the current paragraph: inline markup may span them

    def flush() -> None:
        if prose:
            out.append(_inline("\n".join(prose), targets, plain=False))
            prose.clear()

    literal_indent: int | None = None  # indentation of a paragraph that ended with "::"
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip():
            flush()
            out.append("")
            index += 1
            continue
        if literal_indent is not None and _indent(line) > literal_indent:
            flush()
            end = _indented_block_end(lines, index, literal_indent)
            out.extend(["```", textwrap.dedent("\n".join(lines[index:end])), "```"])
            literal_indent, index = None, end
            continue
        literal_indent = None
        explicit = _EXPLICIT.match(line)
        if explicit:
            flush()
            end = _indented_block_end(lines, index + 1, len(explicit.group(1)))
            content = textwrap.dedent("\n".join(lines[index + 1 : end])).split("\n")
            out.extend(_explicit(explicit.group(2) or "", content, targets))
            index = end
            continue
        index += 1
        if _ADORNMENT.fullmatch(line) or _DOC_FIELD.match(line):
            continue  # a transition, or page metadata
        stripped = line.rstrip()
        if stripped.endswith("::"):
            literal_indent = _indent(line)
            stripped = stripped[:-3] if stripped.endswith(" ::") or stripped.strip() == "::" else stripped[:-1]
            if not stripped.strip():
                continue
        prose.append(stripped)
    flush()
    return "\n".join(out)


def _explicit(markup: str, content: list[str], targets: dict[str, str]) -> list[str]:
    """Text for an explicit markup block (``.. something``): directives, footnotes, comments."""
    directive = _DIRECTIVE.match(markup)
    if markup.startswith(("_", "|")) or (not directive and not markup.startswith("[")):
        return []  # a hyperlink target, a substitution definition or a comment
    if not directive:
        footnote = re.match(r"\[([^\]]+)\]\s*(.*)$", markup)
        label, text = (footnote.group(1), footnote.group(2)) if footnote else ("", markup)
        return [_inline(f"[{label}] {text}".rstrip(), targets, plain=False), _body(content, targets)]
    name, argument = directive.group(1).lower(), (directive.group(2) or "").strip()
    options = 0
    while options < len(content) and _OPTION.match(content[options]):
        options += 1
    language = next((c.split(":", 2)[2].strip() for c in content[:options] if c.startswith(":language:")), "")
    content = content[options:]
    if name in _CODE_DIRECTIVES:
        return ["```" + (argument or language), "\n".join(content).strip("\n"), "```"]
    if name in _DROPPED or name.startswith("auto"):
        return []
    body = _body(content, targets)
    if name in _BODY_ONLY:
        return [body]
    if name in _ADMONITIONS or name == "admonition":
        label = argument if name == "admonition" else "See also" if name == "seealso" else name.capitalize()
        lead = _inline(argument, targets, plain=False) if argument and name != "admonition" else ""
        return [f"{label}: {lead}".rstrip(), body]
    if name in _VERSION_NOTES:
        return [f"{_VERSION_NOTES[name]} {argument}:".replace(" :", ":"), body]
    return [_inline(argument, targets, plain=False), body] if argument else [body]


def _past_ref_run(text: str, i: int) -> int:
    """A ``skip`` for :func:`sub_tried` with ``_SIMPLE_REF``: a reference that starts at ``i`` and
    has no end there has none from anywhere else in the same run of name characters either."""
    run = _REF_RUN.match(text, i)
    return run.end() if run else i + 1


def _inline(text: str, targets: dict[str, str], *, plain: bool) -> str:
    """Inline reST markup as text. ``plain`` (for titles) also drops URLs and code backticks."""
    stash: list[str] = []

    def keep(value: str) -> str:
        stash.append(value)
        return f"\x00{len(stash) - 1}\x00"

    def link(label: str, url: str | None) -> str:
        label = label.strip()
        if plain or not url or url.endswith("_") or url == label:
            return label or (url or "").rstrip("_")
        return f"{label} ({url})" if label else url

    def role(match: re.Match[str]) -> str:
        content = match.group(2)
        explicit = _ROLE_TARGET.fullmatch(content)
        if explicit:
            return explicit.group(1) or explicit.group(2)
        content = content.lstrip("!")
        return content[1:].rsplit(".", 1)[-1] if content.startswith("~") else content

    text = _LITERAL.sub(lambda m: keep(m.group(1) if plain else f"`{m.group(1)}`"), text)
    text = _ESCAPE.sub(lambda m: keep(m.group(1)) if m.group(1) != " " else "", text)
    text = _ROLE.sub(lambda m: m.group(1) + keep(role(m)), text)
    text = _EMBEDDED_LINK.sub(lambda m: keep(link(m.group(1), m.group(2))), text)
    text = _NAMED_REF.sub(lambda m: keep(link(m.group(1), targets.get(m.group(1).lower()))), text)
    text = _INTERPRETED.sub(lambda m: keep(m.group(1)), text)
    text = _FOOTNOTE_REF.sub(r"[\1]", text)
    text = sub_tried(
        _SIMPLE_REF,
        lambda m: keep(link(m.group(1), targets.get(m.group(1).lower()))),
        text,
        starts=_SIMPLE_REF_START,
        skip=_past_ref_run,
    )
    text = sub_tried(_STRONG, lambda m: m.group(1), text, starts=_STRONG_START, skip=give_up)
    text = sub_tried(_EMPHASIS, lambda m: m.group(1), text, starts=_EMPHASIS_START, skip=give_up)
    return restore(text, stash)
