"""Block Kit for ``/cost`` and the App Home: pure functions of :mod:`bot.cost` reports.

Every message stays within Slack's limits (at most 50 blocks, section text at most 3,000
characters). Users appear as ``<@U…>`` mentions, which Slack shows as names to the reader; a user that is
not a Slack ID (a proxy key's ``--user``) as escaped code (:func:`~bot.slack.render.user_mrkdwn`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from bot.cost import BudgetStatus, CostReport, Headroom, KeySpend, SourceSpend, TeamReport, sparkline
from bot.slack.render import MAX_BLOCKS, SECTION_TEXT_LIMIT, Block, escape_mrkdwn, user_mrkdwn
from bot.wording import counted
from proxy_core import UsageTotals, format_usd

__all__ = [
    "USAGE_TEXT",
    "blocks_to_text",
    "cost_blocks",
    "help_blocks",
    "home_view",
    "team_blocks",
    "team_refusal_blocks",
]

USAGE_TEXT: Final = (
    "*`/cost`* — what your questions to Penny cost today and this month (split between Slack and "
    "your `penny proxy` keys when you use any), your budget left and your rate-limit headroom "
    "(only you see it).\n"
    "*`/cost team`* — the whole workspace: top spenders, models, money saved by the cache, everyone's "
    "proxy keys (workspace admins and Penny admins only).\n"
    "*`/cost help`* — this message.\n"
    "The same numbers are on Penny's *Home* tab."
)
REFUSAL_TEXT: Final = (
    ":lock: The team view is for workspace admins and Penny admins. Here are your own numbers."
)
KEYS_SHOWN: Final = 25  # proxy keys listed in /cost team; the rest are counted (penny keys list has all)
_MENTION: Final = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")


def help_blocks() -> list[Block]:
    return [_section(USAGE_TEXT)]


def cost_blocks(report: CostReport) -> list[Block]:
    """One user's numbers: today, this month (by source when a proxy key spent some), budgets,
    headroom and the 14-day trend."""
    blocks: list[Block] = [
        _header("Your Penny costs"),
        _section(_spend_lines(report)),
        *([_section(_sources_text(report.sources))] if report.split_by_source else []),
        _section(
            "\n".join(
                [
                    _budget_line("Your daily budget", report.user_daily, report.now),
                    # Without a cap, what the workspace spent is team data: only admins see it.
                    _budget_line("Workspace monthly budget", report.workspace_monthly, report.now, show_spent=False),
                    _headroom_line(report.headroom),
                ]
            )
        ),
        _trend_block(report.trend, report.trend_days),
    ]
    unsettled = _unsettled_note(report.this_month, "of your calls")
    if unsettled:
        blocks.insert(2, _section(unsettled))  # right under the spend it is part of
    return _bounded(blocks)


def team_blocks(report: TeamReport) -> list[Block]:
    """The workspace's numbers, for admins."""
    blocks: list[Block] = [
        _header("Team Penny costs"),
        _section(
            _spend_lines(report) + "\n" + _budget_line("Workspace monthly budget", report.workspace_monthly, report.now)
        ),
    ]
    notes = _ledger_notes(report)
    if notes:
        blocks.append(_section("\n".join(notes)))
    if report.top_users:
        lines = [
            f"{rank}. {user_mrkdwn(user)} — {format_usd(t.cost_micros)} · {counted(t.questions, 'question')} · "
            f"saved {format_usd(t.saved_micros)}"
            for rank, (user, t) in enumerate(report.top_users, 1)
        ]
        blocks.append(_section("*Top users this month*\n" + "\n".join(lines)))
    if report.by_model:
        lines = [_model_line(model, t) for model, t in report.by_model]
        blocks.append(_section("*By model this month*\n" + "\n".join(lines)))
    if report.keys:
        blocks.append(_section(_keys_text(report.keys)))
    blocks.append(_trend_block(report.trend, report.trend_days))
    return _bounded(blocks)


