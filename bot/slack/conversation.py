"""What Penny reads of Slack's payloads: the question in a message (mentions of Penny taken out, cut
to :data:`MAX_QUESTION_CHARS`), who asked (a Slack Connect guest's own team), which workspace and
channel a button click came from, and a thread's earlier turns as the question's history.

``conversations.replies`` (one call per :data:`REPLIES_PAGE` replies) fetches a thread's messages
(:func:`thread_messages`); :func:`thread_history` keeps its root and its newest turns, at most
:data:`HISTORY_TURNS` turns / :data:`HISTORY_TOKENS` tokens. Everything here but
:func:`thread_messages` is a pure function of the event or the messages.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from slack_bolt import BoltContext
from slack_sdk import WebClient

from proxy_core import estimate_text_tokens, get_logger

__all__ = [
    "HISTORY_TOKENS",
    "HISTORY_TURNS",
    "MAX_QUESTION_CHARS",
    "MENTION",
    "USER_SUBTYPES",
    "action_channel",
    "action_value",
    "action_workspace",
    "asker_team",
    "clip_question",
    "strip_mentions",
    "thread_history",
    "thread_messages",
    "workspace_of",
]

MAX_QUESTION_CHARS: Final = 4000
HISTORY_TURNS: Final = 10
HISTORY_TOKENS: Final = 2000
REPLIES_PAGE: Final = 200  # messages per conversations.replies page (Slack recommends at most 200)
REPLIES_MAX_PAGES: Final = 10  # a thread is paged through to its end, up to this many pages
REPLIES_KEPT: Final = 50  # the newest replies kept while paging (bots and joins are left out later)

# Subtypes that are still a person writing (a reply also sent to the channel, a message with a file).
USER_SUBTYPES: Final = frozenset({"thread_broadcast", "file_share"})
MENTION: Final = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")

_log = get_logger()


def strip_mentions(text: str, bot_user_id: str | None) -> str:
    """``text`` without mentions of the bot (others stay), whitespace collapsed at the ends."""
    if not bot_user_id:
        return text.strip()
    return MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text).strip()


def clip_question(text: str, limit: int = MAX_QUESTION_CHARS) -> tuple[str, bool]:
    """(text cut to ``limit`` characters, whether it was cut)."""
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros or 0)
    except ValueError:
        return 0, 0


def thread_history(
    messages: Sequence[Mapping[str, Any]],
    *,
    before_ts: str,
    bot_user_id: str | None,
    bot_id: str | None,
    root_ts: str | None = None,
    max_turns: int = HISTORY_TURNS,
    max_tokens: int = HISTORY_TOKENS,
) -> tuple[tuple[str, str], ...]:
    """The turns of a thread before ``before_ts``, oldest first, as (role, text), keeping the newest
    that fit ``max_turns`` and ``max_tokens``. The thread's root (the message at ``root_ts``) is kept
    first whatever the thread's length, in at most half the tokens: it is usually the question the
    thread is about. Penny's messages are ``assistant``; other bots and system messages are left out."""
    turns: list[tuple[str, str]] = []
    root: list[tuple[str, str]] = []
    for message in messages:
        ts = str(message.get("ts", ""))
        if _ts_key(ts) >= _ts_key(before_ts):
            continue
        subtype = message.get("subtype")
        penny = (bot_id is not None and message.get("bot_id") == bot_id) or (
            bot_user_id is not None and message.get("user") == bot_user_id
        )
        if not penny and (message.get("bot_id") or (subtype is not None and subtype not in USER_SUBTYPES)):
            continue
        text = strip_mentions(str(message.get("text") or ""), bot_user_id)
        if text:
            (root if root_ts is not None and ts == root_ts and not root else turns).append(
                ("assistant" if penny else "user", text)
            )
    if root and max_turns > 1:
        role, text = root[0]
        root = [(role, _clip_tokens(text, max_tokens // 2))]
        max_turns -= 1
        max_tokens -= estimate_text_tokens(root[0][1])
    else:
        turns = root + turns
        root = []
    kept: list[tuple[str, str]] = []
    total = 0
    for role, text in reversed(turns[-max_turns:]):
        tokens = estimate_text_tokens(text)
        if total + tokens > max_tokens:
            if not kept:  # the newest turn alone is too long: keep its start
                kept.append((role, _clip_tokens(text, max_tokens)))
            break
        kept.append((role, text))
        total += tokens
    return tuple(root + kept[::-1])


def _clip_tokens(text: str, max_tokens: int) -> str:
    """The start of ``text``, about ``max_tokens`` long (all of it when it fits)."""
    tokens = estimate_text_tokens(text)
    if tokens <= max_tokens:
        return text
    return text[: max(1, len(text) * max_tokens // max(tokens, 1))]


def thread_messages(
    client: WebClient,
    channel: str,
    thread_ts: str,
    *,
    before_ts: str,
    page: int = REPLIES_PAGE,
    max_pages: int = REPLIES_MAX_PAGES,
    keep: int = REPLIES_KEPT,
) -> list[Mapping[str, Any]]:
    """The thread's root and its newest ``keep`` replies before ``before_ts``, oldest first.

    ``conversations.replies`` pages from the root forward (later pages leave the root out), so a
    long thread is paged through until ``before_ts`` or its end, keeping only the newest replies;
    one page is one call. Past ``max_pages`` the newest replies read so far are used."""
    root: Mapping[str, Any] | None = None
    newest: deque[Mapping[str, Any]] = deque(maxlen=keep)
    cursor = ""
    for _ in range(max_pages):
        response = client.conversations_replies(channel=channel, ts=thread_ts, limit=page, cursor=cursor or None)
        done = False
        for message in response.get("messages") or []:
            ts = str(message.get("ts", ""))
            if _ts_key(ts) >= _ts_key(before_ts):
                done = True
            elif ts == thread_ts:
                root = message
            else:
                newest.append(message)
        cursor = str((response.get("response_metadata") or {}).get("next_cursor") or "")
        if done or not cursor:
            break
    else:
        _log.warning("slack.thread_too_long", channel=channel, thread_ts=thread_ts, pages=max_pages)
    return ([root] if root is not None else []) + list(newest)


def asker_team(event: Mapping[str, Any], workspace: str) -> str:
    """The team of the person who wrote ``event``: its ``user_team`` (or ``team``) when that is a
    workspace ID (a Slack Connect guest's own workspace), else ``workspace``."""
    for key in ("user_team", "team"):
        team = str(event.get(key) or "")
        if team.startswith("T"):
            return team
    return workspace


def workspace_of(body: Mapping[str, Any], context: BoltContext | None = None) -> str:
    """The workspace an event is delivered to: the installation it names (``authorizations[0]``), as
    Bolt and the installed-workspace check read it. In a Slack Connect channel the event's own
    ``team_id`` can be the sender's workspace; billed and recorded under it, a guest's question ran
    on budget lines of its own, and the host's ``/cost`` never saw it."""
    authorizations = body.get("authorizations")
    if isinstance(authorizations, list) and authorizations and isinstance(authorizations[0], Mapping):
        installed = authorizations[0].get("team_id")
        if isinstance(installed, str) and installed:
            return installed
    return str(body.get("team_id") or (context.team_id if context is not None else None) or "")


def action_workspace(body: Mapping[str, Any]) -> str:
    """The workspace a button click or a form is for: the installation's when a form opened from a
    Slack Connect channel says so (``view.app_installed_team_id``, as Bolt reads it), else the
    clicking user's workspace."""
    view = body.get("view")
    if isinstance(view, Mapping) and isinstance(view.get("app_installed_team_id"), str):
        return str(view["app_installed_team_id"])
    return str((body.get("team") or {}).get("id") or body["user"].get("team_id") or "")


def action_channel(body: Mapping[str, Any]) -> str:
    """The channel of the message a button was clicked in."""
    return str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id"))


def action_value(body: Mapping[str, Any]) -> str:
    """The ``value`` of the button clicked (``""`` when it has none)."""
    return str(((body.get("actions") or [{}])[0]).get("value") or "")
