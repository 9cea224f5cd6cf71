"""Proxy keys: stored as a hash only, listed, revoked; ``penny keys create|list|revoke``."""

from __future__ import annotations

import io

import pytest

from bot.cli import main
from bot.proxy.keys import KeyRing, hash_key
from proxy_core import ManualClock, Store, redact, store_from_url


def test_a_key_is_stored_as_its_hash_and_authenticates_until_revoked(store: Store, clock: ManualClock) -> None:
    ring = KeyRing(store, clock=clock)
    secret, key = ring.create(user_id="U123", workspace_id="T1", name="notebook", daily_budget_micros=2_000_000,
                              models=["gpt-4.1-mini"])
    assert secret.startswith("pk-") and len(secret) > 40
    stored = b"".join(k.encode() + v for k, v in store.blob_scan(""))
    assert secret.encode() not in stored and hash_key(secret).encode() in stored
    assert ring.authenticate(secret) == key
    assert key.allows_model("gpt-4.1-mini") and not key.allows_model("gpt-4o")
    assert ring.authenticate("pk-unknown") is None and ring.authenticate("sk-" + secret[3:]) is None

    clock.advance(5)
    revoked = ring.revoke(key.id)
    assert revoked is not None and revoked.revoked
    assert ring.authenticate(secret) is None
    assert ring.revoke(key.id) == revoked  # the first revocation time stays
    assert ring.revoke("key_nope") is None
    assert ring.list() == [revoked]


def test_a_key_that_reaches_a_log_line_is_redacted(store: Store, clock: ManualClock) -> None:
    """Penny never logs a key on purpose; one in an exception's text or a URL (a client that put it
    in the query string) is redacted like an OpenAI key or a Slack token."""
    secret, key = KeyRing(store, clock=clock).create(user_id="U123", workspace_id="T1")
    line = redact(f"GET /v1/models?api_key={secret} failed for {key.id}: bad key {secret!r}")
    assert secret not in line and line.count("[redacted]") == 2 and key.id in line
    assert redact("a pk-12 lookup, the pk-test column") == "a pk-12 lookup, the pk-test column"  # words stay


def test_keys_are_listed_oldest_first(store: Store, clock: ManualClock) -> None:
    ring = KeyRing(store, clock=clock)
    _, first = ring.create(user_id="U1", workspace_id="T1")
    clock.advance(1)
    _, second = ring.create(user_id="U2", workspace_id="T1")
    assert [k.id for k in ring.list()] == [first.id, second.id]



def test_a_remembered_key_is_refused_within_cache_s_of_a_revocation_elsewhere(store: Store,
                                                                              clock: ManualClock) -> None:
    reads: list[str] = []

    class CountingStore:  # the store as the proxy's ring sees it, counting its reads
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        def blob_get(self, key: str) -> bytes | None:
            reads.append(key)
            return store.blob_get(key)

    worker = KeyRing(CountingStore(), clock=clock, cache_s=2.0, monotonic=clock)  # type: ignore[arg-type]
    admin = KeyRing(store, clock=clock)  # penny keys revoke, in another process
    secret, key = admin.create(user_id="U1", workspace_id="T1")
    assert worker.authenticate(secret) == key and worker.authenticate(secret) == key
    assert len(reads) == 1
    assert worker.authenticate("pk-unknown") is None and worker.authenticate("pk-unknown") is None
    assert len(reads) == 3  # unknown keys are read each time: a key created later works at once

    admin.revoke(key.id)
    clock.advance(1.9)
    assert worker.authenticate(secret) == key  # still trusted: within the 2 s bound
    clock.advance(0.2)
    assert worker.authenticate(secret) is None

    other_secret, other = admin.create(user_id="U2", workspace_id="T1")
    assert worker.authenticate(other_secret) == other
    worker.revoke(other.id)  # revoked through the same ring: refused at once
    assert worker.authenticate(other_secret) is None

@pytest.fixture
def cli_store(cli_env: str) -> str:
    return cli_env


