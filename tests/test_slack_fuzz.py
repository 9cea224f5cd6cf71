"""Penny's Slack front door, tried as an attacker and a careless client would.

Hypothesis draws SIGNED requests from the shapes Slack really sends (mentions, DMs, thread replies,
edits and deletions, the App Home, assistant threads, ``/cost``, button clicks, the 👎 reason form,
shortcuts) and mutates them: fields dropped, values of the wrong type (null, numbers, lists,
objects), huge strings, unicode oddities (RTL marks, zero-width, NUL, lone surrogates), broadcasts
and mentions in what users write, unknown event types and subtypes, bot and foreign-workspace
senders, ``ts`` values that are not timestamps, forged button values, form bodies that are not JSON
and wrong content types; some are delivered again as Slack's retry. Each goes through the WSGI app
``penny run --http`` serves (the guard, then the real Bolt app) to Penny's real service and
gateway, the fake OpenAI server answering with broadcasts of its own and an echo of the question,
and the fake Slack recording what Penny sent. For every request:

- the answer is a 2xx or a 4xx, never a 5xx, and nothing logs an error or a traceback;
- nothing Penny sends Slack carries a live broadcast (``<!channel>``, ``<!here>``, ``<!everyone>``,
  ``<!subteam^…>``, a plain ``@here``) or a mention of anyone but the people who wrote to her;
- nothing Penny sends leaks the bot token, the signing secret, the OpenAI key, a fake server's
  host:port or Python exception text;
- a request Penny must ignore (another workspace or app, a bot's message or her own, an unknown
  event, channel chatter not addressed to her, an unknown button) shows nothing and asks no LLM;
- a retried delivery of a message event shows nothing new and asks no LLM.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier

from bot.slack.agent import ACTION_FEEDBACK_REASON, REASON_CALLBACK
from bot.slack.conversation import USER_SUBTYPES
from bot.slack.feedback import ACTION_FRESH_ANSWER
from bot.slack.render import ACTION_FEEDBACK, ACTION_FEEDBACK_DOWN, ACTION_FEEDBACK_UP, WORD_JOINER
from bot.slack.server import PennyWSGI
from tests.bot_harness import KEY, Bot, make_bot
from tests.fake_openai import FakeOpenAI
from tests.fake_slack import FakeSlack, SlackCall
from tests.slack_harness import BOT_ID, BOT_USER, SECRET, TEAM, TOKEN

APP = "A0PENNY"
ROOT = "1700000100.000100"
QUESTION = "how do I start the dev server?"
# Questions the example handbook answers (an LLM call each, the first time: the cache answers repeats).
QUESTIONS = (QUESTION, "how do I deploy to production?", "how many vacation days do I get?",
             "how do I file an expense report?", "who is on call this week?", "what are the API rate limits?",
             "how do I access the production database?", "how do I roll out a feature flag?",
             "what are the remote work rules?", "how does the release process work?")
FORM = "application/x-www-form-urlencoded"
INJECTIONS = ("<!channel>", "<!here>", "<!everyone>", "<!subteam^S0ENG|@eng>", "<@U0ADMIN>",
              "<!here|@here>", "@here", "@channel", "@everyone", "<#C0GENERAL|general>",
              "<https://evil.example/login|the IT portal>")


def hostile_answer(request: dict[str, Any]) -> str:
    """What the model writes: broadcasts and a mention of its own, then the question echoed back."""
    asked = [m for m in request.get("messages", []) if m.get("role") == "user"]
    echo = str(asked[-1].get("content", "")) if asked else ""
    return f"Run `make dev` [1]. {' '.join(INJECTIONS)} Tell @here! You asked: {echo[-300:]}"


# -- what Penny must never send ------------------------------------------------------------------

# Slack acts on these wherever they sit in text it renders as mrkdwn.
LIVE_CONTROL = re.compile(r"<!(?:channel|here|everyone|subteam\^)[^>]*>", re.IGNORECASE)
LIVE_BROADCAST = re.compile(r"(?<![\w" + WORD_JOINER + r"])@(?:here|channel|everyone)(?!\w)", re.IGNORECASE)
USER_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
# Calls that only read, or set up nothing anyone sees.
READS = frozenset({"auth.test", "conversations.replies", "users.info"})
LEAKS = ("Traceback", 'File "', "Error(", "Exception(", "Errno", "127.0.0.1", "localhost", "/work/",
         TOKEN, SECRET, KEY)


# Strings Slack never renders: what a click or a form hands back to Penny, and where a call goes.
NOT_SHOWN = frozenset({"value", "action_id", "block_id", "private_metadata", "callback_id", "trigger_id",
                       "channel", "channel_id", "user", "user_id", "ts", "thread_ts", "team_id", "external_id"})


def strings(value: object, *, shown_only: bool, key: str = "") -> Iterator[str]:
    """Every string in a call's params (all of them, or only those Slack shows), JSON-encoded params
    (blocks, attachments, a view, prompts) opened up."""
    if key == "token" or (shown_only and key in NOT_SHOWN):
        return
    if isinstance(value, dict):
        for name, item in value.items():
            yield from strings(item, shown_only=shown_only, key=str(name))
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, shown_only=shown_only, key=key)
    elif isinstance(value, str):
        if value[:1] in "[{":
            try:
                yield from strings(json.loads(value), shown_only=shown_only, key=key)
                return
            except ValueError:
                pass
        yield value


def shown_problems(call: SlackCall, people: set[str], ports: tuple[int, ...]) -> list[str]:
    """What is wrong with what ``call`` shows (live broadcasts, mentions of others) or carries (leaks)."""
    problems = []
    for text in strings(dict(call.params), shown_only=True):
        problems += [f"live control {m!r}" for m in LIVE_CONTROL.findall(text)]
        problems += [f"live broadcast in {text[:120]!r}" for _ in LIVE_BROADCAST.findall(text)]
        problems += [f"mention of {m}" for m in USER_MENTION.findall(text) if m not in people]
    for text in strings(dict(call.params), shown_only=False):
        problems += [f"leak {leak!r}" for leak in (*LEAKS, *(str(p) for p in ports)) if leak in text]
    return [f"{call.method}: {p}" for p in problems]


# -- what is sent -------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request as drawn: its payload (before encoding), how it is encoded, and what it is."""

    kind: str  # "event", "action", "view", "command", "raw"
    payload: Any
    content_type: str = "application/json"
    retry: bool = False  # delivered a second time, as Slack's retry
    encoding: str = "plain"  # "plain", "as-form", "as-json", "payload-not-json", "text-plain"
    headers: dict[str, str] = field(default_factory=dict)
    ignore: str | None = None  # why Penny must show nothing and ask no LLM, when the strategy knows
    first: Sent | None = None  # delivered (and checked) just before: the assistant thread a question is in

    def body(self) -> str:
        if self.kind == "raw":
            return str(self.payload)
        as_json = json.dumps(self.payload)
        if self.encoding == "payload-not-json":
            return urlencode({"payload": as_json[: len(as_json) // 2]})
        if self.kind == "command":
            form = self.payload if isinstance(self.payload, dict) else {"text": self.payload}
            return urlencode({k: v if isinstance(v, str) else json.dumps(v) for k, v in form.items()},
                             errors="surrogatepass")
        if self.kind in ("action", "view"):
            return urlencode({"payload": as_json})
        return as_json

    def content(self) -> str:
        if self.encoding == "text-plain":
            return "text/plain"
        if self.encoding == "as-json":
            return "application/json"
        if self.encoding == "as-form":
            return FORM
        return self.content_type


ODD = ["\u200f", "\u202e", "\u200b", "\ufeff", "\x00", "\ud800", "\udfff", "\U0001f600", "\u0301", "\n\r\t",
       "ñ", "&amp;", "&lt;!channel&gt;", "<", ">", "&", "|", "*_~`", "[1]", "](http://x)", "\\u0000"]
hostile_text = st.one_of(
    st.sampled_from(INJECTIONS),
    st.sampled_from(ODD),
    st.lists(st.sampled_from([*INJECTIONS, *ODD, " ", "x", QUESTION]), min_size=1, max_size=6).map("".join),
    st.text(max_size=20),
    st.sampled_from(["x" * 5000, "\u200b" * 3000, "<!channel>" * 400, QUESTION + " " + "@here " * 500]),
)
hostile_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    # built afresh each time: a mutation may write into it, and st.just would share one object
    st.builds(list), st.builds(dict), st.builds(lambda: ["U1"]), st.builds(lambda: {"id": "U1"}),
    st.builds(lambda: [{"a": 1}]), hostile_text,
)
# Mostly a new message each time (Penny answers a message once: a ts seen before is answered already):
# each delivery replaces FRESH_TS by a ts of its own, and FRESH_EVENT by an event ID of its own.
FRESH_TS = "1799999999.999999"
FRESH_EVENT = "EvFRESH"
FRESH_THREAD = "1699999999.999999"  # an assistant thread of the example's own (its title is its first question)
timestamps = st.one_of(
    st.just(FRESH_TS),
    st.sampled_from([ROOT, "1700000200.000100", "", "now", "1e309", "-1", "1700000100", "NaN",
                     "1700000100.000100.5", "99999999999999999999.1", "0x10", " 1700000100.1 "]),
)
event_ids = st.one_of(st.just(FRESH_EVENT), st.sampled_from(["Ev0001", "Ev0002"]))  # some arrive twice
users = st.sampled_from(["U1", "U2", "W0GUEST", BOT_USER, "U0ADMIN", "", "USLACKBOT"])
channels = st.sampled_from(["C1", "D1", "G1", "C0OTHER", "", "C1/../D1"])
ACTION_IDS = [ACTION_FEEDBACK, ACTION_FEEDBACK_UP, ACTION_FEEDBACK_DOWN, ACTION_FRESH_ANSWER,
              ACTION_FEEDBACK_REASON, "penny_unknown", "approve_all"]
values = st.one_of(
    st.sampled_from(["up:entry-1", "down:entry-1", "down:someone-elses-entry", "up:", "down:", ":", "sideways:x",
                     json.dumps({"answer": ROOT}), json.dumps({"answer": "1700000999.000001"}),
                     json.dumps({"answer": 5}), json.dumps({"e": "entry-1", "c": "C0OTHER", "m": ROOT}),
                     json.dumps({"e": ["x"], "c": {}, "m": None}), "{", "[]", "null", QUESTION,
                     f"{QUESTION} <!channel>"]),
    hostile_text,
)


def event_callback(event: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {"token": "legacy-verification-token", "team_id": TEAM, "api_app_id": APP, "type": "event_callback",
            "event_id": event_id, "event_time": 1_700_000_000, "event": event, "is_ext_shared_channel": False,
            "authorizations": [{"enterprise_id": None, "team_id": TEAM, "user_id": BOT_USER, "is_bot": True,
                                "is_enterprise_install": False}]}


@st.composite
def events(draw: st.DrawFn) -> Sent:
    """An event as Slack sends it, of a kind Penny hears or one she does not."""
    question = st.sampled_from(QUESTIONS)
    text = draw(st.one_of(question, st.builds("{} {}".format, hostile_text, question),
                          st.builds("{} {}".format, question, hostile_text), hostile_text))
    mention = draw(st.sampled_from([f"<@{BOT_USER}> ", "", f"<@{BOT_USER}|penny> ", "<@U2> "]))
    ts = draw(timestamps)
    kind = draw(st.sampled_from(["app_mention", "dm", "thread_reply", "channel_chatter", "edit", "delete",
                                 "edited_mention", "home", "context", "thread_started", "thread_context",
                                 "reaction", "unknown", "bot_message", "own_message"]))
    base: dict[str, Any] = {"user": draw(users), "text": mention + text, "ts": ts, "event_ts": ts,
                            "channel": draw(channels)}
    if kind == "app_mention":
        event = {"type": "app_mention", **base}
    elif kind in ("dm", "bot_message", "own_message"):
        event = {"type": "message", "channel_type": "im", **base, "channel": "D1"}
        if kind == "bot_message":
            event.update(bot_id="B0OTHER", subtype=draw(st.sampled_from([None, "bot_message"])))
        elif kind == "own_message":
            event.update(user=BOT_USER, bot_id=BOT_ID, app_id=APP)
    elif kind == "thread_reply":
        event = {"type": "message", "channel_type": draw(st.sampled_from(["channel", "group", "mpim"])), **base,
                 "thread_ts": ROOT}
    elif kind == "channel_chatter":
        event = {"type": "message", "channel_type": "channel", **base, "text": text.replace("<@", "<#")}
    elif kind == "edit":
        event = {"type": "message", "subtype": "message_changed", "channel": "C1", "channel_type": "channel",
                 "ts": ts, "event_ts": ts, "message": {**base, "edited": {"user": "U1", "ts": ts}},
                 "previous_message": {**base, "text": "typo"}}
    elif kind == "delete":
        event = {"type": "message", "subtype": "message_deleted", "channel": "C1", "channel_type": "channel",
                 "ts": ts, "deleted_ts": ROOT, "previous_message": base}
    elif kind == "edited_mention":
        event = {"type": "app_mention", **base, "edited": {"user": base["user"], "ts": draw(timestamps)}}
    elif kind == "home":
        event = {"type": "app_home_opened", "user": base["user"], "channel": "D1",
                 "tab": draw(st.sampled_from(["home", "messages", "about", None])), "event_ts": ts}
    elif kind == "context":
        event = {"type": "app_context_changed", "user": base["user"], "event_ts": ts,
                 "context": {"entities": [{"type": "slack#/types/channel_id", "value": "C1", "team_id": TEAM}]}}
    elif kind in ("thread_started", "thread_context"):
        event = {"type": f"assistant_{kind}" if kind == "thread_started" else "assistant_thread_context_changed",
                 "event_ts": ts, "assistant_thread": {"user_id": base["user"], "channel_id": "D1", "thread_ts": ts,
                                                      "context": {"channel_id": "C1", "team_id": TEAM}}}
    elif kind == "reaction":
        event = {"type": "reaction_added", "user": base["user"], "reaction": "thumbsdown",
                 "item": {"type": "message", "channel": "C1", "ts": ROOT}, "event_ts": ts}
    else:
        unknown = st.sampled_from(["pin_added", "member_joined_channel", "", "message.im", "tokens_revoked"])
        event = {"type": draw(unknown), **base}
    body = event_callback(event, draw(event_ids))
    return Sent("event", body, retry=draw(st.booleans()))


def block_action_payload(action_id: str, value: Any, user: str, channel: str, message_ts: str) -> dict[str, Any]:
    return {"type": "block_actions", "team": {"id": TEAM, "domain": "penny-test"},
            "user": {"id": user, "team_id": TEAM, "username": "u"}, "api_app_id": APP,
            "token": "legacy-verification-token", "trigger_id": "trigger-1",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
            "channel": {"id": channel, "name": "general"}, "response_url": "",
            "message": {"type": "message", "ts": message_ts, "text": "an answer", "user": BOT_USER},
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b", "value": value,
                         "action_ts": "1700000300.000001"}]}


@st.composite
def interactions(draw: st.DrawFn) -> Sent:
    """A click, a submitted form, a shortcut, or ``/cost``."""
    kind = draw(st.sampled_from(["action", "action", "view", "command", "shortcut"]))
    user, channel, ts = draw(users), draw(channels), draw(timestamps)
    if kind == "action":
        payload = block_action_payload(draw(st.sampled_from(ACTION_IDS)), draw(values), user, channel, ts)
        return Sent("action", payload, FORM)
    if kind == "view":
        metadata = draw(values)
        payload = {"type": "view_submission", "team": {"id": TEAM}, "user": {"id": user, "team_id": TEAM},
                   "api_app_id": APP, "trigger_id": "t2", "response_urls": [],
                   "view": {"id": "V1", "type": "modal",
                            "callback_id": draw(st.sampled_from([REASON_CALLBACK, "other"])),
                            "private_metadata": metadata,
                            "state": {"values": {"reason": {"text": {"type": "plain_text_input",
                                                                     "value": draw(hostile_text)}}}}}}
        return Sent("view", payload, FORM)
    if kind == "shortcut":
        payload = {"type": draw(st.sampled_from(["shortcut", "message_action"])), "callback_id": "ask_penny",
                   "team": {"id": TEAM}, "user": {"id": user}, "trigger_id": "t3", "api_app_id": APP,
                   "message": {"text": draw(hostile_text), "ts": ts}, "channel": {"id": channel}}
        return Sent("action", payload, FORM)
    form = {"token": "legacy-verification-token", "team_id": TEAM, "team_domain": "penny-test", "channel_id": channel,
            "channel_name": "general", "user_id": user, "user_name": "u", "command": "/cost",
            "text": draw(st.one_of(st.sampled_from(["", "team", "me", "help"]), hostile_text)),
            "api_app_id": APP, "response_url": "", "trigger_id": "t4"}
    return Sent("command", form, FORM)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into ``value`` (dicts and lists)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*prefix, index)
            yield from paths(item, (*prefix, index))


