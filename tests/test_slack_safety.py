"""Nothing lost, nobody fooled: what the model writes cannot ping or phish, users never see internals,
and bad HTTP input gets a 4xx.

Pure tests of the escaping first; then the whole bot: signed Slack events into the real Bolt app,
the real answering service and gateway (the fake OpenAI server writes the injected answer), and
the fake Slack Web API recording what Penny sent: posted, streamed, updated, quoted from the docs.
The store-down case runs on a private Redis server stopped mid-test; the HTTP cases go over real
HTTP to the server ``penny run --http`` uses, on a loopback port.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import structlog
from prometheus_client import CollectorRegistry
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from bot.answer import STORE_DOWN_TEXT
from bot.answer_types import Question
from bot.service import index_docs, open_answer_service
from bot.settings import BotSettings
from bot.slack.app import SlackSettings, build_app
from bot.slack.http_guard import MAX_BODY_BYTES, Rejection, check_request, content_length
from bot.slack.render import (
    WORD_JOINER,
    AnswerView,
    answer_blocks,
    escape_mrkdwn,
    fallback_text,
    markdown_to_mrkdwn,
    safe_markdown_text,
)
from bot.slack.server import LogBudget, PennyWSGI
from bot.slack.stream import SlackAnswerStream, StreamPacing, pieces
from bot.slack.working import WorkingIndicator
from proxy_core import Accounts
from proxy_core.clock import ManualClock
from proxy_core.gateway import Gateway
from proxy_core.metrics import Metrics
from proxy_core.stores.base import Store
from proxy_core.stores.redis import RedisStore
from proxy_core.stores.sqlite import SqliteStore
from proxy_core.upstream import OpenAIUpstream
from tests.bot_harness import DOCS, KEY, Inline, StreamingBot, streamed_text
from tests.fake_openai import FakeOpenAI, Fault
from tests.fake_slack import FakeSlack, SlackCall
from tests.redis_server import RedisServer, redis_server_binary
from tests.slack_harness import ROOT, SECRET, TEAM, TOKEN, Harness, event_body, mention, message

# Every form the issue names, as the model (or a doc) might write it.
INJECTIONS = (
    "<!channel>",
    "<!everyone>",
    "<!here>",
    "<!subteam^S0ENG|@eng>",
    "<@U0ADMIN>",
    "<#C0GENERAL|general>",
    "<https://evil.example/login|the IT portal>",
)
INJECTED = " ".join(INJECTIONS)
# Plain words that Slack itself may turn into a channel-wide ping (a text object's ``verbatim`` is false).
BROADCASTS = ("@here", "@channel", "@everyone", "@HERE", "@Everyone")
LIVE_BROADCAST = re.compile(r"(?<!\w)@(?:here|channel|everyone)(?!\w)", re.IGNORECASE)
PHISH = "[the IT portal](https://evil.example/login)"
ANSWER = (
    f"To start the dev server, run `make dev` [1]. {INJECTED} Then log in at {PHISH} "
    "and run `echo <!here>` there [1]. Tell @here and @channel!\n\n```\nnotify <!channel> & <@U0ADMIN>\n```"
)
DOCS_URL = "https://docs.example.com"
# A control sequence Slack would act on: anything in <…> (what Penny's own citations look like).
CONTROL = re.compile(r"<([^<>]*)>")


def escaped(form: str) -> str:
    return form.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def block_texts(value: object) -> list[str]:
    """Every ``text`` string in a block structure."""
    if isinstance(value, dict):
        return [t for key, item in value.items()
                for t in ([item] if key == "text" and isinstance(item, str) else block_texts(item))]
    if isinstance(value, list):
        return [t for item in value for t in block_texts(item)]
    return []


def shown_mrkdwn(call: SlackCall) -> str:
    """Every mrkdwn string a message call carried: its blocks' texts and its top-level text."""
    return "\n".join([str(call.params.get("text", "")), *block_texts(call.blocks)])


def assert_shown_as_text(mrkdwn: str, *forms: str) -> None:
    """Each of ``forms`` is in ``mrkdwn`` as text, none as a control sequence, and every link left
    is one of Penny's own (a citation of the docs)."""
    for form in forms:
        assert form not in mrkdwn
        assert escaped(form) in mrkdwn
    for target in CONTROL.findall(mrkdwn):
        assert target.startswith(DOCS_URL + "/"), f"<{target}> is not one of Penny's citation links"


