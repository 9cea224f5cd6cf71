"""Is a thread reply for Penny? The rules of :mod:`bot.slack.addressing` as plain functions, and
their rates on the labelled replies in ``tests/data/thread_replies.jsonl`` (see its README)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.slack.addressing import Addressing, ThreadReplies, classify_thread_reply

PENNY = "UPENNY"
DATA = Path(__file__).resolve().parent / "data" / "thread_replies.jsonl"
ANSWER_KINDS = {"question", "follow_up", "request", "mixed", "problem", "named"}
SKIP_KINDS = {"thanks", "ack", "emoji", "plus_one", "banter", "status", "opinion", "to_colleague", "to_people",
              "social"}


@dataclass(frozen=True)
class Reply:
    text: str
    label: str
    kind: str
    lang: str
    split: str
    batch: int


def replies() -> list[Reply]:
    with DATA.open(encoding="utf-8") as lines:
        return [Reply(**json.loads(line)) for line in lines if line.strip()]


def classify(text: str, mode: ThreadReplies = "questions") -> Addressing:
    return classify_thread_reply(text, bot_user_id=PENNY, mode=mode)


@dataclass(frozen=True)
class Rates:
    questions: int
    questions_answered: int
    chatter: int
    chatter_answered: int

    @property
    def answered(self) -> float:
        return self.questions_answered / self.questions

    @property
    def chatter_rate(self) -> float:
        return self.chatter_answered / self.chatter

    def __str__(self) -> str:
        return (f"questions and follow-ups answered {self.questions_answered}/{self.questions} "
                f"({self.answered:.1%}), chatter answered {self.chatter_answered}/{self.chatter} "
                f"({self.chatter_rate:.1%})")


def rates(rows: Iterable[Reply]) -> Rates:
    counts: Counter[tuple[str, bool]] = Counter((r.label, classify(r.text).for_penny) for r in rows)
    return Rates(
        questions=counts["answer", True] + counts["answer", False],
        questions_answered=counts["answer", True],
        chatter=counts["skip", True] + counts["skip", False],
        chatter_answered=counts["skip", True],
    )


# ---------------------------------------------------------------------------------------------
# The labelled set


def test_the_labelled_set_is_well_formed() -> None:
    rows = replies()
    assert len(rows) >= 300
    assert len({r.text for r in rows}) == len(rows)  # no reply twice
    for r in rows:
        assert r.kind in (ANSWER_KINDS if r.label == "answer" else SKIP_KINDS), r
        assert r.split in ("dev", "test") and r.batch in (1, 2, 3, 4), r
    assert {r.lang for r in rows} >= {"en", "fr", "de", "es", "pt"}
    assert {r.split for r in rows} == {"dev", "test"}


def test_chatter_is_rarely_answered_and_questions_almost_always(capsys: pytest.CaptureFixture[str]) -> None:
    rows = replies()
    whole = rates(rows)
    by_split = {split: rates(r for r in rows if r.split == split) for split in ("dev", "test")}
    with capsys.disabled():
        print(f"\nthread replies, whole file: {whole}")
        for split, measured in by_split.items():
            print(f"thread replies, {split}: {measured}")
        for batch in (1, 2, 3, 4):
            print(f"thread replies, batch {batch}: {rates(r for r in rows if r.batch == batch)}")
        for r in rows:
            decision = classify(r.text)
            if decision.for_penny != (r.label == "answer"):
                print(f"  wrong ({r.label}/{r.kind}, {decision.reason}): {r.text}")
    for measured in (whole, *by_split.values()):
        assert measured.chatter_rate <= 0.02, measured
        assert measured.answered >= 0.95, measured


def test_every_kind_of_chatter_from_the_issue_stays_quiet() -> None:
    for text in ("thanks!", "lol", "ok cool, will do", "+1"):
        assert not classify(text).for_penny, text


# ---------------------------------------------------------------------------------------------
# The rules, one by one


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("thanks!", "thanks"),
        ("merci beaucoup", "thanks"),
        ("ok cool, will do", "acknowledgement"),
        ("+1", "plus_one"),
        ("^ this", "plus_one"),
        ("lol", "laughter"),
        ("👍", "emoji"),
        (":pray: :pray:", "emoji"),
        ("deployed, all good now", "statement"),
        ("<@U02ALICE> can you check?", "to_someone_else"),
        ("@alice can you check?", "to_someone_else"),
        ("Tom, where did you put the receipts?", "to_someone_else"),
        ("dan you around?", "to_someone_else"),
        ("hey Priya, did you ever get the stipend?", "to_someone_else"),
        ("<!here> VPN maintenance tonight", "to_people"),
        ("hey team, standup moved to 10", "to_people"),
        ("does anyone know if the VPN is down?", "to_people"),
        ("is it just me or is the VPN down again lol", "to_people"),
        ("did you try restarting it?", "social"),
        ("lunch?", "social"),
        ("tu es dispo demain ?", "social"),
        ("who knew?", "rhetorical"),
        ("how did we live without this", "rhetorical"),
        ("really?", "reaction"),
    ],
)
def test_what_is_not_for_penny_and_why(text: str, reason: str) -> None:
    assert classify(text) == Addressing(False, reason)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("how do I reset my VPN password?", "question"),
        ("how do I reset it then", "interrogative"),
        ("is there a way to do it without admin rights", "interrogative"),
        ("ok but how do I reset it?", "question"),
        ("thanks! and what about contractors?", "question"),
        ("and for contractors", "follow_up"),
        ("same question for the mobile app", "follow_up"),
        ("why?", "question"),
        ("show me the steps for macOS", "request"),
        ("more details please", "request"),
        ("I need the link to the onboarding checklist", "request"),
        ("that didn't work, I still get \"invalid token\"", "problem_report"),
        ("Penny, how do I book a desk?", "question"),
        ("how do you request PTO?", "question"),  # a generic "you" is still a docs question
        ("what do you mean by step 3?", "question"),
        ("wie beantrage ich Urlaub", "interrogative"),
        ("¿cómo solicito vacaciones?", "question"),
        ("où est le formulaire", "interrogative"),
        ("kannst du mir den Link schicken?", "question"),
        ("e se eu for PJ?", "question"),
    ],
)
def test_what_is_for_penny_and_why(text: str, reason: str) -> None:
    assert classify(text) == Addressing(True, reason)


def test_slack_markup_is_read_as_text() -> None:
    assert classify("is <https://wiki.example.com/vpn|this page> still up to date?").for_penny
    assert classify("how do I run `make deploy` against staging?").for_penny
    assert not classify("&gt; how do I reset the VPN?\nsame here").for_penny  # a quote is someone else's words
    assert classify("perfect :+1: and for the EU office?").for_penny


def test_a_mention_of_penny_is_always_for_her_and_of_someone_else_never() -> None:
    for mode in ("questions", "all", "mentions"):
        assert classify("<@UPENNY> thanks!", mode) == Addressing(True, "mentions_penny")
        assert classify("<@U02ALICE|alice> how do I reset it?", mode) == Addressing(False, "to_someone_else")


def test_all_answers_every_reply_and_mentions_none() -> None:
    assert classify("thanks!", "all") == Addressing(True, "all_replies")
    assert classify("  ", "all") == Addressing(False, "no_words")  # a file alone, dropped in for people
    assert classify("how do I reset it?", "mentions") == Addressing(False, "mentions_only")