# Bodies that are no Slack payload at all, or the barest of one.
RAW_BODIES = ["", "{}", "[]", "null", "payload=", "payload=%7B%7D", "payload=null", "payload=%5B%5D", "command=/cost",
              '{"type": "url_verification"}', '{"type": "url_verification", "challenge": {"x": 1}}',
              '{"type": "event_callback"}', '{"type": 5, "event": {}}', '{"type": "block_actions"}',
              '{"type": "view_submission", "view": {"callback_id": "penny_feedback_reason"}}']


@st.composite
def mutated(draw: st.DrawFn, sent: st.SearchStrategy[Sent]) -> Sent:
    """``sent`` with a few fields dropped or replaced, maybe another workspace's or app's, maybe
    encoded wrongly or not JSON at all."""
    request = draw(sent)
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        where = sorted(paths(request.payload), key=repr)
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = request.payload
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(hostile_value)
    if isinstance(request.payload, dict) and draw(st.integers(0, 5)) == 0:  # another workspace's, or app's
        for key in ("team_id", "api_app_id"):
            if key in request.payload and draw(st.booleans()):
                request.payload[key] = "T0OTHER" if key == "team_id" else "A0OTHER"
        if isinstance(request.payload.get("team"), dict) and draw(st.booleans()):
            request.payload["team"]["id"] = "T0OTHER"
        installation = first_authorization(request.payload)
        if installation is not None and draw(st.booleans()):
            installation["team_id"] = "T0OTHER"
    wrongly = ["as-form", "as-json", "payload-not-json", "text-plain"]
    request.encoding = draw(st.sampled_from(["plain"] * 12 + wrongly))
    if draw(st.integers(0, 9)) == 0:
        request = Sent("raw", draw(st.sampled_from(RAW_BODIES)), draw(st.sampled_from(["application/json", FORM,
                                                                                      "text/plain", ""])))
    return request


