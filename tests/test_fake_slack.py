"""The fake Slack Web API, driven by the real slack_sdk WebClient (and once by a Bolt app) over loopback."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import App, BoltRequest, Say
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.fake_slack import FakeSlack

TOKEN = "xoxb-test-not-a-real-token"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    """The fake under test, built with an admin: its constructor is part of what this module tests."""
    with FakeSlack(admins=["UADMIN"]) as server:
        yield server


@pytest.fixture
def client(slack: FakeSlack) -> WebClient:
    return WebClient(base_url=slack.base_url, token=TOKEN, timeout=5)


def test_base_url_and_auth_test(slack: FakeSlack, client: WebClient) -> None:
    assert slack.base_url == f"http://127.0.0.1:{slack.port}/"
    response = client.auth_test()
    assert response["ok"] is True
    assert response["user_id"] == "UPENNY"
    assert (response["bot_id"], response["team_id"]) == ("B0PENNY", "T0PENNY")
    assert response["url"].startswith("https://")
    call = slack.last("auth.test")
    assert call.path == "/auth.test"
    assert call.token == TOKEN
    assert call.header("authorization") == f"Bearer {TOKEN}"


def test_the_token_never_shows_in_reprs(slack: FakeSlack, client: WebClient) -> None:
    client.auth_test()
    # the SDK moves a token in ``params`` into the header; one in ``data`` stays in the (multipart) body
    client.api_call("chat.postMessage", data={"channel": "C1", "text": "x", "token": "xoxb-in-the-body"})
    for call in slack.calls():
        shown = repr(call) + repr(call.headers) + repr(call.params) + repr(slack.calls())
        assert TOKEN not in shown and "xoxb-in-the-body" not in shown
    assert slack.last("chat.postMessage").token == TOKEN  # the header wins; the body token is recorded too
    assert slack.last("chat.postMessage").params["token"] == "xoxb-in-the-body"


def test_post_message_records_json_body_and_answers_unique_ts(slack: FakeSlack, client: WebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    first = client.chat_postMessage(channel="C1", text="hi", blocks=blocks, thread_ts="1700.0001")
    second = client.chat_postMessage(channel="C1", text="again")
    third = client.chat_postMessage(channel="C2", text="more")
    stamps = [first["ts"], second["ts"], third["ts"]]
    assert len(set(stamps)) == 3 and stamps == sorted(stamps, key=float)
    assert first["channel"] == "C1"
    assert first["message"]["text"] == "hi"
    assert first["message"]["blocks"] == blocks
    assert first["message"]["thread_ts"] == "1700.0001"
    assert first["message"]["bot_id"] == "B0PENNY"
    call = slack.calls("chat.postMessage")[0]
    assert call.params["channel"] == "C1"
    assert call.blocks == blocks
    assert (call.header("content-type") or "").startswith("application/json")
    assert slack.count("chat.postMessage") == 3


def test_form_encoded_methods(slack: FakeSlack, client: WebClient) -> None:
    client.reactions_add(channel="C1", name="eyes", timestamp="1.2")
    client.reactions_remove(channel="C1", name="eyes", timestamp="1.2")
    add = slack.last("reactions.add")
    assert add.params == {"channel": "C1", "name": "eyes", "timestamp": "1.2"}
    assert add.header("content-type") == "application/x-www-form-urlencoded"
    assert slack.count("reactions.remove") == 1
    # blocks sent form-encoded arrive as a JSON string; json_param/blocks decode either way
    blocks = [{"type": "divider"}]
    client.api_call("chat.postMessage", params={"channel": "C1", "blocks": json.dumps(blocks)})
    assert slack.last("chat.postMessage").blocks == blocks


def test_message_methods_answer_like_slack(slack: FakeSlack, client: WebClient) -> None:
    assert client.chat_postEphemeral(channel="C1", user="U1", text="only you")["message_ts"]
    updated = client.chat_update(channel="C1", ts="1700.0002", text="edited")
    assert (updated["channel"], updated["ts"], updated["text"]) == ("C1", "1700.0002", "edited")
    assert client.chat_delete(channel="C1", ts="1700.0002")["ts"] == "1700.0002"
    status = client.assistant_threads_setStatus(channel_id="D1", thread_ts="1.1", status="is thinking…")
    assert status.data == {"ok": True}
    assert slack.last("assistant.threads.setStatus").params["status"] == "is thinking…"
    view = client.views_publish(user_id="U1", view={"type": "home", "blocks": []})["view"]
    assert view["type"] == "home" and view["id"].startswith("V")
    assert client.api_call("anything.else", params={"x": "1"}).data == {"ok": True}
    assert slack.last("anything.else").params == {"x": "1"}


def test_users_info_admin_flag_and_overrides(slack: FakeSlack, client: WebClient) -> None:
    assert client.users_info(user="U1")["user"]["is_admin"] is False
    assert client.users_info(user="UADMIN")["user"]["is_admin"] is True
    slack.set_admin("U1")
    slack.set_user("U1", tz="Europe/Paris", real_name="Ada")
    user = client.users_info(user="U1")["user"]
    assert (user["is_admin"], user["tz"], user["real_name"], user["id"]) == (True, "Europe/Paris", "Ada", "U1")


def test_conversations_replies_per_thread(slack: FakeSlack, client: WebClient) -> None:
    thread = [{"type": "message", "user": "U1", "text": "question", "ts": "1.1"}]
    slack.set_replies("C1", "1.1", thread)
    assert client.conversations_replies(channel="C1", ts="1.1")["messages"] == thread
    assert client.conversations_replies(channel="C1", ts="9.9")["messages"] == []
    assert client.conversations_replies(channel="C2", ts="1.1")["messages"] == []


def test_conversations_replies_pages_like_slack(slack: FakeSlack, client: WebClient) -> None:
    thread = [{"type": "message", "user": "U1", "text": f"turn {i}", "ts": f"1.{i + 1}"} for i in range(5)]
    slack.set_replies("C1", "1.1", thread)
    first = client.conversations_replies(channel="C1", ts="1.1", limit=2)
    assert (first["messages"], first["has_more"]) == (thread[:2], True)
    cursor = first["response_metadata"]["next_cursor"]
    second = client.conversations_replies(channel="C1", ts="1.1", limit=2, cursor=cursor)
    assert second["messages"] == thread[2:4]  # no root on a later page
    last = client.conversations_replies(
        channel="C1", ts="1.1", limit=2, cursor=second["response_metadata"]["next_cursor"]
    )
    assert (last["messages"], last["has_more"], last["response_metadata"]["next_cursor"]) == (thread[4:], False, "")


def test_scripted_error_then_success(slack: FakeSlack, client: WebClient) -> None:
    slack.fail("chat.postMessage", "channel_not_found")
    assert slack.pending("chat.postMessage") == 1
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="CNOPE", text="x")
    assert raised.value.response["error"] == "channel_not_found"
    assert raised.value.response.status_code == 200  # Slack reports API errors in a 200
    assert client.chat_postMessage(channel="C1", text="x")["ok"] is True
    assert [c.status for c in slack.calls("chat.postMessage")] == [200, 200]
    assert slack.pending("chat.postMessage") == 0


def test_rate_limit_without_retry_handler_surfaces_retry_after(slack: FakeSlack, client: WebClient) -> None:
    slack.rate_limit("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="C1", text="x")
    response = raised.value.response
    assert response.status_code == 429
    assert response["error"] == "ratelimited"
    assert response.headers["Retry-After"] == "7"
    assert slack.count("chat.postMessage") == 1


def test_rate_limit_retry_handler_honours_the_scripted_429(slack: FakeSlack) -> None:
    # Retry-After: 0, so the SDK's handler waits only its own jitter (under a second).
    client = WebClient(base_url=slack.base_url, token=TOKEN, timeout=5)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    slack.rate_limit("chat.postMessage", retry_after=0, times=1)
    response = client.chat_postMessage(channel="C1", text="retried")
    assert response["ok"] is True
    calls = slack.calls("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert [c.params["text"] for c in calls] == ["retried", "retried"]
    assert calls[1].at - calls[0].at < 1.5


def test_rate_limit_more_times_than_retries_fails(slack: FakeSlack) -> None:
    client = WebClient(base_url=slack.base_url, token=TOKEN, timeout=5)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    slack.rate_limit("reactions.add", retry_after=0, times=2)
    with pytest.raises(SlackApiError) as raised:
        client.reactions_add(channel="C1", name="eyes", timestamp="1.1")
    assert raised.value.response.status_code == 429
    assert slack.count("reactions.add") == 2


def test_respond_overrides_an_answer(slack: FakeSlack, client: WebClient) -> None:
    slack.respond("team.info", {"ok": True, "team": {"id": "T0PENNY", "name": "Penny"}})
    assert client.team_info()["team"]["name"] == "Penny"
    slack.respond("users.info", lambda call: {"ok": True, "user": {"id": call.params["user"], "is_admin": True}})
    assert client.users_info(user="U9")["user"] == {"id": "U9", "is_admin": True}
    slack.reset()
    assert slack.count() == 0
    assert client.users_info(user="U9")["user"]["is_admin"] is False


def test_api_prefixed_paths_webhooks_and_multipart(slack: FakeSlack) -> None:
    api_client = WebClient(base_url=slack.base_url + "api/", token=TOKEN)
    api_client.chat_postMessage(channel="C1", text="via /api/")
    assert slack.last("chat.postMessage").path == "/api/chat.postMessage"

    WebhookClient(slack.base_url + "hooks/response/123").send(text="replaced", replace_original=True)
    hook = slack.last("hooks/response/123")
    assert hook.params == {"text": "replaced", "replace_original": True}

    api_client.api_call("files.test", files={"file": io.BytesIO(b"\x00bytes")}, data={"channel": "C1"})
    upload = slack.last("files.test")
    assert upload.params["channel"] == "C1"
    assert upload.params["file"] == b"\x00bytes"


def test_wait_for_returns_as_soon_as_the_count_is_reached(slack: FakeSlack, client: WebClient) -> None:
    def post_three() -> None:
        for i in range(3):
            client.chat_postMessage(channel="C1", text=f"m{i}")

    started = time.monotonic()
    worker = threading.Thread(target=post_three)
    worker.start()
    calls = slack.wait_for("chat.postMessage", 3, timeout=10)
    elapsed = time.monotonic() - started
    worker.join()
    assert [c.params["text"] for c in calls] == ["m0", "m1", "m2"]
    assert elapsed < 5


def test_wait_for_times_out_with_what_it_saw(slack: FakeSlack, client: WebClient) -> None:
    client.auth_test()
    with pytest.raises(AssertionError, match=r"chat\.postMessage, got 0; calls so far: auth\.test"):
        slack.wait_for("chat.postMessage", 1, timeout=0.05)
    with pytest.raises(AssertionError, match=r"no call to views\.publish"):
        slack.last("views.publish")


def test_a_bolt_app_runs_against_the_fake(slack: FakeSlack) -> None:
    secret = "test-signing-secret"
    app = App(signing_secret=secret, client=WebClient(base_url=slack.base_url, token=TOKEN))

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], say: Say) -> None:
        say(text=f"hello <@{event['user']}>", thread_ts=event["ts"])

    body = json.dumps(
        {
            "token": "legacy",
            "team_id": "T0PENNY",
            "api_app_id": "A0PENNY",
            "type": "event_callback",
            "event_id": "Ev1",
            "event_time": 1_700_000_000,
            "event": {
                "type": "app_mention",
                "user": "U1",
                "text": "<@UPENNY> hi",
                "ts": "1700000000.000100",
                "channel": "C1",
                "event_ts": "1700000000.000100",
            },
        }
    )
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    request = BoltRequest(
        body=body,
        headers={
            "content-type": ["application/json"],
            "x-slack-signature": [signature],
            "x-slack-request-timestamp": [timestamp],
        },
    )
    assert app.dispatch(request).status == 200
    [posted] = slack.wait_for("chat.postMessage", 1)
    assert posted.params["text"] == "hello <@U1>"
    assert posted.params["thread_ts"] == "1700000000.000100"
    assert slack.count("auth.test") >= 1


def test_auth_test_reports_the_app_and_the_granted_scopes(slack: FakeSlack, client: WebClient) -> None:
    response = client.auth_test()
    assert response["app_id"] == "A0PENNY"
    assert "assistant:write" in response.headers["x-oauth-scopes"].split(",")
    slack.set_scopes(["chat:write"])
    assert client.auth_test().headers["x-oauth-scopes"] == "chat:write"


def test_assistant_status_prompts_and_title_like_slack(slack: FakeSlack, client: WebClient) -> None:
    client.assistant_threads_setStatus(channel_id="C1", thread_ts="1.0", status="is searching the docs…")
    assert slack.status("C1", "1.0") == "is searching the docs…"
    client.chat_postMessage(channel="C1", thread_ts="1.0", text="the answer")
    assert slack.status("C1", "1.0") == ""  # a reply in the thread ends the status
    client.assistant_threads_setStatus(channel_id="C1", thread_ts="1.0", status="is writing…")
    client.assistant_threads_setStatus(channel_id="C1", thread_ts="1.0", status="")
    assert slack.status("C1", "1.0") == ""

    prompts = [{"title": "Deploying", "message": "How do I deploy?"}]
    client.assistant_threads_setSuggestedPrompts(channel_id="D1", prompts=prompts, title="Popular")
    assert slack.suggested_prompts("D1") == prompts  # no thread: the top of the DM
    client.assistant_threads_setTitle(channel_id="D1", thread_ts="2.0", title="How do I deploy?")
    assert slack.title("D1", "2.0") == "How do I deploy?"

    with pytest.raises(SlackApiError, match="invalid_arguments"):
        client.assistant_threads_setSuggestedPrompts(channel_id="D1", prompts=prompts * 5)
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        client.api_call("assistant.threads.setStatus", json={"channel_id": "C1", "status": "x"})


def test_socket_mode_connects_to_the_fakes_websocket(slack: FakeSlack, client: WebClient) -> None:
    from slack_sdk.socket_mode.builtin.client import SocketModeClient

    socket_client = SocketModeClient(app_token="xapp-test-not-a-real-token", web_client=client)
    try:
        socket_client.connect()
        assert socket_client.is_connected()
        assert slack.count("apps.connections.open") == 1
        assert slack.count("websocket") == 1
    finally:
        socket_client.close()
