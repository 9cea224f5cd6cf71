"""The ARGV of every Redis script, declared once.

A Lua script reads its arguments by position (``ARGV[3]``, ``ARGV[14 + i]``). Each script's layout
is declared here and :mod:`proxy_core.stores.redis` builds the script's arguments only through it,
by name; the script's header names its layout and lists the same positions, and
``tests/test_lua_argv.py`` fails when a header, a script's offsets and its layout disagree.

Before the named arguments come the ones the store adds to every call: the clock's two
(``_common.lua``'s ``clock()``), and for the semantic scripts the change log's length as well
(``_semantic.lua``). After them, a layout may take a ``rest``: repeated groups (per bucket, per
budget line) or a list, which the script reads from :attr:`ArgvLayout.first_rest` on, through a
``local rest = <first_rest>`` at its top.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LAYOUTS", "Arg", "ArgvLayout"]

Arg = str | bytes | int

CLOCK_ARGS = 2  # ARGV[1]: the injected clock ('' = Redis TIME), ARGV[2]: its slack in ms
SEMANTIC_ARGS = CLOCK_ARGS + 1  # then ARGV[3]: how many change-log events to keep


@dataclass(frozen=True, slots=True)
class ArgvLayout:
    """One script's arguments: ``names`` at ARGV ``lead + 1`` on, then ``rest`` (in words; '' = none)."""

    script: str
    names: tuple[str, ...] = ()
    rest: str = ""
    lead: int = CLOCK_ARGS

    def index(self, name: str) -> int:
        """The position (1-based, as Lua counts) ``name`` is read from."""
        return self.lead + self.names.index(name) + 1

    @property
    def first_rest(self) -> int:
        """The position of the first argument after the named ones."""
        return self.lead + len(self.names) + 1

    def build(self, rest: Iterable[Arg] = (), /, **named: Arg) -> list[Arg]:
        """The arguments after the lead: every name of the layout, in its order, then ``rest``."""
        if named.keys() != set(self.names):
            raise TypeError(f"{self.script}.lua takes {', '.join(self.names) or 'no named arguments'}, "
                            f"not {', '.join(named) or 'none'}")
        if not self.rest and rest:
            raise TypeError(f"{self.script}.lua takes nothing after its named arguments")
        return [*(named[name] for name in self.names), *rest]


_LINE_REST = "resets_at per budget line, then metric name/value pairs, then the entry's field/value pairs"
_BREAKER_POLICY = ("failure_threshold", "failure_ratio", "min_calls", "window_s", "cooldown_s", "probe_timeout_s",
                   "max_cooldown_s")

CLAIM_REQUEST = ArgvLayout("claim_request", ("ttl_s",))
COMPLETE_REQUEST = ArgvLayout("complete_request", ("result", "ttl_s"))
RELEASE_REQUEST = ArgvLayout("release_request")
ADMIT = ArgvLayout(
    "admit",
    ("ttl_s", "buckets", "reservation_id", "amount", "keep_s", "reservation_ttl_s", "owner"),
    rest="rate, burst and cost per bucket, then limit and resets_at per budget line",
)
TAKE_TOKENS = ArgvLayout("take_tokens", rest="rate, burst and cost per bucket")
RELEASE = ArgvLayout("release", ("reservation_id",))
RELEASE_ADMISSION = ArgvLayout("release_admission", ("reservation_id", "call"))
TOP_UP_ADMISSION = ArgvLayout(
    "top_up_admission", ("reservation_id", "amount", "call", "owner"), rest="limit and resets_at per budget line",
)
SETTLE = ArgvLayout(
    "settle",
    ("reservation_id", "cost_micros", "has_result", "result", "result_ttl_s", "keep_s", "user_id", "model",
     "metrics", "claim", "day", "source"),
    rest=_LINE_REST,
)
UNSETTLE = ArgvLayout(
    "unsettle",
    ("request_id", "amount", "keep_s", "reaped_keep_s", "user_id", "model", "metrics", "source"),
    rest=_LINE_REST,
)
# The same script called only to tidy the owned-claims index: its first named argument alone.
UNSETTLE_INDEX_ONLY = ArgvLayout("unsettle", UNSETTLE.names[:1])
SPENT = ArgvLayout("spent")
BREAKER = ArgvLayout("breaker", ("op", "success", *_BREAKER_POLICY, "pending"))
CACHE_GET = ArgvLayout("cache_get")
CACHE_PUT = ArgvLayout("cache_put", ("value", "ttl_s"))
CACHE_DELETE = ArgvLayout("cache_delete")
CACHE_ADD = ArgvLayout("cache_add", ("value", "ttl_s"))
CACHE_DROP = ArgvLayout("cache_drop", ("value",))

SEMANTIC_PUT = ArgvLayout("semantic_put", ("entry_id", "record", "answer", "max_entries"),
                          rest="entry ids to mark used after the put", lead=SEMANTIC_ARGS)
SEMANTIC_GET = ArgvLayout("semantic_get", ("entry_id", "touch"), lead=SEMANTIC_ARGS)
SEMANTIC_TOUCH = ArgvLayout("semantic_touch", rest="entry ids", lead=SEMANTIC_ARGS)
SEMANTIC_DELETE = ArgvLayout("semantic_delete", rest="entry ids", lead=SEMANTIC_ARGS)
SEMANTIC_DELETE_WHERE = ArgvLayout("semantic_delete_where", ("mode", "prefix", "limit"), lead=SEMANTIC_ARGS)
SEMANTIC_CHANGES = ArgvLayout("semantic_changes", ("cursor", "limit", "cursor_epoch"), lead=SEMANTIC_ARGS)

LAYOUTS: dict[str, ArgvLayout] = {
    name: layout for name, layout in globals().items() if isinstance(layout, ArgvLayout)
}
"""Every layout by its name here (the name a script's header gives)."""
