"""A private ``redis-server`` for tests that must stop, restart or reconfigure Redis.

The shared server at 127.0.0.1:6379 serves many test runs at once, so nothing may flush it or
restart it. Tests that need to (persistence across a restart, ``SCRIPT FLUSH``) start their own::

    with RedisServer(tmp_path, "--appendonly", "yes") as server:
        store = RedisStore.from_url(server.url)
        ...
        server.restart()          # same port, same directory: data comes back from disk

The server listens on a free loopback port, keeps its files in the given directory (or a
temporary one it removes), and is always stopped: on ``stop()``, on leaving the ``with`` block, and
at interpreter exit as a last resort. Options that take a port of their own (``--cluster-port``,
``--tls-port``) are named in ``port_options``: they get free ports like the main one, picked again
with it when a fresh start finds one taken, and kept across restarts.
"""

from __future__ import annotations

import atexit
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["RedisServer", "free_port", "redis_server_binary"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def redis_server_binary() -> str | None:
    """Path of the ``redis-server`` executable, or None when it is not installed."""
    return shutil.which("redis-server")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback TCP port nobody uses right now, below the ephemeral range when it can be.

    A port the kernel hands out for binding to 0 comes from the range it also gives every outgoing
    connection, so between this probe and the server binding it, any client socket on the machine
    (another test's, another run's) may take it: a cluster node then fails with "Address already
    in use". Ports below that range are only ever taken by someone binding them on purpose.
    """
    low, _ = _ephemeral_range()
    candidates = random.sample(range(10_000, low), k=min(64, max(low - 10_000, 0)))
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        chosen: int = probe.getsockname()[1]
        return chosen


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``options`` are extra command-line arguments,
    ``port_options`` options whose free port the server picks (read them in ``option_ports``)."""

    def __init__(self, directory: Path | None = None, *options: str, port_options: tuple[str, ...] = ()) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self._binary = binary
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="penny-redis-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.options = options
        self.port_options = port_options
        self.port: int | None = None
        self.option_ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (on its previous port after a stop) and wait until it answers PING."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # A fresh port may be taken between probing and binding, so a fresh start picks all its
        # ports again on each attempt; a restart must get the same ones back.
        attempts = 1 if self.port is not None else 5
        for attempt in range(attempts):
            port = self.port if self.port is not None else free_port()
            option_ports = self.option_ports if self.port is not None else {
                name: free_port() for name in self.port_options}
            self._process = subprocess.Popen(
                [
                    self._binary,
                    "--port", str(port),
                    *(item for name, value in option_ports.items() for item in (name, str(value))),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.directory),
                    "--save", "",
                    "--daemonize", "no",
                    "--logfile", "redis.log",
                    *self.options,
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if self._wait_ready(port):
                self.port, self.option_ports = port, option_ports
                return
            self._terminate()
            if attempt == attempts - 1:
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"redis-server did not start on port {port}:\n{tail}")

    def _wait_ready(self, port: int) -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.BusyLoadingError:
                    pass  # still reading its data files back
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)  # polling a starting process, not waiting out a window
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: Redis flushes its append-only file first), killing if stuck."""
        self._terminate()

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed beyond what the fsync policy already wrote."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections open and answers nothing (a hung server)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop the server and remove its directory if it made one. Safe to call twice."""
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        atexit.unregister(self.close)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
