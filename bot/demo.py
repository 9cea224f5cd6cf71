"""``penny demo``: what Penny's cost controls do, in a minute, offline and at no cost.

Penny answers from the example handbook (``examples/docs``) through its real answering service,
gateway, cache, limiter, budgets and ledger, against :class:`~bot.simulated_llm.SimulatedLLM` (a
local OpenAI-compatible server: no real model, no real money) on a throwaway SQLite store and spool
in a temporary folder, never the user's ``penny.db``. A scripted sequence shows a fresh answer and
its cost line, the same question again (an exact cache hit), a rephrasing (a semantic hit), a daily
budget running out, a burst over a rate limit, and then ``/cost`` and ``/cost team`` as
``penny cost`` prints them.

The demo's settings are Penny's defaults plus its own (below); the environment and ``.env`` are not
read, so the script plays out the same on every machine.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TextIO

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bot.cost import cost_report, team_report
from bot.settings import BotSettings
from bot.simulated_llm import SimulatedLLM
from bot.slack.cost_blocks import blocks_to_text, cost_blocks, team_blocks
from proxy_core import Accounts, ConfigurationError, Store

__all__ = ["WORKSPACE", "demo_settings", "run_demo"]

WORKSPACE = "demo"
ADA = "demo:ada"  # asks, asks again, rephrases
BEN = "demo:ben"  # has a tiny daily budget
CY = "demo:cy"  # asks in a burst, over a rate limit
BEN_DAILY_BUDGET = Decimal("0.002")
CY_REQUESTS_PER_MINUTE = 2

QUESTION = "How do I deploy to production?"
REPHRASED = "What's the way to deploy to production?"
BEN_QUESTIONS = (
    "How many vacation days do I get?",
    "What is the per diem for meals when travelling?",
    "How do I request access to the production database?",
    "When are performance reviews?",
    "What do I do on my first day?",
)
CY_QUESTIONS = (
    "Who owns the dispatch engine?",
    "How do I rotate a secret?",
    "What are the API rate limits?",
    "How do I turn on a feature flag?",
)


class Session(Protocol):
    """What the demo needs of the CLI's session: the answering service on a store, printing as
    ``penny ask`` prints (``bot/cli.py``)."""

    store: Store

    def ask(self, question: str, user: str, workspace: str, out: TextIO, *, fresh: bool) -> int: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class _DemoSettings(BotSettings):
    """Penny's defaults and the values given, and nothing from the environment or ``.env``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def demo_settings(state_dir: Path, base_url: str, docs_dir: Path) -> BotSettings:
    """The demo's settings: its store and spool in ``state_dir``, the simulated LLM at ``base_url``,
    a daily budget for everyone, a tiny one for :data:`BEN` and a low rate limit for :data:`CY`."""
    overrides: dict[str, Any] = {
        "store_url": f"sqlite:///{state_dir / 'penny.db'}",
        "spool_dir": state_dir / "penny-spool",
        "openai_api_key": "sk-simulated-no-real-key",
        "openai_base_url": base_url,
        "docs_dir": docs_dir,
        # A call's worst case (reserved against the budget before it is made) is its prompt and this many
        # answer tokens; the simulated answers are short, and a smaller worst case lets BEN's budget run
        # out over a few questions rather than at the second.
        "max_output_tokens": 300,
        "user_daily_budget_usd": Decimal("0.05"),
        "user_budget_overrides": {BEN: BEN_DAILY_BUDGET},
        "workspace_monthly_budget_usd": Decimal("5"),
        "user_limit_overrides": {CY: {"requests_per_minute": CY_REQUESTS_PER_MINUTE,
                                      "request_burst": CY_REQUESTS_PER_MINUTE}},
    }
    return _DemoSettings(**overrides)


def run_demo(out: TextIO, *, open_session: Callable[[BotSettings], Session],
             docs_dir: Path | None = None) -> int:
    """Play the demo to ``out``; ``open_session`` opens the CLI's answering session on settings."""
    docs = docs_dir if docs_dir is not None else example_docs()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="penny-demo-") as state, SimulatedLLM() as llm:
        settings = demo_settings(Path(state), llm.base_url, docs)
        say = _Printer(out)
        say.title(f"Penny demo, against a simulated LLM at {llm.base_url}: no real model, no real money.")
        say.note("Everything else is Penny's real path: the answering service and the gateway's cache, rate "
                 f"limits,\nbudgets and ledger, at {settings.chat_model}'s real prices, on a throwaway SQLite "
                 f"store in {state}\n(deleted at the end; your penny.db is not touched). Docs: {docs}")
        with open_session(settings) as session:
            def ask(user: str, question: str) -> int:
                say.line(f"{user}> {question}")
                return session.ask(question, user, WORKSPACE, out, fresh=False)

            say.step(1, "A fresh question: the LLM answers, and the line under the answer says what it cost.")
            ask(ADA, QUESTION)
            say.step(2, "The same question again: the exact cache answers, $0, and says what it saved.")
            ask(ADA, QUESTION)
            say.step(3, "A rephrasing: the semantic cache knows it is the same question, also $0.")
            ask(ADA, REPHRASED)
            say.step(4, f"A budget that runs out: {BEN} may spend ${BEN_DAILY_BUDGET} a day. Penny reserves each "
                        "call's worst case\n   before calling the LLM, so the first question that might not fit "
                        "is refused, at $0, with when the budget resets.")
            for question in BEN_QUESTIONS:
                if ask(BEN, question) != 0:
                    break
            say.step(5, f"A burst: {CY} may ask {CY_REQUESTS_PER_MINUTE} questions a minute. Four in a row: "
                        "the rest are refused, at $0, with when to try again.")
            for question in CY_QUESTIONS:
                ask(CY, question)
            now, accounts = time.time(), Accounts(session.store, settings)
            say.step(6, f"/cost for {ADA} (what `penny cost` prints, and Slack's /cost shows):")
            say.block(blocks_to_text(cost_blocks(cost_report(accounts, WORKSPACE, ADA, now))))
            say.step(7, "/cost team (for admins: who spent what, and what the cache saved):")
            say.block(blocks_to_text(team_blocks(team_report(accounts, WORKSPACE, now))))
        say.title(f"Done in {time.monotonic() - started:.0f}s. That was a simulated LLM: no real model, no real "
                  "money.")
        say.note("For real answers: put OPENAI_API_KEY=... in .env and run `make run` (or `penny ask \"...\"`).")
    return 0


def example_docs() -> Path:
    """The example handbook beside the package (a source checkout), else ``examples/docs`` here."""
    for candidate in (Path(__file__).resolve().parents[1] / "examples" / "docs", Path("examples/docs")):
        if candidate.is_dir():
            return candidate
    raise ConfigurationError("penny demo answers from the example handbook in examples/docs, which is not here: "
                             "run it from Penny's source folder.")


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self._out = out

    def line(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def title(self, text: str) -> None:
        self.line(f"\n== {text}")

    def note(self, text: str) -> None:
        self.line(text)

    def step(self, number: int, text: str) -> None:
        self.line(f"\n{number}. {text}")

    def block(self, text: str) -> None:
        self.line("   " + text.replace("\n", "\n   "))