def assert_no_broadcast(text: str, *forms: str) -> None:
    """No plain ``@here``/``@channel``/``@everyone`` is left in ``text``; each of ``forms`` is shown,
    defused by an invisible word joiner."""
    assert not LIVE_BROADCAST.search(text), LIVE_BROADCAST.findall(text)
    for form in forms:
        assert form.replace("@", "@" + WORD_JOINER) in text


# -- the escaping itself (pure) ------------------------------------------------------------------


# Every place in the model's Markdown where a form can be written.
TEMPLATES = pytest.mark.parametrize(
    "template",
    [
        "{x}",
        "- {x}",
        "1. {x}",
        "# {x}",
        "> {x}",
        "**{x}**",
        "_{x}_",
        "`{x}`",
        "```\n{x}\n```",
        "| a | b |\n|---|---|\n| {x} | y |",
        "[{x}](https://docs.example.com/x)",
        "- [ ] {x}",
    ],
    ids=["line", "bullet", "ordered", "heading", "quote", "bold", "italic", "code", "fence", "table",
         "link-label", "task"],
)


def test_escape_mrkdwn_escapes_ampersand_first_then_angle_brackets() -> None:
    assert escape_mrkdwn("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"
    assert escape_mrkdwn("&lt;") == "&amp;lt;"  # what the model wrote is what is shown
    assert escape_mrkdwn("plain") == "plain"


@TEMPLATES
@pytest.mark.parametrize("form", INJECTIONS)
def test_every_injection_renders_as_text_wherever_it_is_written(template: str, form: str) -> None:
    out = markdown_to_mrkdwn(template.format(x=form))
    assert "<" not in out  # no control sequence can start without one
    assert form not in out
    assert "&lt;" in out


@TEMPLATES
@pytest.mark.parametrize("form", BROADCASTS)
def test_a_plain_broadcast_word_cannot_ping_wherever_it_is_written(template: str, form: str) -> None:
    out = markdown_to_mrkdwn(template.format(x=f"tell {form}, please"))
    assert_no_broadcast(out, form)
    stand_in = form.replace("@", "Q")  # plain text of the same length: the same layout
    assert out.replace(WORD_JOINER, "") == markdown_to_mrkdwn(template.format(x=f"tell {stand_in}, please")
                                                              ).replace(stand_in, form)  # reads the same


def test_only_broadcast_words_are_defused_not_addresses_or_other_words() -> None:
    text = "Write to ops@here.com or @alice, @hereby @channels @everyones; a.b@channel.io"
    assert escape_mrkdwn(text) == text
    assert escape_mrkdwn("(@here)") == f"(@{WORD_JOINER}here)"
    assert escape_mrkdwn("@channel.") == f"@{WORD_JOINER}channel."


def test_a_broadcast_word_split_between_stream_pieces_is_defused_once() -> None:
    text = "Ping @everyone, then @here and @Channel."
    for cut in range(len(text) + 1):
        for cut2 in range(cut, len(text) + 1):
            parts = (text[:cut], text[cut:cut2], text[cut2:])
            shown = "".join(safe_markdown_text(part, after="".join(parts[:i])[-16:])
                            for i, part in enumerate(parts))
            assert_no_broadcast(shown, "@everyone", "@here", "@Channel")
            assert shown.count(WORD_JOINER) <= 3 + sum(1 for p in parts[:-1] if p.endswith("@")), (cut, cut2)
            assert shown.replace(WORD_JOINER, "") == text


def test_a_link_the_model_writes_shows_its_url_never_behind_a_label() -> None:
    out = markdown_to_mrkdwn(f"Log in at {PHISH}, <https://evil.example/raw> or <https://evil.example/x|here>.")
    assert out == ("Log in at the IT portal (https://evil.example/login), https://evil.example/raw or "
                   "&lt;https://evil.example/x|here&gt;.")


# A broadcast word inside the URL of a link the model writes: after "/", "=", "(" or a Unicode space
# (which ends the link Slack makes of the URL), it would be a plain word again.
URL_BROADCASTS = (
    "[x](https://evil.example/?to=@here)",
    "[x](https://evil.example/(@channel))",
    "[x](https://evil.example/\u00a0@here)",
    "[x](<https://evil.example/\u3000@everyone>)",
    "![x](https://evil.example/@here)",
    "<https://evil.example/?to=@channel>",
    "[https://evil.example](https://evil.example/@everyone)",
)


@pytest.mark.parametrize("link", URL_BROADCASTS)
def test_a_broadcast_word_in_the_url_of_a_link_the_model_writes_cannot_ping(link: str) -> None:
    out = markdown_to_mrkdwn(f"See {link} now.")
    assert not LIVE_BROADCAST.search(out), out
    assert not re.search(r"[^\S ]", out), out  # a Unicode space in the URL is percent-encoded: it stays one word
    assert "%40" in out or "%C2%A0@" in out or "%E3%80%80@" in out  # the URL still leads where it did


def test_in_an_answer_only_pennys_citations_are_links() -> None:
    view = AnswerView(text=ANSWER, citations=((1, "Local dev", "Start", f"{DOCS_URL}/dev.md", "dev.md"),),
                      footer="gpt-4.1-mini · <!here> & co")
    [blocks] = answer_blocks(view)
    mrkdwn = "\n".join([*block_texts(blocks), fallback_text(ANSWER)])
    assert_shown_as_text(mrkdwn, *INJECTIONS)
    assert f"<{DOCS_URL}/dev.md|[1] Local dev › Start>" in mrkdwn  # the citation is still a link
    assert "gpt-4.1-mini · &lt;!here&gt; &amp; co" in mrkdwn
    assert "`echo &lt;!here&gt;`" in mrkdwn  # escaped inside code too: Slack parses <…> there
    assert "notify &lt;!channel&gt; &amp; &lt;@U0ADMIN&gt;" in mrkdwn
    assert "&amp;lt;" not in mrkdwn  # nothing escaped twice


def test_streamed_markdown_can_neither_mention_nor_link() -> None:
    out = safe_markdown_text(f"{INJECTED} {PHISH} [ref]: https://evil.example/ref `<!here>` & **bold** [1]")
    assert "<" not in out and ">" not in out
    assert "](" not in out and "]:" not in out
    assert "[the IT portal]\\(https://evil.example/login)" in out
    assert "[ref]\\: https://evil.example/ref" in out
    assert "&lt;!channel&gt;" in out and "`&lt;!here&gt;`" in out and "&amp; **bold** [1]" in out


def test_link_syntax_split_between_two_stream_pieces_stays_text() -> None:
    assert safe_markdown_text("(https://evil.example/login)", after="[the IT portal]") == (
        "\\(https://evil.example/login)"
    )
    assert safe_markdown_text(": https://evil.example", after="]") == "\\: https://evil.example"
    assert safe_markdown_text("(see below)", after="done.") == "(see below)"


def test_stream_pieces_never_cut_an_entity_or_an_escape() -> None:
    text = "a" * 10 + "&amp;b"
    for limit in range(11, 16):
        parts = pieces(text, limit)
        assert "".join(parts) == text
        assert all(not re.search(r"&[a-z]*$", part) for part in parts[:-1]), parts
    assert pieces("abc\\(d", 4) == ["abc", "\\(d"]


def test_random_text_never_yields_a_control_sequence() -> None:
    words = [*INJECTIONS, *BROADCASTS, PHISH, "**b**", "`c <x>`", "```", "\n", "- ", "> ", "[1]", "]", "(", "&",
             "|", "x", "@"]
    for seed in range(200):
        rng = random.Random(seed)
        text = "".join(rng.choice(words) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 40)))
        assert "<" not in markdown_to_mrkdwn(text), text
        assert not LIVE_BROADCAST.search(markdown_to_mrkdwn(text)), text
        streamed = "".join(
            safe_markdown_text(piece, after=text[:i][-16:])
            for i, piece in ((i, text[i : i + 7]) for i in range(0, len(text), 7))
        )
        assert "<" not in streamed and "](" not in streamed and "]:" not in streamed, text
        assert not LIVE_BROADCAST.search(streamed), text