requests = mutated(st.one_of(events(), events(), interactions()))


# -- what Penny must ignore ---------------------------------------------------------------------


def first_authorization(body: dict[str, Any]) -> dict[str, Any] | None:
    """The installation an event is delivered to, as Bolt reads it (``authorizations[0]``), if any."""
    authorizations = body.get("authorizations")
    if isinstance(authorizations, list) and authorizations and isinstance(authorizations[0], dict):
        return authorizations[0]
    return None


HEARD_EVENTS = frozenset({"app_mention", "message", "app_home_opened", "app_context_changed",
                          "assistant_thread_started", "assistant_thread_context_changed"})
KNOWN_ACTIONS = frozenset(ACTION_IDS[:5])


def must_ignore(sent: Sent) -> str | None:
    """Why Penny must show nothing and ask no LLM for ``sent`` (None: she may act on it)."""
    body = sent.payload
    if sent.kind == "raw" or not isinstance(body, dict) or sent.encoding != "plain":
        return None  # refused or acked by the guard or Bolt; checked by the 2xx/4xx and no-error properties
    installation = first_authorization(body)
    if sent.kind == "event" and installation is not None:
        team = installation.get("team_id")  # the installation an event is for (a Slack Connect one: not team_id)
    elif sent.kind in ("event", "command"):
        team = body.get("team_id")
    else:
        team = body["team"].get("id") if isinstance(body.get("team"), dict) else None
    if team == "T0OTHER" or body.get("api_app_id") == "A0OTHER":
        return "another workspace or app"
    if sent.kind == "action" and body.get("type") in ("shortcut", "message_action"):
        return "a shortcut Penny has none of"
    if sent.kind == "action":
        actions = body.get("actions")
        first = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
        if not isinstance(first.get("action_id"), str) or first.get("action_id") not in KNOWN_ACTIONS:
            return "an unknown button"
    if sent.kind != "event" or not isinstance(body.get("event"), dict):
        return None
    event = body["event"]
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in HEARD_EVENTS:
        return "an event Penny does not hear"
    if kind in ("message", "app_mention"):
        if event.get("bot_id") or event.get("user") == BOT_USER:
            return "a bot's message"
        subtype = event.get("subtype")
        if subtype is not None and not (isinstance(subtype, str) and subtype in USER_SUBTYPES):
            return "not a person writing"
        if kind == "message" and event.get("channel_type") not in ("im",) and not event.get("thread_ts"):
            return "channel chatter"
    return None


