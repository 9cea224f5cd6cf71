"""The cache step of the gateway: scope, normalised questions and the hit decision.

An answer is only ever served inside the scope it was made in. The scope is a filter, never text
glued onto a prompt: the model, a hash of the system prompt, conversation so far and generation
parameters, a context fingerprint the caller supplies (for the bot: the docs index version and the
passages the answer rests on) and a tenant scope (workspace, channel or user).

This module holds the exact-match layer. The gateway talks to any :class:`CacheLayer`, so a
semantic layer plugs in without reshaping the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, Protocol

from proxy_core.results import known_fields
from proxy_core.stores.base import Record, Store

__all__ = [
    "CacheDecision",
    "CacheLayer",
    "CacheScope",
    "CachedAnswer",
    "ExactCache",
    "StandaloneQuestion",
    "compatibility_form",
    "has_lone_surrogate",
    "normalize_question",
    "well_formed",
]

Status = Literal["exact", "semantic", "miss", "bypass"]

# The record kind under which the exact cache keeps where each entry lives, by entry ID.
_ENTRY_RECORD: Final = "cache:exact_entry"

_SPACE = re.compile(r"\s+")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# White space, invisible format characters and sentence punctuation, at either end. Not symbols:
# "C++", "C#", "-1", "5€" and an emoji-only question keep them.
_EDGE = "\\s\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff.,;:!?¿¡…。、"
_LEADING_EDGE = re.compile(f"^[{_EDGE}]+")
_TRAILING_EDGE = re.compile(f"[{_EDGE}]+$")
# Quotes and brackets go only in pairs around the whole question: a closing one alone can be what
# is asked about ("What is []?" is not "What is {}?").
_ENCLOSING = {"(": ")", "[": "]", "{": "}", '"': '"”', "'": "'’", "“": "”\"", "‘": "’'",
              "«": "»", "„": "“”"}
# Superscripts and subscripts keep a mark under compatibility folding: NFKC alone makes "2³" the
# text "23" and "x₁" "x1", other questions. "2³" is then "2^3", as one would type it.
_RAISED_LOWERED = {
    code: ("^" if tag == "<super>" else "_") + unicodedata.normalize("NFKC", chr(code))
    for code in range(0x80, 0x20000)
    if (tag := unicodedata.decomposition(chr(code)).partition(" ")[0]) in ("<super>", "<sub>")
}


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate, which UTF-8 cannot encode: JSON's ``"\\ud800"`` decodes to
    one, and Python hands argv bytes that are not UTF-8 over as such (PEP 383)."""
    return _LONE_SURROGATE.search(text) is not None


def well_formed(text: str) -> str:
    """``text`` with each lone surrogate (JSON's ``"\\ud800"`` decodes to one) replaced by U+FFFD, so
    it can be encoded as UTF-8: for a key, a store or an embedder's tokenizer."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def compatibility_form(text: str) -> str:
    """``text`` under Unicode compatibility folding (NFKC: full-width letters, ligatures, "①" are
    their plain forms), except that a superscript or subscript keeps a mark: "2³" is "2^3", never
    "23"."""
    if not text.isascii():
        text = text.translate(_RAISED_LOWERED)
    return unicodedata.normalize("NFKC", text)


def normalize_question(text: str) -> str:
    """The form under which two questions count as the same text.

    Unicode-compatibility folding (:func:`compatibility_form`), case folding (keeping "ß"), collapsed
    white space, and no sentence punctuation at the ends ("How do I deploy?" == "how do i deploy"),
    but a "!" right after a digit stays ("What is 10!" may be a factorial: not "What is 10?").
    Symbols are kept wherever they are: they can carry meaning ("v1.2", "What is C++?", "-1", "🍕").
    A question of punctuation alone keeps it.
    """
    folded = _SPACE.sub(" ", _case_folded(compatibility_form(well_formed(text))))
    bare = _unedged(folded)
    while len(bare) > 2 and bare[-1] in _ENCLOSING.get(bare[0], ""):
        inner = _unedged(bare[1:-1])
        if not inner:
            break
        bare = inner
    return bare or folded.strip()


def _unedged(text: str) -> str:
    """``text`` without white space, invisible characters and sentence punctuation at either end,
    except a "!" right after a digit: "What is 10!" may ask for a factorial, not for "What is 10"
    (the guard reads "10!" as another number too)."""
    text = _LEADING_EDGE.sub("", text)
    end = _TRAILING_EDGE.search(text)
    if end is None:
        return text
    cut = end.start()
    if text[cut] == "!" and cut > 0 and text[cut - 1].isdecimal():
        cut += 1
    return text[:cut]


def _case_folded(text: str) -> str:
    """Case folding that keeps "ß": casefold() makes it "ss", and "in Maßen" (in moderation) the
    text of "in Massen" (in crowds). Capital "ẞ" is its upper case."""
    if "ß" not in text and "ẞ" not in text:
        return text.casefold()
    return "ß".join(part.casefold() for part in text.replace("ẞ", "ß").split("ß"))


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Everything besides the question that must match for an answer to be reusable."""

    model: str
    params: str  # hash of system prompt, earlier turns and generation parameters
    context: str  # caller-supplied fingerprint (docs index version + passages)
    tenant: str  # "w:<workspace>", "c:<workspace>/<channel>" or "u:<workspace>/<user>"

    @classmethod
    def for_chat(
        cls,
        *,
        model: str,
        messages: Sequence[Mapping[str, object]],
        params: Mapping[str, object],
        context: str,
        tenant: str,
    ) -> CacheScope:
        """Scope of a chat request whose last message is the question being asked."""
        prior = [dict(m) for m in messages[:-1]]
        blob = json.dumps({"prior": prior, "params": dict(params)}, sort_keys=True, default=str)
        return cls(model, _digest(blob), context, tenant)

    @classmethod
    def for_question(
        cls, *, model: str, prompt: str, params: Mapping[str, object], context: str, tenant: str
    ) -> CacheScope:
        """Scope of a standalone question whose messages carry more than it (retrieved passages):
        ``prompt`` names what else the answer depends on (template version, earlier turns), and
        ``context`` which passages; the passages' text itself stays out, so paraphrases that
        retrieve the same top passage share a scope."""
        blob = json.dumps({"prompt": prompt, "params": dict(params)}, sort_keys=True, default=str)
        return cls(model, _digest(blob), context, tenant)

    def id(self) -> str:
        return _digest(f"{self.model}\x00{self.params}\x00{self.context}\x00{self.tenant}")