def _spend_lines(report: CostReport | TeamReport) -> str:
    """Today's and this month's totals, the first thing both reports show."""
    return (
        f"*Today* ({report.day})\n{_totals(report.today)}\n"
        f"*This month* ({report.month})\n{_totals(report.this_month)}"
    )


def _unsettled_note(month: UsageTotals, whose: str) -> str:
    """Interrupted calls in ``month``, charged at their worst case ("" for none); ``whose`` names
    them ("calls", "of your calls")."""
    if not month.unsettled:
        return ""
    were = "was" if month.unsettled == 1 else "were"
    return (f":warning: {month.unsettled:,} {whose} {were} interrupted while the LLM answered; "
            f"{format_usd(month.unsettled_micros)} of this month's spend is their worst case, "
            "until their real cost arrives.")


def _ledger_notes(report: TeamReport) -> list[str]:
    """What the numbers above may not show yet: interrupted calls charged at their worst case, and
    paid calls still on their way to the ledger."""
    notes = []
    unsettled = _unsettled_note(report.this_month, "calls" if report.this_month.unsettled != 1 else "call")
    if unsettled:
        notes.append(unsettled)
    if report.pending_ledger_writes:
        n = report.pending_ledger_writes
        notes.append(
            f":hourglass_flowing_sand: {n:,} paid {'call is' if n == 1 else 'calls are'} waiting for the store "
            "to record them (kept on disk, not lost); they are not in these numbers yet."
        )
    return notes


def team_refusal_blocks(own: CostReport) -> list[Block]:
    """The polite no for ``/cost team`` from a non-admin, followed by their own numbers only."""
    return _bounded([_section(REFUSAL_TEXT), *cost_blocks(own)])


def home_view(own: CostReport, team: TeamReport | None) -> dict[str, Any]:
    """The App Home: the viewer's dashboard, and the team's for admins."""
    blocks: list[Block] = [
        _section("*Penny* answers questions about the team's docs. DM me, or mention me in a channel."),
        *cost_blocks(own),
    ]
    if team is not None:
        blocks += [{"type": "divider"}, *team_blocks(team)]
    blocks.append(_context(f"Updated {_when(own.now)} · `/cost help` for the slash command"))
    return {"type": "home", "blocks": _bounded(blocks)}


def blocks_to_text(blocks: Sequence[Block]) -> str:
    """The readable text of ``blocks`` (for a terminal or a notification), mrkdwn marks removed."""
    out: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind in ("header", "section"):
            out.append(_plain(str(block["text"]["text"])))
        elif kind == "context":
            out.append(" ".join(_plain(str(e.get("text", ""))) for e in block["elements"]))
        elif kind == "divider":
            out.append("")
    return "\n".join(out)


# -- pieces ------------------------------------------------------------------------------------


def _totals(t: UsageTotals) -> str:
    tokens = t.prompt_tokens + t.completion_tokens
    return (
        f"{counted(t.questions, 'question')} · {counted(tokens, 'token')} · *{format_usd(t.cost_micros)}* spent · "
        f"cache {t.hit_rate:.0%} hits, saved {format_usd(t.saved_micros)}"
    )


def _sources_text(sources: Sequence[SourceSpend]) -> str:
    """Where a person's spend came from: Slack, and each proxy key by its name and ID."""
    lines = [
        f"• {_source_name(s)} — {format_usd(s.today.cost_micros)} today · {format_usd(s.this_month.cost_micros)} "
        f"this month · {counted(s.this_month.questions, 'question')}"
        for s in sources
    ]
    return _listed("*By source*", lines, "more source")


def _source_name(s: SourceSpend) -> str:
    if s.is_slack:
        return "Slack"
    name = f"key *{escape_mrkdwn(s.name)}* `{s.source}`" if s.name else f"key `{s.source}`"
    return name + (" (revoked)" if s.revoked else "")