# -- the test -----------------------------------------------------------------------------------


@pytest.fixture
def fake_answer() -> Any:
    return hostile_answer


@pytest.fixture
def bot(slack: FakeSlack, fake: FakeOpenAI, tmp_path: Path) -> Iterator[Bot]:
    made = make_bot(slack, fake, tmp_path)
    yield made
    made.gateway.close()


def call_wsgi(app: PennyWSGI, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body`` to ``app`` as gunicorn would; what escapes the app is a 500, as gunicorn answers."""
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": "/slack/events", "QUERY_STRING": "",
                               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
                               "SERVER_NAME": "penny", "SERVER_PORT": "3000", "wsgi.url_scheme": "https"}
    for name, value in headers.items():
        if name.lower() == "content-type":
            environ["CONTENT_TYPE"] = value
        else:
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    status: list[str] = []

    def start_response(line: str, _headers: list[tuple[str, str]], _exc: Any = None) -> None:
        status.append(line)

    try:
        out = b"".join(app(environ, start_response))
    except Exception as exc:
        return 500, repr(exc).encode()
    return int(status[0].split()[0]), out


def signed_headers(body: str, content_type: str, extra: dict[str, str]) -> dict[str, str]:
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature,
            **extra}


class LoggedErrors(logging.Handler):
    """Keeps the stdlib log records at ERROR and above, and any with a traceback (Bolt's own)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture
def logged_errors() -> Iterator[LoggedErrors]:
    handler = LoggedErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@dataclass
class Front:
    """Penny's WSGI front door over the test's bot, and what it has sent and been asked so far."""

    bot: Bot
    slack: FakeSlack
    fake: FakeOpenAI
    errors: LoggedErrors
    wsgi: PennyWSGI = field(init=False)
    serial: int = 0

    def __post_init__(self) -> None:
        self.wsgi = PennyWSGI(self.bot.app, ready=lambda: None, signing_secret=SECRET)

    def deliver(self, sent: Sent, thread: str | None = None) -> None:
        """Send ``sent`` (and again as Slack's retry, when it says so) and check every property."""
        self.serial += 1
        thread = thread or f"{1_600_001_000 + self.serial}.000300"
        if sent.first is not None:
            self.deliver(sent.first, thread)
        body = sent.body().replace(FRESH_TS, f"{1_700_001_000 + self.serial}.000100").replace(FRESH_THREAD, thread)
        body = body.replace(FRESH_EVENT, f"EvFresh{self.serial:05d}")
        retries = [{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}] if sent.retry else []
        for attempt, extra in enumerate([{}, *retries]):
            shown, asked = self._one(body, sent, extra)
            why = sent.ignore or must_ignore(sent) or (is_message_event(sent) and attempt and "Slack's retry")
            if why:
                assert (shown, asked) == ([], 0), f"{why}: {VISIBLE_OR_LLM}"

    def _one(self, body: str, sent: Sent, extra: dict[str, str]) -> tuple[list[SlackCall], int]:
        """One delivery, checked; what it showed in Slack and how many LLM calls it made."""
        before_slack, before_llm = len(self.slack.calls()), self.fake.count()
        self.errors.records.clear()
        with structlog.testing.capture_logs() as logs:
            status, answered = call_wsgi(self.wsgi, body.encode("utf-8", "surrogatepass"),
                                         signed_headers(body, sent.content(), extra))
        shown = [c for c in self.slack.calls()[before_slack:] if c.method not in READS]
        ports = (self.slack.port, self.fake.port)

        assert status < 500, (status, answered)
        assert [leak for leak in (*LEAKS, *map(str, ports)) if leak.encode() in answered] == [], answered
        assert [e for e in logs if e.get("log_level") in ("error", "critical") or e.get("exc_info")] == []
        assert [r.getMessage() for r in self.errors.records] == []
        assert [p for call in shown for p in shown_problems(call, PEOPLE, ports)] == []
        return shown, self.fake.count() - before_llm


def is_message_event(sent: Sent) -> bool:
    event = sent.payload.get("event") if isinstance(sent.payload, dict) else None
    return isinstance(event, dict) and event.get("type") in ("message", "app_mention")


@pytest.fixture
def front(bot: Bot, slack: FakeSlack, fake: FakeOpenAI, logged_errors: LoggedErrors) -> Front:
    return Front(bot, slack, fake, logged_errors)


PEOPLE = frozenset({"U1", "U2", "W0GUEST", "U0ADMIN", "USLACKBOT"})  # whoever wrote to Penny may be named back
VISIBLE_OR_LLM = "shows nothing and asks no LLM"
# Derandomized: the same examples on every run, so that CI never fails on a draw it cannot repeat.
_RUNS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large])