# -- the whole bot: posted, streamed, updated ----------------------------------------------------


@pytest.fixture
def fake_answer() -> str:
    return ANSWER


@pytest.fixture
def bot(slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path) -> Iterator[StreamingBot]:
    made = StreamingBot(slack, fake, tmp_path / "bot", docs_base_url=DOCS_URL)
    yield made
    made.gateway.close()


def test_an_injected_llm_answer_is_posted_as_text(bot: StreamingBot, slack: FakeSlack) -> None:
    bot.event(message("how do I start the dev server?", channel="D1", channel_type="im", ts=ROOT))

    [post] = slack.calls("chat.postMessage")  # a top-level DM: posted whole, never streamed
    mrkdwn = shown_mrkdwn(post)
    assert_shown_as_text(mrkdwn, *INJECTIONS)
    assert_no_broadcast(mrkdwn, "@here", "@channel")
    assert "the IT portal (https://evil.example/login)" in mrkdwn
    assert f"<{DOCS_URL}/engineering/local-dev-setup.md" in mrkdwn  # Penny's citation is a link


def test_an_injected_llm_answer_streams_and_is_updated_as_text(bot: StreamingBot, slack: FakeSlack) -> None:
    bot.event(mention("<@UPENNY> how do I start the dev server?", ts=ROOT))

    start = slack.last("chat.startStream")
    ts = str(start.response["ts"])  # type: ignore[index]
    streamed = streamed_text(slack, ts)
    assert slack.count("chat.appendStream") >= 1  # it really streamed, in pieces
    assert "<" not in streamed and ">" not in streamed and "](" not in streamed
    for form in INJECTIONS:
        assert escaped(form) in streamed
    assert_no_broadcast(streamed, "@here", "@channel")
    assert "[the IT portal]\\(https://evil.example/login)" in streamed

    update = slack.last("chat.update")  # the streamed message, replaced by the rendered answer
    assert update.params["ts"] == ts
    assert_shown_as_text(shown_mrkdwn(update), *INJECTIONS)
    assert_no_broadcast(shown_mrkdwn(update), "@here", "@channel")
    assert f"<{DOCS_URL}/engineering/local-dev-setup.md" in shown_mrkdwn(update)
    assert slack.count("chat.postMessage") == 0