def _keys_text(keys: Sequence[KeySpend]) -> str:
    """The workspace's proxy keys, by user: name, ID, state, own budget, spend today and this month."""
    lines = []
    for k in keys:
        name = f"*{escape_mrkdwn(k.name)}* `{k.key_id}`" if k.name else f"`{k.key_id}`"
        budget = f" · {format_usd(k.daily_budget_micros)}/day budget" if k.daily_budget_micros is not None else ""
        lines.append(f"{user_mrkdwn(k.user_id)} {name} — {'revoked' if k.revoked else 'active'} · "
                     f"{format_usd(k.today.cost_micros)} today · {format_usd(k.this_month.cost_micros)} this month"
                     f"{budget}")
    return _listed("*Proxy keys* (`penny proxy`)", lines, "more key", shown=KEYS_SHOWN,
                   where=" (`penny keys list` shows them all)")


def _listed(title: str, lines: Sequence[str], more: str, *, shown: int | None = None, where: str = "") -> str:
    """``title`` and as many of ``lines`` as fit one section (at most ``shown``), then how many more."""
    room = SECTION_TEXT_LIMIT - len(title) - 100  # the last line, "…and N more", fits in the rest
    kept: list[str] = []
    for line in lines[:shown]:
        if len(line) + 1 > room:
            break
        kept.append(line)
        room -= len(line) + 1
    if len(kept) < len(lines):
        kept.append(f"…and {counted(len(lines) - len(kept), more)}{where}")
    return "\n".join([title, *kept])


def _model_line(model: str, t: UsageTotals) -> str:
    """A model's month: calls are the ones made to the provider; an answer served from the cache
    made none, so it is counted apart (its cost is in "saved")."""
    line = f"`{model}` — {format_usd(t.cost_micros)} · {counted(t.requests - t.cache_hits, 'call')}"
    if t.cache_hits:
        line += f" · {counted(t.cache_hits, 'answer')} from the cache"
    return f"{line} · {counted(t.prompt_tokens + t.completion_tokens, 'token')}"


def _budget_line(label: str, status: BudgetStatus, now: float, *, show_spent: bool = True) -> str:
    left = status.left
    if left is None:
        return f"*{label}:* no cap" + (f" ({format_usd(status.spent)} spent)" if show_spent else "")
    return (
        f"*{label}:* {format_usd(left, down=True)} left of {format_usd(status.limit)} · "
        f"resets {_when(status.resets_at)} (in {_duration(status.resets_at - now)})"
    )


def _headroom_line(h: Headroom) -> str:
    """What may be asked at once now, with the per-minute refill: "10 of 10" alone reads as a limit
    of 10 to someone who set 20 a minute (the 10 is the burst)."""
    parts = []
    for kind, left, burst, per_minute in (("requests", h.requests_left, h.request_burst, h.requests_per_minute),
                                          ("tokens", h.tokens_left, h.token_burst, h.tokens_per_minute)):
        if left is None or burst is None:
            continue
        part = f"{int(left):,} of {int(burst):,} {kind} left"
        if per_minute is not None:
            part += f" (refills {_per_minute(per_minute)} a minute)"
        parts.append(part)
    return "*Rate limit now:* " + (" · ".join(parts) if parts else "unlimited")


def _per_minute(rate: float) -> str:
    return f"{int(rate):,}" if rate == int(rate) else f"{rate:,.2f}".rstrip("0")


def _trend_block(trend: Sequence[int], days: Sequence[str]) -> Block:
    first, last = (days[0], days[-1]) if days else ("", "")
    return _context(
        f"Last {len(trend)} days `{sparkline(tuple(trend))}` {format_usd(sum(trend))} ({first} → {last})"
    )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    minutes = max(0, int(seconds + 59) // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {mins}m"
    return f"{mins}m"


def _header(text: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150]}}


def _section(mrkdwn: str) -> Block:
    if len(mrkdwn) > SECTION_TEXT_LIMIT:
        mrkdwn = mrkdwn[: SECTION_TEXT_LIMIT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def _context(mrkdwn: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn[:SECTION_TEXT_LIMIT]}]}


def _bounded(blocks: list[Block]) -> list[Block]:
    return blocks[:MAX_BLOCKS]


def _plain(mrkdwn: str) -> str:
    return _MENTION.sub(r"\1", mrkdwn).replace("*", "").replace("`", "")