def _click(change: Callable[[dict[str, Any]], None], **fields: Any) -> Sent:
    payload = block_action_payload(ACTION_FEEDBACK, "up:entry-1", "U1", "C1", ROOT)
    change(payload["actions"][0])
    payload.update(fields)
    return Sent("action", payload, FORM)


def _event(**event: Any) -> Sent:
    return Sent("event", event_callback({"user": "U1", "channel": "C1", "ts": FRESH_TS, "text": QUESTION, **event},
                                        FRESH_EVENT))


def _reason_form(metadata: str) -> Sent:
    view = {"id": "V1", "type": "modal", "callback_id": REASON_CALLBACK, "private_metadata": metadata,
            "state": {"values": {"reason": {"text": {"type": "plain_text_input", "value": "<!channel>"}}}}}
    return Sent("view", {"type": "view_submission", "team": {"id": TEAM}, "user": {"id": "U1", "team_id": TEAM},
                         "api_app_id": APP, "trigger_id": "t2", "view": view}, FORM)


@_RUNS
@given(sent=requests)
# What this test found (each has a named test in test_slack_app.py too):
@example(sent=_click(lambda action: action.pop("action_id")))  # Bolt's matcher raised: a 500
@example(sent=_reason_form("up:entry-1"))  # json.loads raised: a traceback logged as slack.reason_failed
@example(sent=_click(lambda action: None, message="an answer", container={"type": "message", "channel_id": "C1"}))
@example(sent=_click(lambda action: action.update(value="\ud800")))  # a UnicodeEncodeError storing the vote
@example(sent=_event(type="assistant_thread_started", assistant_thread={"channel_id": "D1"}))  # Bolt's Assistant: a 500
@example(sent=_event(type=[]))  # Bolt's event matchers raised: a 500
@example(sent=_event(type="assistant_thread_started", assistant_thread={  # Bolt's say raised: a traceback
    "user_id": "U1", "channel_id": "D1", "thread_ts": FRESH_TS, "context": None}))
