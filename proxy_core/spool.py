"""The settle spool: paid calls whose ledger write the store did not confirm, kept on local disk
until the store takes them.

Upstream has answered and been paid before Penny settles a call, so a settle the store fails (or
times out on: it may or may not have been applied) must never be lost. The gateway appends the
whole settle to this spool, fsync'd, *before* the answer is returned; a replayer applies spooled
settles through the same idempotent ``Store.settle`` once the store answers. A replay of a settle
the store already has changes nothing, so "unknown" (a timeout) and "failed" are handled alike.

Layout: one append-only JSON Lines file per process in the spool directory
(``<host>-<pid>-<random>.spool``), held under an exclusive ``flock`` for the life of the process.
Each line is a record (``{"settle": ...}`` or ``{"release": ...}``) or a ``{"done": request_id}``
mark. A file whose lock can be taken belongs to a process that has exited (or crashed): any
process may adopt it, replay what it still holds and delete it. Releases (a failed call giving
back its reservation) are spooled the same way, so a store blip during a failure does not leave a
reservation to be charged as an unsettled call later.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from proxy_core.budget import BudgetLine
from proxy_core.log import get_logger
from proxy_core.stores.base import LedgerEntry

__all__ = ["SettleSpool", "SpoolRecord", "count_pending", "unreadable_files"]

_SUFFIX = ".spool"
_UNREADABLE = ".unreadable"  # an adopted file with lines no one could read, kept for the operator


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One store write to replay: a ``settle`` (with everything ``Store.settle`` takes) or a
    ``release`` (``entry`` then only names the request: workspace, request ID, user; ``call_id``
    names the admission to give back, None in records spooled before releases named one)."""

    op: Literal["settle", "release"]
    entry: LedgerEntry
    lines: tuple[BudgetLine, ...]
    reservation_id: str | None = None
    result: str | None = None
    result_ttl_s: float = 0.0
    spooled_at: float = 0.0
    call_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.op}:{self.entry.workspace_id}:{self.entry.request_id}"

    def to_json(self) -> str:
        body = {
            "entry": asdict(self.entry),
            "lines": [asdict(line) for line in self.lines],
            "reservation_id": self.reservation_id,
            "result": self.result,
            "result_ttl_s": self.result_ttl_s,
            "spooled_at": self.spooled_at,
            "call_id": self.call_id,
        }
        return json.dumps({self.op: body}, separators=(",", ":"))

    @classmethod
    def from_json(cls, op: Literal["settle", "release"], body: dict[str, Any]) -> SpoolRecord:
        return cls(
            op=op,
            entry=LedgerEntry(**body["entry"]),
            lines=tuple(BudgetLine(**line) for line in body["lines"]),
            reservation_id=body.get("reservation_id"),
            result=body.get("result"),
            result_ttl_s=float(body.get("result_ttl_s", 0.0)),
            spooled_at=float(body.get("spooled_at", 0.0)),
            call_id=body.get("call_id"),
        )


@dataclass(slots=True)
class _SpoolFile:
    path: Path
    handle: IO[bytes]
    pending: dict[str, SpoolRecord] = field(default_factory=dict)
    unreadable: int = 0  # lines that could not be read: the file is kept for the operator


