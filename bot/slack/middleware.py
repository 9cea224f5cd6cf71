"""What runs around Penny's listeners, so that no listener repeats it.

Bolt middleware, before any listener runs (in the request's thread, before the ack: pure checks, no
store call):

- :class:`InstalledWorkspaceOnly`: Penny runs with one bot token, so it serves the one workspace
  (or, for an org-wide install, the one organization) that token belongs to, and the one app. A
  request from anywhere else (the app installed in a second workspace whose events reach this URL,
  a misrouted delivery) is acknowledged and dropped: no store write, no LLM call, no Slack call.
  The first drop from each workspace is logged; later ones are not, so a busy foreign workspace
  cannot flood the log.
- :class:`WellFormedOnly`: a signed payload whose fields Penny acts on are missing or of the wrong
  type (a list where a user ID goes, an event that is not an object, a click with no channel, an
  assistant thread with no thread_ts) is
  acknowledged and dropped with one ``slack.malformed_request_dropped`` log line naming the fields:
  otherwise it would be answered, billed and posted under ``str()`` of whatever was there (a user
  ``"['U1']"``, a channel ``"None"``), or Bolt itself would raise matching it (a click whose
  action has no ``action_id``: a 500 and a listener error), or a ``response_url`` that is no
  http(s) URL (replies to it failed with an error logged). So is one with a string that is not
  valid Unicode anywhere in it (a lone surrogate, escaped in its JSON), which failed to encode
  wherever Penny wrote it down.
- :class:`RateLimitNotices`: Slack's ``app_rate_limited`` notice (posted to the events URL, with no
  inner event, when Slack starts dropping the app's events for a workspace) is acknowledged with a 200
  and logged as one ``slack.events_rate_limited`` warning. Bolt has no listener for it and answered
  404, which Slack counts towards disabling the app's event subscriptions.
- :class:`FromPeopleOnly`: a ``message`` or ``app_mention`` no person wrote (another bot's, a join,
  an edit, a deletion) is acknowledged and dropped, but for one kind of edit: an ``app_mention``
  carrying ``edited`` within :data:`EDIT_WINDOW_S` of its message. Slack sends one whenever a
  message that mentions Penny is edited, whether the edit added the mention (someone forgot it:
  a question to answer) or only fixed a typo (answered already): which one it is, only the
  message's claim in the store can tell (:func:`message_request_id`, below). Every other edit is
  dropped: a ``message_changed`` (the ``app_mention`` is enough; in a DM, where none comes, an
  edited question was answered as first written) and an edit long after its message (nobody
  expects an answer to a week-old message someone re-edited). Penny's own messages are dropped by
  Bolt's :class:`~slack_bolt.middleware.IgnoringSelfEvents` (on by default) and by their ``bot_id``.

:class:`Once`, around the part of a listener that answers (after the ack, on the listener's
thread): every request is handled once. Its ID is claimed in the store before anything runs: for a
message, the message itself (:func:`message_request_id`: its channel and ts, the same in every
event about it), so Slack's retries and duplicate deliveries, and the ``app_mention`` of an edit of
a message answered already, never answer twice; what the handling remembers (:func:`remember`: the
thread Penny answered in, the answer it posted) is written with the event's completion, one store
write instead of three, and what must wait for that (:func:`after_handling`: taking the 👀 off)
runs after it. It is not Bolt middleware because a claim is a store write, and a message that is
not for Penny (most of a channel's) must cost none, and an ack must not wait for the store.
"""
from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from slack_bolt import BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware

from bot.slack.conversation import USER_SUBTYPES
from bot.slack.startup import SlackInstallation
from proxy_core import Record, RecordStore, RequestStore, StoreError, get_logger, has_lone_surrogate

__all__ = [
    "EDIT_WINDOW_S",
    "EVENT_CLAIM_TTL_S",
    "EVENT_DONE_TTL_S",
    "FromPeopleOnly",
    "InstalledWorkspaceOnly",
    "Once",
    "RateLimitNotices",
    "WellFormedOnly",
    "after_handling",
    "edit_in_time",
    "foreign_request",
    "malformed_fields",
    "message_request_id",
    "remember",
    "written_by_a_person",
]

LOGGED_TEAMS_KEPT: Final = 10_000  # workspaces whose first drop was logged, remembered per process
EVENT_CLAIM_TTL_S: Final = 15 * 60.0  # Slack's last retry comes ~5 minutes after the first delivery
EVENT_DONE_TTL_S: Final = 24 * 3600.0
# An edit adding a mention is answered this long after its message (the ts); it must stay well
# under EVENT_DONE_TTL_S, for the message's claim to outlive every edit that could be answered.
EDIT_WINDOW_S: Final = 15 * 60.0