def test_a_cached_injected_answer_is_shown_as_text_too(bot: StreamingBot, slack: FakeSlack,
                                                      fake: FakeOpenAI) -> None:
    bot.event(message("how do I start the dev server?", channel="D1", channel_type="im", ts=ROOT))
    bot.event(message("how do I start the dev server?", channel="D1", channel_type="im",
                      ts="1700000300.000100", user="U2"))

    assert fake.count("chat") == 1  # the second came from the cache
    cached = slack.calls("chat.postMessage")[-1]
    assert "cached" in shown_mrkdwn(cached)
    assert_shown_as_text(shown_mrkdwn(cached), *INJECTIONS)


@pytest.mark.parametrize("fake_answer", ["Ask at [the desk](https://evil.example/\u00a0@here) [1]."])
def test_a_broadcast_word_in_a_link_url_is_posted_and_updated_defused(bot: StreamingBot, slack: FakeSlack) -> None:
    bot.event(message("how do I start the dev server?", channel="D1", channel_type="im", ts=ROOT))
    bot.event(mention("<@UPENNY> how many vacation days do I get?", ts="1700000300.000100"))

    [post] = slack.calls("chat.postMessage")
    update = slack.last("chat.update")
    for call in (post, update):
        assert not LIVE_BROADCAST.search(shown_mrkdwn(call)), shown_mrkdwn(call)
        assert "the desk (https://evil.example/%C2%A0@here)" in shown_mrkdwn(call)


# -- the whole bot: an extractive answer quoting a doc ---------------------------------------------

IT_PAGE = f"""# IT portal

## Resetting your password

To reset your password, open the IT portal and choose *Reset password*. {INJECTED}
Then sign in at {PHISH} with the new password & your badge number.
"""


class ServiceBot(Harness):
    """Penny's Bolt app over the real answering service on ``store`` (any backend), through
    ``gateway``; without one (no OpenAI key) the answers are extractive."""

    def __init__(self, slack: FakeSlack, store: Store, settings: BotSettings, gateway: Gateway | None = None) -> None:
        self.slack = slack
        self.settings = SlackSettings(bot_token=TOKEN, signing_secret=SECRET, api_url=slack.base_url)
        self.app = build_app(answerer=open_answer_service(settings, store, gateway), store=store,
                             settings=self.settings, accounts=Accounts(store, settings), listener_executor=Inline(),
                             working=WorkingIndicator(workers=0))
        self._serial = 0

    def settle(self) -> None:
        """Listeners already ran inline."""


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "it").mkdir(parents=True)
    (root / "it" / "it-portal.md").write_text(IT_PAGE)
    return root


