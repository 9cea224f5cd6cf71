"""The gateway: the one path every LLM call takes.

Pipeline, in order (each step may end the request; nothing is charged unless upstream answered, or
took an attempt it did not finish: see step 7):

1. **Idempotency** — a request ID already settled returns its recorded result; one in flight is
   waited for (``inflight_wait_s``) and then refused. One request ID never makes two upstream
   calls or two ledger entries.
2. **Cache** — a hit is served before the limiter, the budget and the breaker: it costs $0 and
   records the money it saved. Users out of budget, or during an outage, still get known answers.
3. **Rate limit** — per-user token buckets for requests and LLM tokens.
4. **Budget** — the worst-case cost is reserved against the user's day and the workspace's month
   (and the day of the call's source, a proxy key, when it has a budget of its own). A retry that
   follows attempts the provider billed (see step 7) first tops the reservation up by what they
   cost, checked on every line as admission is; a line that cannot hold it refuses the retry.
5. **Circuit breaker** — checked before every attempt; shared through the store.
6. **Upstream with retries** — one attempt at a time through the openai SDK; every failed attempt
   that signals an outage feeds the breaker.
7. **Settle** — the real cost replaces the reservation, the ledger gets one entry, the result is
   recorded under the request ID, and the answer is cached. A settle the store does not confirm
   (down, full, timed out) goes to the ledger's keeper (``keeper.py``), which spools it durably
   before the answer is returned and replays it once the store answers: a paid call always
   reaches the ledger. Failed attempts that the provider had taken (a stream that broke off, a
   request sent whole and never answered, a 200 Penny could not use: ``UpstreamError.accepted``),
   of a chat completion or an embedding call alike, are billed by it, so they are charged too,
   estimated (:class:`_FailedAttempts`): with the answer when a retry answers, else as an entry of
   their own before the claim is given back.

A call whose process dies between admission and settle leaves an owned claim; when it expires,
the reaper (``reap_interrupted``, run by every gateway's maintenance thread) charges it at its
reserved worst case as an *unsettled* ledger entry, which a late real settle replaces. Its request
ID is then refused (``RequestInterrupted``) rather than paid for twice. A request ID is used once:
after its recorded result is forgotten its ledger entry still holds it (``RequestAnswered``), since
a second paid call under it could not be recorded.

The store sees few round trips, because on Redis each costs more than the rest of the pipeline:
a cache hit is looked up in process and recorded with one ``record_hit`` (claim, ledger and
result at once); a miss takes one ``admit`` (steps 1, 3, 4 and 5 for its first attempt) and one
``settle`` (step 7 with the breaker's success), plus the cache's own write, and one
``top_up_admission`` before each retry that follows an attempt the provider billed.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from proxy_core import budget as budget_math
from proxy_core.accounts import Accounts, budget_lines_for, rate_limit_specs
from proxy_core.alerts import BudgetAlert, BudgetAlerter
from proxy_core.breaker import BreakerPolicy, BreakerState, Permit
from proxy_core.breaker import cooldown as breaker_cooldown
from proxy_core.budget import CallSource
from proxy_core.cache import (
    CachedAnswer,
    CacheDecision,
    CacheLayer,
    CacheScope,
    ExactCache,
    StandaloneQuestion,
    normalize_question,
)
from proxy_core.clock import Clock, Sleep
from proxy_core.errors import (
    BudgetExceeded,
    CircuitOpen,
    ConfigurationError,
    PennyError,
    RateLimited,
    Refused,
    RequestAnswered,
    RequestInFlight,
    RequestInterrupted,
    StoreError,
    UpstreamError,
)
from proxy_core.inflight import Attempt, InFlight
from proxy_core.keeper import LedgerKeeper, ReplayReport
from proxy_core.log import get_logger
from proxy_core.metrics import BREAKER_STATES, Metrics
from proxy_core.prices import ModelPrice, PriceTable, chat_cost, embedding_cost
from proxy_core.results import CacheStatus, ChatResult, EmbeddingResult
from proxy_core.retry import RetryPolicy, call_with_retries, counts_against_breaker
from proxy_core.same_question import SameQuestion
from proxy_core.settings import PennySettings
from proxy_core.spool import SettleSpool, SpoolRecord
from proxy_core.stores.base import (
    Admission,
    BreakerRef,
    BudgetDecision,
    Claim,
    ClaimOwner,
    Kind,
    LedgerEntry,
    Store,
    UsageSummary,
)
from proxy_core.tokens import estimate_chat_tokens, estimate_text_tokens, load_word_table
from proxy_core.upstream import ChatResponse, EmbedResponse, OpenAIUpstream

__all__ = ["AnswerStream", "ChatRequest", "EmbedRequest", "Gateway", "ReplayReport", "StreamingUpstream", "Upstream"]


# Who the current chat call is for (user, workspace, request ID, source): the semantic cache's
# billed embedder reads it, so a question's embedding is charged to the person (and source) that asked.
_CALLER: ContextVar[tuple[str, str, str, CallSource | None] | None] = ContextVar("penny_caller", default=None)
# What the embeddings billed to the current chat call have cost so far (each a ledger entry of its
# own), so that the caller is told the whole of what its request was charged.
_EMBEDDED: ContextVar[list[int] | None] = ContextVar("penny_embedded", default=None)

T = TypeVar("T")
R = TypeVar("R", ChatResult, EmbeddingResult)

Message = Mapping[str, Any]


class Upstream(Protocol):
    """One attempt at the provider; failures are already translated to ``UpstreamError``."""

    def chat(
        self,
        *,
        model: str,
        messages: Sequence[Message],
        max_tokens: int,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatResponse: ...

    def embed(self, *, model: str, inputs: list[str], dimensions: int | None = None) -> EmbedResponse: ...


class StreamingUpstream(Upstream, Protocol):
    """An upstream that can also stream a chat completion: ``on_delta`` gets each piece of the
    answer's text as it arrives; the return value is the whole response, usage included."""

    def chat_stream(
        self,
        *,
        model: str,
        messages: Sequence[Message],
        max_tokens: int,
        on_delta: Callable[[str], None],
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChatResponse: ...


class AnswerStream(Protocol):
    """Where a streamed answer goes while upstream writes it (the bot: a Slack message).

    ``delta`` gets each new piece of text. ``restart`` is called before a retry when the failed
    attempt had already sent text: what was shown so far is void and the answer starts over. When
    the last attempt fails after sending text, nothing more is called: the caller, which gets the
    error, clears what was shown. Only misses stream; a cache hit or a replay returns the whole
    answer without touching it. A stream that raises is dropped for the rest of the answer (the
    call goes on and is billed as usual): showing progress must never lose a paid-for answer.
    """

    def delta(self, text: str) -> None: ...

    def restart(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion to run: everything the pipeline needs, built once by :meth:`Gateway.chat`
    and passed from step to step."""

    user_id: str
    workspace_id: str
    request_id: str
    messages: tuple[Message, ...]
    model: str
    price: ModelPrice
    max_tokens: int
    temperature: float | None = None
    context: str = ""
    channel_id: str | None = None
    use_cache: bool = True
    cache_as: StandaloneQuestion | None = None
    stream: AnswerStream | None = None
    source: CallSource | None = None
    store_answer: bool = True


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One embedding call to run, built by :meth:`Gateway.embed`."""

    user_id: str
    workspace_id: str
    request_id: str
    inputs: tuple[str, ...]
    model: str
    price: ModelPrice
    dimensions: int | None = None
    source: CallSource | None = None


@dataclass(frozen=True, slots=True)
class _Lookup:
    """The cache step's outcome: where the question would be cached (None: not cacheable) and the
    decision, whose ``answer`` is set on a hit."""

    scope: CacheScope | None
    question: str | None
    decision: CacheDecision


@dataclass(frozen=True, slots=True)
class _Admitted:
    """What admission took: the budget lines reserved on, the first attempt's breaker permit, the
    claim's owner (whose ``call_id`` a release or a top-up names), the UTC day it was charged on
    (its ledger day) and the amount it reserved (one attempt's worst case)."""

    lines: list[budget_math.BudgetLine]
    permit: Permit | None
    owner: ClaimOwner
    day: str
    amount: int

    @property
    def call_id(self) -> str:
        return self.owner.call_id


@dataclass(slots=True)
class _FailedAttempts:
    """Attempts at one call that the provider accepted and then failed (``UpstreamError.accepted``):
    a stream that broke off, before or after text, a request sent whole that got no answer, or a 200
    Penny could not use. The provider bills each one's prompt (a chat completion's messages, an
    embedding call's inputs) and whatever it generated, so Penny charges them: the prompt as
    ``prompt_tokens`` (Penny's estimate, or the count the provider reported for the same prompt when
    a retry answered) and the text a stream had shown, estimated. What an unanswered request
    generated is never seen: it is charged its prompt only (all an embedding call is billed for).
    What a stream showed is estimated no higher than ``max_completion_tokens`` (a chat's
    ``max_tokens``: the provider stops there and bills no more)."""

    prompt_tokens: int
    max_completion_tokens: int = 0  # a chat's max_tokens; 0 for an embedding call, which generates nothing
    texts: list[str] = field(default_factory=list)  # one per accepted attempt: the text it showed ("" for none)
    covered: int = 0  # how many of them the call's reservation has been topped up for

    def add(self, exc: UpstreamError) -> None:
        if exc.accepted:
            self.texts.append(exc.streamed)

    def noting(self, attempt: Callable[[], T]) -> Callable[[], T]:
        """``attempt``, with each failure it raises noted here. An attempt interrupted while it
        waited for the provider (Ctrl-C in the terminal chat) is noted as one the provider took:
        the request had most likely gone out, and Penny over-counts rather than loses a charge."""

        def noted() -> T:
            try:
                return attempt()
            except UpstreamError as exc:
                self.add(exc)
                raise
            except KeyboardInterrupt:
                self.texts.append("")
                raise

        return noted

    def completion_tokens(self) -> int:
        return sum(min(estimate_text_tokens(text), self.max_completion_tokens) for text in self.texts)

    def cost(self, price: ModelPrice, *, prompt_tokens: int | None = None) -> int:
        """What they cost at ``price`` (a chat or an embedding model's), each with ``prompt_tokens``
        (default: the estimate) of prompt."""
        if not self.texts:
            return 0
        prompt = (self.prompt_tokens if prompt_tokens is None else prompt_tokens) * len(self.texts)
        if price.kind == "embedding":
            return embedding_cost(price, prompt)
        return chat_cost(price, prompt, 0, self.completion_tokens())


class _Held(Exception):
    """Internal: the request ID is held by an earlier or concurrent call of the same request."""

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.state)
        self.claim = claim


def _breaker_policy(settings: PennySettings) -> BreakerPolicy:
    """The circuit breaker's policy from the settings (a probe may take two request timeouts)."""
    return BreakerPolicy(
        failure_threshold=settings.breaker_failure_threshold,
        failure_ratio=settings.breaker_failure_ratio,
        min_calls=settings.breaker_min_calls,
        window_s=settings.breaker_window_s,
        cooldown_s=settings.breaker_cooldown_s,
        probe_timeout_s=settings.request_timeout_s * 2,
        max_cooldown_s=settings.breaker_max_cooldown_s,
    )


def _retry_policy(settings: PennySettings) -> RetryPolicy:
    """Upstream retries' policy from the settings."""
    return RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        base_s=settings.retry_base_s,
        cap_s=settings.retry_cap_s,
        max_retry_after_s=settings.retry_max_wait_s,
        deadline_s=settings.retry_deadline_s,
    )