_log = get_logger()


def foreign_request(installed: SlackInstallation, *, team_id: str | None, enterprise_id: str | None,
                    app_id: str | None) -> str | None:
    """Why a request from ``team_id`` / ``enterprise_id`` for ``app_id`` is not for this
    installation ("app" or "workspace"), or None when it is (or cannot be told apart)."""
    if app_id and installed.app_id and app_id != installed.app_id:
        return "app"
    if installed.is_enterprise_install and installed.enterprise_id:
        return None if enterprise_id in (None, installed.enterprise_id) else "workspace"
    if team_id and installed.team_id and team_id != installed.team_id:
        return "workspace"
    return None


class InstalledWorkspaceOnly(Middleware):
    """Drops requests not for the installation the bot token belongs to (see the module doc).

    ``installation`` comes from Penny's start-up check; without one, the first requests look it up
    with ``auth.test`` (until a lookup succeeds; then never again)."""

    def __init__(self, installation: SlackInstallation | None = None) -> None:
        self._installation = installation
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        installed = self._installed(req)
        if installed is None:
            return next()  # auth.test failed: Bolt's own authorization has refused the request already
        context = req.context
        app_id = req.body.get("api_app_id") if isinstance(req.body, dict) else None
        reason = foreign_request(installed, team_id=context.team_id, enterprise_id=context.enterprise_id,
                                 app_id=str(app_id) if app_id else None)
        if reason is None:
            return next()
        team = str(context.team_id or context.enterprise_id or "unknown")
        with self._lock:
            first = team not in self._logged
            if first:
                if len(self._logged) >= LOGGED_TEAMS_KEPT:
                    self._logged.clear()
                self._logged.add(team)
        if first:
            _log.warning("slack.foreign_request_dropped", reason=reason, team_id=team, app_id=app_id,
                         installed_team_id=installed.team_id, note="logged once per workspace")
        return BoltResponse(status=200, body="")

    def _installed(self, req: BoltRequest) -> SlackInstallation | None:
        if self._installation is not None:
            return self._installation
        # No lock is held across the call: in an HTTP worker a Slack call can lend the listener's
        # turn (WorkTurns), and requests waiting on that lock would hold every turn while the
        # caller waited for one back. Requests arriving before one lookup succeeds each look it up.
        try:
            response = req.context.client.auth_test()
        except Exception as exc:
            _log.warning("slack.auth_test_failed", error=exc)
            return None
        data = response.data if isinstance(response.data, dict) else {}
        self._installation = SlackInstallation.from_auth_test(data, response.headers)
        return self._installation


# A Slack ID (user, channel, team) or a message ts ("1700000100.000100"), as Slack writes them.
_SLACK_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_EVENT_FIELDS: Final[Mapping[str, tuple[tuple[str, bool], ...]]] = {  # event type -> (field, required)
    "message": (("user", False), ("channel", True), ("ts", True), ("thread_ts", False)),
    "app_mention": (("user", False), ("channel", True), ("ts", True), ("thread_ts", False)),
    "app_home_opened": (("user", True), ("channel", False)),
}


# Bolt's Assistant reads these events' thread (``assistant_thread``: its channel_id, thread_ts and
# context) by indexing it: a thread missing one raised there, a 500 and a listener error.
_ASSISTANT_THREAD_EVENTS: Final = frozenset({"assistant_thread_started", "assistant_thread_context_changed"})


def _assistant_thread_fields(event: Mapping[str, Any]) -> list[str]:
    """The fields of an assistant thread event's ``assistant_thread`` that are missing or mistyped."""
    thread = event.get("assistant_thread")
    if not isinstance(thread, dict):
        return ["event.assistant_thread"]
    bad = [f"event.assistant_thread.{name}" for name in ("channel_id", "thread_ts") if not _is_id(thread.get(name))]
    # Bolt reads a context that is there as an object (``thread.get("context", {}).get(…)``): a
    # null one raised when Penny greeted the thread.
    changed = event.get("type") == "assistant_thread_context_changed"
    if (changed or "context" in thread) and not isinstance(thread.get("context"), dict):
        bad.append("event.assistant_thread.context")
    return bad