def extractive_bot(slack: FakeSlack, store: Store, docs: Path) -> ServiceBot:
    settings = BotSettings(docs_base_url=DOCS_URL)
    index_docs(settings, store, docs)
    return ServiceBot(slack, store, settings)


def test_an_extractive_answer_quotes_an_injected_doc_passage_as_text(slack: FakeSlack, sqlite_store: SqliteStore,
                                                                     docs: Path) -> None:
    bot = extractive_bot(slack, sqlite_store, docs)
    bot.event(mention("<@UPENNY> how do I reset my password in the IT portal?", ts=ROOT))

    [post] = slack.calls("chat.postMessage")
    mrkdwn = shown_mrkdwn(post)
    assert "no LLM call" in mrkdwn  # it really is the extractive answer
    assert_shown_as_text(mrkdwn, *INJECTIONS)
    assert "the IT portal (https://evil.example/login)" in mrkdwn
    assert "new password &amp; your badge number" in mrkdwn
    assert f"<{DOCS_URL}/it/it-portal.md#resetting-your-password|" in mrkdwn  # the citation is a link


# -- users never see internals -------------------------------------------------------------------


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server is not installed")
def test_store_down_during_a_question_tells_the_asker_plainly_and_logs_the_detail(
    slack: FakeSlack, tmp_path: Path
) -> None:
    settings = BotSettings(openai_api_key=KEY, requests_per_minute=0, tokens_per_minute=0, docs_base_url=DOCS_URL)
    with FakeOpenAI() as fake, RedisServer(tmp_path / "redis") as server:
        store = RedisStore.from_url(server.url, timeout_s=0.5)
        index_docs(settings, store, DOCS)
        gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()),
                          upstream=OpenAIUpstream(api_key=KEY, base_url=fake.base_url, timeout_s=5.0))
        bot = ServiceBot(slack, store, settings, gateway)
        port = str(server.port)
        server.stop()  # Redis goes away while Penny is running

        with structlog.testing.capture_logs() as logs:
            response = bot.event(mention("<@UPENNY> how do I start the dev server?", ts=ROOT))

        assert response.status == 200
        refusal = slack.last("chat.postEphemeral")
        assert (refusal.params["user"], refusal.params["thread_ts"]) == ("U1", ROOT)
        shown = shown_mrkdwn(refusal)
        assert STORE_DOWN_TEXT in shown
        assert f"<{DOCS_URL}/engineering/local-dev-setup.md" in shown  # the closest docs, still
        everything = json.dumps([c.params for c in slack.calls()], ensure_ascii=False)
        for internal in (port, "127.0.0.1", "ConnectionError", "Error 111", "Redis store", "Traceback"):
            assert internal not in everything
        assert slack.count("chat.postMessage") == 0 and fake.count() == 0  # nothing asked, nothing charged
        [failure] = [e for e in logs if e["event"] == "answer_store_unavailable"]
        assert f"127.0.0.1:{port}" in failure["error"] and failure["request_id"]
        gateway.close()


@pytest.mark.parametrize(("fault", "spent"), [
    (Fault.drop(), "charged for the attempts the provider started"),  # sent whole, then dropped: billed
    (Fault.status(400, message="deployment eu-prod-llm-7 says no"), "nothing was charged"),
])
def test_the_llm_failing_tells_the_asker_plainly_and_logs_the_detail(slack: FakeSlack, sqlite_store: SqliteStore,
                                                                     fault: Fault, spent: str) -> None:
    """The provider's URL (Penny's OPENAI_BASE_URL), its own error message and advice about
    Penny's settings are the operator's, not the asker's."""
    settings = BotSettings(openai_api_key=KEY, requests_per_minute=0, tokens_per_minute=0, docs_base_url=DOCS_URL,
                           retry_max_attempts=1)
    with FakeOpenAI() as fake:
        fake.fail_all(fault)
        index_docs(settings, sqlite_store, DOCS)
        gateway = Gateway(settings, store=sqlite_store, metrics=Metrics(CollectorRegistry()),
                          upstream=OpenAIUpstream(api_key=KEY, base_url=fake.base_url, timeout_s=5.0))
        bot = ServiceBot(slack, sqlite_store, settings, gateway)
        with structlog.testing.capture_logs() as logs:
            bot.event(mention("<@UPENNY> how do I start the dev server?", ts=ROOT))
        shown = shown_mrkdwn(slack.last("chat.postEphemeral"))
        assert "The LLM provider" in shown and spent in shown
        everything = json.dumps([c.params for c in slack.calls()], ensure_ascii=False)
        port = fake.base_url.rsplit(":", 1)[1].split("/")[0]
        for internal in (port, "127.0.0.1", "OPENAI_BASE_URL", "eu-prod-llm-7", "HTTP 400"):
            assert internal not in everything
        [failure] = [e for e in logs if e["event"] == "answer_upstream_failed"]
        assert "127.0.0.1" in failure["error"] or "eu-prod-llm-7" in failure["error"]
        gateway.close()


