"""What the gateway returns: the answer plus everything it cost, as plain serialisable records.

Results are stored as JSON under their request ID, so a repeated request ID gets back exactly the
result of the first one (``replayed=True``) without a second upstream call or ledger entry.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

__all__ = ["ChatResult", "EmbeddingResult"]

CacheStatus = Literal["miss", "exact", "semantic", "bypass"]


@dataclass(frozen=True, slots=True)
class ChatResult:
    request_id: str
    content: str
    model: str
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    cost_micros: int  # what this request cost: 0 on a cache hit
    saved_micros: int  # what a cache hit saved: the cost of the answer it replaced
    cache_status: CacheStatus
    cache_reason: str
    similarity: float | None
    cache_entry_id: str | None
    latency_ms: int
    attempts: int
    finish_reason: str | None = None
    replayed: bool = False
    # What embeddings billed to this request cost: the semantic cache's question embedding through
    # an ``openai:`` embedder, ledger entries of their own (``<request ID>:question-embedding``);
    # not in ``cost_micros``, which is this request's own entry.
    embedding_micros: int = 0

    @property
    def charged_micros(self) -> int:
        """What the asker was charged for this request in all: its own entry and its embeddings."""
        return self.cost_micros + self.embedding_micros

    def to_json(self) -> str:
        # Every field is a plain value: no deep copy (asdict) needed on the hot path.
        return json.dumps({f: getattr(self, f) for f in _CHAT_FIELDS}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ChatResult:
        return replace(cls(**known_fields(json.loads(text), _CHAT_FIELDS)), replayed=True)


_CHAT_FIELDS = tuple(f.name for f in fields(ChatResult))


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    request_id: str
    vectors: list[list[float]]
    model: str
    prompt_tokens: int
    cost_micros: int
    latency_ms: int
    attempts: int
    replayed: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EmbeddingResult:
        return replace(cls(**known_fields(json.loads(text), _EMBEDDING_FIELDS)), replayed=True)


_EMBEDDING_FIELDS = tuple(f.name for f in fields(EmbeddingResult))


def known_fields(raw: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The fields of a stored record that this version knows: a newer replica (a rolling deploy,
    or one rolled back) may have written more, and a reader that choked on them would fail every
    request that meets such a record."""
    return {name: raw[name] for name in names if name in raw}
