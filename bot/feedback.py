"""👍/👎 on answers: stored with the answer (its pages), one vote per person per answer, counted per
page and per user. Votes live in the shared store, so every replica counts the same."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy_core.stores.base import Store

__all__ = ["FeedbackCounts", "Tally", "feedback_counts", "record_feedback"]

PREFIX = "feedback:"


@dataclass(slots=True)
class Tally:
    up: int = 0
    down: int = 0


@dataclass(slots=True)
class FeedbackCounts:
    total: Tally = field(default_factory=Tally)
    by_page: dict[str, Tally] = field(default_factory=dict)
    by_user: dict[str, Tally] = field(default_factory=dict)

    def to_json(self) -> str:
        def t(x: Tally) -> dict[str, int]:
            return {"up": x.up, "down": x.down}

        return json.dumps({"total": t(self.total), "by_page": {k: t(v) for k, v in self.by_page.items()},
                           "by_user": {k: t(v) for k, v in self.by_user.items()}}, indent=2)


def record_feedback(
    store: Store, workspace_id: str, answer_id: str, user_id: str, *, up: bool, pages: Sequence[str], at: float
) -> None:
    """Store one person's vote on one answer (a second vote replaces the first)."""
    key = f"{PREFIX}{workspace_id}:{answer_id}:{user_id}"
    value = {"up": up, "user": user_id, "answer": answer_id, "pages": list(dict.fromkeys(pages)), "at": at}
    store.blob_put_many({key: json.dumps(value).encode()})


def feedback_counts(store: Store, workspace_id: str) -> FeedbackCounts:
    counts = FeedbackCounts()
    for _, raw in store.blob_scan(f"{PREFIX}{workspace_id}:"):
        vote = json.loads(raw)
        up = bool(vote.get("up"))
        tallies = [counts.total, counts.by_user.setdefault(str(vote.get("user")), Tally())]
        tallies += [counts.by_page.setdefault(str(page), Tally()) for page in vote.get("pages") or ()]
        for tally in tallies:
            if up:
                tally.up += 1
            else:
                tally.down += 1
    return counts
