"""The price table and cost arithmetic, checked against costs worked out by hand.

Prices are micro-dollars per 1M tokens, i.e. pico-dollars per token; a cost is the sum of
tokens x price in pico-dollars, divided by 1,000,000 and rounded up to a whole micro-dollar.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from proxy_core.errors import ConfigurationError
from proxy_core.prices import (
    ModelPrice,
    PriceTable,
    chat_cost,
    embedding_cost,
    usd_per_million_to_micros,
)

REQUIRED = [
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "o3",
    "o4-mini",
    "o3-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
]


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def _write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# -- the shipped table -------------------------------------------------------------------------


def test_shipped_table_covers_the_models_users_pick(table: PriceTable) -> None:
    for model in REQUIRED:
        assert model in table, model
    assert table.price_for("text-embedding-3-small").kind == "embedding"
    assert table.price_for("gpt-4.1-mini").kind == "chat"


def test_every_shipped_entry_has_a_source_a_date_and_positive_prices(table: PriceTable) -> None:
    raw = json.loads((Path(__file__).parents[1] / "proxy_core" / "data" / "prices.json").read_text())
    assert raw["currency"] == "USD"
    assert raw["unit"] == "per 1M tokens"
    assert isinstance(raw["version"], str)
    assert raw["version"]
    for name, entry in raw["models"].items():
        for field in ("input", "cached_input", "output") if entry["kind"] == "chat" else ("input",):
            assert isinstance(entry[field], str), f"{name}.{field} must be a decimal string"
        price = table[name]
        assert price.source.startswith("https://"), name
        assert price.date is not None
        assert dt.date(2022, 1, 1) <= dt.date.fromisoformat(price.date) <= dt.date.today(), name
        assert price.input > 0, name
        if price.kind == "chat":
            assert 0 < price.cached_input <= price.input, name
            assert price.output > 0, name
        else:
            assert price.cached_input == price.output == 0, name


def test_known_prices_in_integer_micro_dollars_per_million(table: PriceTable) -> None:
    # gpt-4o-mini: $0.15 / $0.075 / $0.60 per 1M tokens
    assert table.price_for("gpt-4o-mini") == ModelPrice(
        "gpt-4o-mini",
        "chat",
        150_000,
        75_000,
        600_000,
        table["gpt-4o-mini"].source,
        table["gpt-4o-mini"].date,
    )
    mini = table.price_for("gpt-4.1-mini")  # $0.40 / $0.10 / $1.60
    assert (mini.input, mini.cached_input, mini.output) == (400_000, 100_000, 1_600_000)
    assert table.price_for("text-embedding-3-small").input == 20_000  # $0.02
    for price in table.values():
        assert all(type(v) is int for v in (price.input, price.cached_input, price.output))


# -- exact conversion, never through floats ------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        ("0.075", 75_000),
        ("0.005", 5_000),
        ("0.275", 275_000),
        ("1.10", 1_100_000),
        ("0.000001", 1),
        ("14", 14_000_000),
        (" 0.30 ", 300_000),
    ],
)
def test_decimal_strings_convert_exactly(usd: str, micros: int) -> None:
    assert usd_per_million_to_micros(usd) == micros


@pytest.mark.parametrize("bad", ["0.0000001", "-1", "abc", "NaN", "Infinity", ""])
def test_unrepresentable_or_invalid_prices_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        usd_per_million_to_micros(bad)


def test_a_price_too_large_to_be_one_is_refused_and_the_largest_allowed_is_shown(tmp_path: Path) -> None:
    # A typo such as "1e27" loaded, then crashed `penny prices` (a Decimal past 28 digits) and would
    # have put costs past what Redis's Lua numbers hold exactly (2^53) and SQLite's INTEGER holds.
    path = _write(tmp_path / "p.json", {"models": {"gpt-4o": {"input": "1e27"}}})
    with pytest.raises(ConfigurationError, match=r"gpt-4o.*at most \$1,000,000 per 1M tokens"):
        PriceTable.load(path)
    with pytest.raises(ValueError, match="at most"):
        usd_per_million_to_micros("1000000.000001")
    path = _write(tmp_path / "p.json", {"models": {"gpt-4o": {"output": "1000000"}}})
    price = PriceTable.load(path).price_for("gpt-4o")
    assert price.output == 1_000_000_000_000
    assert "out $1000000.00" in price.describe()


def test_floats_are_refused() -> None:
    with pytest.raises(ValueError, match="decimal string"):
        usd_per_million_to_micros(0.1)  # type: ignore[arg-type]


def test_json_numbers_in_a_price_file_are_read_as_decimals(tmp_path: Path) -> None:
    # As a float, 0.000003 * 1e6 is 2.9999999999999996 and int() of it is 2; as a Decimal it is 3.
    path = tmp_path / "prices.json"
    path.write_text('{"models": {"tiny": {"kind": "embedding", "input": 0.000003}}}')
    assert PriceTable.load(path).price_for("tiny").input == 3


# -- costs, worked by hand ---------------------------------------------------------------------


def test_chat_cost_gpt_4o_mini_with_cached_prompt(table: PriceTable) -> None:
    # (1234 - 200) uncached x 150_000 = 155_100_000 pico$
    #        200   cached x  75_000 =  15_000_000 pico$
    #        567   output x 600_000 = 340_200_000 pico$
    # total 510_300_000 pico$ = 510.3 micro$ -> rounded up to 511
    assert chat_cost(table.price_for("gpt-4o-mini"), 1_234, 200, 567) == 511


def test_chat_cost_that_needs_no_rounding(table: PriceTable) -> None:
    # gpt-4.1-mini: 1500 x 400_000 + 1000 x 100_000 + 300 x 1_600_000
    #             = 600_000_000 + 100_000_000 + 480_000_000 = 1_180_000_000 pico$ = 1180 micro$
    assert chat_cost(table.price_for("gpt-4.1-mini"), 2_500, 1_000, 300) == 1_180


def test_chat_cost_gpt_5_mostly_cached(table: PriceTable) -> None:
    # gpt-5: 2000 x 1_250_000 + 8000 x 125_000 + 2000 x 10_000_000
    #      = 2_500_000_000 + 1_000_000_000 + 20_000_000_000 = 23_500_000_000 pico$ = 23_500 micro$
    assert chat_cost(table.price_for("gpt-5"), 10_000, 8_000, 2_000) == 23_500


def test_cost_rounds_up_once_per_call(table: PriceTable) -> None:
    mini = table.price_for("gpt-4o-mini")
    # 1 x 150_000 pico$ = 0.15 micro$ -> 1
    assert chat_cost(mini, 1, 0, 0) == 1
    # 1 x 75_000 + 1 x 600_000 = 675_000 pico$ = 0.675 micro$ -> 1 (not 1 + 1: rounded once)
    assert chat_cost(mini, 1, 1, 1) == 1
    # 6 x 150_000 + 1 x 600_000 = 1_500_000 pico$ = 1.5 micro$ -> 2
    assert chat_cost(mini, 6, 0, 1) == 2
    assert chat_cost(mini, 0, 0, 0) == 0


def test_a_million_tokens_costs_the_list_price(table: PriceTable) -> None:
    # 1_000_000 x 400_000 pico$ = 400_000 micro$ = $0.40
    assert chat_cost(table.price_for("gpt-4.1-mini"), 1_000_000, 0, 0) == 400_000
    # 1_000_000 x 1_600_000 pico$ = 1_600_000 micro$ = $1.60
    assert chat_cost(table.price_for("gpt-4.1-mini"), 0, 0, 1_000_000) == 1_600_000


def test_embedding_cost(table: PriceTable) -> None:
    small = table.price_for("text-embedding-3-small")
    # 12_345 x 20_000 = 246_900_000 pico$ = 246.9 micro$ -> 247
    assert embedding_cost(small, 12_345) == 247
    # 50_000 x 20_000 = 1_000_000_000 pico$ = 1000 micro$
    assert embedding_cost(small, 50_000) == 1_000
    # text-embedding-3-large: 1 x 130_000 pico$ = 0.13 micro$ -> 1
    assert embedding_cost(table.price_for("text-embedding-3-large"), 1) == 1
    assert embedding_cost(small, 0) == 0


def test_cost_arguments_are_validated(table: PriceTable) -> None:
    mini = table.price_for("gpt-4o-mini")
    with pytest.raises(ValueError, match="exceeds prompt_tokens"):
        chat_cost(mini, 10, 11, 0)
    with pytest.raises(ValueError, match="non-negative"):
        chat_cost(mini, -1, 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        embedding_cost(table.price_for("text-embedding-3-small"), -5)
    with pytest.raises(ValueError, match="not a chat model"):
        chat_cost(table.price_for("text-embedding-3-small"), 1, 0, 0)
    with pytest.raises(ValueError, match="not an embedding model"):
        embedding_cost(mini, 1)


# -- model names ----------------------------------------------------------------------------------


def test_dated_snapshots_are_priced_as_their_base_model(table: PriceTable) -> None:
    assert table.price_for("gpt-4o-mini-2024-07-18") == table.price_for("gpt-4o-mini")
    snapshot = table.price_for("gpt-4.1-2025-04-14")
    assert snapshot == table.price_for("gpt-4.1")
    # gpt-4.1: 1000 x 2_000_000 + 100 x 8_000_000 = 2_800_000_000 pico$ = 2800 micro$
    assert chat_cost(snapshot, 1_000, 0, 100) == 2_800


def test_a_snapshot_with_a_price_of_its_own_is_not_billed_as_its_base(table: PriceTable) -> None:
    # gpt-4o-2024-05-13 still lists at $5 / $15 per 1M (no cached price) while gpt-4o is $2.50 /
    # $10: billed as gpt-4o it would record half of what the provider charges, and a cap would let
    # twice its money through.
    snapshot = table.price_for("gpt-4o-2024-05-13")
    assert (snapshot.input, snapshot.cached_input, snapshot.output) == (5_000_000, 5_000_000, 15_000_000)
    assert chat_cost(snapshot, 1_000, 500, 100) == 6_500  # 1000 x $5 + 100 x $15 per 1M
    assert table.price_for("gpt-4o-2024-08-06") == table.price_for("gpt-4o")


def test_an_exact_snapshot_entry_wins_over_its_base(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.json",
        {"models": {"gpt-4o-2024-05-13": {"kind": "chat", "input": "5.00", "output": "15.00"}}},
    )
    table = PriceTable.load(path)
    assert table.price_for("gpt-4o-2024-05-13").input == 5_000_000
    assert table.price_for("gpt-4o-2024-11-20").input == 2_500_000


def test_unknown_model_says_how_to_add_a_price(table: PriceTable) -> None:
    with pytest.raises(ConfigurationError) as info:
        table.price_for("gpt-9-ultra")
    message = str(info.value)
    assert "gpt-9-ultra" in message
    assert "PENNY_PRICE_FILE" in message
    assert '{"models": {"gpt-9-ultra": {"kind": "chat", "input": ' in message
    assert "per 1M tokens" in message


def test_a_name_that_only_looks_dated_is_still_unknown(table: PriceTable) -> None:
    with pytest.raises(ConfigurationError, match="unknown-2024-07-18"):
        table.price_for("unknown-2024-07-18")


def test_the_wrong_kind_of_model_is_a_configuration_error(table: PriceTable) -> None:
    with pytest.raises(ConfigurationError, match="embedding model, not a chat model"):
        table.price_for("text-embedding-3-small", kind="chat")
    assert table.price_for("gpt-4o-mini-2024-07-18", kind="chat").model == "gpt-4o-mini"


# -- override files -----------------------------------------------------------------------------


def test_override_file_adds_a_model_and_changes_a_price(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "prices.json",
        {
            "version": "ours-1",
            "currency": "USD",
            "unit": "per 1M tokens",
            "models": {
                "acme-chat": {
                    "kind": "chat",
                    "input": "0.30",
                    "cached_input": "0.03",
                    "output": "1.20",
                    "source": "https://acme.example/pricing",
                    "date": "2026-01-01",
                },
                "gpt-4o-mini": {"output": "0.70"},
            },
        },
    )
    table = PriceTable.load(path)
    acme = table.price_for("acme-chat")
    assert (acme.input, acme.cached_input, acme.output) == (300_000, 30_000, 1_200_000)
    assert acme.source == "https://acme.example/pricing"
    patched = table.price_for("gpt-4o-mini")
    # Only the output price changed; the rest is still the shipped price.
    assert (patched.input, patched.cached_input, patched.output) == (150_000, 75_000, 700_000)
    assert str(path) in patched.source
    assert patched.date is None
    assert table.price_for("gpt-4.1").input == 2_000_000  # untouched models stay
    assert table.version.endswith("+ours-1")
    # 1000 x 300_000 + 0 + 500 x 1_200_000 = 900_000_000 pico$ = 900 micro$
    assert chat_cost(acme, 1_000, 0, 500) == 900


def test_override_with_a_kind_replaces_the_whole_entry(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p.json", {"models": {"gpt-4o": {"kind": "chat", "input": "3.00", "output": "12.00"}}}
    )
    gpt_4o = PriceTable.load(path).price_for("gpt-4o")
    # No cached price given: cached tokens bill at the full input price, never below it.
    assert (gpt_4o.input, gpt_4o.cached_input, gpt_4o.output) == (3_000_000, 3_000_000, 12_000_000)


def test_missing_override_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        PriceTable.load(missing)
    assert str(missing) in str(info.value)


def test_malformed_json_names_the_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"models": {"x": {"kind": "chat",}}}')
    with pytest.raises(ConfigurationError, match="not valid JSON") as info:
        PriceTable.load(path)
    assert str(path) in str(info.value)
    assert "line 1 column" in str(info.value)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ([1, 2], 'a "models" object'),
        ({"prices": {}}, 'a "models" object'),
        ({"unit": "per 1K tokens", "models": {}}, '"unit" must be'),
        ({"currency": "EUR", "models": {}}, '"currency" must be'),
        ({"models": {"m": "0.10"}}, "model 'm' must be a JSON object"),
        ({"models": {"m": {"kind": "chat", "input": "abc", "output": "1"}}}, "'m': \"input\" must be"),
        ({"models": {"m": {"kind": "chat", "input": "1"}}}, "'m': \"output\" is missing"),
        ({"models": {"m": {"input": "1"}}}, "'m': \"kind\" must be"),
        ({"models": {"m": {"kind": "embedding", "input": "1", "output": "2"}}}, "unknown field(s) output"),
        ({"models": {"m": {"kind": "chat", "input": "-1", "output": "1"}}}, "must not be negative"),
        ({"models": {"m": {"kind": "chat", "input": "1", "cached_input": "2", "output": "1"}}}, "higher"),
        ({"models": {"m": {"kind": "embedding", "input": "0.0000001"}}}, "more than 6 decimal places"),
        ({"models": {"m": {"kind": "embedding", "input": "1", "date": "last week"}}}, '"date" must be'),
        ({"models": {"gpt-4o": {"input": "lots"}}}, "'gpt-4o': \"input\""),
    ],
)
def test_bad_override_files_are_refused_clearly(tmp_path: Path, doc: object, expected: str) -> None:
    path = _write(tmp_path / "bad.json", doc)
    with pytest.raises(ConfigurationError) as info:
        PriceTable.load(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_every_bad_entry_is_listed_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "bad.json",
        {"models": {"a": {"kind": "chat", "input": "x", "output": "1"}, "b": {"kind": "nope"}}},
    )
    with pytest.raises(ConfigurationError) as info:
        PriceTable.load(path)
    assert "model 'a'" in str(info.value)
    assert "model 'b'" in str(info.value)


def test_describe_shows_prices_as_people_write_them(table: PriceTable) -> None:
    line = table.price_for("gpt-4o-mini").describe()
    assert "in $0.15  cached $0.075  out $0.60" in line
    assert "https://" in line
    assert "in $0.02" in table.price_for("text-embedding-3-small").describe()
    assert "out $14.00" in table.price_for("gpt-5.2").describe()
    assert dict(table.models) == dict(table)


def test_a_chat_model_used_for_embeddings_is_named_plainly(table: PriceTable) -> None:
    with pytest.raises(ConfigurationError, match="'gpt-4o' is a chat model, not an embedding model"):
        table.price_for("gpt-4o", kind="embedding")


def test_the_documented_price_file_example_loads(tmp_path: Path) -> None:
    """docs/architecture.md's example: a chat model and an embedding model, as written there."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    example = doc.split("`PENNY_PRICE_FILE` at a JSON file of the same shape:", 1)[1].split("```json", 1)[1]
    path = tmp_path / "prices.json"
    path.write_text(example.split("```", 1)[0], encoding="utf-8")
    table = PriceTable.load(path)
    assert table.price_for("my-finetune", "chat").output > 0
    embedding = table.price_for("all-MiniLM-L6-v2", "embedding")
    assert (embedding.input, embedding.cached_input, embedding.output) == (0, 0, 0)