def _is_web_url(value: object) -> bool:
    """An http(s) URL with a host: what Slack's ``response_url`` always is."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # "http://[::1": an IPv6 host not closed
        return False
    return parts.scheme in ("https", "http") and bool(parts.netloc)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and _SLACK_ID.match(value) is not None


def malformed_fields(body: Mapping[str, Any]) -> list[str]:
    """The fields Penny acts on that ``body`` lacks or holds in the wrong type (none: it is well formed).

    Only what a listener would otherwise turn into a user, channel or thread with ``str()`` is
    checked; a field Slack may leave out is checked only when present. Anywhere in the body, a
    string holding a lone surrogate (JSON's ``"\\ud800"``) is malformed too (:func:`_unencodable`)."""
    unencodable = _unencodable(body)
    if unencodable is not None:
        return [unencodable]
    if body.get("response_url") and not _is_web_url(body["response_url"]):
        # Bolt gives listeners a ``respond`` that posts there: to a value that is no URL, the
        # SDK's webhook client logged an error and raised, and the reply was lost all the same.
        return ["response_url"]
    kind = body.get("type")
    if kind == "event_callback":
        event = body.get("event")
        if not isinstance(event, dict):
            return ["event"]
        if not isinstance(event.get("type"), str):
            # Bolt's event matchers compare and look up the type as a string: a list or an object
            # there raised in them, a 500 and a listener error.
            return ["event.type"]
        bad = [f"event.{name}" for name, required in _EVENT_FIELDS.get(str(event.get("type")), ())
               if (required or event.get(name) is not None) and not _is_id(event.get(name))]
        if "text" in event and event["text"] is not None and not isinstance(event["text"], str):
            bad.append("event.text")
        if event.get("subtype") is not None and not isinstance(event["subtype"], str):
            bad.append("event.subtype")  # looked up in sets of subtypes: a list there raised (a 500)
        if event.get("type") in _ASSISTANT_THREAD_EVENTS:
            bad += _assistant_thread_fields(event)
        return bad
    if kind in ("block_actions", "view_submission"):
        user = body.get("user")
        bad = [] if isinstance(user, dict) and _is_id(user.get("id")) else ["user.id"]
        for name in ("channel", "container", "team", "message"):  # a vote reads the message's ts from either
            if body.get(name) is not None and not isinstance(body.get(name), dict):
                bad.append(name)
        if kind == "block_actions":
            actions = body.get("actions")
            if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
                bad.append("actions")
            elif not isinstance(actions[0].get("action_id"), str):
                # Bolt's action matchers index ``action_id`` (and compare it as a string): without
                # one, matching raised and Bolt answered 500 with a listener error in the log.
                bad.append("actions.action_id")
            channel, container = body.get("channel"), body.get("container")
            where = (channel.get("id") if isinstance(channel, dict) else None) or (
                container.get("channel_id") if isinstance(container, dict) else None)
            if not _is_id(where):
                bad.append("channel.id")
        return bad
    return []


def _unencodable(value: object, path: str = "") -> str | None:
    """The path of the first string (key or value) in ``value`` that is not valid Unicode (a lone
    surrogate, which JSON can escape but UTF-8 cannot encode), or None.

    Slack never sends one (its clients pair surrogates, and a pair decodes to one character); one
    passed on failed wherever Penny encodes it (a store key, a Slack form post, a log line) with a
    UnicodeEncodeError and a traceback, after the question may have been paid for."""
    if isinstance(value, str):
        return path or "body" if has_lone_surrogate(value) else None
    items: Iterable[tuple[object, object]] = (
        value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and has_lone_surrogate(key):
            return _shown(where)
        found = _unencodable(item, where)
        if found is not None:
            return _shown(found)
    return None


def _shown(path: str) -> str:
    """``path`` as a log line can carry it: each lone surrogate in it written "?"."""
    return path.encode("utf-8", "replace").decode("utf-8")


class WellFormedOnly(Middleware):
    """Drops signed requests whose fields Penny acts on are missing or mistyped (see the module doc)."""

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        bad = malformed_fields(req.body) if isinstance(req.body, dict) else []
        if not bad:
            return next()
        _log.warning("slack.malformed_request_dropped", type=_loggable(req.body.get("type")), fields=bad,
                     event_id=_loggable(req.body.get("event_id")))
        return BoltResponse(status=200, body="")


def _loggable(value: object) -> object:
    """``value`` as a log line can carry it: a lone surrogate in a string is written escaped."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else value


class RateLimitNotices(Middleware):
    """Acknowledges and logs Slack's ``app_rate_limited`` notices (see the module doc)."""

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        if not (isinstance(req.body, dict) and req.body.get("type") == "app_rate_limited"):
            return next()
        _log.warning("slack.events_rate_limited", team_id=req.body.get("team_id"),
                     minute_rate_limited=req.body.get("minute_rate_limited"),
                     note="Slack is dropping this app's events for the workspace (over 30,000 an hour)")
        return BoltResponse(status=200, body="")


def _a_person_wrote(event: Mapping[str, Any]) -> bool:
    """It has a user and no ``bot_id``, and no subtype but the two that are still a person writing
    (a reply also sent to the channel, a message with a file)."""
    subtype = event.get("subtype")
    return bool(event.get("user")) and not event.get("bot_id") and (subtype is None or subtype in USER_SUBTYPES)


def written_by_a_person(event: Mapping[str, Any]) -> bool:
    """A message someone wrote, as first written: not an edit (see :func:`edit_in_time`)."""
    return _a_person_wrote(event) and not event.get("edited")


def edit_in_time(event: Mapping[str, Any], now: float) -> bool:
    """An ``app_mention`` Slack sent for an edit someone made at most :data:`EDIT_WINDOW_S` after
    the message (its ``ts``): when the edit was made is Slack's ``edited.ts`` (so a retried delivery
    near the end of the window, or this replica's clock, changes nothing), else ``now`` (epoch
    seconds). It may be a question the edit addressed to Penny, or a typo fixed in one she
    answered: the message's claim tells them apart, not this."""
    edited = event.get("edited")
    if event.get("type") != "app_mention" or not edited or not _a_person_wrote(event):
        return False
    posted = _seconds(event.get("ts"))
    if posted is None:
        return False
    made = _seconds(edited.get("ts")) if isinstance(edited, Mapping) else None
    return (now if made is None else made) - posted <= EDIT_WINDOW_S


def _seconds(ts: object) -> float | None:
    """A Slack ts ("1700000100.000200") as epoch seconds; None if it is not one."""
    try:
        value = float(str(ts))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class FromPeopleOnly(Middleware):
    """Drops ``message`` and ``app_mention`` events no person wrote, and edits but a recent mention's
    (see the module doc); ``wall`` is the clock (epoch seconds) an edit's age is read on."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        event = req.body.get("event") if isinstance(req.body, dict) else None
        if isinstance(event, dict) and event.get("type") in ("message", "app_mention") \
                and not written_by_a_person(event) and not edit_in_time(event, self._wall()):
            return BoltResponse(status=200, body="")
        return next()


def message_request_id(channel: str, ts: str) -> str:
    """The ID a message is answered under in :class:`Once` (with its workspace): the same in every
    event Slack sends about it (an edit keeps the message's ts), unlike their event IDs."""
    return f"slack:message:{channel}:{ts}"


@dataclass
class _Handling:
    """What the handling of one event leaves for its end: records to store with its completion,
    and what to do once that is done (taking the 👀 off)."""

    records: list[Record] = field(default_factory=list)
    then: list[Callable[[], None]] = field(default_factory=list)


_HANDLING: ContextVar[_Handling | None] = ContextVar("penny_slack_handling", default=None)


class Once:
    """Handles each request ID once, through the store's claims (see the module doc)."""

    def __init__(self, store: RequestStore) -> None:
        self._store = store

    def run(self, workspace_id: str, request_id: str, handle: Callable[[], None]) -> bool:
        """Run ``handle`` unless ``request_id`` was claimed before (False then); then complete it
        with what it remembered, and run what waited for that."""
        if not self._claim(workspace_id, request_id):
            return False
        handling = _Handling()
        token = _HANDLING.set(handling)
        try:
            handle()
        finally:
            _HANDLING.reset(token)
            self._complete(workspace_id, request_id, handling.records)
            for then in handling.then:
                then()
        return True

    def _claim(self, workspace_id: str, request_id: str) -> bool:
        try:
            return self._store.claim_request(workspace_id, request_id, EVENT_CLAIM_TTL_S).state == "claimed"
        except StoreError as exc:
            # Without the store nothing can be deduplicated; answering once more beats not answering.
            _log.warning("slack.claim_failed", request_id=request_id, error=exc)
            return True

    def _complete(self, workspace_id: str, request_id: str, records: list[Record]) -> None:
        """Mark the request handled, and store what was remembered while handling it, in one step."""
        try:
            self._store.complete_request(workspace_id, request_id, '{"handled": true}', EVENT_DONE_TTL_S,
                                         records=records)
        except StoreError as exc:
            _log.warning("slack.complete_failed", request_id=request_id, error=exc)


def remember(store: RecordStore, record: Record) -> None:
    """Keep ``record``: with the completion of the event being handled (:class:`Once`), or now."""
    handling = _HANDLING.get()
    if handling is not None:
        handling.records.append(record)
        return
    try:
        store.record_put(record.kind, record.key, record.value, record.ttl_s)
    except StoreError as exc:
        _log.warning("slack.remember_failed", kind=record.kind, error=exc)


def after_handling(then: Callable[[], None]) -> None:
    """Run ``then`` once the event being handled is complete (its records stored), or now."""
    handling = _HANDLING.get()
    if handling is not None:
        handling.then.append(then)
    else:
        then()