class SettleSpool:
    """This process's spool file, and the files it adopted from processes that exited.

    Thread-safe. ``append`` returns only once the record is on disk (fsync'd); ``done`` marks a
    record applied. Nothing is created on disk until the first ``append``.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._own: _SpoolFile | None = None
        self._adopted: list[_SpoolFile] = []
        self._unwritten: dict[str, SpoolRecord] = {}  # refused by the disk: in memory only, for now
        self._log = get_logger()

    def append(self, record: SpoolRecord) -> None:
        """Write ``record`` durably. Raises OSError when it cannot (the caller logs the record): the
        record is then held in memory, still pending (replayed while this process lives), and
        written with the next record the disk takes, or by :meth:`write_unwritten`."""
        with self._lock:
            self._unwritten[record.key] = record
            self._write_unwritten()

    def write_unwritten(self) -> None:
        """Write the records a full (or failing) disk refused earlier. Raises OSError if it still
        cannot."""
        with self._lock:
            if self._unwritten:
                self._write_unwritten()

    def pending_unwritten(self) -> list[SpoolRecord]:
        """The records pending in memory only (lost if this process ends before the disk or the
        store takes them)."""
        with self._lock:
            return list(self._unwritten.values())

    def done(self, record: SpoolRecord) -> None:
        """Mark ``record`` applied. A file left with nothing pending is emptied (ours) or deleted
        (adopted). The mark needs no fsync: losing it only means one more, harmless, replay."""
        with self._lock:
            if self._unwritten.pop(record.key, None) is not None:
                return
            for spool_file in self._files():
                if spool_file.pending.pop(record.key, None) is None:
                    continue
                try:
                    self._mark_done(spool_file, record)
                except OSError as exc:
                    self._log.warning("spool_mark_failed", path=str(spool_file.path), error=str(exc))
                return

    def pending(self) -> list[SpoolRecord]:
        """Every record not yet applied, oldest first."""
        with self._lock:
            records = [r for f in self._files() for r in f.pending.values()] + list(self._unwritten.values())
        return sorted(records, key=lambda r: r.spooled_at)

    def adopt(self) -> int:
        """Take over the spool files of processes that exited; returns how many records they hold."""
        if not self.directory.is_dir():
            return 0
        found = 0
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            with self._lock:
                if any(f.path == path for f in self._files()):
                    continue
                adopted = _take(path)
                if adopted is None:  # its process is alive
                    continue
                if not adopted.pending:
                    _discard(adopted)
                    continue
                self._adopted.append(adopted)
                found += len(adopted.pending)
                self._log.info("spool_adopted", path=str(path), records=len(adopted.pending))
        return found

    def close(self) -> None:
        with self._lock:
            for spool_file in self._files():
                if not spool_file.pending and spool_file is not self._own:
                    _discard(spool_file)
                else:
                    spool_file.handle.close()  # releases the lock: another process may adopt it
            if self._own is not None and not self._own.pending:
                self._own.path.unlink(missing_ok=True)
            self._own = None
            self._adopted = []

    # -- internals ------------------------------------------------------------------------------
    def _files(self) -> Iterator[_SpoolFile]:
        if self._own is not None:
            yield self._own
        yield from self._adopted

    def _write_unwritten(self) -> None:
        own = self._own_file()
        _append(own, b"".join((r.to_json() + "\n").encode() for r in self._unwritten.values()), sync=True)
        own.pending.update(self._unwritten)
        self._unwritten.clear()

    def _own_file(self) -> _SpoolFile:
        if self._own is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
            path = self.directory / name
            # Locked before it takes a name adoption looks for: an adopter that found it opened
            # and not yet locked would take it for an exited process's empty file and delete it.
            creating = path.with_name(name + ".new")
            handle = creating.open("ab")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            creating.rename(path)
            _fsync_dir(self.directory)  # the new file's name is durable too
            self._own = _SpoolFile(path, handle)
        return self._own

    def _mark_done(self, spool_file: _SpoolFile, record: SpoolRecord) -> None:
        if spool_file.pending:
            _append(spool_file, (json.dumps({"done": record.key}) + "\n").encode(), sync=False)
        elif spool_file is self._own:
            os.ftruncate(spool_file.handle.fileno(), 0)
        else:
            _discard(spool_file)
            self._adopted.remove(spool_file)


def unreadable_files(directory: str | Path) -> list[Path]:
    """The spool files of ``directory`` set aside because a line in them could not be read (it may
    be a paid call): for the operator, whom ``penny check`` tells."""
    path = Path(directory)
    return sorted(path.glob("*" + _UNREADABLE)) if path.is_dir() else []


def count_pending(directory: str | Path) -> int:
    """Records not yet applied in every spool file of ``directory`` (any process's), read without
    locking: for ``penny check`` and ``/cost team``. A line being written is not counted."""
    path = Path(directory)
    if not path.is_dir():
        return 0
    total = 0
    for spool_path in path.glob("*" + _SUFFIX):
        try:
            with spool_path.open("rb") as handle:
                total += len(_read(handle, spool_path)[0])
        except OSError:
            continue
    return total


def _take(path: Path) -> _SpoolFile | None:
    """Open and lock a spool file whose process has exited; None if its owner still holds it."""
    try:
        handle = path.open("a+b")
    except OSError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Another adopter may have replayed and deleted it between our open and our lock: its
        # last record was never marked done, so it must not be replayed again from here.
        if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
            raise FileNotFoundError(path)
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    data = handle.read()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        # A write its process died in, never acknowledged: cut off, or the first done mark
        # appended here would join it into one unreadable line.
        os.ftruncate(handle.fileno(), len(whole))
    pending, unreadable = _read(io.BytesIO(whole), path)
    return _SpoolFile(path, handle, pending, unreadable)


def _read(handle: IO[bytes], path: Path) -> tuple[dict[str, SpoolRecord], int]:
    """The records of a spool file not marked done, and how many lines could not be read. Read as
    bytes: a line that is not UTF-8 (a bad sector, a torn page) is unreadable like any other, never
    an error for the whole file."""
    pending: dict[str, SpoolRecord] = {}
    unreadable = 0
    for number, line in enumerate(handle, start=1):
        if not line.endswith(b"\n"):  # a write cut short (the process died mid-line): never acknowledged
            break
        try:
            item = json.loads(line)
            if "done" in item:
                pending.pop(str(item["done"]), None)
                continue
            op: Literal["settle", "release"] = "settle" if "settle" in item else "release"
            record = SpoolRecord.from_json(op, item[op])
        except (ValueError, KeyError, TypeError) as exc:
            get_logger().error("spool_line_unreadable", path=str(path), line=number, error=str(exc))
            unreadable += 1
            continue
        pending[record.key] = record
    return pending, unreadable


def _append(spool_file: _SpoolFile, data: bytes, *, sync: bool) -> None:
    """Append whole lines, or nothing: a write the disk cuts short (full) is cut off again, so the
    next line never lands after half a record (which would leave both unreadable). Unbuffered, so
    no half-written remainder lingers to land later. Only this process writes the file (its lock)."""
    fd = spool_file.handle.fileno()
    end = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except OSError:
        with suppress(OSError):
            os.ftruncate(fd, end)
        raise


def _discard(spool_file: _SpoolFile) -> None:
    """Delete an adopted file with nothing left to replay; one with a line no one could read (maybe
    a paid call, in a format this version does not know) is set aside instead, out of adoption's way."""
    if spool_file.unreadable:
        kept = spool_file.path.with_suffix(_UNREADABLE)
        try:
            spool_file.path.rename(kept)
            get_logger().error("spool_file_kept_unreadable", path=str(kept), lines=spool_file.unreadable)
        except OSError as exc:  # left as it is: the next adoption says so again
            get_logger().error("spool_file_kept_unreadable", path=str(spool_file.path), error=str(exc))
    else:
        spool_file.path.unlink(missing_ok=True)
    spool_file.handle.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