class Gateway:
    """Runs every chat completion and embedding through Penny's cost controls.

    Thread-safe: one instance serves every Slack worker thread. ``clock`` is monotonic (latency,
    waits), ``wall`` is epoch time (ledger timestamps, budget periods), ``sleep`` waits.
    """

    def __init__(
        self,
        settings: PennySettings,
        *,
        store: Store,
        upstream: Upstream,
        prices: PriceTable | None = None,
        cache: CacheLayer | None = None,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        sleep: Sleep = time.sleep,
        rand: Callable[[], float] = random.random,
        breaker_name: str = "openai",
        on_budget_alert: Callable[[BudgetAlert], None] | None = None,
        spool: SettleSpool | None = None,
        maintenance: bool = False,
        waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        """``on_budget_alert`` is called (on the request's thread) once per period for each budget
        line reaching 50%, 80% and 100%; it must not block for long, and its failures are logged.
        ``waiting()`` is entered around each wait on something slower than the store — the upstream
        call with its retries' back-off, the wait for the same request running elsewhere — so a
        caller that bounds how many requests run at once can let another one run meanwhile
        (``bot.slack.pacing.WorkTurns``).

        ``spool`` keeps settles the store did not confirm (default: ``settings.spool_directory()``);
        spool files left by exited processes are adopted at once. ``maintenance`` starts a daemon
        thread that replays the spool as soon as the store answers and reaps interrupted calls."""
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.prices = prices if prices is not None else PriceTable.load(settings.price_file)
        # Refuse to start with a model we cannot price: it would otherwise be billed as $0.
        self._chat_price = self.prices.price_for(settings.chat_model)
        self._embed_price = self.prices.price_for(settings.embedding_model)
        load_word_table()  # what every reservation's token estimate reads, read before the first call
        self._clock = clock
        self._wall = wall
        self.cache: CacheLayer | None = cache
        if self.cache is None and settings.cache_enabled:
            self.cache = self._default_cache()
        self.metrics = metrics if metrics is not None else Metrics()
        self._sleep = sleep
        self._rand = rand
        self._waiting = waiting
        self._breaker_name = breaker_name
        self._breaker = _breaker_policy(settings)
        self._in_flight = InFlight()
        self._same_question: SameQuestion[CachedAnswer] = SameQuestion()
        self._breaker_ref = BreakerRef(breaker_name, self._breaker)
        self._retry = _retry_policy(settings)
        # A claim must outlive the longest the pipeline can take, or a retry could run it twice.
        self._claim_ttl_s = settings.retry_deadline_s + settings.request_timeout_s + 30.0
        self._log = get_logger()
        self._on_budget_alert = on_budget_alert
        self._alerter = BudgetAlerter(store) if on_budget_alert is not None else None
        # The read side (usage, headroom, budgets) for /cost and the CLI, on the same store and keys.
        self.accounts = Accounts(store, settings, wall=wall)
        self.ledger = LedgerKeeper(
            store, spool if spool is not None else SettleSpool(settings.spool_directory()), metrics=self.metrics,
            clock=clock, on_settled=self._replayed, maintenance=maintenance,
        )

    @property
    def sleep(self) -> Sleep:
        """The gateway's (injected) sleep, for callers that wait as a refusal tells them to."""
        return self._sleep

    @classmethod
    def from_settings(
        cls, settings: PennySettings, *, upstream: Upstream | None = None, create_store: bool = True, **kwargs: Any
    ) -> Gateway:
        """Open the configured store and provider. Raises ConfigurationError naming what is missing
        (``create_store=False``: also a SQLite store that does not exist yet, see ``store_from_url``)."""
        if upstream is None:
            key = settings.openai_api_key
            upstream = OpenAIUpstream(
                api_key=key.get_secret_value() if key is not None else None,
                base_url=settings.openai_base_url,
                timeout_s=settings.request_timeout_s,
            )
        store = settings.open_store(create=create_store)
        kwargs.setdefault("maintenance", True)
        try:
            return cls(settings, store=store, upstream=upstream, **kwargs)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.ledger.close()
        self.store.close()

    # -- nothing lost ---------------------------------------------------------------------------

    def replay_spool(self) -> ReplayReport:
        """Apply the spooled ledger writes now (see :class:`~proxy_core.keeper.LedgerKeeper`)."""
        return self.ledger.replay()

    def reap_interrupted(self) -> list[LedgerEntry]:
        """Charge calls whose process died mid-call at their reserved worst case (unsettled)."""
        return self.ledger.reap()

    def pending_ledger_writes(self) -> int:
        """Spooled writes not yet in the store, across every process sharing this spool directory."""
        return self.ledger.pending_writes()

    @property
    def spool(self) -> SettleSpool:
        return self.ledger.spool

    def _default_cache(self) -> CacheLayer:
        s = self.settings
        if not s.semantic_cache:
            return ExactCache(self.store, ttl_s=s.cache_ttl_s)
        from proxy_core.semantic.decision import hit_policy
        from proxy_core.semantic.embedders import embedder_from_spec
        from proxy_core.semantic.layer import SemanticCache

        embedder = embedder_from_spec(s.embedder, openai_embed_fn=self._billed_embed)
        if s.embedder.startswith("openai:"):
            self.prices.price_for(s.embedder.split(":", 1)[1].split("?", 1)[0])  # priced, or refuse to start
        cache = SemanticCache(
            self.store,
            embedder,
            ttl_s=s.cache_ttl_s,
            max_entries=s.cache_max_entries,
            policy=hit_policy(embedder.name, threshold=s.cache_threshold, max_wrong=s.cache_max_wrong,
                              guard=s.cache_guard),
            top_k=s.cache_top_k,
            clock=self._wall,
        )
        cache.start()
        return cache

    def _billed_embed(self, texts: list[str], *, model: str, dimensions: int | None) -> list[list[float]]:
        """Embeddings for the semantic cache, billed to whoever is asking (or to Penny itself)."""
        return self._embed_for_caller("question-embedding", texts, model, dimensions)

    def _embed_for_caller(
        self, purpose: str, texts: list[str], model: str, dimensions: int | None
    ) -> list[list[float]]:
        caller = _CALLER.get()
        source: CallSource | None = None
        if caller is None:
            user, workspace, request_id = "penny", "penny", f"penny:embed:{uuid.uuid4().hex}"
        else:
            # One embedding per purpose per request: a retried request replays it, never pays twice.
            user, workspace, request_id, source = caller[0], caller[1], f"{caller[2]}:{purpose}", caller[3]
        embedded = _EMBEDDED.get() if caller is not None else None
        try:
            result = self.embed(user_id=user, workspace_id=workspace, request_id=request_id, inputs=texts,
                                model=model, dimensions=dimensions, source=source)
        except PennyError as exc:  # refused, or failed after attempts the provider billed
            if embedded is not None:
                embedded.append(exc.charged_micros)
            raise
        if embedded is not None and not result.replayed:  # a replay was charged, and told, before
            embedded.append(result.cost_micros)
        return result.vectors

    @contextmanager
    def billed_to(
        self, user_id: str, workspace_id: str, request_id: str, source: CallSource | None = None
    ) -> Iterator[None]:
        """Within the block, :meth:`caller_embed_fn` functions bill ``user_id`` for ``request_id``."""
        token = _CALLER.set((user_id, workspace_id, request_id, source))
        try:
            yield
        finally:
            _CALLER.reset(token)

    def caller_embed_fn(self, purpose: str) -> Callable[..., list[list[float]]]:
        """An OpenAI-style embed function billed to the request of the enclosing :meth:`billed_to`
        (request ID ``<request>:<purpose>``, so a retry replays it), or to Penny outside one. For one
        embedding per request and purpose, such as the docs search of a question."""

        def embed(texts: list[str], *, model: str, dimensions: int | None) -> list[list[float]]:
            return self._embed_for_caller(purpose, texts, model, dimensions)

        return embed

    def embed_fn(self, user_id: str, workspace_id: str) -> Callable[..., list[list[float]]]:
        """An OpenAI-style embed function billed to ``user_id`` (for tools such as ``penny cache eval``)."""

        def embed(texts: list[str], *, model: str, dimensions: int | None) -> list[list[float]]:
            result = self.embed(user_id=user_id, workspace_id=workspace_id,
                                request_id=f"{user_id}:embed:{uuid.uuid4().hex}", inputs=texts,
                                model=model, dimensions=dimensions)
            return result.vectors

        return embed

    def invalidate_cache_entry(self, entry_id: str) -> bool:
        """Forget one cached answer everywhere (a 👎 on it). False if it was not cached."""
        return self.cache is not None and self.cache.invalidate_entry(entry_id)

    @property
    def claim_ttl_s(self) -> float:
        """Seconds a request's claim is held while it runs: the longest the pipeline can take."""
        return self._claim_ttl_s

    # -- public entry points -----------------------------------------------------------------

    def chat(
        self,
        *,
        user_id: str,
        workspace_id: str,
        request_id: str,
        messages: Sequence[Message],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        context: str = "",
        channel_id: str | None = None,
        use_cache: bool = True,
        cache_as: StandaloneQuestion | None = None,
        stream: AnswerStream | None = None,
        source: CallSource | None = None,
        store_answer: bool = True,
    ) -> ChatResult:
        """Answer a chat completion for ``user_id`` in ``workspace_id``.

        ``request_id`` makes the call idempotent (the bot passes the Slack event ID). ``context``
        is the cache's context fingerprint; ``use_cache=False`` asks upstream even if an answer is
        cached (the fresh answer then replaces it). ``cache_as`` caches under a standalone question
        when the messages carry more than it (the bot's retrieved passages). ``stream`` receives
        the answer's text as upstream writes it, when upstream can stream (a miss only); the
        result is the same either way. ``source`` names where the call comes from in the ledger
        (a proxy key; None: the front end's own call) and may bring a daily budget of its own.
        ``store_answer=False`` (with ``use_cache=False``: a client's ``Cache-Control: no-store``)
        keeps the answer out of the cache, where the next asker in its scope would be served it.
        """
        if not messages:
            raise ValueError("messages must not be empty")
        model = model or self.settings.chat_model
        request = ChatRequest(
            user_id=user_id, workspace_id=workspace_id, request_id=request_id, messages=tuple(messages),
            model=model, price=self._price(model), max_tokens=max_tokens or self.settings.max_output_tokens,
            temperature=temperature, context=context, channel_id=channel_id, use_cache=use_cache,
            cache_as=cache_as, stream=stream, source=source, store_answer=store_answer,
        )
        token = _CALLER.set((user_id, workspace_id, request_id, source))
        embedded: list[int] = []
        embedded_token = _EMBEDDED.set(embedded)
        try:
            result = self._idempotent("chat", workspace_id, request_id, ChatResult.from_json,
                                      lambda: self._chat(request))
        except PennyError as exc:
            exc.charged_micros += sum(embedded)  # the question's embedding was billed all the same
            raise
        finally:
            _EMBEDDED.reset(embedded_token)
            _CALLER.reset(token)
        if result.replayed or sum(embedded) == result.embedding_micros:
            return result
        # The answer's cache write embedded the question after the answer was recorded (a fresh
        # answer, not looked up): this asker was billed that too. A replay says what was recorded.
        return replace(result, embedding_micros=sum(embedded))

    def embed(
        self,
        *,
        user_id: str,
        workspace_id: str,
        request_id: str,
        inputs: Sequence[str],
        model: str | None = None,
        dimensions: int | None = None,
        source: CallSource | None = None,
    ) -> EmbeddingResult:
        """Embed ``inputs`` for ``user_id``, billed as embedding spend (``source`` as for :meth:`chat`)."""
        if not inputs:
            raise ValueError("inputs must not be empty")
        model = model or self.settings.embedding_model
        request = EmbedRequest(user_id=user_id, workspace_id=workspace_id, request_id=request_id,
                               inputs=tuple(inputs), model=model, price=self._price(model), dimensions=dimensions,
                               source=source)
        return self._idempotent("embedding", workspace_id, request_id, EmbeddingResult.from_json,
                                lambda: self._embed(request))

    def usage(
        self, workspace_id: str, first_day: str, last_day: str, user_id: str | None = None
    ) -> UsageSummary:
        return self.store.usage(workspace_id, first_day, last_day, user_id)

    # -- the pipeline ---------------------------------------------------------------------------

    def _idempotent(
        self,
        kind: str,
        workspace_id: str,
        request_id: str,
        parse: Callable[[str], R],
        run: Callable[[], R],
    ) -> R:
        """Run the request unless its ID is held: replay a recorded result, or wait (up to
        ``inflight_wait_s``) for a concurrent call of it to finish, then refuse."""
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                return run()
            except _Held as held:
                claim = held.claim
                if claim.state == "done" and claim.result is not None:
                    self.metrics.requests.labels(kind, "replayed", "none").inc()
                    self._log.info("request_replayed", request_id=request_id, kind=kind)
                    return parse(claim.result)
                if claim.state == "interrupted" or claim.state == "done":
                    # done without a result: answered before, its result forgotten (the ledger entry
                    # holds the ID, a second call under it could not be recorded)
                    refused: BaseException = (RequestInterrupted(request_id) if claim.state == "interrupted"
                                              else RequestAnswered(request_id))
                    self._count_failure(kind, request_id, refused)
                    raise refused from None
                now = self._clock()
                if deadline is None:
                    deadline = now + self.settings.inflight_wait_s
                if now >= deadline:
                    exc: BaseException = RequestInFlight(request_id)
                    self._count_failure(kind, request_id, exc)
                    raise exc from None
                with self._waiting():
                    self._sleep(delay)
                delay = min(delay * 2, 1.0)
            except BaseException as exc:
                self._count_failure(kind, request_id, exc)
                raise

    def _count_failure(self, kind: str, request_id: str, exc: BaseException) -> None:
        outcome = _outcome(exc)
        self.metrics.requests.labels(kind, outcome, "none").inc()
        self._log.info("request_failed", request_id=request_id, kind=kind, outcome=outcome, error=str(exc))

    def _chat(self, req: ChatRequest) -> ChatResult:
        """A chat completion, step by step; a cache hit ends it at step 1, and so does the answer
        to the same question that another caller in this process is asking right now."""
        started = self._clock()
        lookup = self._look_up(req)
        if lookup.decision.answer is not None:
            return self._serve_hit(req, lookup.decision, lookup.decision.answer, started)
        asking = _asking_key(lookup)
        if asking is not None:
            ahead = self._same_question.ask(asking)
            if ahead is not None:
                with self._waiting():
                    shared = self._same_question.wait(ahead, self._claim_ttl_s)
                if shared is not None:
                    return self._serve_hit(req, CacheDecision("exact", "asked at the same time", shared, 1.0),
                                           shared, started)
                asking = None  # the first asker failed, or its answer is not to be served again: ask
        answer: CachedAnswer | None = None
        try:
            result, answer = self._miss(req, lookup, started)
        finally:
            if asking is not None:
                self._same_question.answered(asking, answer)
        return result

    def _miss(self, req: ChatRequest, lookup: _Lookup, started: float) -> tuple[ChatResult, CachedAnswer | None]:
        """Steps 2 to 7 of a chat completion the cache could not answer: the result, and the answer
        as it was cached (None: not cacheable)."""
        estimated = estimate_chat_tokens(req.messages)
        admitted = self._admit(req, tokens=estimated + req.max_tokens,
                               amount=chat_cost(req.price, estimated, 0, req.max_tokens))
        failed = _FailedAttempts(prompt_tokens=estimated, max_completion_tokens=req.max_tokens)
        resp, attempts = self._call_or_release(req, admitted, self._chat_attempt(req, failed), failed, started)
        # 0 unless accepted attempts failed first; their prompt is this one, as the provider counted it.
        failed_micros = failed.cost(self._billing_price(resp.model, req.price), prompt_tokens=resp.prompt_tokens)
        result = self._chat_result(req, resp, attempts, lookup, started, extra_micros=failed_micros)
        self._settle(self._ledger_entry(req, result, kind="chat", day=admitted.day), req.request_id, admitted.lines,
                     result.to_json(), upstream_answered=True)
        self._count_spend("chat", result)
        self.metrics.requests.labels("chat", "ok", result.cache_status).inc()
        answer = self._remember(req, lookup, result, answer_micros=result.cost_micros - failed_micros)
        self._log.info("chat_answered", request_id=req.request_id, model=result.model, cost_micros=result.cost_micros,
                       cache=result.cache_status, attempts=attempts, latency_ms=result.latency_ms)
        return result, answer

    def _look_up(self, req: ChatRequest) -> _Lookup:
        """Step 1, the cache: the question's scope, and the cache's decision on it."""
        question = req.messages[-1].get("content") if req.cache_as is None else req.cache_as.question
        if self.cache is None or not isinstance(question, str):
            return _Lookup(None, None, CacheDecision("bypass", "cache off"))
        if not req.store_answer:  # no scope: not looked up, not stored, not shared with a concurrent asker
            return _Lookup(None, None, CacheDecision("bypass", "not to be stored"))
        params = {"max_tokens": req.max_tokens, "temperature": req.temperature}
        tenant = self._tenant(req.workspace_id, req.channel_id, req.user_id)
        if req.cache_as is not None:
            scope = CacheScope.for_question(model=req.model, prompt=req.cache_as.prompt, params=params,
                                            context=req.context, tenant=tenant)
        elif req.messages[-1].get("role") == "user":
            scope = CacheScope.for_chat(model=req.model, messages=req.messages, params=params, context=req.context,
                                        tenant=tenant)
        else:
            return _Lookup(None, None, CacheDecision("bypass", "cache off"))
        if not req.use_cache:
            return _Lookup(scope, question, CacheDecision("bypass", "fresh answer requested"))
        return _Lookup(scope, question, self.cache.lookup(scope, question))

    def _call_or_release(self, req: ChatRequest | EmbedRequest, admitted: _Admitted, attempt: Callable[[], T],
                         failed: _FailedAttempts, started: float) -> tuple[T, int]:
        """Steps 5 and 6: upstream with retries, each retry after attempts the provider took
        (``failed``, which ``attempt`` fills) reserved for first (:meth:`_top_up`). A call that
        fails, or whose retry the budget or the store refuses, gives back what admit took after
        charging those attempts: the error says what they cost (``charged_micros``)."""
        try:
            return self._call_upstream(_kind_of(req), attempt, admitted.permit,
                                       before=lambda: self._top_up(req, admitted, failed))
        except BaseException as exc:
            try:
                # Charged before the claim is given back: should the process die in between, the
                # claim is reaped at its worst case (an over-count), never lost.
                charged = self._charge_failed(req, admitted, failed, started)
            finally:
                self._release(req, admitted)
            if charged and isinstance(exc, PennyError):
                exc.charged_micros = charged
            raise

    def _chat_result(
        self, req: ChatRequest, resp: ChatResponse, attempts: int, lookup: _Lookup, started: float,
        *, extra_micros: int = 0,
    ) -> ChatResult:
        """What upstream answered, priced by the model it says it ran, plus ``extra_micros`` (what
        the attempts the provider took and did not finish before it cost)."""
        billed = self._billing_price(resp.model, req.price)
        # A truncated or empty answer is not worth serving again.
        cacheable = lookup.scope is not None and bool(resp.content) and resp.finish_reason in (None, "stop")
        return ChatResult(
            request_id=req.request_id,
            content=resp.content,
            model=resp.model,
            prompt_tokens=resp.prompt_tokens,
            cached_prompt_tokens=resp.cached_prompt_tokens,
            completion_tokens=resp.completion_tokens,
            cost_micros=chat_cost(billed, resp.prompt_tokens, resp.cached_prompt_tokens, resp.completion_tokens)
            + extra_micros,
            saved_micros=0,
            cache_status="miss" if lookup.decision.status == "miss" else "bypass",
            cache_reason=lookup.decision.reason,
            similarity=lookup.decision.similarity,
            cache_entry_id=req.request_id if cacheable else None,
            latency_ms=self._ms_since(started),
            attempts=attempts,
            finish_reason=resp.finish_reason,
            embedding_micros=_embedded_so_far(),
        )

    def _remember(self, req: ChatRequest, lookup: _Lookup, result: ChatResult, *,
                  answer_micros: int) -> CachedAnswer | None:
        """The last step: cache the answer (one that may be served again), for the next asker; the
        answer as cached (None: not one to serve again). ``answer_micros`` is what the answer
        itself cost (what a hit on it saves: not the attempts that broke off before it)."""
        if self.cache is None or lookup.scope is None or lookup.question is None or result.cache_entry_id is None:
            return None
        answer = CachedAnswer(
            entry_id=result.cache_entry_id, content=result.content, model=result.model,
            prompt_tokens=result.prompt_tokens, cached_prompt_tokens=result.cached_prompt_tokens,
            completion_tokens=result.completion_tokens, cost_micros=answer_micros, created_at=self._wall(),
        )
        try:
            self.cache.put(lookup.scope, lookup.question, answer, lookup.decision)
        except Exception as exc:
            # The answer is paid for and settled: it must reach the asker, whatever caching it does.
            # It may fail in the store, in a billed embedding of its question (a call of its own,
            # which a rate limit, a budget or the provider can refuse), or on text the embedder
            # cannot take; a client would otherwise retry, and pay again.
            self._log.warning("cache_put_failed", request_id=req.request_id, error=repr(exc),
                              exc_info=not isinstance(exc, PennyError))
        return answer

    def _serve_hit(self, req: ChatRequest, decision: CacheDecision, answer: CachedAnswer,
                   started: float) -> ChatResult:
        status: CacheStatus = "semantic" if decision.status == "semantic" else "exact"
        result = ChatResult(
            request_id=req.request_id,
            content=answer.content,
            model=answer.model,
            prompt_tokens=0,
            cached_prompt_tokens=0,
            completion_tokens=0,
            cost_micros=0,
            saved_micros=answer.cost_micros,
            cache_status=status,
            cache_reason=decision.reason,
            similarity=decision.similarity,
            cache_entry_id=answer.entry_id,
            latency_ms=self._ms_since(started),
            attempts=0,
            finish_reason="stop",
            embedding_micros=_embedded_so_far(),
        )
        self._record_hit(self._ledger_entry(req, result, kind="chat"), result.to_json())
        self.metrics.saved.labels("chat").inc(answer.cost_micros)
        self.metrics.requests.labels("chat", "ok", status).inc()
        self._log.info("chat_cache_hit", request_id=req.request_id, cache=status, reason=decision.reason,
                       saved_micros=answer.cost_micros)
        return result

    def _embed(self, req: EmbedRequest) -> EmbeddingResult:
        """An embedding call: admitted, called, settled. Its ``prompt_tokens`` are the answer's own
        (what the client's ``usage`` says); its cost adds the attempts the provider took and did
        not answer, each the same inputs, as many tokens as the answer counted."""
        started = self._clock()
        estimated = sum(estimate_text_tokens(t) for t in req.inputs)
        admitted = self._admit(req, tokens=estimated, amount=embedding_cost(req.price, estimated))
        failed = _FailedAttempts(prompt_tokens=estimated)

        def attempt() -> EmbedResponse:
            return self.upstream.embed(model=req.model, inputs=list(req.inputs), dimensions=req.dimensions)

        resp, attempts = self._call_or_release(req, admitted, failed.noting(attempt), failed, started)
        billed = self._billing_price(resp.model, req.price)
        result = EmbeddingResult(
            request_id=req.request_id,
            vectors=resp.vectors,
            model=resp.model,
            prompt_tokens=resp.prompt_tokens,
            cost_micros=embedding_cost(billed, resp.prompt_tokens)
            + failed.cost(billed, prompt_tokens=resp.prompt_tokens),
            latency_ms=self._ms_since(started),
            attempts=attempts,
        )
        self._settle(self._ledger_entry(req, result, kind="embedding", day=admitted.day), req.request_id,
                     admitted.lines, result.to_json(), upstream_answered=True)
        self._count_spend("embedding", result)
        self.metrics.requests.labels("embedding", "ok", "bypass").inc()
        self._log.info("embedding_done", request_id=req.request_id, model=resp.model, inputs=len(req.inputs),
                       cost_micros=result.cost_micros, attempts=attempts)
        return result

    # -- steps ----------------------------------------------------------------------------------

    def _admit(self, req: ChatRequest | EmbedRequest, *, tokens: int, amount: int) -> _Admitted:
        """Steps 1–5 at the store: claim the request, take its rate-limit tokens, reserve ``amount``
        and ask the breaker, in one store call. Returns the budget lines and the first attempt's
        permit."""
        workspace_id, user_id, request_id = req.workspace_id, req.user_id, req.request_id
        kind = _kind_of(req)
        model = req.model
        named = rate_limit_specs(self.settings, user_id, tokens=tokens)
        specs = [spec for _, spec in named]
        names = [name for name, _ in named]
        now = self._wall()
        lines = budget_lines_for(self.settings, workspace_id, user_id, now, source=req.source)
        owner = ClaimOwner(user_id=user_id, model=model, kind=kind, started_at=now, source=_source_id(req))
        try:
            admission = self.store.admit(workspace_id, request_id, ttl_s=self._claim_ttl_s, buckets=specs,
                                         lines=lines, amount=amount, breaker=self._breaker_ref, owner=owner)
        except StoreError as exc:
            # The admission may have been applied before the store failed (a timeout, a crash before
            # the reply): nothing goes upstream now, so give back whatever it may hold, or its
            # claim would later be charged as an interrupted call.
            if exc.maybe_applied:
                self._spool_release(req, lines, owner.call_id, exc)
            raise
        if admission.permit is not None:
            self.metrics.breaker_state.set(BREAKER_STATES[admission.permit.state])
        self._alert_if_spent(req, admission)
        self._refuse_unless_admitted(admission, names, amount)
        return _Admitted(lines, admission.permit, owner, budget_math.period_window(now, "day")[0], amount)

    def _budget_refusal(self, decision: BudgetDecision | None, *, needed: int, owed: int = 0) -> BudgetExceeded:
        """The refusal of a line that could not hold a reservation of ``needed`` (counted in the
        refusals metric); it says what the line holds, with ``owed`` not yet settled on it."""
        assert decision is not None
        assert decision.line is not None
        line = decision.line
        self.metrics.refusals.labels(_budget_label(line)).inc()
        return BudgetExceeded(line.scope, line.limit, decision.spent + decision.reserved + owed, line.resets_at,
                              needed=needed)

    def _alert_if_spent(self, req: ChatRequest | EmbedRequest, admission: Admission) -> None:
        """A call refused by a budget line already all spent may be the first news of it: a budget
        lowered below what its period has spent refuses every call, so none settles to announce it."""
        decision = admission.budget
        if admission.state != "over_budget" or decision is None or decision.line is None \
                or decision.spent < decision.line.limit:
            return
        line = decision.line
        self._deliver_alerts(req.request_id, req.workspace_id,
                             lambda alerter: alerter.after_refusal(req.workspace_id, req.user_id, line))

    def _refuse_unless_admitted(self, admission: Admission, bucket_names: Sequence[str], amount: int) -> None:
        if admission.state == "admitted":
            return
        if admission.state in ("done", "in_flight", "interrupted"):
            raise _Held(Claim(admission.state, admission.result))
        if admission.state == "rate_limited":
            limit = admission.limit
            assert limit is not None
            which = bucket_names[limit.blocking or 0]
            self.metrics.refusals.labels(f"rate_limit_{which}").inc()
            raise RateLimited(limit.retry_after, limit=which)
        if admission.state == "over_budget":
            raise self._budget_refusal(admission.budget, needed=amount)
        permit = admission.permit
        assert permit is not None
        self.metrics.refusals.labels("breaker").inc()
        raise CircuitOpen(permit.retry_after)

    def _release(self, req: ChatRequest | EmbedRequest, admitted: _Admitted) -> None:
        """Give back an admitted request that was not settled: its reservation and its claim (so a
        retry may run it again). If the store fails, the release is spooled and replayed; should
        its claim expire first, it is charged as an unsettled call (never an under-count). The
        release names this admission: replayed late, it leaves a newer admission of the request
        (a client's retry meanwhile) alone."""
        try:
            self.store.release_admission(req.workspace_id, req.request_id, admitted.lines, call_id=admitted.call_id)
        except StoreError as exc:
            self._spool_release(req, admitted.lines, admitted.call_id, exc)

    def _spool_release(
        self, req: ChatRequest | EmbedRequest, lines: Sequence[budget_math.BudgetLine], call_id: str,
        exc: StoreError,
    ) -> None:
        entry = LedgerEntry(
            request_id=req.request_id, ts=self._wall(), day="", workspace_id=req.workspace_id, user_id=req.user_id,
            model=req.model, kind=_kind_of(req), prompt_tokens=0,
            cached_prompt_tokens=0, completion_tokens=0, cost_micros=0, saved_micros=0, cache_status="bypass",
            latency_ms=0, attempts=0, source=_source_id(req),
        )
        self.ledger.keep(SpoolRecord("release", entry, tuple(lines), spooled_at=entry.ts, call_id=call_id), exc)

    def _chat_attempt(self, req: ChatRequest, failed: _FailedAttempts) -> Callable[[], ChatResponse]:
        """One upstream attempt at a chat completion, streamed into ``stream`` when both sides can;
        an attempt that fails after the provider accepted it is noted in ``failed``, and so is one
        interrupted by Ctrl-C (``KeyboardInterrupt``), and a streamed one cut short once its text had begun."""
        model, messages, max_tokens, temperature = req.model, req.messages, req.max_tokens, req.temperature
        chat_stream = getattr(self.upstream, "chat_stream", None)
        if req.stream is None or chat_stream is None:
            def plain() -> ChatResponse:
                return self.upstream.chat(model=model, messages=messages, max_tokens=max_tokens,
                                          temperature=temperature)

            return failed.noting(plain)
        sink: AnswerStream | None = req.stream
        shown = False  # whether an earlier attempt already sent text that a retry must void
        received: list[str] = []  # the text this attempt has received so far

        def call_sink(method: Callable[..., None], *args: str) -> None:
            nonlocal sink
            try:
                method(*args)
            except Exception as exc:
                self._log.warning("answer_stream_failed", error=repr(exc))
                sink = None

        def on_delta(text: str) -> None:
            nonlocal shown
            received.append(text)
            if text and sink is not None:
                shown = True
                call_sink(sink.delta, text)

        def attempt() -> ChatResponse:
            nonlocal shown
            if shown and sink is not None:
                shown = False
                call_sink(sink.restart)
            received.clear()
            try:
                response: ChatResponse = chat_stream(model=model, messages=messages, max_tokens=max_tokens,
                                                     on_delta=on_delta, temperature=temperature)
            except UpstreamError as exc:
                failed.add(exc)
                raise
            except BaseException as exc:
                # Cut short once the provider was writing (Ctrl-C in the terminal chat, a bug), or
                # by Ctrl-C while it was being waited for: it bills the prompt and what it
                # generated, as for a stream that broke off.
                if received or isinstance(exc, KeyboardInterrupt):
                    failed.texts.append("".join(received))
                raise
            return response

        return attempt

    def _charge_failed(self, req: ChatRequest | EmbedRequest, admitted: _Admitted, failed: _FailedAttempts,
                       started: float) -> int:
        """A call failed after attempts the provider had accepted: it bills them, so they are
        settled as a ledger entry of their own (their tokens estimated) on the budget lines the
        admission reserved on, under an ID derived from the request's: ``<request ID>:broken:<random>``
        for a chat completion's streamed attempts, ``:unanswered:`` for plain ones and for embedding
        calls, whose answer (and a chat's completion tokens) never came. The request's own claim is
        then given back for a retry to run; that retry's attempts are new calls, billed anew.
        Returns what was charged."""
        if not failed.texts:
            return 0
        kind = _kind_of(req)
        streamed = (isinstance(req, ChatRequest) and req.stream is not None
                    and getattr(self.upstream, "chat_stream", None) is not None)
        entry = LedgerEntry(
            request_id=f"{req.request_id}:{'broken' if streamed else 'unanswered'}:{uuid.uuid4().hex[:12]}",
            ts=self._wall(), day=admitted.day, workspace_id=req.workspace_id, user_id=req.user_id,
            model=req.model, kind=kind, prompt_tokens=failed.prompt_tokens * len(failed.texts),
            cached_prompt_tokens=0, completion_tokens=failed.completion_tokens(), cost_micros=failed.cost(req.price),
            saved_micros=0, cache_status="bypass", latency_ms=self._ms_since(started), attempts=len(failed.texts),
            source=_source_id(req),
        )
        self._settle(entry, None, admitted.lines, None, upstream_answered=False)
        self.metrics.spent.labels(kind, req.model).inc(entry.cost_micros)
        self._log.info("failed_attempts_charged", request_id=req.request_id, ledger_id=entry.request_id,
                       attempts=entry.attempts, cost_micros=entry.cost_micros)
        return entry.cost_micros

    def _top_up(self, req: ChatRequest | EmbedRequest, admitted: _Admitted, failed: _FailedAttempts) -> None:
        """Before an attempt that follows attempts the provider accepted and billed (``failed``):
        raise the call's reservation to its admitted worst case plus what they cost, so it covers
        what is owed already and one more whole attempt, on every budget line. A line that cannot
        hold it refuses the retry (``BudgetExceeded``, not retried): the caller charges the failed
        attempts and gives the claim back. So a call settles no more than it reserved, and spend
        never passes a cap, however many of its attempts the provider billed."""
        if failed.covered == len(failed.texts):
            return
        owed = failed.cost(req.price)
        top_up = self.store.top_up_admission(req.workspace_id, req.request_id, admitted.lines, owner=admitted.owner,
                                             amount=admitted.amount + owed)
        if top_up.state == "topped_up":
            failed.covered = len(failed.texts)
            self._log.info("reservation_topped_up", request_id=req.request_id, failed_attempts=failed.covered,
                           reserved_micros=admitted.amount + owed)
            return
        if top_up.state == "over_budget":
            # What the line holds once the failed attempts are charged, as the refusal is read after.
            refused = self._budget_refusal(top_up.budget, needed=admitted.amount + owed, owed=owed)
            self._log.info("retry_refused_by_budget", request_id=req.request_id, scope=refused.scope,
                           failed_attempts=len(failed.texts), owed_micros=owed)
            raise refused
        # The claim is gone (expired or reaped: the call outlived its TTL, or the store lost it): a
        # retry would have no reservation behind it.
        self._log.warning("retry_not_reserved", request_id=req.request_id, failed_attempts=len(failed.texts))
        raise RequestInterrupted(req.request_id)

    def _call_upstream(self, kind: str, attempt: Callable[[], T], first_permit: Permit | None, *,
                       before: Callable[[], None] | None = None) -> tuple[T, int]:
        """Attempts with retries; ``first_permit`` is the breaker's answer for the first one (from
        the admission). ``before`` runs ahead of each attempt, before the breaker is asked, and may
        end the call by raising (a refusal is not retried). A failure is recorded on the breaker as
        it comes back, with the number of this process's other attempts still in flight; a success
        by the settle that follows."""
        started = self._clock()
        permits = [first_permit] if first_permit is not None else []

        def guarded() -> T:
            if before is not None:
                before()
            permit = permits.pop() if permits else self._acquire_breaker()
            if not permit.allowed:
                self.metrics.refusals.labels("breaker").inc()
                raise CircuitOpen(permit.retry_after)
            with self._in_flight.attempt() as sent:
                try:
                    return attempt()
                except UpstreamError as exc:
                    self._upstream_failed(kind, exc, sent)
                    raise

        with self._waiting():
            value, attempts = call_with_retries(guarded, self._retry, clock=self._clock, sleep=self._sleep,
                                                rand=self._rand)
            # Inside: leaving ``waiting`` can wait for a turn back, which is no part of upstream's latency.
            self.metrics.upstream_latency.labels(kind).observe(max(0.0, self._clock() - started))
        return value, attempts

    def _upstream_failed(self, kind: str, exc: UpstreamError, sent: Attempt) -> None:
        """Feed a failed attempt to the breaker, weighed against this process's other attempts in
        flight; raise CircuitOpen if the breaker is open now (do not wait out a backoff only to be
        refused by it)."""
        if not counts_against_breaker(exc):
            self._record_breaker(success=True)  # an error caused by the request proves upstream alive
            return
        state = sent.report_failure(lambda pending: self._record_breaker(success=False, pending=pending,
                                                                         error=str(exc)))
        self.metrics.upstream_failures.labels(kind, exc.kind if exc.status is None else str(exc.status)).inc()
        if state is not None and state.state == "open":
            self.metrics.refusals.labels("breaker").inc()
            # The whole current cooldown: exact when this failure opened the breaker, a little long
            # when a call sent before it opened reports late.
            raise CircuitOpen(breaker_cooldown(state, self._breaker)) from exc

    def _acquire_breaker(self) -> Permit:
        permit = self.store.breaker_acquire(self._breaker_name, self._breaker)
        self.metrics.breaker_state.set(BREAKER_STATES[permit.state])
        return permit

    def _record_breaker(self, *, success: bool, pending: int = 0, error: str | None = None) -> BreakerState | None:
        """Record an attempt on the breaker; one that opens it is logged with the ``error`` that did,
        since a call refused while it is open never reaches upstream to say why."""
        try:
            state = self.store.breaker_record(self._breaker_name, self._breaker, success=success, pending=pending)
        except StoreError as exc:
            self._log.warning("breaker_record_failed", error=str(exc))
            return None
        if state.state == "open" and not success:
            self._log.warning("breaker_open", cooldown_s=breaker_cooldown(state, self._breaker), pending=pending,
                              failed_probes=state.failed_probes, error=error)
        self.metrics.breaker_state.set(BREAKER_STATES[state.state])
        return state

    def _settle(
        self,
        entry: LedgerEntry,
        reservation_id: str | None,
        lines: Sequence[budget_math.BudgetLine],
        result: str | None,
        *,
        upstream_answered: bool,
    ) -> bool:
        """Write the ledger entry (and, when upstream answered, its success on the breaker); a
        billed call that this settle wrote then checks budget alerts. True when this call wrote
        the entry (False: already settled, or spooled).

        Upstream has answered and been paid, so the answer must reach the user even when the store
        does not confirm the write (down, full, or timed out, when it may have been applied): the
        whole settle goes to the durable spool, fsync'd, before this returns, and is replayed by
        the same idempotent ``settle`` once the store answers."""
        try:
            written = self.store.settle(
                entry, reservation_id=reservation_id, lines=lines, result=result,
                result_ttl_s=self.settings.idempotency_ttl_s,
                breaker=self._breaker_ref if upstream_answered else None,
            )
        except StoreError as exc:
            self.ledger.keep(SpoolRecord("settle", entry, tuple(lines), reservation_id=reservation_id, result=result,
                                         result_ttl_s=self.settings.idempotency_ttl_s, spooled_at=self._wall()), exc)
            return False
        if written:
            self._budget_alerts(entry.workspace_id, entry.user_id, entry.request_id, lines, entry.cost_micros)
        return written

    def _record_hit(self, entry: LedgerEntry, result: str) -> None:
        """Claim, settle and complete a cache hit at once; raises _Held if its request ID is held.
        A store failure fails the request (as a claim would): without the store a hit could be
        neither deduplicated nor recorded, and it has cost nothing yet."""
        claim = self.store.record_hit(entry, result=result, result_ttl_s=self.settings.idempotency_ttl_s)
        if claim.state != "claimed":
            raise _Held(claim)

    def _replayed(self, record: SpoolRecord) -> None:
        entry = record.entry
        self._budget_alerts(entry.workspace_id, entry.user_id, entry.request_id, record.lines, entry.cost_micros)

    def _budget_alerts(
        self, workspace_id: str, user_id: str, request_id: str,
        lines: Sequence[budget_math.BudgetLine], cost: int,
    ) -> None:
        """Deliver the budget alerts this settled call triggered. Never raises into the request."""
        if cost > 0:
            self._deliver_alerts(request_id, workspace_id,
                                 lambda alerter: alerter.after_settle(workspace_id, user_id, lines, cost))

    def _deliver_alerts(self, request_id: str, workspace_id: str,
                        find: Callable[[BudgetAlerter], list[BudgetAlert]]) -> None:
        """Deliver the budget alerts ``find`` claims. Never raises into the request."""
        if self._alerter is None or self._on_budget_alert is None:
            return
        try:
            alerts = find(self._alerter)
        except Exception as exc:
            self._log.warning("budget_alert_failed", request_id=request_id, error=str(exc))
            return
        for alert in alerts:
            self._log.info("budget_alert", request_id=request_id, workspace_id=workspace_id,
                           user_id=alert.user_id, scope=alert.scope, threshold=alert.threshold,
                           period=alert.period, spent_micros=alert.spent, limit_micros=alert.limit)
            try:
                self._on_budget_alert(alert)
            except Exception as exc:
                self._log.warning("budget_alert_failed", request_id=request_id, scope=alert.scope,
                                  threshold=alert.threshold, error=str(exc))

    # -- helpers --------------------------------------------------------------------------------

    def _price(self, model: str) -> ModelPrice:
        if model == self.settings.chat_model:
            return self._chat_price
        if model == self.settings.embedding_model:
            return self._embed_price
        return self.prices.price_for(model)

    def _billing_price(self, returned_model: str, requested: ModelPrice) -> ModelPrice:
        """Bill what upstream says it ran (a dated snapshot), falling back to what was asked for
        when that model has no price or is of the other kind (no chat is billed as an embedding)."""
        try:
            return self.prices.price_for(returned_model, requested.kind)
        except ConfigurationError:
            return requested

    def _tenant(self, workspace_id: str, channel_id: str | None, user_id: str) -> str:
        scope = self.settings.cache_scope
        if scope == "user":
            return f"u:{workspace_id}/{user_id}"
        if scope == "channel" and channel_id:
            return f"c:{workspace_id}/{channel_id}"
        return f"w:{workspace_id}"

    def _ledger_entry(
        self, req: ChatRequest | EmbedRequest, result: ChatResult | EmbeddingResult, *, kind: Kind,
        day: str | None = None,
    ) -> LedgerEntry:
        """The ledger's line for ``result``, stamped now, on ``day``: the day an admitted call was
        charged on (its budget lines' day, even when it settles after midnight), else today."""
        ts = self._wall()
        chat = result if isinstance(result, ChatResult) else None
        return LedgerEntry(
            request_id=req.request_id, ts=ts, day=day or budget_math.period_window(ts, "day")[0],
            workspace_id=req.workspace_id, user_id=req.user_id, model=result.model, kind=kind,
            prompt_tokens=result.prompt_tokens,
            cached_prompt_tokens=chat.cached_prompt_tokens if chat else 0,
            completion_tokens=chat.completion_tokens if chat else 0,
            cost_micros=result.cost_micros, saved_micros=chat.saved_micros if chat else 0,
            cache_status=chat.cache_status if chat else "bypass", latency_ms=result.latency_ms,
            attempts=result.attempts, source=_source_id(req),
        )

    def _count_spend(self, kind: str, result: ChatResult | EmbeddingResult) -> None:
        chat = result if isinstance(result, ChatResult) else None
        self.metrics.spent.labels(kind, result.model).inc(result.cost_micros)
        self.metrics.tokens.labels(kind, "prompt").inc(result.prompt_tokens)
        self.metrics.tokens.labels(kind, "cached_prompt").inc(chat.cached_prompt_tokens if chat else 0)
        self.metrics.tokens.labels(kind, "completion").inc(chat.completion_tokens if chat else 0)

    def _ms_since(self, started: float) -> int:
        return max(0, round((self._clock() - started) * 1000))


# Most specific first: the label of a failed request in metrics and logs.
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (RateLimited, "rate_limited"),
    (BudgetExceeded, "over_budget"),
    (CircuitOpen, "circuit_open"),
    (RequestInFlight, "in_flight"),
    (Refused, "refused"),
    (UpstreamError, "upstream_error"),
    (StoreError, "store_error"),
    (PennyError, "error"),
)


def _asking_key(lookup: _Lookup) -> str | None:
    """What makes two cache misses the same question (an exact hit's key: scope and normalised
    text); None for a call not looked up in the cache (a fresh answer, no cache, not a question)."""
    if lookup.decision.status != "miss" or lookup.scope is None or lookup.question is None:
        return None
    return f"{lookup.scope.id()}\x00{normalize_question(lookup.question)}"


def _embedded_so_far() -> int:
    """What the embeddings billed to the current chat call have cost so far."""
    return sum(_EMBEDDED.get() or ())


def _kind_of(req: ChatRequest | EmbedRequest) -> Kind:
    return "chat" if isinstance(req, ChatRequest) else "embedding"


def _source_id(req: ChatRequest | EmbedRequest) -> str:
    return "" if req.source is None else req.source.id


def _budget_label(line: budget_math.BudgetLine) -> str:
    """A refusal's metrics label: ``budget_daily``, ``budget_workspace``, or ``budget_source`` for
    any source's own line (one label for them all: a label per key would grow without bound)."""
    return "budget_source" if line.key.startswith("source:") else "budget_" + line.scope.split()[0]


def _outcome(exc: BaseException) -> str:
    return next((label for kind, label in _OUTCOMES if isinstance(exc, kind)), "crash")

