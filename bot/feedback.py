"""👍/👎 on answers: stored with the answer (its pages), one vote per person per answer, counted per
page and per user; a 👎 may carry a short reason, listed with the counts. Votes live in the shared
store, so every replica counts the same."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from proxy_core import BlobStore

__all__ = ["FeedbackCounts", "Reason", "Tally", "add_reason", "feedback_counts", "record_feedback"]

PREFIX = "feedback:"


@dataclass(slots=True)
class Tally:
    up: int = 0
    down: int = 0


@dataclass(frozen=True, slots=True)
class Reason:
    """Why someone voted 👎 on an answer, in their words."""

    user: str
    answer: str
    pages: tuple[str, ...]
    text: str
    at: float


@dataclass(slots=True)
class FeedbackCounts:
    total: Tally = field(default_factory=Tally)
    by_page: dict[str, Tally] = field(default_factory=dict)
    by_user: dict[str, Tally] = field(default_factory=dict)
    reasons: list[Reason] = field(default_factory=list)  # newest first

    def to_json(self) -> str:
        def t(x: Tally) -> dict[str, int]:
            return {"up": x.up, "down": x.down}

        return json.dumps({"total": t(self.total), "by_page": {k: t(v) for k, v in self.by_page.items()},
                           "by_user": {k: t(v) for k, v in self.by_user.items()},
                           "reasons": [{"user": r.user, "answer": r.answer, "pages": list(r.pages), "reason": r.text,
                                        "at": r.at} for r in self.reasons]}, indent=2)


def record_feedback(
    store: BlobStore, workspace_id: str, answer_id: str, user_id: str, *, up: bool, pages: Sequence[str], at: float,
    reason: str | None = None,
) -> None:
    """Store one person's vote on one answer (a second vote replaces the first), with the reason
    they gave for a 👎, if any."""
    key = f"{PREFIX}{workspace_id}:{answer_id}:{user_id}"
    value: dict[str, object] = {"up": up, "user": user_id, "answer": answer_id, "pages": list(dict.fromkeys(pages)),
                                "at": at}
    if reason:
        value["reason"] = reason
    store.blob_put_many({key: json.dumps(value).encode()})


def add_reason(
    store: BlobStore, workspace_id: str, answer_id: str, user_id: str, *, reason: str, pages: Sequence[str], at: float,
) -> bool:
    """Keep ``reason`` with this person's 👎 on the answer. False, and nothing changed, when their vote
    is a 👍 by now (they changed their mind while the form was open): a reason never turns a vote
    back. With no vote stored, the reason comes with a 👎 (the form is only offered after one)."""
    key = f"{PREFIX}{workspace_id}:{answer_id}:{user_id}"
    raw = store.blob_get(key)
    if raw is not None and json.loads(raw).get("up"):
        return False
    record_feedback(store, workspace_id, answer_id, user_id, up=False, pages=pages, at=at, reason=reason)
    return True


def feedback_counts(store: BlobStore, workspace_id: str) -> FeedbackCounts:
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
        if not up and vote.get("reason"):
            counts.reasons.append(Reason(str(vote.get("user")), str(vote.get("answer")),
                                         tuple(str(p) for p in vote.get("pages") or ()), str(vote["reason"]),
                                         float(vote.get("at") or 0)))
    counts.reasons.sort(key=lambda r: -r.at)
    return counts