@example(sent=_event(type="message", channel_type="im", subtype=["file_share"]))  # unhashable in FromPeopleOnly: a 500
@example(sent=Sent("command", {"command": "/cost", "text": "", "team_id": TEAM, "user_id": "U1", "channel_id": "C1",
                               "api_app_id": APP, "response_url": '{"id": "U1"}'}, FORM))  # the SDK logged an error
def test_a_malformed_or_hostile_request_is_acked_or_refused_and_shows_nothing_it_should_not(
    front: Front, sent: Sent
) -> None:
    front.deliver(sent)


def assistant_question(text: str, user: str = "U1", *, retry: bool = False) -> Sent:
    """The first question in an assistant thread of its own, started just before (which titles it)."""
    event = {"type": "message", "channel_type": "im", "user": user, "text": text, "ts": FRESH_TS, "channel": "D1",
             "event_ts": FRESH_TS, "thread_ts": FRESH_THREAD}
    started = {"type": "assistant_thread_started", "event_ts": FRESH_THREAD, "assistant_thread": {
        "user_id": user, "channel_id": "D1", "thread_ts": FRESH_THREAD, "context": {"channel_id": "C1"}}}
    first = Sent("event", event_callback(started, FRESH_EVENT))
    return Sent("event", event_callback(event, FRESH_EVENT), retry=retry, first=first)


