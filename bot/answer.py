"""The answering service: one question in, one grounded answer (or a clear refusal) out.

Slack, ``penny ask`` and the terminal chat all call :meth:`AnswerService.answer`. It retrieves the
best passages; when nothing scores above the no-match threshold it says so and lists the closest
pages, with no LLM call and $0 spent. Otherwise it asks the LLM — only through the gateway — to
answer from the numbered passages alone and cite them as [n]. Without an OpenAI key it answers
extractively (the best passages with citations, $0) and says so.

The cache sees the standalone question, not the prompt with its passages: its context fingerprint is
the docs index version plus the top passage, so rephrasings that retrieve the same top passage can
share an answer, and a re-index (a new version) never serves an answer built on old docs.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any, Literal

from bot.answer_types import Answer, Citation, Question
from bot.docs.index import DocsIndex
from bot.docs.retrieve import NO_MATCH_THRESHOLD, Hit, Retriever
from proxy_core import (
    BudgetExceeded,
    ChatResult,
    CircuitOpen,
    Clock,
    Gateway,
    PennyError,
    RateLimited,
    RequestInFlight,
    StandaloneQuestion,
    StoreError,
    UpstreamError,
    UpstreamRejected,
    estimate_text_tokens,
    format_usd,
    format_wait,
    get_logger,
)

__all__ = ["PROMPT_VERSION", "STORE_DOWN_TEXT", "AnswerService", "Fingerprint", "cost_line"]

Fingerprint = Literal["top", "top3", "version"]

# What the asker reads when the store (SQLite, Redis) fails, or another error of Penny's does: the
# detail (a host:port, a driver's message) is for the log, not for Slack.
STORE_DOWN_TEXT = "Penny's storage is unavailable right now; nothing was charged — try again in a minute."
_COULD_NOT_ANSWER = "Penny couldn't answer this time; nothing was charged — try again in a minute."
# The provider failing, for the asker: what it means to them. Its detail (the URL tried, the
# provider's own message, advice about Penny's settings) is for the operator's log.
_PROVIDER_DOWN = ("The LLM provider did not answer; nothing was charged. Try again in a moment — if it keeps "
                  "happening, tell your Penny admin (the details are in Penny's log).")
_PROVIDER_UNFINISHED = ("The LLM provider took this question but did not finish answering it ({spent}). Try again "
                        "in a moment — if it keeps happening, tell your Penny admin (the details are in Penny's log).")
_PROVIDER_REFUSED = ("The LLM provider refused this question; nothing was charged. If it keeps happening, "
                     "tell your Penny admin (the details are in Penny's log).")

PROMPT_VERSION = "penny-docs-1"  # bump when the prompt changes: cached answers of the old one stop matching
MAX_QUESTION_CHARS = 4000
HISTORY_TOKENS = 2000
EXCERPT_CHARS = 700
EXTRACT_PASSAGES = 3

SYSTEM_PROMPT = """You are Penny, the assistant for this team's internal docs.
Answer the question using ONLY the numbered passages below. Cite every fact with the number of the
passage it comes from, like [1] or [2][3]. If the passages do not contain the answer, say that the
docs do not cover it and do not guess. Be concise; use short lists where they help; answer in the
language of the question.