@dataclass(frozen=True, slots=True)
class StandaloneQuestion:
    """The question a chat call is cached under instead of its last message (a follow-up rewritten to
    stand alone), with ``prompt``, the version of the prompt built around it (see
    :meth:`CacheScope.for_question`)."""

    question: str
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored answer and what it cost to make (so a hit can record the money it saved)."""

    entry_id: str
    content: str
    model: str
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    created_at: float

    def to_json(self) -> str:
        # Every field is a plain value: no deep copy (asdict) on a miss's path.
        return json.dumps({f: getattr(self, f) for f in _ANSWER_FIELDS}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CachedAnswer:
        return cls(**known_fields(json.loads(text), _ANSWER_FIELDS))


_ANSWER_FIELDS = tuple(f.name for f in fields(CachedAnswer))


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What the cache decided and why (for logs, metrics and the bot's footer)."""

    status: Status
    reason: str
    answer: CachedAnswer | None = None
    similarity: float | None = None
    vector: Any = None  # the question's embedding, reused when the fresh answer is stored

    @property
    def hit(self) -> bool:
        return self.answer is not None


class CacheLayer(Protocol):
    """What the gateway asks of an answer cache (``ExactCache``, or ``SemanticCache``)."""

    def lookup(self, scope: CacheScope, question: str) -> CacheDecision: ...

    def put(
        self, scope: CacheScope, question: str, answer: CachedAnswer, decision: CacheDecision | None = None
    ) -> None: ...

    def invalidate_entry(self, entry_id: str) -> bool:
        """Forget one cached answer everywhere (a 👎 on it); False if it was not cached."""

    def close(self) -> None:
        """Stop any threads; called once, before the store closes."""


class ExactCache:
    """Exact match on the normalised question within the scope, stored in the shared store.

    An entry is found by its question; a 👎 names it by its entry ID, so each put also keeps a
    record of where that entry lives (``_ENTRY_RECORD``, for as long as the entry), written in
    the same step. There is nothing in process: an eviction is seen by every replica at once.
    """

    def __init__(self, store: Store, *, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s

    def lookup(self, scope: CacheScope, question: str) -> CacheDecision:
        raw = self._store.cache_get(scope.id(), _key(question))
        if raw is None:
            return CacheDecision("miss", "no exact match")
        return CacheDecision("exact", "exact match", CachedAnswer.from_json(raw), 1.0)

    def put(
        self, scope: CacheScope, question: str, answer: CachedAnswer, decision: CacheDecision | None = None
    ) -> None:
        sid, key = scope.id(), _key(question)
        where = json.dumps({"scope": sid, "key": key}, separators=(",", ":"))
        self._store.cache_put(sid, key, answer.to_json(), self._ttl_s,
                              records=[Record(_ENTRY_RECORD, answer.entry_id, where, self._ttl_s)])

    def invalidate_entry(self, entry_id: str) -> bool:
        """Evict the answer ``entry_id`` (a 👎 on it), unless its question has a newer answer since
        (a fresh one replaced it): the 👎 was on the old one."""
        where = self._store.record_get(_ENTRY_RECORD, entry_id)
        if where is None:
            return False
        try:
            place = json.loads(where)
            sid, key = str(place["scope"]), str(place["key"])
        except (ValueError, TypeError, KeyError):  # not a record this version wrote: nothing it can find
            return False
        raw = self._store.cache_get(sid, key)
        evicted = (raw is not None and CachedAnswer.from_json(raw).entry_id == entry_id
                   and self._store.cache_drop(sid, key, raw))
        self._store.record_drop(_ENTRY_RECORD, entry_id, where)
        return evicted

    def close(self) -> None:
        return None


def _key(question: str) -> str:
    return _digest(normalize_question(question))


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