@st.composite
def questions(draw: st.DrawFn) -> Sent:
    """A well-formed question (a mention, a DM, a follow-up in a thread Penny answered in) whose
    words carry broadcasts, mentions and unicode oddities: the model echoes them back."""
    words = st.one_of(st.sampled_from(INJECTIONS), st.sampled_from(QUESTIONS), hostile_text)
    text = " ".join(draw(st.permutations([draw(st.sampled_from(QUESTIONS)),
                                           *draw(st.lists(words, min_size=1, max_size=4))])))
    ts = FRESH_TS
    user = draw(st.sampled_from(["U1", "U2", "W0GUEST"]))
    where = draw(st.sampled_from(["mention", "mention-in-thread", "dm", "dm-thread", "thread-reply", "assistant"]))
    if where.startswith("mention"):
        event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER}> {text}", "ts": ts, "channel": "C1",
                 "event_ts": ts, **({"thread_ts": ROOT} if where == "mention-in-thread" else {})}
    elif where.startswith("dm"):
        event = {"type": "message", "channel_type": "im", "user": user, "text": text, "ts": ts, "channel": "D1",
                 "event_ts": ts, **({"thread_ts": ROOT} if where == "dm-thread" else {})}
    elif where == "assistant":
        return assistant_question(text, user, retry=draw(st.booleans()))
    else:
        event = {"type": "message", "channel_type": "channel", "user": user, "text": text.replace("<@", "<#"),
                 "ts": ts, "channel": "C1", "event_ts": ts, "thread_ts": ROOT}
    return Sent("event", event_callback(event, FRESH_EVENT), retry=draw(st.booleans()))


