"""The ``penny`` command line.

Every command goes through the same :class:`~proxy_core.Gateway` the Slack bot will use.
Configuration problems print one clear message naming each bad setting and exit with status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import getpass
import io
import json
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, NoReturn, TextIO

from dotenv import dotenv_values

from bot._cli_common import (
    LOCAL_WORKSPACE,
    NOT_UTF8,
    UsageError,
    announce_new_store,
    chosen_workspace,
    nonblank,
    opened_store,
    port,
    positive_int,
    text,
)
from bot.answer_types import Question
from bot.proxy.commands import add_commands as add_proxy_commands
from bot.settings import BotSettings, load_settings
from bot.slack.pacing import WorkTurns
from bot.slack.runner import STOP_TIMEOUT_S, AnswersCut
from bot.slack.startup import SlackInstallation, SlackUnreachable
from bot.wording import counted
from proxy_core import (
    Accounts,
    CachedAnswers,
    ConfigurationError,
    Gateway,
    PennySettings,
    PriceTable,
    Store,
    StoreError,
    UsageSummary,
    UsageTotals,
    configure_logging,
    count_pending,
    embedder_from_spec,
    evaluate,
    format_report,
    format_usd,
    has_lone_surrogate,
    hit_policy,
    load_pairs,
    missing_store,
    redact,
    serve_metrics,
    unreadable_files,
)

__all__ = ["main"]

TERMINAL_USER_PREFIX: Final = "cli:"  # the default --user: whoever is at the terminal
ENV_PREFIX: Final = "PENNY_"


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stdin: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    # `penny run 0<&-`: with no stdin at all Python sets sys.stdin to None; read it as at its end.
    given_in = stdin or sys.stdin or io.StringIO()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help printed to sys.stdout: a closed pipe shows up here, as below
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except BrokenPipeError:
            _discard_output(sys.stdout)
            return 1
        raise
    if out is None:
        # `penny … >&-`: Python sets sys.stdout to None and print() to it writes nothing, so a
        # command "succeeded" showing nothing (a new key included) and then died on a traceback.
        print("penny: standard output is closed: run it with its output to a terminal, a file or a pipe",
              file=sys.stderr)
        return 1
    settings: BotSettings | None = None
    try:
        if args.func is _cmd_demo:
            # The demo's settings are its own (bot/demo.py): a broken .env or PENNY_* setting, which
            # a newcomer is the most likely to have, must not keep them from seeing what Penny does.
            configure_logging("WARNING")
            demo: int = _cmd_demo(args, None, out, given_in)
            out.flush()
            return demo
        settings = load_settings()
        # A terminal user reads answers, not INFO events, unless they asked for a log level.
        level = settings.log_level if "log_level" in settings.model_fields_set else "WARNING"
        configure_logging(level, json=settings.log_json)
        command: Callable[[argparse.Namespace, BotSettings, TextIO, TextIO], int] = args.func
        if command is not _cmd_check:  # check lists them with the rest of its report
            for line in _misspelled_settings(BotSettings):
                print(f"penny: warning: {line}", file=sys.stderr)
        code = command(args, settings, out, given_in)
        out.flush()  # a closed pipe must show up here, not in the interpreter's flush at exit
        return code
    except BrokenPipeError:
        # The reader went away (`penny prices | head -1`): stop quietly, as the Python docs' "Note on
        # SIGPIPE" advises, pointing the stream at devnull so the interpreter's last flush cannot fail.
        _discard_output(out)
        return 1
    except OSError as exc:
        if not _output_failed(exc):
            raise
        print(f"penny: could not write the output: {exc.strerror}", file=sys.stderr)
        return 1
    except ConfigurationError as exc:
        print(f"penny: configuration error\n{exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"penny: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"penny: store error: {exc}", file=sys.stderr)
        if settings is not None:  # which store, without its password, and what to look at
            print(f"The store is PENNY_STORE_URL={redact(settings.store_url)}: {_store_hint(settings.store_url)}.",
                  file=sys.stderr)
        return 1
    except SlackUnreachable as exc:
        print(f"penny: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="penny", description="Penny: a docs bot that keeps its LLM bill in check.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start Penny in Slack (Socket Mode, or --http), or a terminal chat")
    run.add_argument("--http", action="store_true",
                     help="serve /slack/events over HTTP (gunicorn) instead of Socket Mode")
    run.add_argument("--host", default="127.0.0.1",
                     help="address to listen on with --http (default 127.0.0.1: behind a TLS reverse proxy on "
                          "this host; 0.0.0.0 in a container)")
    run.add_argument("--port", type=port, default=3000, help="HTTP port with --http (default 3000; 0: any free port)")
    run.add_argument("--workers", type=positive_int, default=1,
                     help="worker processes with --http (default 1; one per core uses them all)")
    run.add_argument("--access-log", metavar="FILE", help="with --http: a line per request to FILE ('-': stderr)")
    run.add_argument("--stop-timeout", type=_seconds, default=STOP_TIMEOUT_S, metavar="SECONDS",
                     help="on SIGTERM or Ctrl-C, how long the answers being written may take to finish "
                          f"(default {STOP_TIMEOUT_S:g}; below your supervisor's own: docker stop waits 10)")
    _who(run)
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="see the cost controls in a minute, offline: Penny against a simulated "
                                       "LLM (no key, no real model, $0)")
    demo.set_defaults(func=_cmd_demo)

    ask = sub.add_parser("ask", help="ask the docs one question: the answer, its sources and its cost")
    ask.add_argument("question", type=text)
    ask.add_argument("--fresh", action="store_true", help="skip the cache and ask the LLM")
    _who(ask)
    ask.set_defaults(func=_cmd_ask)

    usage = sub.add_parser("usage", help="spend, tokens and cache savings from the ledger")
    _who(usage, served=True)
    usage.add_argument("--all-users", action="store_true", help="workspace totals instead of one user")
    usage.add_argument("--days", type=_days, default=0, help="the last N days instead of today and this month")
    usage.add_argument("--json", action="store_true", help="print JSON")
    usage.set_defaults(func=_cmd_usage)

    cost = sub.add_parser("cost", help="the /cost report in the terminal: spend, budgets, headroom, trend")
    _who(cost, served=True)
    cost.add_argument("--team", action="store_true", help="the workspace's report (top users, models, proxy keys)")
    cost.add_argument("--json", action="store_true", help="print one JSON object")
    cost.set_defaults(func=_cmd_cost)

    feedback = sub.add_parser("feedback", help="👍/👎 on answers, counted per page and per user")
    feedback.add_argument("--workspace", default=None, type=nonblank,
                          help=f"the Slack workspace (team) ID {SERVED_DEFAULT}")
    feedback.add_argument("--json", action="store_true", help="print JSON")
    feedback.set_defaults(func=_cmd_feedback)

    check = sub.add_parser("check", help="validate settings, prices and the store, and say what is missing")
    check.set_defaults(func=_cmd_check)

    ledger = sub.add_parser("ledger", help="the ledger's safety net: paid calls waiting in the spool")
    ledger_sub = ledger.add_subparsers(required=True, metavar="ACTION")
    replay = ledger_sub.add_parser(
        "replay", help="write spooled paid calls to the store now, and charge calls interrupted mid-answer"
    )
    replay.set_defaults(func=_cmd_ledger_replay)

    cache = sub.add_parser("cache", help="the answer cache: measure its hit decision, inspect, clear")
    cache_sub = cache.add_subparsers(required=True, metavar="ACTION")
    ev = cache_sub.add_parser("eval", help="run the hit decision over labelled pairs (JSON Lines of a, b, label)")
    ev.add_argument("file")
    ev.add_argument("--threshold", type=float, default=None,
                    help="judge by this cosine threshold and the guard instead of the calibrated decision")
    ev.add_argument("--max-wrong", type=float, default=None,
                    help="largest share of hits that may be wrong (default: PENNY_CACHE_MAX_WRONG)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    _who(ev)
    ev.set_defaults(func=_cmd_cache_eval)
    stats = cache_sub.add_parser("stats", help="how many answers are cached")
    stats.set_defaults(func=_cmd_cache_stats)
    clear = cache_sub.add_parser("clear", help="forget cached answers (all, or by context prefix)")
    clear.add_argument("--context", default="", type=text, help="only semantic entries whose context starts with this "
                                                     "(without it: every answer, exact ones included)")
    clear.set_defaults(func=_cmd_cache_clear)

    prices = sub.add_parser("prices", help="list the price table in use")
    prices.set_defaults(func=_cmd_prices)

    index = sub.add_parser("index", help="index a docs folder into the store (only changed passages are embedded)")
    index.add_argument("dir", metavar="DIR", type=_folder,
                       help="the docs folder (Markdown, reStructuredText, HTML, text)")
    index.add_argument("--allow-empty", action="store_true",
                       help="index a folder with no docs, removing every document from the index")
    index.set_defaults(func=_cmd_index)

    add_proxy_commands(sub)
    return p


SERVED_DEFAULT: Final = ("(default: the Slack workspace Penny serves, as its start-up recorded in the store; "
                         "local when Penny never ran in Slack on it)")


def _who(p: argparse.ArgumentParser, *, served: bool = False) -> None:
    """``--user`` and ``--workspace``. ``served``: a report, whose workspace defaults to the one Penny's
    Slack app serves (``chosen_workspace``), except for the terminal user's own numbers."""
    p.add_argument("--user", default=f"{TERMINAL_USER_PREFIX}{_login()}", type=nonblank,
                   help=f"the user to act as (default: {TERMINAL_USER_PREFIX}<login>)")
    if served:
        p.add_argument("--workspace", default=None, type=nonblank,
                       help=f"the workspace {SERVED_DEFAULT}; the terminal user's own numbers are under local")
    else:
        p.add_argument("--workspace", default=LOCAL_WORKSPACE, type=nonblank, help="the workspace (default: local)")