Passages:
{passages}"""

_CITE = re.compile(r"\[(\d{1,2})\]")


class AnswerService:
    """Answers questions from the shared docs index through the gateway."""

    def __init__(
        self,
        index: DocsIndex,
        retriever: Retriever,
        gateway: Gateway | None,
        *,
        docs_base_url: str | None = None,
        no_match_threshold: float = NO_MATCH_THRESHOLD,
        top_k: int = 5,
        refresh_every_s: float = 5.0,
        clock: Clock = time.monotonic,
        fingerprint: Fingerprint = "top",
    ) -> None:
        self.index = index
        self.retriever = retriever
        self.gateway = gateway
        self.docs_base_url = docs_base_url.rstrip("/") if docs_base_url else None
        self.no_match_threshold = no_match_threshold
        self.top_k = top_k
        self._refresh_every_s = refresh_every_s
        self._clock = clock
        self._next_refresh = 0.0
        self.fingerprint: Fingerprint = fingerprint
        self._log = get_logger()

    def answer(self, question: Question) -> Answer:
        text = question.text.strip()
        if not text:
            return Answer("refused", "Ask me a question about the docs, e.g. *How do I deploy to staging?*",
                          refusal="invalid")
        truncated = len(text) > MAX_QUESTION_CHARS
        text = text[:MAX_QUESTION_CHARS]
        self._refresh()
        search_text = self._search_text(text, question.history)
        try:
            hits = self._search(search_text, question)
        except PennyError as exc:
            # An openai: embedder's call for the question was refused or failed: the same refusal
            # as the answer's own call would get, with the closest pages by keywords alone, at $0.
            return self._refusal(exc, self._closest_pages(self.retriever.search(search_text, k=self.top_k,
                                                                                  mode="bm25")),
                                 request_id=question.request_id)
        closest = self._closest_pages(hits)
        if not hits or hits[0].score < self.no_match_threshold:
            best = f" (best match scored {hits[0].score:.2f})" if hits else ""
            return Answer("no_match", "I couldn't find this in the docs." + (
                " These pages are the closest:" if closest else ""), closest, f"no LLM call · $0{best}")
        citations = self._citations(hits)
        note = ""
        if truncated:
            note = f"_(Your message was long; I read its first {MAX_QUESTION_CHARS:,} characters.)_\n\n"
        if self.gateway is None:
            return Answer("extractive", note + self._extract(hits), citations[:EXTRACT_PASSAGES],
                          "extractive answer: OPENAI_API_KEY is not set · no LLM call · $0")
        try:
            result = self.gateway.chat(
                user_id=question.user_id,
                workspace_id=question.workspace_id,
                request_id=question.request_id,
                channel_id=question.channel_id,
                messages=self._messages(text, hits, question.history),
                context=self._context(hits),
                cache_as=StandaloneQuestion(text, f"{PROMPT_VERSION}|{_digest(question.history)}"),
                use_cache=not question.fresh,
                stream=question.stream,
            )
        except PennyError as exc:
            return self._refusal(exc, closest, request_id=question.request_id)
        used = self._used(result.content, citations)
        return Answer(
            "answer",
            note + result.content,
            used,
            cost_line(result),
            entry_id=result.cache_entry_id,
            cached=result.cache_status in ("exact", "semantic"),
            cost_micros=result.cost_micros,
            saved_micros=result.saved_micros,
        )

    # -- steps ------------------------------------------------------------------------------------

    def _search(self, text: str, question: Question) -> list[Hit]:
        """The best passages; a billed question embedding (an ``openai:`` embedder) is charged to
        the person asking, once per request."""
        if self.gateway is None:
            return self.retriever.search(text, k=self.top_k)
        with self.gateway.billed_to(question.user_id, question.workspace_id, question.request_id):
            return self.retriever.search(text, k=self.top_k)

    def _context(self, hits: list[Hit]) -> str:
        """The cache's context fingerprint: always the index version (a re-index invalidates), plus
        the top passage by default — rephrasings that land on the same passage share an answer.
        ``top3`` (the set of the best three) is stricter; ``version`` alone is looser (measured in
        bench/bot.py)."""
        if self.fingerprint == "version":
            tail = ""
        elif self.fingerprint == "top3":
            tail = ",".join(sorted(h.passage.content_hash[:16] for h in hits[:3]))
        else:
            tail = hits[0].passage.content_hash[:16]
        return f"docs:v{self.index.version}|{tail}"

    def _refresh(self) -> None:
        now = self._clock()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self._refresh_every_s
        try:
            if self.index.refresh_if_changed():
                self._log.info("docs_index_reloaded", version=self.index.version)
        except StoreError as exc:  # keep answering from the copy we have
            self._log.warning("docs_index_refresh_failed", error=str(exc))

    @staticmethod
    def _search_text(text: str, history: Sequence[tuple[str, str]]) -> str:
        # A follow-up ("and for staging?") needs the previous question's words to find its page.
        earlier = [t for role, t in history if role == "user"]
        return f"{earlier[-1]}\n{text}" if earlier and len(text) < 200 else text

    def _messages(self, text: str, hits: list[Hit], history: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        passages = "\n\n".join(
            f"[{n}] {_label(h)} ({h.passage.doc_path})\n{h.passage.text}" for n, h in enumerate(hits, 1)
        )
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT.format(passages=passages)}]
        budget = HISTORY_TOKENS
        kept: list[dict[str, Any]] = []
        for role, turn in reversed(history):  # newest turns first, until the budget is spent
            cost = estimate_text_tokens(turn)
            if cost > budget:
                break
            budget -= cost
            kept.append({"role": "assistant" if role == "assistant" else "user", "content": turn})
        messages.extend(reversed(kept))
        messages.append({"role": "user", "content": text})
        return messages

    def _citations(self, hits: list[Hit]) -> tuple[Citation, ...]:
        return tuple(self._citation(n, h) for n, h in enumerate(hits, 1))

    def _citation(self, number: int, hit: Hit) -> Citation:
        p = hit.passage
        section = " › ".join(h for h in p.heading_path if h != p.title)
        url = None
        if self.docs_base_url:
            url = f"{self.docs_base_url}/{p.doc_path}" + (f"#{p.anchor}" if p.anchor else "")
        return Citation(number, p.title, section, p.doc_path, url)

    def _closest_pages(self, hits: list[Hit]) -> tuple[Citation, ...]:
        seen: set[str] = set()
        out: list[Citation] = []
        for hit in hits:
            if hit.passage.doc_path in seen:
                continue
            seen.add(hit.passage.doc_path)
            out.append(self._citation(len(out) + 1, hit))
        return tuple(out[:3])

    @staticmethod
    def _used(content: str, citations: tuple[Citation, ...]) -> tuple[Citation, ...]:
        cited = {int(n) for n in _CITE.findall(content)}
        used = tuple(c for c in citations if c.number in cited)
        return used or citations[:3]

    @staticmethod
    def _extract(hits: list[Hit]) -> str:
        parts = ["I can't ask the LLM right now (no OPENAI_API_KEY), so here are the passages that best "
                 "match your question:"]
        for n, hit in enumerate(hits[:EXTRACT_PASSAGES], 1):
            body = hit.passage.text.strip()
            if len(body) > EXCERPT_CHARS:
                body = body[:EXCERPT_CHARS].rsplit(" ", 1)[0] + " …"
            quoted = "\n".join("> " + line if line else ">" for line in body.splitlines())
            parts.append(f"**[{n}] {_label(hit)}**\n{quoted}")
        return "\n\n".join(parts)

    def _refusal(self, exc: PennyError, closest: tuple[Citation, ...], *, request_id: str) -> Answer:
        """What the asker sees instead of an answer. A store failure or an unexpected error is a
        plain sentence: its detail (a host:port, a driver's message) goes to the log only."""
        see = " Meanwhile, these pages look closest:" if closest else ""
        charged = exc.charged_micros  # attempts the provider took and did not finish: it bills them
        spent = (f"{format_usd(charged)} charged for the attempts the provider started and did not finish"
                 if charged else "nothing was charged")
        paid = f" ({spent}.)" if charged else ""
        if isinstance(exc, RateLimited):
            return Answer("refused", f"You're asking faster than your limit allows ({exc.limit} per minute). "
                          f"Try again in {format_wait(exc.retry_after)}.{see}", closest, "nothing was charged",
                          refusal="rate_limited", retry_after=exc.retry_after)
        if isinstance(exc, BudgetExceeded):  # charged: a retry refused after attempts the provider billed
            ask_admin = " Ask your Penny admin for a larger budget." if exc.never_fits else ""
            return Answer("refused", f"{exc}{ask_admin}{paid}{see}", closest, spent, refusal="over_budget",
                          cost_micros=charged)
        if isinstance(exc, CircuitOpen):
            return Answer("refused", f"The LLM provider is having trouble right now, so Penny is pausing calls "
                          f"for {format_wait(exc.retry_after)}.{paid}{see}", closest, spent,
                          refusal="breaker_open", retry_after=exc.retry_after, cost_micros=charged)
        if isinstance(exc, RequestInFlight):
            return Answer("refused", "I'm already answering this message.", (), "", refusal="in_flight")
        if isinstance(exc, UpstreamError):
            self._log.warning("answer_upstream_failed", request_id=request_id, error=str(exc))
            text = (_PROVIDER_REFUSED if isinstance(exc, UpstreamRejected)
                    else _PROVIDER_UNFINISHED.format(spent=spent) if charged else _PROVIDER_DOWN)
            return Answer("error", text + see, closest, spent, refusal="upstream_error", cost_micros=charged)
        if isinstance(exc, StoreError):
            self._log.error("answer_store_unavailable", request_id=request_id, error=str(exc))
            return Answer("error", STORE_DOWN_TEXT + see, closest, "nothing was charged", refusal="store_unavailable")
        self._log.error("answer_failed", request_id=request_id, error=f"{type(exc).__name__}: {exc}")
        return Answer("error", _COULD_NOT_ANSWER + see, closest, "nothing was charged", refusal="upstream_error")


def cost_line(result: ChatResult) -> str:
    """The small context line under an answer: model, tokens and cost, or what the cache saved."""
    if result.cache_status in ("exact", "semantic"):
        how = "same question" if result.cache_status == "exact" else f"similar question, {result.similarity:.2f}"
        return f"cached ({how}), saved {format_usd(result.saved_micros)}"
    tokens = result.prompt_tokens + result.completion_tokens
    return f"{result.model} · {tokens:,} tokens · {format_usd(result.cost_micros)}"


def _label(hit: Hit) -> str:
    p = hit.passage
    section = " › ".join(h for h in p.heading_path if h != p.title)
    return f"{p.title} › {section}" if section else p.title


def _digest(history: Sequence[tuple[str, str]]) -> str:
    if not history:
        return ""
    return hashlib.blake2b(repr(tuple(history)).encode(), digest_size=8).hexdigest()

