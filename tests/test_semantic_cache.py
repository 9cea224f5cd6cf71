"""The semantic cache through the real gateway: scope isolation, the guard, TTL, LRU eviction,
invalidation, and cross-replica visibility. Real stores, the bundled WordLlama embedder, the fake
OpenAI server over HTTP, a manual clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from proxy_core.cache import CachedAnswer, CacheScope, ExactCache
from proxy_core.clock import ManualClock
from proxy_core.errors import StoreError
from proxy_core.gateway import Gateway
from proxy_core.metrics import Metrics
from proxy_core.semantic.decision import CalibratedPolicy, ThresholdPolicy
from proxy_core.semantic.index import ScopeIndex, VectorIndex
from proxy_core.semantic.layer import SemanticCache
from proxy_core.settings import PennySettings
from proxy_core.stores.base import Store
from proxy_core.stores.sqlite import SqliteStore
from proxy_core.upstream import OpenAIUpstream
from tests.fake_openai import FakeOpenAI

API_KEY = "sk-test-semantic-0123456789"
DAY = "2026-01-01"


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return {"openai_api_key": API_KEY, "embedder": "local:wordllama"}


@pytest.fixture
def make_gateway(make_gateway: Callable[..., Gateway]) -> Callable[..., Gateway]:
    """The shared factory (tests/conftest.py); every gateway it makes here has the semantic cache."""

    def make(*args: Any, **overrides: Any) -> Gateway:
        gateway = make_gateway(*args, **overrides)
        assert isinstance(gateway.cache, SemanticCache)
        return gateway

    return make


_ids = iter(range(1_000_000))


def ask(gw: Gateway, question: str, *, user: str = "U1", workspace: str = "W1", system: str = "You are Penny.",
        **kw: Any) -> Any:
    return gw.chat(
        user_id=user,
        workspace_id=workspace,
        request_id=f"r{next(_ids)}",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        **kw,
    )


def test_a_rephrasing_is_a_semantic_hit_that_costs_nothing(make_gateway: Callable[..., Gateway],
                                                           fake: FakeOpenAI) -> None:
    gw = make_gateway()
    first = ask(gw, "Where are the production logs?")
    hit = ask(gw, "Where can I find the production logs?")
    assert fake.count("chat") == 1
    assert hit.cache_status == "semantic"
    assert hit.similarity is not None and hit.similarity >= 0.5
    assert hit.cost_micros == 0 and hit.saved_micros == first.cost_micros > 0
    assert hit.content == first.content
    usage = gw.usage("W1", DAY, DAY)
    assert usage.totals.cache_hits == 1 and usage.totals.saved_micros == first.cost_micros


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("How do I enable 2FA?", "How do I disable 2FA?"),
        ("Where are the production logs?", "Where are the staging logs?"),
        ("What's the price?", "What's the price after discount?"),
        ("Is lunch provided on Fridays?", "Is lunch not provided on Fridays?"),
        ("What's the budget for team offsites in Q1?", "What's the budget for team offsites in Q3?"),
        ("Is the security training mandatory?", "Is the security training voluntary?"),
        ("Do I need at least 2 approvals to merge?", "Do I need at most 2 approvals to merge?"),
        ("Can I submit expenses before Friday?", "Can I submit expenses until Friday?"),
        ("Do all employees get a laptop?", "Do some employees get a laptop?"),
        ("How do I see my usage?", "How do I see our team usage?"),
        ("How do I get VPN access?", "How do I get VPN access as a contractor?"),
        ("这是免费的吗？", "这不是免费的吗？"),
        ("Как включить 2FA?", "Как отключить 2FA?"),
        ("Is latency < 100ms okay?", "Is latency > 100ms okay?"),
    ],
)
@pytest.mark.parametrize("decision", ["calibrated", "threshold 0.5"])
def test_near_misses_are_never_served(make_gateway: Callable[..., Gateway], fake: FakeOpenAI,
                                      cached: str, asked: str, decision: str) -> None:
    # the default calibrated decision at a loose budget, and a low cosine bar: the guard alone must refuse these
    gw = make_gateway(cache_max_wrong=0.5) if decision == "calibrated" else make_gateway(cache_threshold=0.5)
    ask(gw, cached)
    result = ask(gw, asked)
    assert result.cache_status == "miss"
    assert fake.count("chat") == 2
    assert result.cache_reason.startswith(("rejected", "below threshold"))


def test_the_budget_for_wrong_hits_picks_the_operating_point(make_gateway: Callable[..., Gateway]) -> None:
    default = make_gateway().cache
    assert isinstance(default, SemanticCache) and isinstance(default.policy, CalibratedPolicy)
    assert default.policy.max_wrong == 0.15  # WordLlama's own default budget
    loose = make_gateway(cache_max_wrong=0.25).cache
    assert isinstance(loose, SemanticCache) and isinstance(loose.policy, CalibratedPolicy)
    assert loose.policy.min_probability < default.policy.min_probability
    assert loose.policy.floor <= default.policy.floor
    expert = make_gateway(cache_threshold=0.7).cache
    assert isinstance(expert, SemanticCache) and isinstance(expert.policy, ThresholdPolicy)
    assert expert.policy.threshold == 0.7 and expert.policy.guard is not None


def test_no_hit_crosses_workspaces_channels_system_prompts_or_contexts(make_gateway: Callable[..., Gateway],
                                                                       fake: FakeOpenAI) -> None:
    gw = make_gateway(cache_scope="channel")
    ask(gw, "How do I deploy?", channel_id="C1")
    assert ask(gw, "How do I deploy?", channel_id="C1").cache_status == "exact"
    assert ask(gw, "How do I deploy?", channel_id="C2").cache_status == "miss"
    assert ask(gw, "How do I deploy?", workspace="W2", channel_id="C1").cache_status == "miss"
    assert ask(gw, "How do I deploy?", channel_id="C1", system="Be brief.").cache_status == "miss"
    assert ask(gw, "How do I deploy?", channel_id="C1", context="docs:v2").cache_status == "miss"
    assert fake.count("chat") == 5


def test_follow_up_turns_are_scoped_by_the_conversation(make_gateway: Callable[..., Gateway],
                                                        fake: FakeOpenAI) -> None:
    gw = make_gateway()

    def follow_up(earlier: str) -> Any:
        return gw.chat(user_id="U1", workspace_id="W1", request_id=f"f{next(_ids)}", messages=[
            {"role": "user", "content": earlier},
            {"role": "assistant", "content": "..."},
            {"role": "user", "content": "And how long does it take?"},
        ])

    follow_up("How do I request a refund?")
    assert follow_up("How do I renew my passport?").cache_status == "miss"
    assert follow_up("How do I request a refund?").cache_status == "exact"


def test_entries_expire_after_the_ttl(make_gateway: Callable[..., Gateway], clock: ManualClock,
                                      fake: FakeOpenAI) -> None:
    gw = make_gateway(cache_ttl_s=3600)
    ask(gw, "How do I deploy?")
    clock.advance(3599)
    assert ask(gw, "How do I deploy?").cache_status == "exact"
    clock.advance(2)
    assert ask(gw, "How do I deploy?").cache_status == "miss"
    assert fake.count("chat") == 2


def test_least_recently_used_entries_are_evicted(make_gateway: Callable[..., Gateway], clock: ManualClock,
                                                 store: Store) -> None:
    gw = make_gateway(cache_max_entries=2)
    ask(gw, "How do I deploy the API?")
    clock.advance(1)
    ask(gw, "Who approves vacation requests?")
    clock.advance(1)
    ask(gw, "How do I deploy the API?")  # a hit: now the most recently used
    clock.advance(1)
    ask(gw, "Where is the office wifi password?")  # evicts the vacation question
    assert gw.cache.flush()  # type: ignore[union-attr]  # the store write is behind the answer
    assert store.semantic_count() == 2
    assert len(gw.cache.index) == 2  # type: ignore[union-attr,arg-type]
    assert ask(gw, "How do I deploy the API?").cache_status == "exact"
    assert ask(gw, "Who approves vacation requests?").cache_status == "miss"


def test_invalidation_by_entry_context_and_all(make_gateway: Callable[..., Gateway], fake: FakeOpenAI) -> None:
    gw = make_gateway()
    first = ask(gw, "How do I deploy?", context="docs:v1|page-a")
    ask(gw, "Who approves vacation requests?", context="docs:v1|page-b")
    ask(gw, "Where is the wifi password?", context="docs:v2|page-c")
    assert gw.invalidate_cache_entry(first.cache_entry_id)
    assert not gw.invalidate_cache_entry(first.cache_entry_id)
    assert ask(gw, "How do I deploy?", context="docs:v1|page-a").cache_status == "miss"
    cache = gw.cache
    assert isinstance(cache, SemanticCache)
    assert cache.invalidate_context("docs:v1|") == 2  # the re-asked deploy question and vacation
    assert ask(gw, "Who approves vacation requests?", context="docs:v1|page-b").cache_status == "miss"
    assert ask(gw, "Where is the wifi password?", context="docs:v2|page-c").cache_status == "exact"
    assert cache.clear() >= 2
    assert ask(gw, "Where is the wifi password?", context="docs:v2|page-c").cache_status == "miss"


def test_a_fresh_answer_replaces_the_cached_one(make_gateway: Callable[..., Gateway], fake: FakeOpenAI) -> None:
    from tests.fake_openai import Fault

    gw = make_gateway()
    ask(gw, "How do I deploy?")
    fake.script(Fault.ok(content="Use the new pipeline."))
    ask(gw, "How do I deploy?", use_cache=False)
    again = ask(gw, "How do I deploy?")
    assert again.cache_status == "exact" and again.content == "Use the new pipeline."


def test_an_answer_paid_for_reaches_the_asker_when_caching_it_fails_on_text_the_embedder_cannot_take(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI
) -> None:
    """A lone surrogate (JSON's ``\\ud800``) goes upstream as JSON escapes it, and WordLlama's
    tokenizer then refuses it (TypeError): the answer is settled, so it must be returned, not
    raised (a client would retry, and pay again)."""
    gw = make_gateway()
    result = ask(gw, "hi \ud800 there", use_cache=False)
    assert result.content and fake.count("chat") == 1
    assert gw.usage("W1", "2000-01-01", "2100-01-01").totals.requests == 1


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("What is C++?", "What is C?"),
        ("How do I learn C#", "How do I learn C"),
        ("-1?", "1?"),
        ("Is the fee 5€?", "Is the fee 5$?"),
        ("🍕", "🍔"),
        ("???", "!!!"),
        ("What is []?", "What is {}?"),
    ],
)
def test_symbols_at_the_ends_of_a_question_are_not_dropped_by_the_exact_match(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, cached: str, asked: str
) -> None:
    """Only white space and sentence punctuation at the ends are dropped: "What is C++?" used to be
    an exact match of "What is C?", and every emoji-only question of every other (both were "");
    and "What is {}?" of "What is []?" (brackets and quotes at an end went too)."""
    gw = make_gateway()
    ask(gw, cached)
    assert ask(gw, asked).cache_status != "exact"
    assert ask(gw, f" {cached.upper()}  ").cache_status == "exact"
    if cached[0].isalpha():
        assert ask(gw, f"{cached.lower().rstrip('?')}.").cache_status == "exact"


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("What is 23?", "What is 2³?"),
        ("Is the flat 50 m2?", "Is the flat 50 m²?"),
        ("Darf ich Bier in Massen trinken?", "Darf ich Bier in Maßen trinken?"),
        ("What is 10?", "What is 10!"),
        ("Compute 10 / 8", "Compute 10! / 8!"),
    ],
)
def test_questions_that_differ_in_meaning_but_fold_to_the_same_text_are_not_served(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, cached: str, asked: str
) -> None:
    """Unicode compatibility folding made a superscript a plain digit: "What is 2³?" was an exact
    match of "What is 23?", and got its answer. Case folding made "ß" "ss": beer "in Maßen" (in
    moderation) was served the answer about beer "in Massen" (by the crate). A "!" after a number was
    sentence punctuation, at the end and to the guard: "What is 10!" (a factorial) got "What is 10?"'s."""
    gw = make_gateway()
    ask(gw, cached)
    assert ask(gw, asked).cache_status == "miss"
    assert ask(gw, asked).cache_status == "exact"  # still the same text as itself
    assert fake.count("chat") == 2


def test_a_very_long_question_is_matched_exactly_and_never_compared_word_by_word(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, store: Store
) -> None:
    """A 100 kB question (a proxy body may hold 1 MB) used to be embedded and, next to a similar
    cached one, analysed and aligned word by word: a 15,000 × 15,000 similarity matrix (900 MB and
    seconds of CPU per lookup), and ~70 MB kept per analysis in the guard's memo."""
    words = [f"{a}{b}{c}" for a in "bdfgklmnprst" for b in "aeiou" for c in "bdfgklmnprst"]
    long_question = " ".join(words[(i * 7) % len(words)] for i in range(15_000))[:100_000]
    from tests.fake_openai import Fault

    gw = make_gateway(embedder="openai:text-embedding-3-small?dimensions=8")
    fake.script(*[Fault.ok(content="A short answer.") for _ in range(3)], endpoint="chat")
    first = ask(gw, long_question)
    assert first.cache_status == "miss" and "too long" in first.cache_reason
    assert gw.cache.flush()  # type: ignore[union-attr]
    assert store.semantic_count() == 1
    assert ask(gw, long_question).cache_status == "exact"
    variant = ask(gw, long_question + " today")
    assert variant.cache_status == "miss" and "too long" in variant.cache_reason
    assert ask(gw, long_question[:200]).cache_status == "miss"  # a short question never meets the long one
    assert fake.count("embeddings") == 1 and fake.count("chat") == 3  # the short question's embedding only
    cache = gw.cache
    assert isinstance(cache, SemanticCache) and cache.policy.guard is not None
    assert all(len(q) <= cache.max_semantic_chars for q in cache.policy.guard._memo)


def test_a_question_with_a_lone_surrogate_is_looked_up_cached_and_served(
    make_gateway: Callable[..., Gateway], fake: FakeOpenAI, store: Store
) -> None:
    """A proxy client's JSON may carry a lone surrogate (``"\\ud800"``). The lookup used to raise
    (WordLlama's tokenizer: TypeError; the exact key and the store: UnicodeEncodeError), failing
    the request, and the answer could not be cached."""
    gw = make_gateway()
    first = ask(gw, "hi \ud800 there, how do I deploy?")
    assert first.cache_status == "miss"
    assert gw.cache.flush()  # type: ignore[union-attr]  # the store write is behind the answer
    assert store.semantic_count() == 1
    again = ask(gw, "hi \ud800 there, how do I deploy?")
    assert again.cache_status == "exact" and again.content == first.content
    assert fake.count("chat") == 1
    exact = ExactCache(store, ttl_s=3600)
    assert exact.lookup(SCOPE, "hi \udfff").status == "miss"
    exact.put(SCOPE, "hi \udfff", _answer("e1", "hello"))
    assert exact.lookup(SCOPE, "hi \udfff").status == "exact"


@pytest.mark.redis
def test_an_entry_stored_by_one_replica_is_a_hit_on_another_within_a_second(
    redis_url: str, redis_namespace: str, fake: FakeOpenAI
) -> None:
    from proxy_core.stores.redis import RedisStore

    def replica() -> Gateway:
        settings = PennySettings(openai_api_key=API_KEY, requests_per_minute=0, tokens_per_minute=0)
        store = RedisStore.from_url(redis_url, namespace=redis_namespace)
        return Gateway(settings, store=store, metrics=Metrics(CollectorRegistry()),
                       upstream=OpenAIUpstream(api_key=API_KEY, base_url=fake.base_url, timeout_s=2.0))

    a, b = replica(), replica()
    try:
        stored = a.chat(user_id="U1", workspace_id="W1", request_id="x1",
                        messages=[{"role": "user", "content": "How do I rotate the API keys?"}])
        cache_b = b.cache
        assert isinstance(cache_b, SemanticCache)
        # B's sync thread tails the change log; poll its in-process index (no store scan).
        deadline = time.monotonic() + 1.0
        while cache_b.index.get(stored.request_id) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache_b.index.get(stored.request_id) is not None, "not visible on the other replica within 1 s"
        hit = b.chat(user_id="U2", workspace_id="W1", request_id="x2",
                     messages=[{"role": "user", "content": "How can I rotate our API keys?"}])
        assert hit.cache_status in ("exact", "semantic")
        assert fake.count("chat") == 1
        # An invalidation on B reaches A the same way.
        assert b.invalidate_cache_entry(stored.request_id)
        cache_a = a.cache
        assert isinstance(cache_a, SemanticCache)
        deadline = time.monotonic() + 1.0
        while cache_a.index.get(stored.request_id) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache_a.index.get(stored.request_id) is None
    finally:
        for gw in (a, b):
            gw.close()
        cleanup = RedisStore.from_url(redis_url, namespace=redis_namespace)
        cleanup.delete_namespace()
        cleanup.close()


def test_a_replica_stops_serving_its_copy_of_an_answer_another_replica_deleted(
    make_gateway: Callable[..., Gateway], open_twin: Callable[[], Store], fake: FakeOpenAI
) -> None:
    a = make_gateway()
    first = ask(a, "How do I rotate the API keys?")
    assert ask(a, "How do I rotate the API keys?").cache_status == "exact"  # served from A's copy
    b = make_gateway(open_twin())
    assert b.invalidate_cache_entry(first.request_id)  # a 👎 on another replica
    cache_a = a.cache
    assert isinstance(cache_a, SemanticCache)
    cache_a.sync_once()  # what A's sync thread does as soon as the change log has the delete
    assert ask(a, "How do I rotate the API keys?").cache_status == "miss"
    assert fake.count("chat") == 2


def test_hits_served_from_a_copy_still_count_as_recent_use_in_the_store(
    make_gateway: Callable[..., Gateway], open_twin: Callable[[], Store], store: Store
) -> None:
    a = make_gateway(cache_max_entries=2)
    deploy = ask(a, "How do I deploy the API?")
    vacation = ask(a, "Who approves vacation requests?")
    assert ask(a, "How do I deploy the API?").cache_status == "exact"  # from A's copy, no store read
    cache_a = a.cache
    assert isinstance(cache_a, SemanticCache)
    assert cache_a.flush()  # A's writes are behind its answers
    cache_a.report_served()  # A's sync thread reports served entries in batches
    b = make_gateway(open_twin(), cache_max_entries=2)
    ask(b, "Where is the office wifi password?")  # the store evicts its least recently used entry
    assert b.cache.flush()  # type: ignore[union-attr]
    assert store.semantic_get(vacation.request_id, touch=False) is None
    assert store.semantic_get(deploy.request_id, touch=False) is not None


def test_a_copy_of_an_answer_is_not_served_while_the_store_is_down(
    make_gateway: Callable[..., Gateway], sqlite_store: SqliteStore, fake: FakeOpenAI
) -> None:
    gw = make_gateway(sqlite_store)
    ask(gw, "How do I rotate the API keys?")
    sqlite_store.close()  # the store is gone: a hit could be neither deduplicated nor recorded
    with pytest.raises(StoreError):
        ask(gw, "How do I rotate the API keys?")
    assert fake.count("chat") == 1


def test_a_restarted_replica_loads_the_shared_entries(make_gateway: Callable[..., Gateway],
                                                      open_twin: Callable[[], Store], fake: FakeOpenAI) -> None:
    first = make_gateway()
    ask(first, "How do I rotate the API keys?")
    assert first.cache.flush()  # type: ignore[union-attr]  # the store write is behind the answer
    later = make_gateway(open_twin())
    assert ask(later, "How do I rotate the API keys?").cache_status == "exact"
    assert fake.count("chat") == 1


# -- following the change log: everyone else's writes, not our own -------------------------------------


class _WordVectors:
    """A tiny deterministic embedder: each text gets a unit vector seeded by its bytes."""

    name = "test-words"
    dims = 16

    def embed(self, texts: Any) -> np.ndarray:
        rows = [np.random.default_rng(list(text.encode())).standard_normal(self.dims) for text in texts]
        out = np.asarray(rows, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


SCOPE = CacheScope(model="gpt-4.1-mini", params="p", context="docs:v1", tenant="w:W1")


def _cache(store: Store, clock: ManualClock) -> SemanticCache:
    return SemanticCache(store, _WordVectors(), ttl_s=3600, max_entries=0, policy=ThresholdPolicy(0.99, None),
                         clock=clock)


def _answer(entry_id: str, content: str) -> CachedAnswer:
    return CachedAnswer(entry_id, content, "gpt-4.1-mini", 10, 0, 5, 20, 0.0)


def _count_applied(cache: SemanticCache, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    applied: list[str] = []
    apply = cache._apply

    def counting(change: Any) -> None:
        applied.append(change.entry_id)
        apply(change)

    monkeypatch.setattr(cache, "_apply", counting)
    return applied


def test_a_replica_does_not_read_its_own_writes_back_but_applies_everyone_elses(
    store: Store, open_twin: Callable[[], Store], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _cache(store, clock), _cache(open_twin(), clock)
    b.put(SCOPE, "How do I file expenses?", _answer("b0", "in the portal"))  # the log exists before a loads
    a.load()
    b.load()
    applied = _count_applied(a, monkeypatch)
    for i in range(3):
        a.put(SCOPE, f"How do I deploy service {i}?", _answer(f"a{i}", f"deploy {i}"))
    assert a.sync_once() == 0 and applied == []  # stepped over, not read back
    b.put(SCOPE, "Who approves vacation requests?", _answer("b1", "your manager"))
    assert a.sync_once() == 1 and applied == ["b1"]
    assert a.index.get("b1") is not None
    a.put(SCOPE, "How do I deploy service 9?", _answer("a9", "deploy 9"))  # right after another's write
    assert a.sync_once() == 0 and applied == ["b1"]
    b.sync_once()  # the other replica has all of ours
    assert {e.entry_id for e in b.index.entries()} == {"b0", "a0", "a1", "a2", "a9", "b1"}


def test_another_replicas_later_overwrite_or_delete_of_our_entry_wins(
    store: Store, open_twin: Callable[[], Store], clock: ManualClock
) -> None:
    a, b = _cache(store, clock), _cache(open_twin(), clock)
    a.load()
    b.load()
    a.put(SCOPE, "How do I rotate the API keys?", _answer("k", "old way"))
    b.put(SCOPE, "How do I rotate the API keys now?", _answer("k", "new way"))  # same id, later
    a.sync_once()
    known = a.index.get("k")
    assert known is not None and known.question == "How do I rotate the API keys now?"
    hit = a.lookup(SCOPE, "How do I rotate the API keys now?")
    assert hit.status == "exact" and hit.answer is not None and hit.answer.content == "new way"
    a.put(SCOPE, "Where is the wifi password?", _answer("w", "on the fridge"))
    assert b.invalidate_entry("w")
    a.sync_once()
    assert a.index.get("w") is None and a.lookup(SCOPE, "Where is the wifi password?").status == "miss"


def test_a_write_read_back_when_another_change_reached_the_index_first(
    store: Store, open_twin: Callable[[], Store], clock: ManualClock
) -> None:
    """If the index no longer holds our entry as written (another replica's change for that id was
    applied meanwhile), the follower reads our write back instead of stepping over it."""
    a, b = _cache(store, clock), _cache(open_twin(), clock)
    a.load()
    b.load()
    a.put(SCOPE, "How do I rotate the API keys?", _answer("k", "ours"))
    a.index.remove("k")  # as if another replica's delete had been applied after our local put
    assert a.sync_once() == 1
    known = a.index.get("k")
    assert known is not None and known.question == "How do I rotate the API keys?"


def test_following_threads_converge_on_every_replicas_writes(
    store: Store, open_twin: Callable[[], Store], clock: ManualClock
) -> None:
    a, b = _cache(store, clock), _cache(open_twin(), clock)
    a.start()
    b.start()
    try:
        for i in range(5):
            a.put(SCOPE, f"How do I deploy service {i}?", _answer(f"a{i}", f"deploy {i}"))
            b.put(SCOPE, f"Who owns team {i}?", _answer(f"b{i}", f"lead {i}"))
        assert a.flush()  # a's writes reach the store (they are written behind) before b's overwrite
        b.put(SCOPE, "How do I deploy service 0 today?", _answer("a0", "deploy 0 today"))  # overwrites ours
        assert a.flush() and b.flush()
        want = {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(5)}
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not all(
            {e.entry_id for e in c.index.entries()} == want
            and (known := c.index.get("a0")) is not None and known.question == "How do I deploy service 0 today?"
            for c in (a, b)
        ):
            time.sleep(0.01)
        for c in (a, b):
            assert {e.entry_id for e in c.index.entries()} == want
            known = c.index.get("a0")
            assert known is not None and known.question == "How do I deploy service 0 today?"
    finally:
        a.close()
        b.close()


# -- the index itself ---------------------------------------------------------------------------------


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    m = rng.standard_normal((n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_scope_index_exact_search_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 500, 32)
    index = ScopeIndex(32)
    index.add_many(range(500), vectors)
    for label in (3, 100, 250):
        index.remove(label)
    keep = [i for i in range(500) if i not in (3, 100, 250)]
    for q in _unit(rng, 20, 32):
        expected = [keep[i] for i in np.argsort(-(vectors[keep] @ q))[:5]]
        assert [label for label, _ in index.search(q, 5)] == expected


def test_scope_index_clusters_when_large_and_still_finds_near_duplicates() -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 3000, 32)
    index = ScopeIndex(32, ivf_min=1000, nprobe=8)
    index.add_many(range(3000), vectors)
    assert index.clustered
    noisy = vectors[:200] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    found = sum(index.search(q, 1)[0][0] == i for i, q in enumerate(noisy))
    assert found >= 195
    index.remove(0)
    assert all(label != 0 for label, _ in index.search(vectors[0], 5))


def test_vector_index_never_returns_another_scope_or_an_expired_entry() -> None:
    index = VectorIndex(4)
    v = np.array([1, 0, 0, 0], dtype=np.float32)
    index.upsert(entry_id="a", scope="s1", context="", question="q", normalized="q", vector=v, expires_at=100.0)
    index.upsert(entry_id="b", scope="s2", context="", question="q", normalized="q", vector=v, expires_at=100.0)
    assert [e.entry_id for e, _ in index.nearest("s1", v, 5, now=50.0)] == ["a"]
    assert index.nearest("s1", v, 5, now=100.0) == []
    assert index.exact("s2", "q", now=50.0) is not None and index.exact("s3", "q", now=50.0) is None


def test_cache_scope_is_a_filter_not_text() -> None:
    a = CacheScope.for_chat(model="m", messages=[{"role": "user", "content": "x"}], params={}, context="c",
                            tenant="w:W1")
    b = CacheScope.for_chat(model="m", messages=[{"role": "user", "content": "y"}], params={}, context="c",
                            tenant="w:W1")
    assert a.id() == b.id()  # the question itself is not part of the scope
    assert a.id() != CacheScope(a.model, a.params, a.context, "w:W2").id()