def test_a_closed_sqlite_store_is_the_same_plain_sentence_from_the_service(sqlite_path: Path) -> None:
    """The answering service says it, so every edge (Slack, ``penny ask``, the chat) shows the same
    words; the store's own message (here its file path) stays in the log."""
    settings = BotSettings(openai_api_key=KEY, requests_per_minute=0, tokens_per_minute=0)
    store = SqliteStore(sqlite_path)
    index_docs(settings, store, DOCS)
    with FakeOpenAI() as fake:
        gateway = Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()),
                          upstream=OpenAIUpstream(api_key=KEY, base_url=fake.base_url, timeout_s=5.0))
        service = open_answer_service(settings, store, gateway)
        store.close()
        with structlog.testing.capture_logs() as logs:
            answer = service.answer(Question("how do I start the dev server?", "U1", TEAM, "r1"))
        gateway.close()
        assert fake.count() == 0
    assert (answer.kind, answer.refusal, answer.footer) == ("error", "store_unavailable", "nothing was charged")
    assert answer.text.startswith(STORE_DOWN_TEXT) and str(sqlite_path) not in answer.text
    assert answer.citations  # the closest docs, found without the store
    assert any(str(sqlite_path) in str(e.get("error")) for e in logs if e["event"] == "answer_store_unavailable")


# -- bad HTTP input gets a 4xx -------------------------------------------------------------------

GOOD_TS = "1700000000"


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"X-Slack-Request-Timestamp": GOOD_TS, "Content-Type": "application/json"}, b'{"type": "x"}', None),
        ({}, b"", None),  # nothing to verify: Bolt answers 401 itself
        ({"x-slack-request-timestamp": "soon"}, b'{"type": "x"}', 401),
        ({"x-slack-request-timestamp": "1.5"}, b"{}", 401),
        ({"x-slack-request-timestamp": "9" * 5000}, b"{}", 401),  # int() would refuse it
        ({"x-slack-request-timestamp": "١٧٠٠"}, b"{}", 401),  # digits, but not ASCII ones
        ({"x-slack-signature": "v0=é"}, b"{}", 401),  # hmac.compare_digest would raise
        ({"content-type": "application/json"}, b'{"type": ', 400),
        ({"content-type": "text/plain"}, b'{"type": ', 400),  # Bolt parses any body starting with {
        ({"content-type": "application/json"}, b"[1, 2]", 400),
        ({"content-type": "application/json"}, b'{"authorizations": 5}', 400),
        ({"content-type": "application/json"}, b"[" * 100_000, 400),
        ({"content-type": "application/x-www-form-urlencoded"}, b"payload=%7Bnot+json", 400),
        ({"content-type": "application/x-www-form-urlencoded"}, b"payload=%5B%5D", 400),
        ({"content-type": "application/x-www-form-urlencoded"}, b"command=%2Fcost&text=", None),
        ({"content-type": "application/json"}, b"\xff\xfe{}", 400),
        # JSON objects Bolt's own payload readers index into and raise on (a 500 and a traceback)
        ({"content-type": "application/json"}, b'{"view": "x"}', 400),
        ({"content-type": "application/json"}, b'{"type": "view_submission", "view": {"callback_id": "x"}}', 400),
        ({"content-type": "application/json"}, b'{"type": "workflow_step_edit", "callback_id": "x"}', 400),
        ({"content-type": "application/json"}, b'{"type": "block_actions", "actions": []}', 400),
        ({"content-type": "application/json"}, b'{"type": "view_submission", "view": {"callback_id": "x", '
                                               b'"type": "modal"}}', None),
    ],
)
def test_check_request(headers: dict[str, str], body: bytes, expected: int | None) -> None:
    rejection = check_request(headers, body)
    assert (rejection.status if rejection else None) == expected