def penny(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


def test_penny_keys_create_prints_the_key_once_then_list_and_revoke(cli_store: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out = penny("keys", "create", "--user", "U123", "--workspace", "T1", "--name", "notebook",
                      "--daily-budget-usd", "2", "--models", "gpt-4.1-mini,gpt-4o-mini")
    assert code == 0, out
    secret = out.split()[-1]
    assert secret.startswith("pk-")
    store = store_from_url(cli_store)
    try:
        key = KeyRing(store).authenticate(secret)
    finally:
        store.close()
    assert key is not None and key.user_id == "U123" and key.workspace_id == "T1"
    assert key.daily_budget_micros == 2_000_000 and key.models == ("gpt-4.1-mini", "gpt-4o-mini")

    code, listing = penny("keys", "list")
    assert code == 0 and key.id in listing and "U123@T1" in listing and "active" in listing
    assert secret not in listing and "$2" in listing

    assert penny("keys", "revoke", key.id)[0] == 0
    assert "revoked" in penny("keys", "list")[1]
    assert penny("keys", "revoke", "key_nope")[0] == 1
    assert "no key key_nope" in capsys.readouterr().err


def test_a_leaked_key_is_revoked_by_the_key_itself_and_never_echoed(cli_store: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Whoever reports a leaked key may have only the key, not its ID: ``keys revoke pk-…`` finds it
    by its hash. An unknown one used to be printed back whole ("no key pk-…")."""
    code, out = penny("keys", "create", "--user", "U123", "--workspace", "T1")
    assert code == 0
    secret = out.split()[-1]
    code, said = penny("keys", "revoke", secret)
    assert code == 0 and said.startswith("Revoked key_") and secret not in said
    store = store_from_url(cli_store)
    try:
        assert KeyRing(store).authenticate(secret) is None
    finally:
        store.close()
    unknown = "pk-" + "x" * 43
    assert penny("keys", "revoke", unknown)[0] == 1
    err = capsys.readouterr().err
    assert "no key matches the pk-… key given" in err and unknown not in err


class _Unwritable(io.StringIO):
    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


@pytest.mark.parametrize("error", [BrokenPipeError(32, "Broken pipe"), OSError(28, "No space left on device")])
def test_a_key_that_could_not_be_written_out_is_revoked_not_left_working_unseen(
    cli_store: str, capsys: pytest.CaptureFixture[str], error: OSError
) -> None:
    """``penny keys create … | head -0`` (or a full disk): the key was stored, its secret shown to
    nobody; a live key no one holds is one nobody can revoke by knowing it is there."""
    code = main(["keys", "create", "--user", "U123", "--workspace", "T1"], stdout=_Unwritable(error))
    assert code == 1
    store = store_from_url(cli_store)
    try:
        [key] = KeyRing(store).list()
    finally:
        store.close()
    assert key.revoked
    assert f"so {key.id} was revoked; create another" in capsys.readouterr().err


@pytest.mark.parametrize(("amount", "micros"), [("0", 0), ("0.0000019", 1), ("2.5", 2_500_000)])
def test_penny_keys_create_counts_a_budget_in_whole_micro_dollars_rounded_down(
        cli_store: str, amount: str, micros: int) -> None:
    code, out = penny("keys", "create", "--user", "U1", "--daily-budget-usd", amount)
    assert code == 0, out
    store = store_from_url(cli_store)
    try:
        key = KeyRing(store).authenticate(out.split()[-1])
    finally:
        store.close()
    assert key is not None and key.daily_budget_micros == micros


def test_penny_keys_create_refuses_a_budget_below_one_micro_dollar(cli_store: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Rounded down it would be a $0 key, which refuses every call: the amount is refused instead.
    with pytest.raises(SystemExit) as exit_info:
        penny("keys", "create", "--user", "U1", "--daily-budget-usd", "0.0000001")
    assert exit_info.value.code == 2
    assert "less than $0.000001" in capsys.readouterr().err


def test_penny_keys_create_refuses_an_unpriced_model(cli_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = penny("keys", "create", "--user", "U1", "--models", "gpt-nope")
    assert code == 2 and "pk-" not in out
    assert "gpt-nope" in capsys.readouterr().err


@pytest.mark.parametrize("models", ["", ",", " , ,"])
def test_penny_keys_create_refuses_a_models_list_naming_no_model(
        cli_store: str, capsys: pytest.CaptureFixture[str], models: str) -> None:
    """``--models "$MODELS"`` with the variable unset was a key for every model: the list meant to
    narrow the key widened it."""
    with pytest.raises(SystemExit) as exit_info:
        penny("keys", "create", "--user", "U1", "--models", models)
    assert exit_info.value.code == 2
    assert "--models: names no model" in capsys.readouterr().err
    store = store_from_url(cli_store)
    try:
        assert KeyRing(store).list() == []
    finally:
        store.close()


def test_penny_keys_create_keeps_each_model_once(cli_store: str) -> None:
    code, out = penny("keys", "create", "--user", "U1", "--models", "gpt-4o-mini, gpt-4o-mini,gpt-4.1-mini")
    assert code == 0, out
    store = store_from_url(cli_store)
    try:
        [key] = KeyRing(store).list()
    finally:
        store.close()
    assert key.models == ("gpt-4o-mini", "gpt-4.1-mini")


@pytest.mark.parametrize(("flag", "value"), [
    ("--user", "U1\nkey_f00  active   U2@T1"),  # a forged line in penny keys list
    ("--workspace", "T\r1"),
    ("--name", "note\x1b[2Jbook"),  # an escape sequence: clears the terminal of whoever lists the keys
    ("--name", "laptop\u202e"),  # a bidi override: the rest of the line shows reversed
    ("--name", "n" * 10_240),  # one such name hid every key from /cost team
    ("--user", "U" * 10_240),
])
def test_penny_keys_create_refuses_values_that_cannot_be_shown_on_one_line(
        cli_store: str, capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        penny("keys", "create", "--user", "U1", flag, value)
    assert exit_info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err
    store = store_from_url(cli_store)
    try:
        assert KeyRing(store).list() == []
    finally:
        store.close()


def test_penny_keys_create_takes_unicode_and_slack_syntax_as_plain_text(cli_store: str) -> None:
    code, out = penny("keys", "create", "--user", "<!channel>", "--workspace", "T1", "--name", "Zoë's 👩‍💻 notebook")
    assert code == 0, out
    code, listing = penny("keys", "list")
    assert code == 0 and "<!channel>@T1  Zoë's 👩‍💻 notebook" in listing


def test_penny_keys_list_shows_a_key_stored_with_control_characters_on_one_line(cli_store: str) -> None:
    """Keys made before create refused them still list one line each, their control characters escaped."""
    store = store_from_url(cli_store)
    try:
        KeyRing(store).create(user_id="U1\nkey_f00  active", workspace_id="T1", name="a\x1b[31mred")
    finally:
        store.close()
    code, listing = penny("keys", "list")
    assert code == 0 and len(listing.splitlines()) == 1
    assert "U1\\nkey_f00  active@T1  a\\x1b[31mred" in listing and "\x1b" not in listing


def test_a_key_written_by_a_newer_penny_is_listed_and_revoked_whole_and_never_authenticated(
        store: Store, clock: ManualClock, cli_store: str) -> None:
    """A key record with a field this version does not know (a newer Penny wrote it, then was
    rolled back) made ``penny keys list``, ``keys revoke`` of any key and ``/cost team`` end in a
    traceback. It is now listed, revoked with the field kept, and refused when used: the field may
    narrow what the key may do in a way this version cannot enforce."""
    import json

    from structlog.testing import capture_logs

    ring = KeyRing(store, clock=clock)
    secret, key = ring.create(user_id="U1", workspace_id="T1", name="notebook")
    newer = {**json.loads(key.to_json()), "allowed_ips": ["10.0.0.0/8"]}
    store.blob_put_many({"proxy-keys/" + hash_key(secret): json.dumps(newer).encode()})
    clock.advance(1)
    _, plain = ring.create(user_id="U2", workspace_id="T1")

    assert [k.id for k in ring.list()] == [key.id, plain.id]
    with capture_logs() as logs:
        assert ring.authenticate(secret) is None
    assert logs[0]["event"] == "proxy_key_from_a_newer_version" and logs[0]["fields"] == ["allowed_ips"]
    assert ring.revoke(plain.id) is not None
    revoked = ring.revoke(key.id)
    assert revoked is not None and revoked.revoked
    kept = json.loads(dict(store.blob_scan("proxy-keys/"))["proxy-keys/" + hash_key(secret)])
    assert kept["allowed_ips"] == ["10.0.0.0/8"] and kept["revoked_at"] is not None

    cli = store_from_url(cli_store)
    try:
        cli.blob_put_many({"proxy-keys/" + hash_key("pk-newer"): json.dumps(newer).encode()})
    finally:
        cli.close()
    code, listing = penny("keys", "list")
    assert code == 0 and "refused: written by a newer Penny (allowed_ips)" in listing