def _folder(value: str) -> str:
    """``penny index DIR``: an empty DIR is refused, not read as the working directory: ``penny index
    "$DOCS"`` with DOCS unset replaced the team's index with whatever files were under the shell's cwd."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must name the docs folder, not be empty (use . for this folder)")
    return value


def _seconds(value: str) -> float:
    """``--stop-timeout S``: seconds, zero or more (argparse turns a refusal into exit 2)."""
    try:
        seconds = float(value)
    except ValueError:  # argparse's own message named the function: "invalid _seconds value"
        raise argparse.ArgumentTypeError(f"a number of seconds, not {value!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, not {value}")
    return seconds


MAX_DAYS: Final = 36_600  # a century: more is a typo


def _days(value: str) -> int:
    """``--days N``: a whole number of days, at least 1 (argparse turns a refusal into exit 2)."""
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of days, not {value!r}") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"from 1 to {MAX_DAYS} days, not {days}")
    return days


# -- commands ------------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace, settings: BotSettings, out: TextIO, _in: TextIO) -> int:
    prices = PriceTable.load(settings.price_file)
    prices.price_for(settings.chat_model)
    prices.price_for(settings.embedding_model)
    new = missing_store(settings.store_url)
    if new is None:
        with opened_store(settings) as store:
            store.ping()
            docs, blocking = _docs_check(settings, store)
        print(f"store       {store_kind(settings.store_url)} ok", file=out)
    else:  # a check creates nothing: a mistyped path must not become a store
        docs, blocking = _docs_check(settings, None)
        print(f"store       {store_kind(settings.store_url)}: none yet at {new}; penny run, penny proxy or penny "
              "index creates it (if Penny has run before, PENNY_STORE_URL names the wrong file)", file=out)
    print(f"docs        {docs}", file=out)
    spool = settings.spool_directory()
    pending = count_pending(spool)
    if pending:
        print(f"ledger      {pending} paid call(s) waiting in {spool} for the store; "
              "Penny replays them on its own, or run: penny ledger replay", file=out)
    else:
        print(f"ledger      nothing waiting (spool: {spool})", file=out)
    set_aside = _set_aside(spool)
    if set_aside:
        print(f"warning     {set_aside}", file=out)
    print(f"chat model  {settings.chat_model} (priced)", file=out)
    # The embedder is what embeds the docs and the questions; PENNY_EMBEDDING_MODEL names no call Penny makes.
    local = not settings.embedder.startswith("openai:")
    print(f"embeddings  {settings.embedder} ({'bundled, runs here: $0' if local else 'priced, billed to the asker'})",
          file=out)
    for line in _slack_check(settings):
        print(f"slack       {line}", file=out)
    for line in _misspelled_settings(BotSettings):
        print(f"warning     {line}", file=out)
    if blocking:
        print(f"problem     {blocking}", file=out)
    if settings.openai_api_key is None:
        # A supported mode, not a failure: a warning, and exit 0.
        print("warning     OPENAI_API_KEY is not set: Penny answers extractively (the best passages with "
              "citations, no LLM call, $0). For LLM answers get a key at https://platform.openai.com/api-keys "
              "and put OPENAI_API_KEY=... in .env; to see the cost controls without one: penny demo", file=out)
        return 1 if blocking else 0
    print("OPENAI_API_KEY is set", file=out)
    return 1 if blocking else 0


def _docs_check(settings: BotSettings, store: Store | None) -> tuple[str, str | None]:
    """What the docs index holds (``store`` None: no store yet, so nothing), and a problem that would
    stop ``penny run`` / ``ask`` (None: none)."""
    from bot.docs.index import DocsIndex
    from bot.service import link_roots_problem

    snapshot = DocsIndex.load(store).snapshot if store is not None else None
    passages = len(snapshot.passages) if snapshot is not None else 0
    wanted = embedder_from_spec(settings.embedder, openai_embed_fn=lambda texts, **_: []).name
    link_roots = link_roots_problem(settings.docs_link_roots)
    if link_roots:
        return f"{passages:,} passages indexed", f"{link_roots}: penny index would stop"
    if snapshot is None or not snapshot.passages:
        if not settings.docs_dir.is_dir():
            return ("index empty", f"PENNY_DOCS_DIR: {settings.docs_dir} is not a directory, and the index is empty: "
                                   "set it to your docs folder (a first run indexes it)")
        return f"index empty; a first run indexes {settings.docs_dir}", None
    shown = f"{len(snapshot.passages):,} passages indexed (version {snapshot.version}, {snapshot.embedder})"
    if snapshot.embedder != wanted:
        return shown, (f"PENNY_EMBEDDER is {wanted!r}, but the index was built with {snapshot.embedder!r}: "
                       "run penny index to embed the docs again, or set PENNY_EMBEDDER back")
    return shown, None


def _misspelled_settings(settings_type: type[PennySettings]) -> list[str]:
    """``PENNY_…`` names in the environment or ``.env`` that are no setting but look like one: a
    typo would otherwise be ignored in silence (``PENNY_USER_DAILY_BUDGET=1``: no budget at all)."""
    known = {f"{ENV_PREFIX}{name}".upper() for name in settings_type.model_fields}
    given = set(os.environ)
    with contextlib.suppress(OSError):
        given |= set(dotenv_values(".env"))
    lines = []
    for name in sorted(n for n in given if n.upper().startswith(ENV_PREFIX) and n.upper() not in known):
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.85)
        if close:
            lines.append(f"{name} is not a setting and is ignored; did you mean {close[0]}?")
    return lines


def _slack_check(settings: BotSettings) -> list[str]:
    """The Slack tokens checked against Slack when they are set (bot.slack.startup.check_report)."""
    from bot.slack.runner import slack_settings
    from bot.slack.startup import check_report

    return check_report(slack_settings(settings))


class _NoProvider:
    """The :class:`~proxy_core.gateway.Upstream` of a command that never calls the provider."""

    def chat(self, **_: object) -> NoReturn:
        raise AssertionError("this command does not call the LLM provider")

    def embed(self, **_: object) -> NoReturn:
        raise AssertionError("this command does not call the LLM provider")


def _cmd_ledger_replay(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    """Replay every spool file in the spool directory whose process has exited (this command's
    own gateway adopts them), then charge interrupted calls. Exit 1 while writes remain pending."""
    # No answer cache: replaying writes needs none, and the semantic one loads an embedding model.
    # No provider either: it writes to the store only, so an operator who removed or rotated
    # OPENAI_API_KEY can still write the paid calls it holds.
    gateway = Gateway.from_settings(settings.model_copy(update={"cache_enabled": False}), maintenance=False,
                                    upstream=_NoProvider(), create_store=False)  # spooled calls go to the real one
    try:
        report = gateway.replay_spool()
        reaped = gateway.reap_interrupted() if report.error is None else []
        print(f"replayed {report.applied} ledger write(s); {report.already} were already in the store; "
              f"{report.pending} still waiting", file=out)
        if reaped:
            worst = sum(entry.cost_micros for entry in reaped)
            print(f"charged {len(reaped)} interrupted call(s) at their worst case, {format_usd(worst)} in all",
                  file=out)
        if report.error is not None:
            print(f"the store is not taking writes yet: {report.error}", file=out)
        elsewhere = count_pending(settings.spool_directory()) - report.pending
        if elsewhere > 0:
            print(f"{elsewhere} more wait in spool files of running Penny processes, which replay them "
                  "themselves", file=out)
        # What no replay can write: before, it showed only as log events, and the replay exited 0
        # ("0 still waiting"), so a `penny ledger replay || alert` never told anyone.
        set_aside = _set_aside(settings.spool_directory())
        if set_aside:
            print(set_aside, file=out)
    finally:
        gateway.close()
    return 1 if report.pending or set_aside else 0


def _set_aside(spool: Path) -> str | None:
    """The spool files set aside with lines no one could read, for the operator (None: none)."""
    files = unreadable_files(spool)
    if not files:
        return None
    return (f"{len(files)} spool file(s) set aside with lines Penny could not read (a paid call may be among them; "
            f"JSON lines, one call each): {', '.join(str(p) for p in files)}; account for them by hand, then "
            "delete them")


def _cmd_cache_eval(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    try:
        pairs = load_pairs(args.file)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {args.file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise ConfigurationError("--threshold must be in (0, 1]")
    if args.max_wrong is not None and not 0 < args.max_wrong < 1:
        raise ConfigurationError("--max-wrong must be in (0, 1)")
    gateway: Gateway | None = None
    try:
        if settings.embedder.startswith("openai:"):
            # The same billed path as production: these embeddings cost money and are recorded.
            gateway = _gateway(settings)
            embedder = embedder_from_spec(
                settings.embedder, openai_embed_fn=gateway.embed_fn(args.user, args.workspace)
            )
        else:
            embedder = embedder_from_spec(settings.embedder)
        policy = hit_policy(
            embedder.name,
            threshold=args.threshold if args.threshold is not None else settings.cache_threshold,
            max_wrong=args.max_wrong if args.max_wrong is not None else settings.cache_max_wrong,
            guard=settings.cache_guard,
        )
        report = evaluate(pairs, embedder, policy=policy)
    finally:
        if gateway is not None:
            gateway.close()
    print(report.to_json() if args.json else format_report(report), file=out)
    return 0


def _cmd_cache_stats(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    with opened_store(settings) as store:
        count = CachedAnswers(store).count()
    mode = "semantic" if settings.semantic_cache else "exact only"
    print(f"{counted(count, 'cached answer')} · {mode} · embedder {settings.embedder} · "
          f"max {settings.cache_max_entries:,} · ttl {settings.cache_ttl_s:g}s", file=out)
    return 0


def _cmd_cache_clear(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    with opened_store(settings) as store:
        gone = CachedAnswers(store).forget(args.context)
    what = f"with context starting {args.context!r}" if args.context else "in total"
    print(f"removed {counted(gone, 'cached answer')} {what}; every replica drops them within a second",
          file=out)
    return 0


def _cmd_index(args: argparse.Namespace, settings: BotSettings, out: TextIO, _in: TextIO) -> int:
    from bot.docs.index import NoDocsFound
    from bot.service import index_docs

    root = Path(args.dir)
    if not root.is_dir():
        named = args.dir if root.is_absolute() else f"{args.dir} ({root.resolve()})"
        what = "it is a file" if root.exists() else "it does not exist"
        print(f"penny index: {named} is not a directory: {what}. Nothing was changed.", file=sys.stderr)
        return 2
    # An openai: embedder embeds through the gateway: metered, in the ledger as penny:index. Indexing
    # asks no questions, so that gateway needs no answer cache (nor its load and sync threads).
    gateway = (_gateway(settings.model_copy(update={"cache_enabled": False}))
               if settings.embedder.startswith("openai:") else None)
    with opened_store(settings, gateway, create=True) as store:
        try:
            report = index_docs(settings, store, root, progress=_progress_bar(sys.stderr), gateway=gateway,
                                allow_empty=args.allow_empty, link_roots=settings.docs_link_roots)
        except NoDocsFound as exc:
            # Emptying the index is no answer to a folder (or part of one) this user may not read.
            hint = "" if exc.unreadable else f" To empty the index on purpose: penny index --allow-empty {args.dir}"
            print(f"penny index: {exc}{hint}", file=sys.stderr)
            return 2
    print(f"indexed {counted(report.files, 'file')} · {counted(report.passages, 'passage')} · "
          f"{report.embedded:,} embedded · {report.removed:,} removed · version {report.version} · "
          f"{report.seconds:.2f}s", file=out)
    return 0


def _progress_bar(stream: TextIO, width: int = 30) -> Callable[[int, int], None]:
    """An in-place ``[####....] 12/25 files`` line, ended with a newline when done; to a stream that
    is not a terminal (a log, a pipe), only that last line."""
    if not stream.isatty():
        def done_only(done: int, total: int) -> None:
            if done >= total:
                print(f"{done}/{total} files", file=stream, flush=True)

        return done_only

    def show(done: int, total: int) -> None:
        filled = width * done // total if total else width
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def _cmd_prices(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    table = PriceTable.load(settings.price_file)
    print(f"price table {table.version} (USD per 1M tokens)", file=out)
    for name, price in sorted(table.models.items()):
        print(f"  {name:28} {price.describe()}", file=out)
    return 0


def _cmd_demo(args: argparse.Namespace, settings: BotSettings | None, out: TextIO, _in: TextIO) -> int:
    from bot.demo import run_demo

    return run_demo(out, open_session=_Session)  # its own settings: the demo never reads the user's


def _cmd_ask(args: argparse.Namespace, settings: BotSettings, out: TextIO, _in: TextIO) -> int:
    with _Session(settings) as session:
        return session.ask(args.question, args.user, args.workspace, out, fresh=args.fresh)


def _cmd_run(args: argparse.Namespace, settings: BotSettings, out: TextIO, stdin: TextIO) -> int:
    if args.http:
        return _run_http(settings, args, out)
    missing = _missing_slack_settings(settings, http=False)
    if missing and (settings.slack_bot_token is not None or settings.slack_app_token is not None):
        # Half set up is a mistake, not a wish for the terminal chat (which, under systemd or
        # docker, would read no input and exit 0, never to be restarted).
        raise ConfigurationError("Slack is half set up; also set " + "; ".join(missing))
    installation = _check_slack_first(settings)  # a bad token fails before the docs are indexed
    turns = WorkTurns()  # Socket Mode's bound on answers running at once, lent during each LLM call
    try:
        return _run_or_chat(args, settings, out, stdin, installation, turns)
    except AnswersCut as cut:
        # The session is closed (the gateway has written its spool); the listeners still running
        # would keep the process alive until they end (the interpreter waits for its pool threads).
        print(f"penny: stopped with {cut.left} answer(s) unfinished", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _run_or_chat(args: argparse.Namespace, settings: BotSettings, out: TextIO, stdin: TextIO,
                 installation: SlackInstallation | None, turns: WorkTurns) -> int:
    announce_new_store(settings)
    with _Session(settings, waiting=turns.waiting) as session:
        if session.gateway is not None and settings.metrics_port:
            try:
                serve_metrics(session.gateway.metrics, settings.metrics_port)
            except OSError as exc:
                raise ConfigurationError(
                    f"PENNY_METRICS_PORT: cannot serve metrics on 127.0.0.1:{settings.metrics_port} ({exc.strerror})"
                ) from exc
            print(f"metrics on http://127.0.0.1:{settings.metrics_port}/metrics", file=out)
        missing = _missing_slack_settings(settings, http=args.http)
        if not missing:
            return _run_slack(session, settings, out, installation, turns, args.stop_timeout)
        print("Slack is not configured, so Penny starts a terminal chat instead. To run it in Slack, set:",
              file=out)
        for line in missing:
            print(f"  {line}", file=out)
        if session.gateway is None:
            print("OPENAI_API_KEY is not set: answers are extractive (the best passages, $0). Get a key at "
                  "https://platform.openai.com/api-keys.", file=out)
        print("Ask a question about the docs; exit, quit, an empty line or Ctrl-D ends the chat.", file=out)
        while True:
            print("you> ", end="", file=out, flush=True)
            line = stdin.readline()
            if not line:  # Ctrl-D: end the prompt's line before the shell's comes back
                print(file=out)
                return 0
            if _ends_chat(line):
                return 0
            if has_lone_surrogate(line):  # no LLM request or store can carry it: it failed with a traceback
                print(f"penny> That line {NOT_UTF8}. Ask again.", file=out)
                continue
            session.ask(line.strip(), args.user, args.workspace, out, fresh=False)


_CHAT_ENDINGS = frozenset({"exit", "exit()", "quit", "quit()", ":q", ":q!", "/exit", "/quit"})


def _ends_chat(line: str) -> bool:
    """Whether a line typed in the terminal chat ends it rather than asks the docs: an empty line,
    or a word people type to leave a prompt (``exit``, ``quit``, ``:q``, …)."""
    return not line.strip() or line.strip().lower() in _CHAT_ENDINGS


def _cmd_feedback(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    from bot.feedback import feedback_counts

    with opened_store(settings) as store:
        workspace = chosen_workspace(store, args.workspace).id
        counts = feedback_counts(store, workspace)
    if args.json:
        print(counts.to_json(), file=out)
        return 0
    print(f"feedback in {workspace}: 👍 {counts.total.up} · 👎 {counts.total.down}", file=out)
    for title, table in (("pages", counts.by_page), ("users", counts.by_user)):
        if table:
            print(f"  by {title[:-1]}:", file=out)
        for name, tally in sorted(table.items(), key=lambda kv: (-kv[1].down, kv[0])):
            print(f"    {name:40} 👍 {tally.up:<4} 👎 {tally.down}", file=out)
    return 0


def _cmd_usage(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    user = None if args.all_users else args.user
    today = datetime.now(UTC).date()
    if args.days > 0:
        periods = {f"last {counted(args.days, 'day')}": (today - timedelta(days=args.days - 1), today)}
    else:
        periods = {"today": (today, today), "this month": (today.replace(day=1), today)}
    with opened_store(settings) as store:
        workspace = chosen_workspace(store, args.workspace, terminal_user=_terminal_user(user)).id
        report = {
            label: store.usage(workspace, first.isoformat(), last.isoformat(), user)
            for label, (first, last) in periods.items()
        }
    if args.json:
        print(json.dumps({k: _summary_json(v) for k, v in report.items()}, indent=2), file=out)
        return 0
    who = "all users" if user is None else user
    for label, summary in report.items():
        print(f"{label} — {who} in {workspace}", file=out)
        print("  " + _totals_line(summary.totals), file=out)
        for model, t in sorted(summary.by_model.items()):
            print(f"  {model:24} {_totals_line(t)}", file=out)
        if user is None:
            for uid, t in sorted(summary.by_user.items(), key=lambda kv: (-kv[1].cost_micros, kv[0])):
                print(f"  user {uid:19} {_totals_line(t)}", file=out)
    return 0


def _cmd_cost(args: argparse.Namespace, settings: PennySettings, out: TextIO, _in: TextIO) -> int:
    import time

    from bot.cost import cost_report, team_report
    from bot.proxy.keys import KeyRing
    from bot.slack.cost_blocks import blocks_to_text, cost_blocks, team_blocks

    with opened_store(settings) as store:
        workspace = chosen_workspace(store, args.workspace,
                                     terminal_user=not args.team and _terminal_user(args.user)).id
        now, accounts, keys = time.time(), Accounts(store, settings), KeyRing(store).list()
        if args.team:
            team = team_report(accounts, workspace, now, keys=keys)
            data, blocks = team.to_json(), team_blocks(team)
        else:
            own = cost_report(accounts, workspace, args.user, now, keys=keys)
            data, blocks = own.to_json(), cost_blocks(own)
    print(json.dumps(data, indent=2) if args.json else blocks_to_text(blocks), file=out)
    return 0


# -- helpers -------------------------------------------------------------------------------------


def _terminal_user(user: str | None) -> bool:
    """Whether ``user`` is someone at the terminal (the default ``--user``), whose calls are ``local``'s."""
    return user is not None and user.startswith(TERMINAL_USER_PREFIX)


def _login() -> str:
    # getpass fails when no login variable is set and the uid has no passwd entry (containers run
    # with an arbitrary uid); that must not stop every command.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local"


# What writing to stdout raises when its file cannot take more (`penny prices > /dev/full`, a full
# disk, a quota). Such an error names no file; every command's own file errors do (or are turned
# into messages of their own), so one of these reaching main is the output's.
_OUTPUT_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _output_failed(exc: OSError) -> bool:
    return exc.errno in _OUTPUT_ERRNOS and exc.filename is None


def _discard_output(stream: TextIO) -> None:
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not backed by a file descriptor: nothing will flush to a pipe
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _gateway(settings: PennySettings) -> Gateway:
    if settings.openai_api_key is None:
        raise ConfigurationError(
            "OPENAI_API_KEY: not set. Penny needs it to call the LLM; get one at "
            "https://platform.openai.com/api-keys and put OPENAI_API_KEY=... in .env "
            "(OPENAI_BASE_URL points Penny at any OpenAI-compatible server)."
        )
    return Gateway.from_settings(settings)


class _Session:
    """The answering service over the configured store, indexing the docs folder first if the
    shared index is empty; with no OpenAI key, answers are extractive."""

    def __init__(self, settings: BotSettings, *, waiting: Callable[[], AbstractContextManager[object]] = nullcontext
                 ) -> None:
        from bot.service import open_answer_service
        from bot.slack.runner import AlertRelay

        self.alerts = AlertRelay(settings)
        self.gateway = (Gateway.from_settings(settings, on_budget_alert=self.alerts, waiting=waiting)
                        if settings.openai_api_key is not None else None)
        self.store = self.gateway.store if self.gateway is not None else settings.open_store()
        try:
            _index_first_run(settings, self.store, self.gateway)
            self.service = open_answer_service(settings, self.store, self.gateway)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.alerts.close()
        if self.gateway is not None:
            self.gateway.close()
        else:
            self.store.close()

    def ask(self, question: str, user: str, workspace: str, out: TextIO, *, fresh: bool) -> int:
        stream = _TerminalStream(out)
        answer = self.service.answer(
            Question(question, user, workspace, f"cli:{uuid.uuid4().hex}", fresh=fresh, stream=stream)
        )
        if not stream.shown:
            print(f"penny> {answer.text}", file=out)
        elif answer.kind == "answer" and answer.text.endswith(stream.shown):
            print(file=out)  # the text is out already; end its line
            note = answer.text[: -len(stream.shown)].strip()
            if note:
                print(f"       {note}", file=out)
        else:  # it broke off for good: say so under what was shown
            print(f"\npenny> {answer.text}", file=out)
        for c in answer.citations:
            where = c.url or c.path
            label = f"{c.title} › {c.section}" if c.section else c.title
            print(f"       [{c.number}] {label} — {where}", file=out)
        if answer.footer:
            print(f"       {answer.footer}", file=out)
        return 1 if answer.kind in ("refused", "error") else 0


class _TerminalStream:
    """Prints an answer the LLM is writing as it arrives; a retry starts it over on a new line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.shown = ""  # the text printed since the last restart

    def delta(self, text: str) -> None:
        self._write(("penny> " if not self.shown else "") + text)
        self.shown += text

    def restart(self) -> None:
        if self.shown:
            self._write("\n       (the answer broke off; starting over)\n")
        self.shown = ""

    def _write(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except OSError:  # a closed pipe: the answer is still paid for and recorded; printing it fails later
            pass


def _missing_slack_settings(settings: BotSettings, *, http: bool) -> list[str]:
    where = "(Slack app settings: https://api.slack.com/apps → your app"
    missing = []
    if settings.slack_bot_token is None:
        missing.append(f"SLACK_BOT_TOKEN=xoxb-…  {where} → OAuth & Permissions)")
    if http and settings.slack_signing_secret is None:
        missing.append(f"SLACK_SIGNING_SECRET=…  {where} → Basic Information → Signing Secret)")
    if not http and settings.slack_app_token is None:
        missing.append(f"SLACK_APP_TOKEN=xapp-…  {where} → Basic Information → App-Level Tokens, "
                       "scope connections:write)")
    return missing


def _index_first_run(settings: BotSettings, store: Store, gateway: Gateway | None) -> None:
    """Index the docs folder when the shared index is empty (a first run)."""
    from bot.docs.index import DocsIndex, IndexConflict
    from bot.service import index_docs

    if DocsIndex.load(store).version != 0:
        return
    print(f"indexing {settings.docs_dir} (first run) …", file=sys.stderr)
    try:
        index_docs(settings, store, settings.docs_dir, progress=_progress_bar(sys.stderr), gateway=gateway,
                   link_roots=settings.docs_link_roots)
    except IndexConflict:  # another replica starting beside this one indexed them first
        print("another Penny indexed the docs meanwhile; using its index", file=sys.stderr)


def _run_http(settings: BotSettings, args: argparse.Namespace, out: TextIO) -> int:
    """``penny run --http``: gunicorn's arbiter, each worker opening its own :class:`_Session` after
    the fork. This process checks the settings and the store, and indexes a first run, then closes
    everything it opened: no thread or connection of it reaches a worker."""
    from bot.slack.runner import slack_settings
    from bot.slack.server import HTTPOptions, serve
    from bot.slack.startup import check_slack
    from bot.workspaces import record_served

    missing = _missing_slack_settings(settings, http=True)
    if missing:
        raise ConfigurationError("penny run --http serves Slack and needs these settings:\n"
                                 + "\n".join(f"  {line}" for line in missing))
    installation = check_slack(slack_settings(settings))  # a bad token fails before anything starts
    announce_new_store(settings)
    # Indexing needs no answer cache (nor its threads); an openai: embedder is billed through a gateway.
    gateway = (Gateway.from_settings(settings.model_copy(update={"cache_enabled": False}), maintenance=False)
               if settings.openai_api_key is not None and settings.embedder.startswith("openai:") else None)
    with opened_store(settings, gateway, create=True) as store:
        store.ping()
        record_served(store, installation)  # the CLI's commands default to this workspace
        _index_first_run(settings, store, gateway)
    if settings.openai_api_key is None:
        print("OPENAI_API_KEY is not set: answers are extractive (the best passages, $0).", file=out)
    options = HTTPOptions(host=args.host, port=args.port, workers=args.workers, log_level=settings.log_level,
                          access_log=args.access_log, graceful_timeout_s=args.stop_timeout)
    print(f"Slack: @{installation.bot_name or installation.bot_user_id} in {installation.team or installation.team_id}",
          file=out, flush=True)
    return serve(settings, options, lambda turns: _Session(settings, waiting=turns.waiting), out=out,
                 metrics_port=settings.metrics_port, installation=installation)


def _check_slack_first(settings: BotSettings) -> SlackInstallation | None:
    """When Slack is set up for Socket Mode: the bot token checked against Slack (auth.test, its
    scopes), before anything slow starts; a failure raises the one message naming the setting."""
    from bot.slack.runner import slack_settings
    from bot.slack.startup import check_slack

    if _missing_slack_settings(settings, http=False):
        return None
    return check_slack(slack_settings(settings))


def _run_slack(session: _Session, settings: BotSettings, out: TextIO, installation: SlackInstallation | None,
               turns: WorkTurns, stop_timeout_s: float) -> int:
    from bot.slack.runner import run_slack

    return run_slack(session.service, session.store, session.gateway, settings, out=out, alerts=session.alerts,
                     installation=installation, turns=turns, stop_timeout_s=stop_timeout_s)


def _store_hint(url: str) -> str:
    """What to look at when the store fails. One hint for both kinds named a SQLite file's folder only,
    which led nowhere for a file that is no store ("file is not a database"), a read-only one or a
    full disk."""
    if store_kind(url) == "sqlite":
        return ("check that it names Penny's store (a SQLite file; any other file reads as \"file is not a "
                "database\"), that this user may write the file and its folder, and that the disk has room")
    return "check that the server is up and reachable from here, and the URL's host, port and password"


def store_kind(url: str) -> str:
    return url.split(":", 1)[0]


def _totals_line(t: UsageTotals) -> str:
    embeddings = f" ({counted(t.embeddings, 'embedding')})" if t.embeddings else ""  # the rest: questions
    return (
        f"{counted(t.requests, 'request')}{embeddings} · {counted(t.prompt_tokens + t.completion_tokens, 'token')} · "
        f"{format_usd(t.cost_micros)} spent · cache {t.hit_rate:.0%} hits, saved {format_usd(t.saved_micros)}"
    )


def _summary_json(s: UsageSummary) -> dict[str, object]:
    def tot(t: UsageTotals) -> dict[str, object]:
        return {**asdict(t), "questions": t.questions, "hit_rate": t.hit_rate}  # hit_rate: of the questions

    return {
        "totals": tot(s.totals),
        "by_user": {k: tot(v) for k, v in s.by_user.items()},
        "by_model": {k: tot(v) for k, v in s.by_model.items()},
        "by_day": {k: tot(v) for k, v in s.by_day.items()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