@settings(_RUNS, max_examples=80)
@given(sent=questions())
# The thread title was the question verbatim: <!channel> and <@U…> went back to Slack as live markup.
@example(sent=assistant_question(f"<!channel> <@U0BOSS> <!subteam^S0ENG> {QUESTION}"))
def test_hostile_words_in_a_question_come_back_as_text_never_as_a_ping(front: Front, sent: Sent) -> None:
    front.deliver(sent)


def _foreign(body: dict[str, Any], event: dict[str, Any]) -> None:
    body["team_id"] = "T0OTHER"
    body["authorizations"][0]["team_id"] = "T0OTHER"


def _other_app(body: dict[str, Any], event: dict[str, Any]) -> None:
    body["api_app_id"] = "A0OTHER"


def _another_bot(body: dict[str, Any], event: dict[str, Any]) -> None:
    event["bot_id"] = "B0OTHER"


def _another_bots_post(body: dict[str, Any], event: dict[str, Any]) -> None:
    event.update(bot_id="B0OTHER", subtype="bot_message")


def _her_own(body: dict[str, Any], event: dict[str, Any]) -> None:
    event.update(user=BOT_USER, bot_id=BOT_ID, app_id=APP)


def _unknown_type(body: dict[str, Any], event: dict[str, Any]) -> None:
    event["type"] = "pin_added"


def _edited_long_after(body: dict[str, Any], event: dict[str, Any]) -> None:
    event.update(type="app_mention", text=f"<@{BOT_USER}> {event['text']}", channel="C1", edited={
        "user": event["user"], "ts": "1800000000.000000"})


def _subtyped(subtype: str) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(body: dict[str, Any], event: dict[str, Any]) -> None:
        event["subtype"] = subtype

    return change


IGNORABLE = {
    "another workspace": _foreign,
    "another app": _other_app,
    "another bot's message": _another_bot,
    "another bot's post": _another_bots_post,
    "Penny's own message": _her_own,
    "an event Penny does not hear": _unknown_type,
    "an edit long after its message": _edited_long_after,
    **{f"a {subtype}": _subtyped(subtype)
       for subtype in ("message_changed", "message_deleted", "channel_join", "channel_topic")},
}


@st.composite
def ignorable(draw: st.DrawFn) -> Sent:
    """A question Penny would answer, made into one she must leave alone (``Sent.ignore`` says how),
    or chatter in a channel that is not addressed to her."""
    sent = draw(questions())
    body = sent.payload
    event = body["event"]
    if draw(st.integers(0, 5)) == 0:
        event.update(type="message", channel_type="channel", channel="C1", text=event["text"].replace("<@", "<#"))
        event.pop("thread_ts", None)
        sent.ignore = "channel chatter"
        return sent
    sent.ignore = draw(st.sampled_from(sorted(IGNORABLE)))
    IGNORABLE[sent.ignore](body, event)
    return sent


@settings(_RUNS, max_examples=80)
@given(sent=ignorable())
def test_what_penny_must_leave_alone_shows_nothing_and_asks_no_llm(front: Front, sent: Sent) -> None:
    front.deliver(sent)