def test_content_length() -> None:
    assert content_length(None) == 0
    assert content_length("12") == 12
    assert content_length("twelve") == Rejection(400, "Content-Length is not a number")
    assert content_length("-1") == Rejection(400, "Content-Length is not a number")
    assert isinstance(content_length(str(MAX_BODY_BYTES + 1)), Rejection)
    assert isinstance(content_length("9" * 40), Rejection)
    assert content_length(str(MAX_BODY_BYTES)) == MAX_BODY_BYTES


@pytest.fixture
def served(slack: FakeSlack, sqlite_store: SqliteStore, docs: Path) -> Iterator[tuple[ServiceBot, int]]:
    """The extractive bot behind ``penny run --http``'s WSGI app (guard, then Bolt), on a loopback
    port of a plain threaded WSGI server (gunicorn's own part is tests/test_http_server.py's)."""
    bot = extractive_bot(slack, sqlite_store, docs)
    wsgi = PennyWSGI(bot.app, ready=lambda: None, signing_secret=SECRET)
    server = make_server("127.0.0.1", 0, wsgi, server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield bot, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: wsgiref writes a line per request to stderr, which the tests read."""


def post(port: int, body: bytes, headers: dict[str, str], path: str = "/slack/events") -> tuple[int, str]:
    """POST ``body`` with exactly ``headers`` (plus its Content-Length, unless given)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


def signed(body: str, timestamp: str | None = None, content_type: str = "application/json") -> dict[str, str]:
    stamp = timestamp if timestamp is not None else str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}


EVENT = event_body(mention("<@UPENNY> how do I reset my password?"), "EvHttp0")
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Signed:
    """Headers signed when the test runs, not when it is collected: a signature older than five
    minutes is refused as stale, and a whole suite takes longer than that to reach these tests."""

    body: str
    timestamp: str | None = None
    content_type: str = "application/json"
    extra: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        return {**signed(self.body, timestamp=self.timestamp, content_type=self.content_type), **self.extra}


@pytest.mark.parametrize(
    ("body", "headers", "status", "by_guard"),
    [
        (EVENT, Signed(EVENT, timestamp="soon"), 401, True),
        ('{"type": "event_callback", "event": ', Signed('{"type": "event_callback", "event": '), 400, True),
        ("[]", Signed("[]"), 400, True),
        *[(body, Signed(body), 400, True) for body in (  # signed, but the event is not an object
            '{"type": "event_callback", "event": "x"}', '{"type": "event_callback", "event": null}',
            '{"type": "event_callback", "event": [5]}')],
        ("payload=%7Bnot+json", Signed("payload=%7Bnot+json", content_type=FORM), 400, True),
        (b"\xff{}", {"Content-Type": "application/json", "X-Slack-Request-Timestamp": GOOD_TS,
                     "X-Slack-Signature": "v0=00"}, 400, True),
        *[(body, Signed(body), 400, True) for body in (  # signed, but Bolt's payload readers raise on them
            '{"view": "x"}', json.dumps({"type": "view_submission", "team": {"id": TEAM}, "user": {"id": "U1"},
                                          "view": {"callback_id": "penny_feedback_reason"}}),
            '{"type": "workflow_step_edit", "callback_id": "x"}')],
        (EVENT, Signed(EVENT, extra={"Content-Length": "ten"}), 400, True),
        (EVENT, Signed(EVENT, extra={"Content-Length": str(MAX_BODY_BYTES + 1)}), 413, True),
        # Nothing unsigned is parsed (Bolt parsed it first, up to half a second of CPU for 1 MiB of form fields)
        (EVENT, {"Content-Type": "application/json"}, 401, True),
        (EVENT, Signed(EVENT, timestamp="1000000000"), 401, True),  # stale
        (EVENT, Signed(EVENT, extra={"X-Slack-Signature": "v0=" + "0" * 64}), 401, True),
        ("{not json", {"Content-Type": "application/json"}, 401, True),
        ("a=1&" * 200_000, {"Content-Type": FORM, "X-Slack-Request-Timestamp": GOOD_TS,
                            "X-Slack-Signature": "v0=" + "0" * 64}, 401, True),
    ],
    ids=["non-numeric-timestamp", "malformed-json", "json-array", "event-a-string", "event-null", "event-a-list",
         "bad-form-payload", "not-utf8", "view-a-string", "view-without-type", "step-edit-without-step",
         "bad-content-length", "too-large", "unsigned", "stale", "forged", "unsigned-malformed",
         "unsigned-form-fields"],
)
def test_bad_http_input_gets_a_4xx_and_no_traceback(
    served: tuple[ServiceBot, int], slack: FakeSlack, capfd: pytest.CaptureFixture[str],
    body: str | bytes, headers: Signed | dict[str, str], status: int, by_guard: bool
) -> None:
    _, port = served
    sent = headers.headers() if isinstance(headers, Signed) else headers
    with structlog.testing.capture_logs() as logs:
        got, text = post(port, body.encode("utf-8") if isinstance(body, str) else body, sent)

    assert got == status
    assert "Traceback" not in text and "Error" not in text
    rejected = [e["status"] for e in logs if e["event"] == "slack.http_rejected"]
    assert rejected == ([status] if by_guard else [])  # one line in the log says why
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert slack.count("chat.postMessage") == 0


