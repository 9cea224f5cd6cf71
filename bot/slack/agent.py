"""Penny's agent surfaces in Slack: suggested prompts drawn from the docs, the greeting, thread
titles, the thread context Slack reports, and the 👎 reason form. Pure functions of data, and the
two small store-backed records they read (what gets asked, the thread context).

Slack has two agent experiences (https://docs.slack.dev/ai/migrating-to-agent-messaging/):

- the *agent* messaging experience (manifest ``features.agent_view``, the only one for new apps):
  conversations live in the app's Messages tab; opening it is an ``app_home_opened`` event with
  ``tab == "messages"``, and suggested prompts are set on the DM itself (no thread);
- the *assistant* experience (``features.assistant_view``, kept for existing apps until Slack
  retires it): each conversation is an assistant thread, started with ``assistant_thread_started``
  (Bolt's :class:`~slack_bolt.Assistant` handles it), with a greeting, prompts and a title.

The prompts are the docs pages Penny's answers cite most in the workspace (:class:`AskedPages`),
then the docs' largest pages, each asked as "What do the docs say about <title>?".
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from slack_bolt.context.assistant.thread_context import AssistantThreadContext
from slack_bolt.context.assistant.thread_context_store.store import AssistantThreadContextStore

from bot.slack.render import defuse_broadcasts
from proxy_core import BlobStore, RecordStore, StoreError, get_logger

__all__ = [
    "ACTION_FEEDBACK_REASON",
    "ASSISTANT_THREADS_KIND",
    "CONTEXT_KIND",
    "GREETING",
    "PROMPTS_TITLE",
    "REASON_CALLBACK",
    "AskedPages",
    "DocPage",
    "StoreThreadContext",
    "doc_pages_of",
    "feedback_ack_blocks",
    "reason_modal",
    "reason_of",
    "suggested_prompts",
    "thread_title",
]

MAX_PROMPTS: Final = 4  # Slack shows up to four suggested prompts
PROMPT_TITLE_CHARS: Final = 60
# A page's title in a prompt's question: a heading that is a whole paragraph is not sent as a question.
PROMPT_SUBJECT_CHARS: Final = 120
TITLE_CHARS: Final = 80
REASON_CHARS: Final = 500
ASKED_KEPT: Final = 50  # pages remembered per workspace in the tally of what gets asked
ASKED_PREFIX: Final = "slack:asked:"  # + workspace: {path: [title, answers citing it first]}
ASKED_FLUSH_S: Final = 2.0  # a process writes its counts of a workspace at most this often
ASSISTANT_THREADS_KIND: Final = "slack:assistant_threads"  # channel:thread_ts -> "new" | "titled"
CONTEXT_KIND: Final = "slack:context"  # what the user was looking at, as Slack last said
CONTEXT_TTL_S: Final = 7 * 24 * 3600.0
ACTION_FEEDBACK_REASON: Final = "penny_feedback_reason"
REASON_CALLBACK: Final = "penny_feedback_reason"
REASON_BLOCK: Final = "reason"
REASON_INPUT: Final = "text"

PROMPTS_TITLE: Final = "Popular in the docs"
GREETING: Final = ("Hi! I answer questions about the team's docs, with links to the pages I used. "
                   "Ask me anything, or start with one of the suggestions.")

_log = get_logger()


@dataclass(frozen=True, slots=True)
class DocPage:
    """One page of the docs index: its path, title, and how many passages it has (its size)."""

    path: str
    title: str
    passages: int


def suggested_prompts(asked: Mapping[str, tuple[str, int]], pages: Sequence[DocPage],
                      limit: int = MAX_PROMPTS) -> list[dict[str, str]]:
    """Up to ``limit`` prompts: the most asked pages first (``asked``: path -> (title, count)),
    then the largest pages of the docs, one prompt per title."""
    ranked = [title for _, (title, _) in sorted(asked.items(), key=lambda kv: (-kv[1][1], kv[0]))]
    ranked += [p.title for p in sorted(pages, key=lambda p: (-p.passages, p.path))]
    prompts: list[dict[str, str]] = []
    seen: set[str] = set()
    for title in ranked:
        title = " ".join(title.split())
        if not title or title.lower() in seen:
            continue
        seen.add(title.lower())
        prompts.append({"title": _clip(title, PROMPT_TITLE_CHARS),
                        "message": f"What do the docs say about {_cut_at_word(title, PROMPT_SUBJECT_CHARS)}?"})
        if len(prompts) == limit:
            break
    return prompts


def thread_title(question: str) -> str:
    """An assistant thread's title: its first question on one line, cut at a word near 80 characters.

    The question's Slack markup shows as it reads (``<@U1|ana>`` as ``@ana``, ``<!here>`` as
    ``@here``, a link as its label), and a broadcast word is defused (:func:`defuse_broadcasts`):
    the title went out verbatim, so ``<!channel>`` or ``<@U…>`` a user wrote was sent back to Slack
    as live markup, a ping wherever Slack renders the title."""
    plain = _SLACK_MARKUP.sub(_as_read, " ".join(question.split()))
    return defuse_broadcasts(_cut_at_word(plain, TITLE_CHARS))


# Slack's control sequences in message text: <@U…>, <!here>, <!subteam^S…|@eng>, <#C…|name>, <url|label>.
_SLACK_MARKUP: Final = re.compile(r"<([^<>]*)>")


def _as_read(markup: re.Match[str]) -> str:
    """A control sequence as a reader sees it: its label, else its target made plain."""
    target, _, label = markup.group(1).partition("|")
    if label:
        return label
    if target.startswith("!subteam^"):
        return "@" + target.removeprefix("!subteam^")
    if target.startswith("!"):
        return "@" + target[1:]
    return target


def _cut_at_word(text: str, limit: int) -> str:
    """``text`` when it fits ``limit`` characters, else its start cut at a word, with "…"."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > limit // 2 else limit - 1] + "…"


