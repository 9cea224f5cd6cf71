"""What the answering service takes and gives: shared by Slack, the CLI and the terminal chat.

Edges (Slack listeners, CLI commands) parse their input into a :class:`Question`, call
:meth:`Answerer.answer`, and render the :class:`Answer`. The service never raises for a failure a
user can hit: a refusal (rate limit, budget, breaker) or an upstream error comes back as an Answer
whose ``kind`` says so, with the closest doc links found at $0.

A question may carry an :class:`~proxy_core.AnswerStream` (``Question.stream``): when the
answer comes from the LLM (a cache miss), its text is sent there as it is written, before the
finished Answer comes back. Cached, extractive and no-match answers never touch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from proxy_core import AnswerStream

__all__ = ["Answer", "AnswerKind", "Answerer", "Citation", "Question", "Refusal"]

AnswerKind = Literal["answer", "extractive", "no_match", "refused", "error"]
Refusal = Literal["rate_limited", "over_budget", "breaker_open", "in_flight", "upstream_error", "store_unavailable",
                  "invalid"]


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    user_id: str
    workspace_id: str
    request_id: str  # the Slack event ID (or a CLI-made ID): one answer and one charge per ID
    channel_id: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # earlier turns of the thread, oldest first: (role, text)
    fresh: bool = False  # ask the LLM even if an answer is cached ("Get a fresh answer")
    # where a miss's text goes while the LLM writes it (a Slack message, the terminal); not data
    stream: AnswerStream | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Citation:
    number: int  # the [n] the answer text uses
    title: str  # page title
    section: str  # heading within the page ("" for the top)
    path: str  # doc path relative to the docs root
    url: str | None  # a link when a base URL is configured for the docs root


@dataclass(frozen=True, slots=True)
class Answer:
    kind: AnswerKind
    text: str  # Markdown
    citations: tuple[Citation, ...] = ()  # sources, or for refusals/no-match the closest pages
    footer: str = ""  # "gpt-4.1-mini · 412 tokens · $0.0007" or "cached (similar question, 0.97), saved $0.0012"
    entry_id: str | None = None  # the cache entry behind this answer, for 👍/👎
    cached: bool = False
    refusal: Refusal | None = None
    retry_after: float | None = None  # seconds, for rate limits and an open breaker
    cost_micros: int = 0
    saved_micros: int = 0


class Answerer(Protocol):
    def answer(self, question: Question) -> Answer: ...