def test_a_flood_of_rejected_requests_logs_at_most_a_hundred_lines_a_window(served: tuple[ServiceBot, int]) -> None:
    """Anyone who reaches the port could make one warning line per forged request: a flood filled
    the disk the ledger's spool shares. Past 100 lines in 10 s they are counted, not written."""
    _, port = served
    forged = {**signed(EVENT), "X-Slack-Signature": "v0=" + "0" * 64}
    with structlog.testing.capture_logs() as logs:
        for _ in range(130):
            assert post(port, EVENT.encode(), forged)[0] == 401
    assert 100 <= len([e for e in logs if e["event"] == "slack.http_rejected"]) < 130


def test_a_log_budget_says_how_many_lines_it_left_out() -> None:
    clock = ManualClock()
    budget = LogBudget(lines=2, window_s=10.0, clock=clock)
    assert [budget.take() for _ in range(4)] == [{}, {}, None, None]
    clock.advance(9.9)
    assert budget.take() is None
    clock.advance(0.1)
    assert budget.take() == {"left_out": 3}
    assert budget.take() == {}


def test_a_signed_request_over_http_is_served_by_bolt(served: tuple[ServiceBot, int], slack: FakeSlack) -> None:
    _, port = served
    challenge = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "t"})
    status, text = post(port, challenge.encode(), signed(challenge))
    assert (status, json.loads(text)) == (200, {"challenge": "c-123"})

    body = event_body(mention("<@UPENNY> how do I reset my password in the IT portal?", ts=ROOT), "EvHttp1")
    status, _ = post(port, body.encode(), signed(body))

    assert status == 200
    [answer] = slack.wait_for("chat.postMessage")
    assert answer.params["thread_ts"] == ROOT and "no LLM call" in shown_mrkdwn(answer)
    assert post(port, body.encode(), signed(body), path="/elsewhere")[0] == 404
    # Slack's ssl_check (for a slash command's URL) comes unsigned; Bolt answers it with an empty 200.
    assert post(port, b"ssl_check=1&token=legacy", {"Content-Type": FORM}) == (200, "")


def test_the_stream_sends_link_syntax_split_across_appends_as_text(slack: FakeSlack) -> None:
    client = WebClient(token=TOKEN, base_url=slack.base_url, retry_handlers=[])
    clock = ManualClock()
    stream = SlackAnswerStream(client, channel="C1", thread_ts=ROOT, user_id="U1", team_id=TEAM, clock=clock,
                               pacing=StreamPacing(interval_s=1.0, start_after_s=0))
    stream.delta("Sign in at [the IT portal]")
    clock.advance(1.0)
    stream.delta("(https://evil.example/login) <!channel>")
    ts = stream.close()

    assert ts is not None and slack.count("chat.appendStream") + slack.count("chat.stopStream") >= 1
    shown = streamed_text(slack, ts)
    assert shown == "Sign in at [the IT portal]\\(https://evil.example/login) &lt;!channel&gt;"
