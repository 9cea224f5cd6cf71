"""The Redis store: Penny's shared state on a Redis server, for many replicas at once.

Every read-modify-write is one Lua script from ``stores/lua/*.lua`` (registered once, run with
EVALSHA; redis-py reloads a script the server forgot). Scripts take their time from the server's
``TIME``, so replicas with skewed clocks agree; a clock injected for tests is passed in instead.
The arithmetic is the pure policies' (``limiter``, ``budget``, ``breaker``), restated in Lua.

Key layout (``<ns>`` is the namespace, ``penny`` by default)::

    <ns>:{w:<workspace>}:req:<request id>          HASH   claim or result (expires)
    <ns>:{w:<workspace>}:bucket:<bucket key>       HASH   token bucket (expires once full again)
    <ns>:{w:<workspace>}:spent:<line key>          STRING micro-dollars spent on a budget line
    <ns>:{w:<workspace>}:resv:<line key>           HASH   reservation id -> amount
    <ns>:{w:<workspace>}:resv-exp:<line key>       ZSET   reservation id -> expires_at
    <ns>:{w:<workspace>}:ledger:<request id>       HASH   one ledger entry (durable)
    <ns>:{w:<workspace>}:usage:<day>               HASH   the day's totals, per user, per model
    <ns>:{w:<workspace>}:usage:<day>:user:<user>   HASH   the day's totals of one user, per model
    <ns>:breaker:{<name>}                          HASH   breaker state
    <ns>:cache:{<scope>}:<key>                     HASH   cache entry (expires)

The ``{w:<workspace>}`` hash tag puts every key one request touches in one cluster slot. Budget
line keys carry their period, and expire a few days after it resets.

Every redis-py error is translated here, once, into :class:`StoreError`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import astuple, fields
from datetime import date, timedelta
from importlib import resources
from typing import Any, Literal, ParamSpec, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from proxy_core.breaker import BreakerPolicy, BreakerState, Permit
from proxy_core.budget import BudgetLine
from proxy_core.clock import Clock
from proxy_core.errors import ConfigurationError, StoreError
from proxy_core.stores.base import (
    BucketSpec,
    BudgetDecision,
    Claim,
    LedgerEntry,
    LimitDecision,
    Store,
    UsageSummary,
    UsageTotals,
)

__all__ = ["RedisStore"]

P = ParamSpec("P")
R = TypeVar("R")

# Spent counters and reservations outlive their period by this much (late settles, reports).
KEEP_AFTER_RESET_S = 3 * 86400
# With an injected clock, real key expiries get this much slack so that Redis, which expires keys
# by its own time, never forgets a key before the injected clock says so.
_INJECTED_CLOCK_SLACK_MS = 60_000
_SCAN_BATCH = 500

_LEDGER_FIELDS = tuple(f.name for f in fields(LedgerEntry))
_LEDGER_INTS = frozenset(f.name for f in fields(LedgerEntry) if f.type in ("int", int))
_BREAKER_FIELDS = tuple(f.name for f in fields(BreakerState))
_METRICS = tuple(f.name for f in fields(UsageTotals))
_SCRIPTS = (
    "claim_request",
    "complete_request",
    "release_request",
    "take_tokens",
    "reserve",
    "release",
    "settle",
    "spent",
    "breaker",
    "cache_get",
    "cache_put",
    "cache_delete",
)


def _load_script(name: str) -> str:
    lua = resources.files("proxy_core.stores") / "lua"
    return (lua / "_common.lua").read_text("utf-8") + "\n" + (lua / f"{name}.lua").read_text("utf-8")


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
                raise StoreError(f"Redis store: cannot {action}: {store._describe(exc)}") from exc

        return wrapper

    return decorate


class RedisStore(Store):
    """:class:`Store` on Redis (redis-py, sync). Thread-safe: redis-py pools connections."""

    def __init__(self, client: redis.Redis, *, clock: Clock | None = None, namespace: str = "penny") -> None:
        if not namespace or any(c in namespace for c in "{}"):
            raise ConfigurationError("Redis store: the namespace must be non-empty, without '{' or '}'")
        self._client = client
        self._clock = clock
        self._ns = namespace
        password = client.connection_pool.connection_kwargs.get("password")
        self._secrets = [str(password)] if password else []
        # Registering only hashes the text; each script is sent to the server on its first EVALSHA
        # miss (and again after a SCRIPT FLUSH or a failover to a server that never saw it).
        self._scripts: dict[str, Script] = {name: client.register_script(_load_script(name)) for name in _SCRIPTS}

    @classmethod
    def from_url(
        cls, url: str, *, clock: Clock | None = None, timeout_s: float = 2.0, namespace: str = "penny"
    ) -> RedisStore:
        """Connect to ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``)."""
        try:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=30,
                decode_responses=True,
                # One immediate retry on a dropped connection (a pooled socket the server closed).
                # Never on a timeout: the script may have run, and a store call must fail within
                # its timeout rather than redis-py's default ten backed-off attempts.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
        except ValueError as exc:
            # The URL is not echoed: it may carry a password.
            raise ConfigurationError(
                "PENNY_STORE_URL: not a valid Redis URL; expected redis://[:password@]host:port/db"
            ) from exc
        store = cls(client, clock=clock, namespace=namespace)
        password = urlsplit(url).password
        if password:
            store._secrets = list({*store._secrets, password, unquote(password)})
        return store

    # -- plumbing --------------------------------------------------------------------------
    def _describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _run(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        script = self._scripts[name]
        if self._clock is None:
            head: list[str | int] = ["", 0]
        else:
            head = [_num(self._clock()), _INJECTED_CLOCK_SLACK_MS]
        return script(keys=list(keys), args=[*head, *args])

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
        self._client.ping()

    @_translated("close the connection")
    def close(self) -> None:
        self._client.close()

    @_translated("delete the namespace")
    def delete_namespace(self) -> int:
        """Delete every key of this store's namespace (tests); returns how many went."""
        return self._unlink_matching(_glob_escape(self._ns) + ":*", lambda keys: int(self._client.unlink(*keys)))

    # -- idempotency ---------------------------------------------------------------------
    @_translated("claim a request")
    def claim_request(self, workspace_id: str, request_id: str, ttl_s: float) -> Claim:
        reply = self._run("claim_request", [self._request_key(workspace_id, request_id)], [_num(ttl_s)])
        state = cast(Literal["claimed", "in_flight", "done"], _text(reply[0]))
        if state == "done":
            return Claim("done", None if reply[1] is None else _text(reply[1]))
        return Claim(state)

    @_translated("record a request's result")
    def complete_request(self, workspace_id: str, request_id: str, result: str, ttl_s: float) -> None:
        self._run("complete_request", [self._request_key(workspace_id, request_id)], [result, _num(ttl_s)])

    @_translated("release a request")
    def release_request(self, workspace_id: str, request_id: str) -> None:
        self._run("release_request", [self._request_key(workspace_id, request_id)], [])

    # -- rate limiting -------------------------------------------------------------------
    @_translated("take rate-limit tokens")
    def take_tokens(self, workspace_id: str, specs: Sequence[BucketSpec]) -> LimitDecision:
        if not specs:
            return LimitDecision(True, 0.0, (), None)
        ws = self._ws(workspace_id)
        args: list[str | int] = []
        for spec in specs:
            args += [_num(spec.bucket.rate), _num(spec.bucket.burst), _num(spec.cost)]
        reply = self._run("take_tokens", [f"{ws}:bucket:{spec.key}" for spec in specs], args)
        blocking = int(reply[2])
        return LimitDecision(
            allowed=bool(int(reply[0])),
            retry_after=float(_text(reply[1])),
            remaining=tuple(float(_text(r)) for r in reply[3:]),
            blocking=None if blocking < 0 else blocking,
        )

    # -- budgets -------------------------------------------------------------------------
    @_translated("reserve budget")
    def reserve(
        self,
        workspace_id: str,
        reservation_id: str,
        lines: Sequence[BudgetLine],
        amount: int,
        ttl_s: float,
    ) -> BudgetDecision:
        keys: list[str] = []
        args: list[str | int] = [reservation_id, int(amount), _num(ttl_s), KEEP_AFTER_RESET_S]
        for line in lines:
            keys += self._line_keys(workspace_id, line)
            args += [int(line.limit), _num(line.resets_at)]
        reply = self._run("reserve", keys, args)
        if int(reply[0]) == 1:
            return BudgetDecision(True)
        return BudgetDecision(False, lines[int(reply[1]) - 1], int(reply[2]), int(reply[3]))

    @_translated("release a budget reservation")
    def release(self, workspace_id: str, reservation_id: str, lines: Sequence[BudgetLine]) -> None:
        keys = [k for line in lines for k in self._line_keys(workspace_id, line)[1:]]
        self._run("release", keys, [reservation_id])

    @_translated("settle a request")
    def settle(
        self,
        entry: LedgerEntry,
        *,
        reservation_id: str | None,
        lines: Sequence[BudgetLine],
        result: str | None,
        result_ttl_s: float,
    ) -> bool:
        ws = self._ws(entry.workspace_id)
        keys = [
            f"{ws}:ledger:{entry.request_id}",
            self._request_key(entry.workspace_id, entry.request_id),
            f"{ws}:usage:{entry.day}",
            f"{ws}:usage:{entry.day}:user:{entry.user_id}",
        ]
        for line in lines:
            keys += self._line_keys(entry.workspace_id, line)
        one = UsageTotals()
        one.add(entry)
        args: list[str | int] = [
            reservation_id or "",
            int(entry.cost_micros),
            "1" if result is not None else "0",
            result or "",
            _num(result_ttl_s),
            KEEP_AFTER_RESET_S,
            entry.user_id,
            entry.model,
            len(_METRICS),
        ]
        args += [_num(line.resets_at) for line in lines]
        for metric in _METRICS:
            args += [metric, int(getattr(one, metric))]
        for name, value in zip(_LEDGER_FIELDS, astuple(entry), strict=True):
            args += [name, _num(value) if name == "ts" else value if isinstance(value, str) else int(value)]
        return int(self._run("settle", keys, args)) == 1

    @_translated("read a budget")
    def spent(self, workspace_id: str, line: BudgetLine) -> tuple[int, int]:
        reply = self._run("spent", self._line_keys(workspace_id, line), [])
        return int(reply[0]), int(reply[1])

    # -- circuit breaker -----------------------------------------------------------------
    def _breaker_key(self, name: str) -> str:
        return f"{self._ns}:breaker:{{{name}}}"

    def _breaker(self, name: str, policy: BreakerPolicy, op: str, success: bool) -> Any:
        return self._run(
            "breaker",
            [self._breaker_key(name)],
            [
                op,
                "1" if success else "0",
                int(policy.failure_threshold),
                _num(policy.failure_ratio),
                int(policy.min_calls),
                _num(policy.window_s),
                _num(policy.cooldown_s),
                _num(policy.probe_timeout_s),
            ],
        )

    @_translated("check the circuit breaker")
    def breaker_acquire(self, name: str, policy: BreakerPolicy) -> Permit:
        allowed, probe, retry_after, state = self._breaker(name, policy, "acquire", False)
        return Permit(bool(int(allowed)), bool(int(probe)), float(_text(retry_after)), cast(Any, _text(state)))

    @_translated("record a circuit-breaker outcome")
    def breaker_record(self, name: str, policy: BreakerPolicy, *, success: bool) -> BreakerState:
        reply = self._breaker(name, policy, "record", success)
        return _breaker_state(dict(zip(_BREAKER_FIELDS, reply, strict=True)))

    @_translated("read the circuit breaker")
    def breaker_state(self, name: str) -> BreakerState:
        return _breaker_state(cast(Mapping[Any, Any], self._client.hgetall(self._breaker_key(name))))

    # -- exact cache ---------------------------------------------------------------------
    @_translated("read the cache")
    def cache_get(self, scope: str, key: str) -> str | None:
        value = self._run("cache_get", [self._cache_key(scope, key)], [])
        return None if value is None else _text(value)

    @_translated("write the cache")
    def cache_put(self, scope: str, key: str, value: str, ttl_s: float) -> None:
        self._run("cache_put", [self._cache_key(scope, key)], [value, _num(ttl_s)])

    @_translated("delete from the cache")
    def cache_delete(self, scope: str, key: str | None = None) -> int:
        def delete(keys: list[str]) -> int:
            return int(self._run("cache_delete", keys, []))

        if key is not None:
            return delete([self._cache_key(scope, key)])
        return self._unlink_matching(_glob_escape(self._cache_key(scope, "")) + "*", delete)

    # -- ledger --------------------------------------------------------------------------
    @_translated("read the ledger")
    def ledger_entry(self, workspace_id: str, request_id: str) -> LedgerEntry | None:
        raw = self._client.hgetall(f"{self._ws(workspace_id)}:ledger:{request_id}")
        if not raw:
            return None
        held = {_text(k): _text(v) for k, v in raw.items()}
        values: dict[str, Any] = {}
        for name in _LEDGER_FIELDS:
            text = held[name]
            values[name] = float(text) if name == "ts" else int(text) if name in _LEDGER_INTS else text
        return LedgerEntry(**values)

    @_translated("summarise the ledger")
    def usage(self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None) -> UsageSummary:
        days = list(_days(first_day, last_day))
        ws = self._ws(workspace_id)
        pipe = self._client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{ws}:usage:{day}" if user_id is None else f"{ws}:usage:{day}:user:{user_id}")
        summary = UsageSummary()
        for day, raw in zip(days, pipe.execute(), strict=True):
            held = {_text(k): int(_text(v)) for k, v in raw.items()}
            fold = _day_usage if user_id is None else _user_day_usage
            day_totals = fold(held, summary)
            if day_totals.requests:
                summary.by_day[day] = day_totals
                _merge(summary.totals, day_totals)
                if user_id is not None:
                    _merge(summary.by_user.setdefault(user_id, UsageTotals()), day_totals)
        return summary


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


def _merge(into: UsageTotals, more: UsageTotals) -> None:
    for metric in _METRICS:
        setattr(into, metric, getattr(into, metric) + getattr(more, metric))


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
