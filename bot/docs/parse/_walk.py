"""Listing a docs folder's files: what :func:`walk` takes, what it skips (and logs), and why."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from bot.docs.parse._document import MAX_FILE_BYTES, MAX_PDF_BYTES, SUPPORTED_SUFFIXES, within
from bot.docs.parse._pdf import pdf_support
from proxy_core import get_logger

__all__ = ["MAX_FILE_BYTES", "MAX_PDF_BYTES", "walk"]

_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__"})

_log = get_logger()


def walk(
    root: Path,
    *,
    too_large: list[Path] | None = None,
    unreadable: list[Path] | None = None,
    link_roots: Sequence[Path] = (),
) -> Iterator[Path]:
    """Supported files under ``root`` in sorted order, following symlinks within ``root`` (and
    within the ``link_roots`` its owner allowed links into) but never in a loop.

    Hidden files and directories (``.git``, ``.venv``, …), ``node_modules`` and ``__pycache__``
    are skipped; so are files over :data:`MAX_FILE_BYTES` (added to ``too_large``), unreadable
    files and directories (added to ``unreadable``: an error that may pass), a link to anything
    outside ``root`` and ``link_roots`` (a docs folder must not publish ``/etc`` or a ``.env``
    through the answers), a link whose target is missing
    and a name that is not UTF-8; each is logged. A directory reached twice through symlinks is
    walked once. Raises ``NotADirectoryError`` when ``root`` is not a directory.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    def outside(path: Path) -> bool:
        return not within(path, root, link_roots)

    def visit(directory: Path) -> None:
        try:
            info = directory.stat()
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            _log.warning("docs_dir_skipped", path=rel(directory), reason="unreadable", error=str(exc))
            if unreadable is not None:
                unreadable.append(directory)
            return
        key = (info.st_dev, info.st_ino)
        if key in seen:
            _log.warning("docs_dir_skipped", path=rel(directory), reason="already_walked")
            return
        seen.add(key)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                shown = rel(path).encode("utf-8", "backslashreplace").decode("utf-8")  # the bad bytes as \xNN
                _log.warning("docs_file_skipped", path=shown, reason="name_not_utf8",
                             hint="rename it: its name is not valid UTF-8")
                continue
            try:
                if entry.is_symlink() and outside(path):
                    _log.warning("docs_file_skipped", path=rel(path), reason="link_outside_docs_folder")
                    continue
                if entry.is_dir():
                    if entry.name not in _SKIPPED_DIRS:
                        visit(path)
                elif entry.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES:
                    pdf = path.suffix.lower() == ".pdf"
                    if pdf and not pdf_support():
                        _log.warning("docs_file_skipped", path=rel(path), reason="no_pdf_support",
                                     hint="pip install 'penny[pdf]'")
                        continue
                    stat = entry.stat()
                    if stat.st_size > (MAX_PDF_BYTES if pdf else MAX_FILE_BYTES):
                        _log.warning("docs_file_skipped", path=rel(path), reason="too_large", size=stat.st_size)
                        if too_large is not None:
                            too_large.append(path)
                    elif (stat.st_dev, stat.st_ino) not in seen:
                        seen.add((stat.st_dev, stat.st_ino))
                        found.append(path)
                elif entry.is_symlink() and not os.path.exists(path):
                    # Its target moved or is not checked out: say so, or its pages vanish unexplained.
                    _log.warning("docs_file_skipped", path=rel(path), reason="broken_link", target=os.readlink(path))
            except OSError as exc:
                _log.warning("docs_file_skipped", path=rel(path), reason="unreadable", error=str(exc))
                if unreadable is not None:
                    unreadable.append(path)

    visit(root)
    return iter(sorted(found))