def doc_pages_of(answerer: object) -> Callable[[], list[DocPage]] | None:
    """The pages of the docs index behind ``answerer`` (Penny's answering service keeps one in
    memory, refreshed as the docs change), or None when it has none."""
    index = getattr(answerer, "index", None)
    if index is None or not hasattr(index, "snapshot"):
        return None

    def pages() -> list[DocPage]:
        counts: dict[str, list[Any]] = {}
        for passage in index.snapshot.passages:
            entry = counts.setdefault(passage.doc_path, [passage.title or passage.doc_path, 0])
            entry[1] += 1
        return [DocPage(path, str(title), int(n)) for path, (title, n) in counts.items()]

    return pages


class AskedPages:
    """Which pages Penny's answers cite first, counted per workspace in one shared record (a
    compare-and-set write, retried a few times). Each process adds up its counts and writes them at
    most once every ``flush_s`` per workspace, on the answer that comes after: one record that every
    answer of every worker rewrote was the busiest write of a burst of cache hits (600 answers at
    once on 2 workers and SQLite: 1,530 writes of it, 2.4 an answer, most of them lost races).
    :meth:`top` adds the counts not written yet. Counts a write surely did not take (the store
    refused it, or the record changed under it three times) are held for the next write; counts a
    process still holds when it stops, or that a write may have taken (a timeout), are dropped:
    these are suggestions, not a bill. Failures are logged, never raised."""

    def __init__(self, store: BlobStore, *, kept: int = ASKED_KEPT, flush_s: float = ASKED_FLUSH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._kept = kept
        self._flush_s = flush_s
        self._clock = clock
        self._lock = threading.Lock()
        self._unwritten: dict[str, dict[str, tuple[str, int]]] = {}  # workspace -> path -> (title, count)
        self._written_at: dict[str, float] = {}

    def add(self, workspace_id: str, path: str, title: str) -> None:
        now = self._clock()
        with self._lock:
            counts = self._unwritten.setdefault(workspace_id, {})
            counts[path] = (title, counts.get(path, (title, 0))[1] + 1)
            last = self._written_at.get(workspace_id)
            if last is not None and now - last < self._flush_s:
                return
            self._written_at[workspace_id] = now
            del self._unwritten[workspace_id]
        self._write(workspace_id, counts)

    def _write(self, workspace_id: str, counts: Mapping[str, tuple[str, int]]) -> None:
        key = ASKED_PREFIX + workspace_id
        try:
            for _ in range(3):
                raw = self._store.blob_get(key)
                new = json.dumps({p: [t, n] for p, (t, n) in self._kept_of(_parse_tally(raw), counts).items()})
                if self._store.blob_put_many({key: new.encode()}, expect=(key, raw)):
                    return
        except StoreError as exc:
            _log.warning("slack.asked_not_counted", error=exc)
            if exc.maybe_applied:
                return  # it may be in the record: adding it again could count it twice
        self._hold_again(workspace_id, counts)  # not written: the next write takes them along

    def _hold_again(self, workspace_id: str, counts: Mapping[str, tuple[str, int]]) -> None:
        with self._lock:
            held = self._unwritten.setdefault(workspace_id, {})
            for path, (title, n) in counts.items():
                held[path] = (title, held.get(path, (title, 0))[1] + n)

    def _kept_of(self, tally: dict[str, tuple[str, int]], counts: Mapping[str, tuple[str, int]]
                 ) -> dict[str, tuple[str, int]]:
        for path, (title, n) in counts.items():
            tally[path] = (title, tally.get(path, (title, 0))[1] + n)
        return dict(sorted(tally.items(), key=lambda kv: -kv[1][1])[: self._kept])

    def top(self, workspace_id: str) -> dict[str, tuple[str, int]]:
        try:
            tally = _parse_tally(self._store.blob_get(ASKED_PREFIX + workspace_id))
        except StoreError as exc:
            _log.warning("slack.asked_unreadable", error=exc)
            tally = {}
        with self._lock:
            unwritten = dict(self._unwritten.get(workspace_id, {}))
        return self._kept_of(tally, unwritten)


def _parse_tally(raw: bytes | None) -> dict[str, tuple[str, int]]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {str(p): (str(v[0]), int(v[1])) for p, v in data.items() if isinstance(v, list) and len(v) == 2}


class StoreThreadContext(AssistantThreadContextStore):
    """Bolt's thread context store, in Penny's shared store: what the user was looking at when
    they opened an assistant thread and each time it changed (``assistant_thread_context_changed``),
    kept a week. Bolt's default keeps it in the metadata of Penny's first reply, which costs a
    ``conversations.replies`` and a ``chat.update`` per change."""

    def __init__(self, store: RecordStore, *, ttl_s: float = CONTEXT_TTL_S) -> None:
        self._store = store
        self._ttl_s = ttl_s

    def save(self, *, channel_id: str, thread_ts: str, context: dict[str, str]) -> None:
        try:
            self._store.record_put(CONTEXT_KIND, f"{channel_id}:{thread_ts}", json.dumps(context), self._ttl_s)
        except StoreError as exc:
            _log.warning("slack.context_not_kept", error=exc)

    def find(self, *, channel_id: str, thread_ts: str) -> AssistantThreadContext | None:
        try:
            raw = self._store.record_get(CONTEXT_KIND, f"{channel_id}:{thread_ts}")
        except StoreError as exc:
            _log.warning("slack.context_unreadable", error=exc)
            return None
        context = json.loads(raw) if raw else None
        return AssistantThreadContext(context) if isinstance(context, dict) and context.get("channel_id") else None


def feedback_ack_blocks(*, up: bool, reason_value: str | None = None,
                        fresh: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The ephemeral that acknowledges a vote: what was recorded, how to change it, and after a 👎
    a button to say why (``reason_value`` carries the answer's reference) and the fresh-answer
    offer's button (``fresh``, its ``actions`` block) when the answer came from the cache."""
    text = (":thumbsup: Thanks, noted: this answer helped." if up
            else ":thumbsdown: Thanks, noted: this answer did not help.")
    text += " Click the other button on the answer to change your vote."
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if up:
        return blocks
    buttons: list[dict[str, Any]] = []
    if reason_value is not None:
        buttons.append({"type": "button", "text": {"type": "plain_text", "text": "Say what was wrong"},
                        "action_id": ACTION_FEEDBACK_REASON, "value": reason_value})
    if fresh:
        actions = fresh[-1]
        blocks.extend(fresh[:-1])
        blocks.append({**actions, "elements": [*buttons, *actions["elements"]]})
    elif buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return blocks


def reason_modal(private_metadata: str) -> dict[str, Any]:
    """The form a 👎 voter may fill in: one optional short text, stored with the vote."""
    return {
        "type": "modal",
        "callback_id": REASON_CALLBACK,
        "private_metadata": private_metadata,
        "title": {"type": "plain_text", "text": "What was wrong?"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Skip"},
        "blocks": [
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": True,
                "label": {"type": "plain_text", "text": "In a sentence (optional)"},
                "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                            "max_length": REASON_CHARS,
                            "placeholder": {"type": "plain_text", "text": "e.g. it cited an outdated page"}},
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text":
                "Saved with your 👎 and read by the people who keep the docs and Penny. Never shown in a channel."}]},
        ],
    }


def reason_of(view: Mapping[str, Any]) -> str:
    """The reason typed into :func:`reason_modal`'s submitted ``view`` ("" when left empty)."""
    # Read defensively: a submitted view is input, and a mangled one (a state that is not an
    # object, a value that is not text) is no reason, not an AttributeError.
    value: object = view
    for key in ("state", "values", REASON_BLOCK, REASON_INPUT, "value"):
        value = value.get(key) if isinstance(value, Mapping) else None
    return " ".join(value.split())[:REASON_CHARS] if isinstance(value, str) else ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
