"""The Redis store: Penny's shared state on a Redis server, for many replicas at once.

Every read-modify-write is one Lua script from ``stores/lua/*.lua`` (registered once, run with
EVALSHA; redis-py reloads a script the server forgot). Scripts take their time from the server's
``TIME``, so replicas with skewed clocks agree; a clock injected for tests is passed in instead.
The arithmetic is the pure policies' (``limiter``, ``budget``, ``breaker``), restated in Lua.

Key layout (``<ns>`` is the namespace, ``penny`` by default)::

    <ns>:{w:<workspace>}:req:<request id>          HASH   claim or result (expires); an owned claim
                                                          also holds its owner JSON, and ``reaped``
    <ns>:{w:<workspace>}:owned                     ZSET   owned claim id -> claim expiry (the reaper's)
    <ns>:owned-workspaces                          SET    workspaces that have an owned-claims index
    <ns>:{w:<workspace>}:bucket:<bucket key>       HASH   token bucket (expires once full again)
    <ns>:{w:<workspace>}:spent:<line key>          STRING micro-dollars spent on a budget line
    <ns>:{w:<workspace>}:resv:<line key>           HASH   reservation id -> amount
    <ns>:{w:<workspace>}:resv-exp:<line key>       ZSET   reservation id -> expires_at
    <ns>:{w:<workspace>}:ledger:<request id>       HASH   one ledger entry (durable)
    <ns>:{w:<workspace>}:usage:<day>               HASH   the day's totals, per user, model, source
    <ns>:{w:<workspace>}:usage:<day>:user:<user>   HASH   the day's totals of one user, per model, source
    <ns>:breaker:{<name>}                          HASH   breaker state
    <ns>:cache:{<scope>}:<key>                     HASH   cache entry (expires)
    <ns>:rec:{<kind>}:<key>                        HASH   a front end's record (expires)
    <ns>:{sem}:records                             HASH   semantic entry id -> entry without answer
    <ns>:{sem}:answers                             HASH   semantic entry id -> answer
    <ns>:{sem}:last-used                           ZSET   semantic entry id -> last use (LRU order)
    <ns>:{sem}:expires                             ZSET   semantic entry id -> expires_at
    <ns>:{sem}:contexts                            ZSET   context + NUL NUL + entry id (prefix index)
    <ns>:{sem}:log                                 STREAM semantic change log (trimmed, MAXLEN ~)
    <ns>:{blob}:values                             HASH   blob key -> bytes (the docs index)

The ``{w:<workspace>}`` hash tag puts every key one request touches in one cluster slot. Budget
line keys carry their period, and expire a few days after it resets. The semantic cache's keys
share the ``{sem}`` tag so one script can change them all; they have no TTL: entries leave by
LRU eviction (``max_entries``) or ``semantic_delete_where``. Their values are binary (vectors), so
those commands read replies undecoded.

The same code serves a Redis Cluster (``redis+cluster://``, see ``redis_connect``): every script's
keys share one slot, and calls on different slots travel in one pipeline that the cluster client
splits by node. With ``wait_replicas`` the writes that admit a call or move money are sent to their
slot's primary with ``WAIT`` behind them on the same connection (:meth:`RedisStore._confirmed`).

Every redis-py error is translated here, once, into :class:`StoreError`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from datetime import date, timedelta
from importlib import resources
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.client import NEVER_DECODE
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import AskError, MovedError, NoScriptError, RedisClusterException, TryAgainError

from proxy_core.breaker import BreakerPolicy, BreakerState, Permit
from proxy_core.budget import BudgetLine, capped
from proxy_core.clock import Clock
from proxy_core.errors import ConfigurationError, StoreError
from proxy_core.stores import lua_argv as argv
from proxy_core.stores.base import (
    Admission,
    AdmitCall,
    BucketSpec,
    BudgetDecision,
    Claim,
    ClaimOwner,
    LedgerEntry,
    LimitDecision,
    Record,
    SemanticChange,
    SemanticChanges,
    SemanticEntry,
    SemanticWrite,
    SettleCall,
    Store,
    TopUp,
    UsageSummary,
    UsageTotals,
)
from proxy_core.stores.claims import owner_json as _owner_json
from proxy_core.stores.claims import unsettled_charge as _unsettled_charge
from proxy_core.stores.lua_argv import Arg, ArgvLayout
from proxy_core.stores.redis_connect import RedisOptions, client_password, connect

__all__ = ["SEMANTIC_LOG_RETAIN", "RedisStore"]

P = ParamSpec("P")
R = TypeVar("R")
Call = tuple[str, Sequence[str], Sequence[Arg]]  # a script: its name, keys and arguments (see _call)

# Spent counters and reservations outlive their period by this much (late settles, reports).
KEEP_AFTER_RESET_S = 3 * 86400
# How long a reaped request ID stays interrupted (refused) after it was reaped.
_REAPED_KEEP_S = 86400
# With an injected clock, real key expiries get this much slack so that Redis, which expires keys
# by its own time, never forgets a key before the injected clock says so.
_INJECTED_CLOCK_SLACK_MS = 60_000
_SCAN_BATCH = 500
# How many change-log events are kept (at least; MAXLEN ~) for replicas that fall behind. A put
# event carries the entry's vector, so this bounds the log's memory too (~1.6 kB each at 384 dims).
SEMANTIC_LOG_RETAIN = 10_000
# Entries deleted per script call, so a mass delete never blocks the server for long.
_SEMANTIC_DELETE_BATCH = 1000
_BLOB_WATCH_ATTEMPTS = 20  # optimistic writes of the blobs hash retried when another write raced them
# A confirmed write (WAIT) follows at most this many MOVED/ASK/TRYAGAIN answers (a slot on the move).
_REDIRECTS = 5
# After a node drops a confirmed write's connection, the cluster's layout is read again at most
# this often (a failover: the slot's new primary is a promoted replica).
_RELAYOUT_EVERY_S = 0.5

_SEMANTIC_SCRIPTS = (
    "semantic_put",
    "semantic_get",
    "semantic_touch",
    "semantic_delete",
    "semantic_delete_where",
    "semantic_changes",
)
_SEMANTIC_KEYS = ("records", "answers", "last-used", "expires", "contexts", "log", "epoch")
# A record (the entry without id and answer): created_at, expires_at, then length-prefixed scope,
# context and question, then the vector to the end. Lua reads its head with struct.unpack.
_RECORD_HEAD = struct.Struct("<ddI")
_LENGTH = struct.Struct("<I")
# A cursor is "<log epoch>/<stream id>": the epoch changes whenever the log is recreated.
_CURSOR = re.compile(r"(?P<epoch>[0-9.]*)/(?P<id>[0-9]+-[0-9]+)")
_RAW: dict[str, Any] = {NEVER_DECODE: []}  # execute_command option: return the reply undecoded

_LEDGER_FIELDS = tuple(f.name for f in fields(LedgerEntry))
_LEDGER_INTS = frozenset(f.name for f in fields(LedgerEntry) if f.type in ("int", int))
_BREAKER_FIELDS = tuple(f.name for f in fields(BreakerState))
_METRICS = tuple(f.name for f in fields(UsageTotals))
_SCRIPTS = (
    "admit",
    "claim_request",
    "complete_request",
    "release_request",
    "release_admission",
    "top_up_admission",
    "take_tokens",
    "release",
    "settle",
    "unsettle",
    "spent",
    "breaker",
    "cache_get",
    "cache_put",
    "cache_delete",
    "cache_add",
    "cache_drop",
)


def _load_script(name: str) -> str:
    lua = resources.files("proxy_core.stores") / "lua"
    return "\n".join((lua / part).read_text("utf-8") for part in ("_common.lua", "_request.lua", f"{name}.lua"))


def _load_semantic_script(name: str) -> str:
    lua = resources.files("proxy_core.stores") / "lua"
    return "\n".join((lua / part).read_text("utf-8") for part in ("_common.lua", "_semantic.lua", f"{name}.lua"))


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis MATCH pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _num(value: float) -> str:
    # repr() round-trips a double exactly, and Lua's tonumber reads it back bit for bit.
    return repr(float(value))


def _translated(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn any Redis failure inside the method into a StoreError saying what could not be done."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except (redis.RedisError, RedisClusterException, OSError) as exc:
                store = cast(RedisStore, args[0])
                raise StoreError(f"Redis store: cannot {action}: {store._describe(exc)}",
                                 maybe_applied=not _never_sent(exc)) from exc

        return wrapper

    return decorate


class _NotReplicated(redis.RedisError):
    """A write the primary applied but fewer replicas than asked for acknowledged (``WAIT``)."""


class RedisStore(Store):
    """:class:`Store` on Redis (redis-py, sync): one server or a cluster. Thread-safe: redis-py
    pools connections.

    ``wait_replicas`` > 0: a write that admits a call or moves money (admit, settle, an
    interrupted call's charge) counts only once that many replicas acknowledged it (``WAIT``,
    within ``wait_timeout_ms``); otherwise it raises :class:`StoreError`, so the gateway refuses
    the call or spools the settle, as for any store failure.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        clock: Clock | None = None,
        namespace: str = "penny",
        semantic_log_retain: int = SEMANTIC_LOG_RETAIN,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        if not namespace or any(c in namespace for c in "{}"):
            raise ConfigurationError("Redis store: the namespace must be non-empty, without '{' or '}'")
        if semantic_log_retain < 1:
            raise ConfigurationError("Redis store: semantic_log_retain must be at least 1")
        RedisOptions(wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)  # validates them
        # A cluster client has the same command methods; only the plumbing below tells them apart.
        self._client = cast(redis.Redis, client)
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._wait = (wait_replicas, wait_timeout_ms)
        self._relayout_at = 0.0
        self._clock = clock
        self._ns = namespace
        password = client_password(client)
        self._secrets = [password] if password else []
        # Registering only hashes the text; each script is sent to the server on its first EVALSHA
        # miss (and again after a SCRIPT FLUSH or a failover to a server that never saw it).
        self._scripts: dict[str, Script] = {name: client.register_script(_load_script(name)) for name in _SCRIPTS}
        self._semantic_retain = semantic_log_retain
        self._owned_workspaces: set[str] = set()  # registered in <ns>:owned-workspaces by this process
        self._semantic_keys = [f"{namespace}:{{sem}}:{name}" for name in _SEMANTIC_KEYS]
        self._blob_key = f"{namespace}:{{blob}}:values"
        self._semantic_scripts: dict[str, Script] = {
            name: client.register_script(_load_semantic_script(name)) for name in _SEMANTIC_SCRIPTS
        }

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        timeout_s: float = 2.0,
        namespace: str = "penny",
        semantic_log_retain: int = SEMANTIC_LOG_RETAIN,
        max_connections: int = 320,
        options: RedisOptions | None = None,
    ) -> RedisStore:
        """Connect to ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``), or to
        a cluster at ``redis+cluster://[user:password@]host:port[,host:port…]`` (``rediss+cluster://``).
        ``max_connections`` is per server: enough for every one of a bot process's 256 listener
        threads to hold one at once, plus its background threads (opened lazily, so idle ones cost
        nothing); at 64, a burst of cache hits waited for a connection until the store timed out."""
        options = options or RedisOptions()
        password = urlsplit(url).password
        secrets = [password, unquote(password)] if password else []
        try:
            client = connect(url, options, timeout_s=timeout_s, max_connections=max_connections)
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            # A cluster client reads the cluster's layout as it starts: no node answered.
            text = f"{type(exc).__name__}: {exc}"
            for secret in secrets:
                text = text.replace(secret, "***")
            raise StoreError(f"Redis store: cannot reach the cluster: {text}") from exc
        store = cls(client, clock=clock, namespace=namespace, semantic_log_retain=semantic_log_retain,
                    wait_replicas=options.wait_replicas, wait_timeout_ms=options.wait_timeout_ms)
        store._secrets = list({*store._secrets, *secrets})
        return store

    # -- plumbing --------------------------------------------------------------------------
    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        script = self._scripts[name]
        return script(keys=list(keys), args=[*self._clock_args(), *args])

    def _pipelined(self, *calls: Call, confirm: int | None = None) -> list[Any]:
        """Run several scripts (name, keys, args) in one round trip; their replies, in order.

        Not a transaction: each script is atomic on its own. A script the server has forgotten
        (NOSCRIPT: it did not run) is loaded and run again on its own. On a cluster the pipeline
        sends each script to its slot's primary (one round trip per node, all at once).
        ``confirm``: the index of the call whose write must reach ``wait_replicas`` replicas.
        """
        if confirm is not None and self._wait[0] > 0 and calls[confirm][1]:  # a script without keys writes nothing
            return self._confirmed(calls, confirm)
        pipe = self._client.pipeline(transaction=False)
        clock = self._clock_args()
        for name, keys, args in calls:
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._scripts[name].sha, len(keys), *keys, *clock, *args
            )
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                name, keys, args = calls[i]
                replies[i] = self._run(name, keys, args)
            elif isinstance(reply, Exception):
                raise reply
        return replies

    def _run_confirmed(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """:meth:`_run`, and the write reaches ``wait_replicas`` replicas before it counts."""
        return self._pipelined((name, keys, args), confirm=0)[0]

    def _confirmed(self, calls: Sequence[Call], confirm: int) -> list[Any]:
        """:meth:`_pipelined` with ``WAIT`` behind the confirmed call, on the same connection (WAIT
        answers for the writes sent on its own connection). One server: one round trip for all. A
        cluster: the other calls first, then the confirmed one on its slot's primary."""
        if self._cluster is None:
            return self._on_node(self._client, calls)
        others = [i for i in range(len(calls)) if i != confirm]
        replies: list[Any] = [None] * len(calls)
        if others:
            for i, reply in zip(others, self._pipelined(*(calls[i] for i in others)), strict=True):
                replies[i] = reply
        replies[confirm] = self._confirmed_on_cluster(self._cluster, calls[confirm])
        return replies

    def _confirmed_on_cluster(self, cluster: RedisCluster, call: Call) -> Any:
        """Run one script on its slot's primary with WAIT behind it, following the cluster's
        redirections itself (MOVED: the slot has a new owner; ASK: its keys are on the move)."""
        asked: ClusterNode | None = None
        for _ in range(_REDIRECTS):
            node = asked or cluster.get_node_from_key(call[1][0])  # type: ignore[no-untyped-call]
            try:
                return self._on_node(cluster.get_redis_connection(node), [call], asking=asked is not None)[0]
            except MovedError as exc:
                cluster.nodes_manager.move_slot(exc)
                asked = None
            except AskError as exc:
                asked = (cluster.get_node(host=exc.host, port=exc.port)  # type: ignore[no-untyped-call]
                         or ClusterNode(exc.host, exc.port))  # type: ignore[no-untyped-call]
            except TryAgainError:
                asked = None
                time.sleep(0.05)  # a script needing keys that are half moved (or new): wait for the move
            except (redis.ConnectionError, redis.TimeoutError):
                # The node is gone or hung (a failover?): read the layout again, so the calls
                # after this one reach the slot's new primary once a replica has taken over.
                if time.monotonic() - self._relayout_at > _RELAYOUT_EVERY_S:
                    self._relayout_at = time.monotonic()
                    with contextlib.suppress(redis.RedisError, RedisClusterException):  # no node answers yet
                        cluster.nodes_manager.initialize(last_failed_node_name=node.name)
                raise
        # TRYAGAIN: a script that creates keys in a slot whose keys are being moved waits for the move.
        raise RedisClusterException(f"the cluster redirected the write {_REDIRECTS} times (its slot is being "
                                    "moved to another node); it was not applied")

    def _on_node(self, client: redis.Redis, calls: Sequence[Call], *, asking: bool = False) -> list[Any]:
        """Run scripts on one server in one round trip with ``WAIT`` behind them: their replies,
        or :class:`_NotReplicated` when fewer than ``wait_replicas`` replicas have their writes."""
        pipe = client.pipeline(transaction=False)
        clock = self._clock_args()
        for name, keys, args in calls:
            if asking:
                pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
            pipe.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._scripts[name].sha, len(keys), *keys, *clock, *args
            )
        replicas, timeout_ms = self._wait
        pipe.execute_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
        replies: list[Any] = pipe.execute(raise_on_error=False)
        waited = replies.pop()
        if asking:
            replies = replies[1::2]
        for reply in replies:
            if isinstance(reply, (MovedError, AskError, TryAgainError)):
                raise reply  # not run here (and a replica refuses the WAIT too): the caller follows it
        if isinstance(waited, Exception):
            raise waited
        acked = int(waited)
        forgotten = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if forgotten:
            # This server never saw the scripts (a promoted replica, a SCRIPT FLUSH): they did not
            # run. Load them here and run them again, confirmed by a WAIT of their own.
            for name in {calls[i][0] for i in forgotten}:
                client.script_load(self._scripts[name].script)
            for i, reply in zip(forgotten, self._on_node(client, [calls[i] for i in forgotten], asking=asking),
                                strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        if acked < replicas:
            raise _NotReplicated(
                f"only {acked} of {replicas} replica(s) acknowledged the write within {timeout_ms} ms "
                "(PENNY_REDIS_WAIT_REPLICAS); it could be lost in a failover"
            )
        return replies

    def _clock_args(self) -> list[Arg]:
        if self._clock is None:
            return ["", 0]
        return [_num(self._clock()), _INJECTED_CLOCK_SLACK_MS]

    def _run_semantic(self, layout: ArgvLayout, rest: Iterable[Arg] = (), /, **named: Arg) -> Any:
        """Run a semantic script on the semantic keys; its reply comes back undecoded (bytes)."""
        script = self._semantic_scripts[layout.script]
        keys = self._semantic_keys
        command = [len(keys), *keys, *self._clock_args(), self._semantic_retain, *layout.build(rest, **named)]
        # Script.__call__ would decode the reply, so this is its EVALSHA-then-reload, undecoded.
        try:
            return self._raw("EVALSHA", script.sha, *command)
        except NoScriptError:
            script.sha = self._client.script_load(script.script)
            return self._raw("EVALSHA", script.sha, *command)

    def _raw(self, *command: str | bytes | int) -> Any:
        """Run one command and return its reply undecoded (the semantic cache's values are binary)."""
        return self._client.execute_command(*command, **_RAW)  # type: ignore[no-untyped-call]

    def _ws(self, workspace_id: str) -> str:
        return f"{self._ns}:{{w:{workspace_id}}}"

    def _request_key(self, workspace_id: str, request_id: str) -> str:
        return f"{self._ws(workspace_id)}:req:{request_id}"

    def _line_keys(self, workspace_id: str, line: BudgetLine) -> list[str]:
        ws = self._ws(workspace_id)
        return [f"{ws}:spent:{line.key}", f"{ws}:resv:{line.key}", f"{ws}:resv-exp:{line.key}"]

    def _cache_key(self, scope: str, key: str) -> str:
        return f"{self._ns}:cache:{{{scope}}}:{key}"

    def _unlink_matching(self, pattern: str, unlink: Callable[[list[str]], int]) -> int:
        gone = 0
        batch: list[str] = []
        for key in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(_text(key))
            if len(batch) >= _SCAN_BATCH:
                gone += unlink(batch)
                batch = []
        if batch:
            gone += unlink(batch)
        return gone

    # -- lifecycle -------------------------------------------------------------------------
    @_translated("read the server clock")
    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        seconds, micros = self._client.time()
        return int(seconds) + int(micros) / 1_000_000

    @_translated("reach the server")
    def ping(self) -> None:
        if self._cluster is not None:
            self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)  # every shard must answer
        else:
            self._client.ping()

    @_translated("close the connection")
    def close(self) -> None:
        self._client.close()

    @property
    def namespace(self) -> str:
        return self._ns

    @_translated("delete the namespace")
    def delete_namespace(self) -> int:
        """Delete every key of this store's namespace (tests); returns how many went."""
        return self._unlink_matching(_glob_escape(self._ns) + ":*", lambda keys: int(self._client.unlink(*keys)))

    # -- idempotency ---------------------------------------------------------------------
    @_translated("claim a request")
    def claim_request(self, workspace_id: str, request_id: str, ttl_s: float) -> Claim:
        reply = self._run(*_call(argv.CLAIM_REQUEST, [self._request_key(workspace_id, request_id)], ttl_s=_num(ttl_s)))
        return _held(reply) or Claim("claimed")

    @_translated("record a request's result")
    def complete_request(
        self, workspace_id: str, request_id: str, result: str, ttl_s: float, *, records: Sequence[Record] = ()
    ) -> None:
        complete = _call(argv.COMPLETE_REQUEST, [self._request_key(workspace_id, request_id)], result=result,
                         ttl_s=_num(ttl_s))
        if not records:
            self._run(*complete)
            return
        # Records live in their own slots: the same round trip, not the same script.
        self._pipelined(complete, *(self._record_put_call(record) for record in records))

    @_translated("release a request")
    def release_request(self, workspace_id: str, request_id: str) -> None:
        self._run_confirmed(*_call(argv.RELEASE_REQUEST, [self._request_key(workspace_id, request_id)]))

    @_translated("release an admission")
    def release_admission(self, workspace_id: str, request_id: str, lines: Sequence[BudgetLine], *,
                          call_id: str) -> None:
        keys = [self._request_key(workspace_id, request_id),
                *(k for line in capped(lines) for k in self._line_keys(workspace_id, line)[1:])]
        self._run_confirmed(*_call(argv.RELEASE_ADMISSION, keys, reservation_id=request_id, call=call_id))

    @_translated("top up an admission")
    def top_up_admission(self, workspace_id: str, request_id: str, lines: Sequence[BudgetLine], *,
                         owner: ClaimOwner, amount: int) -> TopUp:
        held = capped(lines)  # only capped lines hold reservations
        keys = [self._request_key(workspace_id, request_id)]
        rest: list[Arg] = []
        for line in held:
            keys += self._line_keys(workspace_id, line)
            rest += [int(line.limit), _num(line.resets_at)]
        reply = self._run_confirmed(*_call(argv.TOP_UP_ADMISSION, keys, rest, reservation_id=request_id,
                                           amount=int(amount), call=owner.call_id,
                                           owner=_owner_json(owner, amount, lines)))
        state = _text(reply[0])
        if state == "over_budget":
            line = held[int(reply[1]) - 1]
            return TopUp("over_budget", BudgetDecision(False, line, int(reply[2]), int(reply[3])))
        return TopUp("topped_up" if state == "topped_up" else "not_held")

    @_translated("admit a request")
    def _admit(self, call: AdmitCall) -> Admission:
        workspace_id, request_id, buckets, breaker, owner = (call.workspace_id, call.request_id, call.buckets,
                                                             call.breaker, call.owner)
        # One round trip: the breaker is peeked at (read only) beside the admit script, which
        # claims, takes tokens and reserves atomically. Only when the breaker would grant a probe
        # (after an outage) or refuses does a second round trip follow.
        # The owner's call ID makes this call's claim its own: a resent admit (redis-py retries a
        # command whose connection dropped) finds it and is admitted again rather than held "in
        # flight" by itself.
        owner_json = "" if owner is None else _owner_json(owner, call.amount, call.lines)
        lines = capped(call.lines)  # only capped lines hold reservations
        keys = [self._request_key(workspace_id, request_id), self._owned_key(workspace_id),
                f"{self._ws(workspace_id)}:ledger:{request_id}", *self._bucket_keys(workspace_id, buckets)]
        rest = _bucket_args(buckets)
        for line in lines:
            keys += self._line_keys(workspace_id, line)
            rest += [int(line.limit), _num(line.resets_at)]
        if owner is not None and workspace_id not in self._owned_workspaces:
            # Once per workspace and process, so the reaper finds its index without a SCAN.
            self._client.sadd(f"{self._ns}:owned-workspaces", workspace_id)
            self._owned_workspaces.add(workspace_id)
        calls: list[Call] = []
        if breaker is not None:
            calls.append(self._breaker_call(breaker.name, breaker.policy, "peek", False))
        calls.append(_call(argv.ADMIT, keys, rest, ttl_s=_num(call.ttl_s), buckets=len(buckets),
                           reservation_id=request_id, amount=int(call.amount), keep_s=KEEP_AFTER_RESET_S,
                           reservation_ttl_s=_num(call.reserved_for_s), owner=owner_json))
        *peeked, reply = self._pipelined(*calls, confirm=len(calls) - 1)
        held = _held(reply)
        if held is not None:
            return Admission.held(held)
        state = _text(reply[0])
        if state == "over_budget":
            line = lines[int(reply[1]) - 1]
            return Admission("over_budget", budget=BudgetDecision(False, line, int(reply[2]), int(reply[3])))
        limit = _limit_decision(reply[1]) if buckets else None
        if state == "rate_limited":
            return Admission("rate_limited", limit=limit)
        if breaker is None:
            return Admission("admitted", limit=limit)
        permit = _permit(peeked[0])
        if int(peeked[0][0]) == 2:  # the breaker would let a probe through: take it for real
            permit = _permit(self._breaker(breaker.name, breaker.policy, "acquire", False))
        if not permit.allowed:
            self._pipelined(
                _call(argv.RELEASE_REQUEST, [keys[0]]),
                _call(argv.RELEASE, [k for line in lines for k in self._line_keys(workspace_id, line)[1:]],
                      reservation_id=request_id),
                confirm=0,
            )
            return Admission("circuit_open", limit=limit, permit=permit)
        return Admission("admitted", limit=limit, permit=permit)

    # -- rate limiting -------------------------------------------------------------------
    def _bucket_keys(self, workspace_id: str, specs: Sequence[BucketSpec]) -> list[str]:
        ws = self._ws(workspace_id)
        return [f"{ws}:bucket:{spec.key}" for spec in specs]

    @_translated("take rate-limit tokens")
    def take_tokens(self, workspace_id: str, specs: Sequence[BucketSpec]) -> LimitDecision:
        if not specs:
            return LimitDecision(True, 0.0, (), None)
        return _limit_decision(
            self._run(*_call(argv.TAKE_TOKENS, self._bucket_keys(workspace_id, specs), _bucket_args(specs)))
        )

    # -- budgets -------------------------------------------------------------------------
    @_translated("release a budget reservation")
    def release(self, workspace_id: str, reservation_id: str, lines: Sequence[BudgetLine]) -> None:
        keys = [k for line in capped(lines) for k in self._line_keys(workspace_id, line)[1:]]
        self._run_confirmed(*_call(argv.RELEASE, keys, reservation_id=reservation_id))

    @_translated("settle a request")
    def _settle(self, call: SettleCall) -> bool:
        settle = self._settle_call(call, claim=False)
        if call.breaker is None:
            reply = self._run_confirmed(*settle)
        else:
            reply, _ = self._pipelined(
                settle, self._breaker_call(call.breaker.name, call.breaker.policy, "record", True), confirm=0
            )
        if _text(reply[0]) == "replace_day":
            # The unsettled charge it replaces was counted on the day the call started: settle there.
            call = replace(call, entry=replace(call.entry, day=_text(reply[1])))
            reply = self._run_confirmed(*self._settle_call(call, claim=False))
        return _text(reply[0]) == "settled"

    @_translated("record a cache hit")
    def record_hit(self, entry: LedgerEntry, *, result: str, result_ttl_s: float) -> Claim:
        reply = self._run(*self._settle_call(SettleCall(entry, None, (), result, result_ttl_s), claim=True))
        return _held(reply) or Claim("claimed")

    def _settle_call(self, call: SettleCall, *, claim: bool) -> Call:
        entry, lines, result = call.entry, call.lines, call.result
        ws = self._ws(entry.workspace_id)
        keys = [
            f"{ws}:ledger:{entry.request_id}",
            self._request_key(entry.workspace_id, entry.request_id),
            f"{ws}:usage:{entry.day}",
            f"{ws}:usage:{entry.day}:user:{entry.user_id}",
        ]
        for line in lines:
            keys += self._line_keys(entry.workspace_id, line)
        rest = [_num(line.resets_at) for line in lines] + _usage_and_entry_args(entry)
        return _call(
            argv.SETTLE, keys, rest, reservation_id=call.reservation_id or "", cost_micros=int(entry.cost_micros),
            has_result="1" if result is not None else "0", result=result or "", result_ttl_s=_num(call.result_ttl_s),
            keep_s=KEEP_AFTER_RESET_S, user_id=entry.user_id, model=entry.model, metrics=len(_METRICS),
            claim="1" if claim else "0", day=entry.day, source=entry.source,
        )

    def _owned_key(self, workspace_id: str) -> str:
        return f"{self._ws(workspace_id)}:owned"

    @_translated("charge interrupted calls")
    def reap_interrupted(self, *, limit: int = 500) -> list[LedgerEntry]:
        now = self.now()
        reaped: list[LedgerEntry] = []
        for workspace_id in sorted(map(_text, self._client.smembers(f"{self._ns}:owned-workspaces"))):
            index = self._owned_key(workspace_id)
            due = self._client.zrangebyscore(index, "-inf", _num(now), start=0, num=max(0, limit - len(reaped)))
            for request_id in map(_text, due):
                entry = self._unsettle(workspace_id, request_id)
                if entry is not None:
                    reaped.append(entry)
            if len(reaped) >= limit:
                break
        return reaped

    def _unsettle(self, workspace_id: str, request_id: str) -> LedgerEntry | None:
        """Charge one owned claim if it expired unsettled (unsettle.lua decides atomically)."""
        request_key = self._request_key(workspace_id, request_id)
        owner = self._client.hget(request_key, "owner")
        if owner is None:  # settled, released or gone: only the index entry is left
            self._run(*_call(argv.UNSETTLE_INDEX_ONLY, [request_key, self._owned_key(workspace_id)],
                             request_id=request_id))
            return None
        entry, lines = _unsettled_charge(workspace_id, request_id, _text(owner))
        ws = self._ws(workspace_id)
        keys = [request_key, self._owned_key(workspace_id), f"{ws}:ledger:{request_id}", f"{ws}:usage:{entry.day}",
                f"{ws}:usage:{entry.day}:user:{entry.user_id}"]
        for line in lines:
            keys += self._line_keys(workspace_id, line)
        rest = [_num(line.resets_at) for line in lines] + _usage_and_entry_args(entry)
        written = int(self._run_confirmed(*_call(
            argv.UNSETTLE, keys, rest, request_id=request_id, amount=int(entry.cost_micros), keep_s=KEEP_AFTER_RESET_S,
            reaped_keep_s=_REAPED_KEEP_S, user_id=entry.user_id, model=entry.model, metrics=len(_METRICS),
            source=entry.source,
        )))
        return entry if written else None

    @_translated("read a budget")
    def spent(self, workspace_id: str, line: BudgetLine) -> tuple[int, int]:
        reply = self._run(*_call(argv.SPENT, self._line_keys(workspace_id, line)))
        return int(reply[0]), int(reply[1])

    # -- circuit breaker -----------------------------------------------------------------
    def _breaker_key(self, name: str) -> str:
        return f"{self._ns}:breaker:{{{name}}}"

    def _breaker_call(self, name: str, policy: BreakerPolicy, op: str, success: bool, pending: int = 0) -> Call:
        return _call(
            argv.BREAKER, [self._breaker_key(name)], op=op, success="1" if success else "0",
            failure_threshold=int(policy.failure_threshold), failure_ratio=_num(policy.failure_ratio),
            min_calls=int(policy.min_calls), window_s=_num(policy.window_s), cooldown_s=_num(policy.cooldown_s),
            probe_timeout_s=_num(policy.probe_timeout_s), max_cooldown_s=_num(policy.max_cooldown_s),
            pending=int(pending),
        )

    def _breaker(self, name: str, policy: BreakerPolicy, op: str, success: bool, pending: int = 0) -> Any:
        return self._run(*self._breaker_call(name, policy, op, success, pending))

    @_translated("check the circuit breaker")
    def breaker_acquire(self, name: str, policy: BreakerPolicy) -> Permit:
        return _permit(self._breaker(name, policy, "acquire", False))

    @_translated("record a circuit-breaker outcome")
    def breaker_record(self, name: str, policy: BreakerPolicy, *, success: bool, pending: int = 0) -> BreakerState:
        reply = self._breaker(name, policy, "record", success, pending)
        return _breaker_state(dict(zip(_BREAKER_FIELDS, reply, strict=True)))

    @_translated("read the circuit breaker")
    def breaker_state(self, name: str) -> BreakerState:
        return _breaker_state(cast(Mapping[Any, Any], self._client.hgetall(self._breaker_key(name))))

    # -- exact cache ---------------------------------------------------------------------
    # Cache entries and records are both a value with its logical expiry (the injected clock's, in
    # tests), read and written by the same two scripts under their own keys.
    def _get_value(self, key: str) -> str | None:
        value = self._run(*_call(argv.CACHE_GET, [key]))
        return None if value is None else _text(value)

    def _put_value(self, key: str, value: str, ttl_s: float) -> None:
        self._run(*_call(argv.CACHE_PUT, [key], value=value, ttl_s=_num(ttl_s)))

    @_translated("read the cache")
    def cache_get(self, scope: str, key: str) -> str | None:
        return self._get_value(self._cache_key(scope, key))

    @_translated("write the cache")
    def cache_put(self, scope: str, key: str, value: str, ttl_s: float, *, records: Sequence[Record] = ()) -> None:
        if not records:
            self._put_value(self._cache_key(scope, key), value, ttl_s)
            return
        # Records live in their own slots: the same round trip, not the same script.
        self._pipelined(_call(argv.CACHE_PUT, [self._cache_key(scope, key)], value=value, ttl_s=_num(ttl_s)),
                        *(self._record_put_call(record) for record in records))

    @_translated("delete from the cache")
    def cache_delete(self, scope: str, key: str | None = None) -> int:
        def delete(keys: list[str]) -> int:
            return int(self._run(*_call(argv.CACHE_DELETE, keys)))

        if key is not None:
            return delete([self._cache_key(scope, key)])
        return self._unlink_matching(_glob_escape(self._cache_key(scope, "")) + "*", delete)

    @_translated("clear the cache")
    def cache_clear(self) -> int:
        # Plain UNLINK: the entries are in many slots, which one script cannot span.
        return self._unlink_matching(_glob_escape(f"{self._ns}:cache:") + "*",
                                     lambda keys: int(self._client.unlink(*keys)))

    @_translated("count cache entries")
    def cache_count(self) -> int:
        return sum(1 for _ in self._client.scan_iter(match=_glob_escape(f"{self._ns}:cache:") + "*",
                                                      count=_SCAN_BATCH))

    @_translated("delete from the cache")
    def cache_drop(self, scope: str, key: str, value: str) -> bool:
        return bool(self._run(*_call(argv.CACHE_DROP, [self._cache_key(scope, key)], value=value)))

    # -- records -------------------------------------------------------------------------
    def _record_key(self, kind: str, key: str) -> str:
        return f"{self._ns}:rec:{{{kind}}}:{key}"

    def _record_put_call(self, record: Record) -> Call:
        return _call(argv.CACHE_PUT, [self._record_key(record.kind, record.key)], value=record.value,
                     ttl_s=_num(record.ttl_s))

    @_translated("read a record")
    def record_get(self, kind: str, key: str) -> str | None:
        return self._get_value(self._record_key(kind, key))

    @_translated("write a record")
    def record_put(self, kind: str, key: str, value: str, ttl_s: float) -> None:
        self._put_value(self._record_key(kind, key), value, ttl_s)

    @_translated("add a record")
    def record_add(self, kind: str, key: str, value: str, ttl_s: float) -> str | None:
        held = self._run(*_call(argv.CACHE_ADD, [self._record_key(kind, key)], value=value, ttl_s=_num(ttl_s)))
        return None if held is None else _text(held)

    @_translated("delete a record")
    def record_drop(self, kind: str, key: str, value: str) -> bool:
        return bool(self._run(*_call(argv.CACHE_DROP, [self._record_key(kind, key)], value=value)))

    # -- ledger --------------------------------------------------------------------------
    @_translated("read the ledger")
    def ledger_entry(self, workspace_id: str, request_id: str) -> LedgerEntry | None:
        raw = self._client.hgetall(f"{self._ws(workspace_id)}:ledger:{request_id}")
        if not raw:
            return None
        held = {_text(k): _text(v) for k, v in raw.items()}
        values: dict[str, Any] = {}
        for name in _LEDGER_FIELDS:
            text = held.get(name)
            if text is None:  # a field added later; the entry was written before it existed
                continue
            values[name] = (float(text) if name == "ts" else int(text) if name in _LEDGER_INTS
                            else text == "1" if name == "unsettled" else text)
        return LedgerEntry(**values)

    @_translated("summarise the ledger")
    def usage(self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None) -> UsageSummary:
        days = list(_days(first_day, last_day))
        summary = UsageSummary()
        for day, held in zip(days, self._day_aggregates(workspace_id, days, user_id), strict=True):
            fold = _day_usage if user_id is None else _user_day_usage
            day_totals = fold(held, summary)
            if day_totals.requests:
                summary.by_day[day] = day_totals
                summary.totals.merge(day_totals)
                if user_id is not None:
                    summary.by_user.setdefault(user_id, UsageTotals()).merge(day_totals)
        return summary

    def _day_aggregates(self, workspace_id: str, days: list[str], user_id: str | None) -> list[dict[str, int]]:
        """Each day's usage aggregate (the workspace's, or ``user_id``'s), in one round trip."""
        ws = self._ws(workspace_id)
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{ws}:usage:{day}" if user_id is None else f"{ws}:usage:{day}:user:{user_id}")
        return [{_text(k): int(_text(v)) for k, v in raw.items()} for raw in pipe.execute()]

    @_translated("summarise the ledger by source")
    def usage_by_source(
        self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None
    ) -> dict[str, UsageTotals]:
        # The aggregates count a source's spend under 's:<metric>:<source>' (add_usage in
        # _request.lua); the front end's own calls ('') have no fields: they are the rest.
        summary = UsageSummary()
        by_source: dict[str, UsageTotals] = {}
        for held in self._day_aggregates(workspace_id, list(_days(first_day, last_day)), user_id):
            summary.totals.merge((_day_usage if user_id is None else _user_day_usage)(held, summary))
            for name, value in held.items():
                dimension, _, rest = name.partition(":")
                metric, _, source = rest.partition(":")
                if dimension == "s" and metric in _METRICS:
                    totals = by_source.setdefault(source, UsageTotals())
                    setattr(totals, metric, getattr(totals, metric) + value)
        own = UsageTotals()
        own.merge(summary.totals)
        for totals in by_source.values():
            for metric in _METRICS:
                setattr(own, metric, getattr(own, metric) - getattr(totals, metric))
        by_source[""] = own
        return {source: totals for source, totals in by_source.items() if totals.requests}

    # -- semantic cache ------------------------------------------------------------------
    @_translated("store a semantic-cache entry")
    def semantic_write(self, entry: SemanticEntry, *, max_entries: int, touched: Sequence[str] = ()) -> SemanticWrite:
        if max_entries < 0:
            raise ValueError("max_entries must be 0 (no cap) or more")
        epoch, after, through, evicted = self._run_semantic(
            argv.SEMANTIC_PUT, touched, entry_id=entry.entry_id, record=_pack_record(entry), answer=entry.answer,
            max_entries=max_entries)
        epoch, after = _text(epoch), _text(after)
        # An unknown id before (a new log) gives a cursor no follower holds: it reads the events.
        return SemanticWrite([_text(entry_id) for entry_id in evicted], f"{epoch}/{after}" if after else "",
                             f"{epoch}/{_text(through)}")

    @_translated("read a semantic-cache entry")
    def semantic_get(self, entry_id: str, *, touch: bool = True) -> SemanticEntry | None:
        reply = self._run_semantic(argv.SEMANTIC_GET, entry_id=entry_id, touch="1" if touch else "0")
        if reply is None:
            return None
        record, answer = reply
        return _unpack_record(entry_id, record, "" if answer is None else _text(answer))

    @_translated("mark semantic-cache entries used")
    def semantic_touch(self, entry_ids: Sequence[str]) -> int:
        return self._per_batch(argv.SEMANTIC_TOUCH, entry_ids)

    @_translated("delete semantic-cache entries")
    def semantic_delete(self, entry_ids: Sequence[str]) -> int:
        return self._per_batch(argv.SEMANTIC_DELETE, entry_ids)

    def _per_batch(self, script: ArgvLayout, entry_ids: Sequence[str]) -> int:
        """Run ``script`` over the ids a batch at a time (never one long script); the sum of replies."""
        total = 0
        for start in range(0, len(entry_ids), _SEMANTIC_DELETE_BATCH):
            total += int(self._run_semantic(script, entry_ids[start : start + _SEMANTIC_DELETE_BATCH]))
        return total

    @_translated("delete semantic-cache entries")
    def semantic_delete_where(self, *, context_prefix: str | None = None, expired: bool = False) -> list[str]:
        if expired == (context_prefix is not None):  # both or neither
            raise ValueError("semantic_delete_where: give either context_prefix or expired=True")
        mode, prefix = ("expired", "") if expired else ("prefix", context_prefix or "")
        deleted: list[str] = []
        while True:
            looked_at, ids = self._run_semantic(argv.SEMANTIC_DELETE_WHERE, mode=mode, prefix=prefix,
                                                limit=_SEMANTIC_DELETE_BATCH)
            deleted += [_text(entry_id) for entry_id in ids]
            if int(looked_at) < _SEMANTIC_DELETE_BATCH:
                return deleted

    def semantic_scan(self, *, batch: int = 1000) -> Iterator[SemanticEntry]:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        return self._scan_semantic(batch)

    def _scan_semantic(self, batch: int) -> Iterator[SemanticEntry]:
        # HSCAN returns every entry present throughout the scan at least once (entries changed
        # meanwhile may be missed or come twice: the caller replays the log from the cursor it
        # took before scanning). ``seen`` drops the repeats.
        now = self.now()
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, page = self._scan_semantic_page(cursor, batch)
            for raw_id, record in page.items():
                if raw_id in seen:
                    continue
                seen.add(raw_id)
                if _RECORD_HEAD.unpack_from(record)[1] > now:
                    yield _unpack_record(raw_id.decode("utf-8"), record, "")
            if cursor == 0:
                return

    @_translated("load the semantic cache")
    def _scan_semantic_page(self, cursor: int, batch: int) -> tuple[int, dict[bytes, bytes]]:
        next_cursor, page = self._raw("HSCAN", self._semantic_keys[0], cursor, "COUNT", batch)
        return int(next_cursor), page

    @_translated("read the semantic change log")
    def semantic_changes(self, cursor: str | None, *, block_s: float = 0.0, limit: int = 1000) -> SemanticChanges:
        parsed = None if cursor is None else _CURSOR.fullmatch(cursor)
        if cursor is not None and parsed is None:
            raise ValueError(f"not a cursor of the Redis semantic change log: {cursor!r}")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        epoch, stream_id = (parsed["epoch"], parsed["id"]) if parsed is not None else ("", None)
        changes = self._read_semantic_log(epoch, stream_id, limit)
        if stream_id is None or changes.changes or changes.reset or block_s <= 0:
            return changes
        self._wait_for_semantic_log(stream_id, block_s)
        return self._read_semantic_log(epoch, stream_id, limit)

    def _read_semantic_log(self, epoch: str, stream_id: str | None, limit: int) -> SemanticChanges:
        reset, head, events, current = self._run_semantic(argv.SEMANTIC_CHANGES, cursor=stream_id or "", limit=limit,
                                                          cursor_epoch=epoch)
        current = _text(current)
        if stream_id is None or int(reset):
            return SemanticChanges(f"{current}/{_text(head)}", reset=bool(int(reset)))
        changes = tuple(_logged_change(fields) for _, fields in events)
        last = _text(events[-1][0]) if events else stream_id
        return SemanticChanges(f"{current}/{last}", changes)

    @_translated("wait for the semantic change log")
    def semantic_wait(self, cursor: str, block_s: float) -> None:
        parsed = _CURSOR.fullmatch(cursor)
        if parsed is None:
            raise ValueError(f"not a cursor of the Redis semantic change log: {cursor!r}")
        self._wait_for_semantic_log(parsed["id"], block_s)

    def _wait_for_semantic_log(self, cursor: str, block_s: float) -> None:
        """Wait (XREAD BLOCK on a pooled connection of its own) until an event follows ``cursor``,
        at most ``block_s``. Each wait stays within the socket timeout, so it never trips it."""
        socket_timeout = (self._cluster.get_connection_kwargs()  # type: ignore[no-untyped-call]
                          if self._cluster is not None else self._client.connection_pool.connection_kwargs
                          ).get("socket_timeout")
        deadline = time.monotonic() + block_s
        while (remaining := deadline - time.monotonic()) > 0:
            wait = remaining if socket_timeout is None else min(remaining, float(socket_timeout) / 2)
            # BLOCK 0 would mean forever: always at least 1 ms.
            block_ms = max(1, int(wait * 1000))
            if self._raw("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", self._semantic_keys[5], cursor):
                return

    # -- blobs -------------------------------------------------------------------------------
    # One hash holds every blob, so a batch of puts and deletes is one MULTI/EXEC (no read, so no
    # script is needed for atomicity) and a prefix scan is an HSCAN with MATCH.
    @_translated("read a blob")
    def blob_get(self, key: str) -> bytes | None:
        value = self._raw("HGET", self._blob_key, key)
        return None if value is None else bytes(value)

    @_translated("write blobs")
    def blob_put_many(
        self, items: Mapping[str, bytes], delete: Sequence[str] = (), *, expect: tuple[str, bytes | None] | None = None
    ) -> bool:
        if expect is None and not items and not delete:
            return True
        with self._client.pipeline(transaction=True) as pipe:
            for _ in range(_BLOB_WATCH_ATTEMPTS):
                try:
                    if expect is not None:
                        # Optimistic: any blob written meanwhile (a feedback vote, say) aborts the
                        # transaction, and the expected value is looked at again.
                        pipe.watch(self._blob_key)  # type: ignore[no-untyped-call]
                        held = pipe.execute_command("HGET", self._blob_key, expect[0], **_RAW)  # type: ignore[no-untyped-call]
                        if (None if held is None else bytes(held)) != expect[1]:
                            pipe.unwatch()
                            return False
                        pipe.multi()
                    if delete:
                        pipe.hdel(self._blob_key, *delete)
                    if items:
                        pipe.hset(self._blob_key, mapping=cast(Mapping[Any, Any], items))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
        raise StoreError(f"Redis store: cannot write blobs: other writes raced them {_BLOB_WATCH_ATTEMPTS} times")

    def blob_scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return self._scan_blobs(prefix)

    def _scan_blobs(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        # HSCAN may return a field twice (the hash was resized meanwhile): ``seen`` drops repeats.
        seen: set[bytes] = set()
        cursor = 0
        match = _glob_escape(prefix) + "*"
        while True:
            cursor, page = self._scan_blob_page(cursor, match)
            for raw_key, value in page.items():
                if raw_key not in seen:
                    seen.add(raw_key)
                    yield raw_key.decode("utf-8"), bytes(value)
            if cursor == 0:
                return

    @_translated("scan blobs")
    def _scan_blob_page(self, cursor: int, match: str) -> tuple[int, dict[bytes, bytes]]:
        next_cursor, page = self._raw("HSCAN", self._blob_key, cursor, "MATCH", match, "COUNT", _SCAN_BATCH)
        return int(next_cursor), page

    @_translated("count semantic-cache entries")
    def semantic_count(self) -> int:
        return int(self._client.hlen(self._semantic_keys[0]))

def _never_sent(exc: BaseException) -> bool:
    """The command surely never reached the server: redis-py could not even connect ("Error 111
    connecting to host:port"), or the cluster had no node for it."""
    if isinstance(exc, redis.ConnectionError) and "connecting to" in str(exc):
        return True
    return isinstance(exc, RedisClusterException)


def _days(first_day: str, last_day: str) -> Iterator[str]:
    try:
        day, last = date.fromisoformat(first_day), date.fromisoformat(last_day)
    except ValueError as exc:
        raise ConfigurationError(f"usage: days must be YYYY-MM-DD, got {first_day!r}..{last_day!r}") from exc
    while day <= last:
        yield day.isoformat()
        day += timedelta(days=1)


def _day_usage(held: Mapping[str, int], summary: UsageSummary) -> UsageTotals:
    """Fold one workspace-day aggregate HASH into ``summary.by_user``/``by_model``; return its totals."""
    totals = UsageTotals()
    for name, value in held.items():
        dimension, _, rest = name.partition(":")
        metric, _, who = rest.partition(":")
        if metric not in _METRICS:
            continue
        if dimension == "t":
            target = totals
        elif dimension == "u":
            target = summary.by_user.setdefault(who, UsageTotals())
        elif dimension == "m":
            target = summary.by_model.setdefault(who, UsageTotals())
        else:
            continue
        setattr(target, metric, getattr(target, metric) + value)
    return totals


def _user_day_usage(held: Mapping[str, int], summary: UsageSummary) -> UsageTotals:
    """Fold one user-day aggregate HASH (per model) into ``summary.by_model``; return its totals."""
    totals = UsageTotals()
    for name, value in held.items():
        metric, _, model = name.partition(":")
        if metric not in _METRICS:
            continue
        per_model = summary.by_model.setdefault(model, UsageTotals())
        setattr(per_model, metric, getattr(per_model, metric) + value)
        setattr(totals, metric, getattr(totals, metric) + value)
    return totals


def _held(reply: Sequence[Any]) -> Claim | None:
    """The claim or result holding a request, from a script's ``{'done', result}``, ``{'in_flight'}``
    or ``{'interrupted'}`` reply (held_request in _request.lua); None for any other reply."""
    state = _text(reply[0])
    if state == "done":
        return Claim("done", None if reply[1] is None else _text(reply[1]))
    if state == "in_flight":
        return Claim("in_flight")
    if state == "interrupted":
        return Claim("interrupted")
    return None


def _call(layout: ArgvLayout, keys: Sequence[str], rest: Iterable[Arg] = (), /, **named: Arg) -> Call:
    """One call of ``layout``'s script: its name, ``keys``, and its arguments in the layout's order."""
    return layout.script, keys, layout.build(rest, **named)


def _usage_and_entry_args(entry: LedgerEntry) -> list[Arg]:
    """The entry's metrics (name/value pairs, every UsageTotals field), then its fields (name/value
    pairs), as settle.lua and unsettle.lua take them after their fixed arguments."""
    one = UsageTotals()
    one.add(entry)
    args: list[Arg] = []
    for metric in _METRICS:
        args += [metric, int(getattr(one, metric))]
    for name in _LEDGER_FIELDS:
        value = getattr(entry, name)
        args += [name, _num(value) if name == "ts" else value if isinstance(value, str) else int(value)]
    return args


def _bucket_args(specs: Sequence[BucketSpec]) -> list[Arg]:
    args: list[Arg] = []
    for spec in specs:
        args += [_num(spec.bucket.rate), _num(spec.bucket.burst), _num(spec.cost)]
    return args


def _limit_decision(reply: Sequence[Any]) -> LimitDecision:
    blocking = int(reply[2])
    return LimitDecision(
        allowed=bool(int(reply[0])),
        retry_after=float(_text(reply[1])),
        remaining=tuple(float(_text(r)) for r in reply[3:]),
        blocking=None if blocking < 0 else blocking,
    )


def _permit(reply: Sequence[Any]) -> Permit:
    allowed, probe, retry_after, state = reply
    return Permit(int(allowed) == 1, bool(int(probe)), float(_text(retry_after)), cast(Any, _text(state)))


def _breaker_state(raw: Mapping[Any, Any]) -> BreakerState:
    held = {_text(k): _text(v) for k, v in raw.items()}
    if not held:
        return BreakerState()
    defaults = BreakerState()
    values: dict[str, Any] = {}
    for name in _BREAKER_FIELDS:
        default = getattr(defaults, name)
        text = held.get(name)
        if text is None:
            values[name] = default
        elif isinstance(default, str):
            values[name] = text
        elif isinstance(default, int):
            values[name] = int(float(text))
        else:
            values[name] = float(text)
    return BreakerState(**values)


def _pack_record(entry: SemanticEntry) -> bytes:
    """The entry without its id and answer, as stored in the records hash and logged with a put."""
    scope, context, question = (text.encode("utf-8") for text in (entry.scope, entry.context, entry.question))
    return b"".join(
        (
            _RECORD_HEAD.pack(entry.created_at, entry.expires_at, len(scope)),
            scope,
            _LENGTH.pack(len(context)),
            context,
            _LENGTH.pack(len(question)),
            question,
            bytes(entry.vector),
        )
    )


def _unpack_record(entry_id: str, record: bytes, answer: str) -> SemanticEntry:
    created_at, expires_at, length = _RECORD_HEAD.unpack_from(record)
    at = _RECORD_HEAD.size + length
    scope = record[_RECORD_HEAD.size : at].decode("utf-8")
    context, at = _length_prefixed(record, at)
    question, at = _length_prefixed(record, at)
    return SemanticEntry(entry_id, scope, context, question, record[at:], answer, created_at, expires_at)


def _length_prefixed(record: bytes, at: int) -> tuple[str, int]:
    """The text whose uint32 length starts at ``at``, and the offset just after it."""
    (length,) = _LENGTH.unpack_from(record, at)
    start = at + _LENGTH.size
    return record[start : start + length].decode("utf-8"), start + length


def _logged_change(fields: Sequence[bytes]) -> SemanticChange:
    """One change-log event: flat field/value pairs op, id, scope (and record for a put)."""
    event = dict(zip(fields[::2], fields[1::2], strict=True))
    entry_id, scope = event[b"id"].decode("utf-8"), event[b"scope"].decode("utf-8")
    if event[b"op"] == b"delete":
        return SemanticChange("delete", entry_id, scope)
    return SemanticChange("put", entry_id, scope, _unpack_record(entry_id, event[b"record"], ""))
