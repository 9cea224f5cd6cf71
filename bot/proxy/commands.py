"""``penny proxy`` and ``penny keys create|list|revoke``: the proxy's CLI commands, registered on
``penny``'s parser by :func:`add_commands`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TextIO

from bot._cli_common import (
    LOCAL_WORKSPACE,
    WorkspaceChoice,
    chosen_workspace,
    nonblank,
    one_line,
    opened_store,
    port,
    positive_int,
    shown_on_one_line,
    text,
)
from bot.proxy.keys import KEY_PREFIX, KeyRing
from proxy_core import MAX_BUDGET_USD, PennySettings, PriceTable, format_usd, missing_store

__all__ = ["add_commands"]

MAX_LABEL_CHARS = 100  # a key's user, workspace and name: a Slack ID is 11, a name a few words


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    proxy = sub.add_parser("proxy", help="an OpenAI-compatible endpoint with Penny's cost controls, for any "
                                         "LLM client (keys from penny keys create)")
    proxy.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    proxy.add_argument("--port", type=port, default=8787, help="the port (default: 8787; 0: any free port)")
    proxy.add_argument("--workers", type=positive_int, default=1, help="worker processes (default: 1)")
    proxy.add_argument("--cache-scope", choices=("user", "workspace"), default="user",
                       help="who shares cached answers: the key's user only (default), or their workspace")
    proxy.add_argument("--access-log", default=None, metavar="FILE",
                       help="one line per request to FILE (- for stderr)")
    proxy.set_defaults(func=_cmd_proxy)

    keys = sub.add_parser("keys", help="keys for penny proxy: one per person, mapped to their Slack user")
    keys_sub = keys.add_subparsers(required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key (printed once; only its hash is stored)")
    create.add_argument("--user", required=True, type=one_line(MAX_LABEL_CHARS),
                        help="the Slack user the key's calls are billed to")
    create.add_argument("--workspace", type=one_line(MAX_LABEL_CHARS), default=None,
                        help="the Slack workspace (team) ID the key's calls are billed in (default: the one "
                             "Penny's Slack app serves, as its start-up recorded in the store; "
                             f"{LOCAL_WORKSPACE} when Penny never ran in Slack on it)")
    create.add_argument("--name", type=one_line(MAX_LABEL_CHARS, blank=True), default="",
                        help=f"what the key is for, e.g. notebook (at most {MAX_LABEL_CHARS} characters)")
    create.add_argument("--daily-budget-usd", type=_usd, default=None,
                        help="this key's own budget per UTC day, reserved before each call (the user's "
                             "budgets still apply: it narrows, never widens; 0 refuses every call)")
    create.add_argument("--models", type=_models, default=(),
                        help="comma-separated models this key may call (default: every priced model)")
    create.set_defaults(func=_cmd_create)
    listing = keys_sub.add_parser("list", help="every key: ID, user, name, limits, revoked or not")
    listing.set_defaults(func=_cmd_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by ID, or by the key itself if it leaked "
                                                "(its calls get 401 from then on)")
    revoke.add_argument("key_id", metavar="ID", type=nonblank, help="key_… from penny keys list, or the pk-… key")
    revoke.set_defaults(func=_cmd_revoke)


def _cmd_proxy(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    from bot.proxy.server import serve_proxy
    from bot.slack.server import HTTPOptions

    options = HTTPOptions(host=args.host, port=args.port, workers=args.workers, log_level=settings.log_level,
                          access_log=args.access_log)
    return serve_proxy(settings, options, out=out, cache_scope=args.cache_scope)


def _usd(value: str) -> int:
    """``--daily-budget-usd 2.50`` as micro-dollars."""
    try:
        usd = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"an amount in USD, not {value!r}") from None
    if not usd.is_finite() or usd < 0:
        raise argparse.ArgumentTypeError(f"an amount of at least 0, not {value!r}")
    if usd > MAX_BUDGET_USD:
        raise argparse.ArgumentTypeError(f"at most {MAX_BUDGET_USD:,} USD, not {value}")
    micros = int(usd * 1_000_000)  # rounded down: a cap is never raised by rounding
    if micros == 0 and usd > 0:
        raise argparse.ArgumentTypeError(
            f"{value} is less than $0.000001, the smallest budget Penny counts (0 allows nothing)")
    return micros


def _models(value: str) -> tuple[str, ...]:
    """``--models a,b``: each model once. A list naming none is refused: a key's empty list means
    every model, so ``--models "$UNSET"`` would widen the key it was meant to narrow."""
    models = tuple(dict.fromkeys(m.strip() for m in text(value).split(",") if m.strip()))
    if not models:
        raise argparse.ArgumentTypeError(f"names no model ({value!r}); leave --models out for every priced model")
    return models


def _cmd_create(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    # A proxy-only team's first step: it may create the store, and says so (a typo shows at once).
    new = missing_store(settings.store_url)
    with opened_store(settings, create=True) as store:
        unknown = [m for m in args.models if m not in _price_names(settings)]
        if unknown:
            print(f"penny: no price for model {', '.join(unknown)} (see penny prices)", file=sys.stderr)
            return 2
        workspace = chosen_workspace(store, args.workspace)
        ring = KeyRing(store)
        secret, key = ring.create(user_id=args.user, workspace_id=workspace.id, name=args.name,
                                  daily_budget_micros=args.daily_budget_usd, models=args.models)
        try:
            if new is not None:
                print(f"Created a new store at {new} (PENNY_STORE_URL). If Penny has run before, the setting "
                      "names the wrong file: fix it and create the key again.", file=out)
            if workspace.why == "local":
                print(_LOCAL_NOTE, file=out)
            print(f"Created {key.id} for {key.user_id} in {_where(workspace)}. The key (shown once, store it now):",
                  file=out)
            print(secret, file=out)
            out.flush()
        except OSError as exc:  # a closed pipe, a full disk: nobody has the key, so nobody may use it
            ring.revoke(key.id)
            print(f"penny: the new key could not be written out, so {key.id} was revoked; create another",
                  file=sys.stderr)
            if isinstance(exc, BrokenPipeError):
                raise  # penny's main ends a closed pipe quietly, as for every command
            return 1
    return 0


# Before the key, which stays the last line (``penny keys create … | tail -1``).
_LOCAL_NOTE = (f"No Slack workspace is recorded in this store (Penny has not run in Slack on it), so this key's spend "
               f"will show under workspace {LOCAL_WORKSPACE}, not in Slack's /cost. To bill a Slack workspace, revoke "
               "it and create the key with --workspace T… (the team ID penny check shows).")


def _where(workspace: WorkspaceChoice) -> str:
    if workspace.why != "served":
        return workspace.id
    named = f"{workspace.name}, " if workspace.name else ""
    return f"{workspace.id} ({named}the workspace Penny's Slack app serves)"


def _cmd_list(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    with opened_store(settings) as store:
        keys = KeyRing(store).list()
    if not keys:
        print("No keys. Create one with: penny keys create --user U…", file=out)
        return 0
    for key in keys:
        created = datetime.fromtimestamp(key.created_at, UTC).strftime("%Y-%m-%d")
        limits = []
        if key.daily_budget_micros is not None:
            limits.append(f"{format_usd(key.daily_budget_micros)}/day")
        if key.models:
            limits.append("models " + ",".join(key.models))
        if key.unknown:
            limits.append("refused: written by a newer Penny (" + ",".join(name for name, _ in key.unknown) + ")")
        state = "revoked" if key.revoked else "active"
        line = (f"{key.id}  {state:7}  {key.user_id}@{key.workspace_id}  {key.name or '-'}  created {created}"
                + (f"  {'; '.join(limits)}" if limits else ""))
        print(shown_on_one_line(line), file=out)
    return 0


def _cmd_revoke(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    with opened_store(settings) as store:
        key = KeyRing(store).revoke(args.key_id)
    if key is None:
        named = "matches the pk-… key given" if args.key_id.startswith(KEY_PREFIX) else f"{args.key_id}"
        print(f"penny: no key {named} (see penny keys list)", file=sys.stderr)  # a key is never echoed
        return 1
    print(f"Revoked {key.id} ({key.user_id}@{key.workspace_id}).", file=out)
    return 0


def _price_names(settings: PennySettings) -> set[str]:
    return set(PriceTable.load(settings.price_file))
