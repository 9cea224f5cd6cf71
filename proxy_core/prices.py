"""The price table and the cost of a call, in exact integer micro-dollars.

Prices ship in ``proxy_core/data/prices.json`` as decimal strings in USD per 1M tokens, each with
the public page it comes from and the date it took effect. A user file of the same shape (named by
``PENNY_PRICE_FILE``) overrides or adds models. Every price is converted once, through
:class:`~decimal.Decimal`, to an integer number of micro-dollars per 1M tokens, which is the same
number as pico-dollars per token; costs are then integer products, rounded up to the next
micro-dollar once per call so that a cap computed from them is really a cap.

A model without a price is a :class:`~proxy_core.errors.ConfigurationError`, never billed as $0.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from proxy_core.errors import ConfigurationError

__all__ = ["ModelPrice", "PriceTable", "chat_cost", "embedding_cost", "usd_per_million_to_micros"]

Kind = Literal["chat", "embedding"]

CURRENCY = "USD"
UNIT = "per 1M tokens"
_TOKENS_PER_UNIT = 1_000_000
_MICROS_PER_USD = 1_000_000
# $1 a token, thousands of times any listed price: above it a price is a typo, and a call's cost
# could pass what Redis's Lua numbers hold exactly (2^53) and SQLite's INTEGER holds at all.
MAX_USD_PER_MILLION = Decimal(1_000_000)
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_CHAT_FIELDS = frozenset({"kind", "input", "cached_input", "output", "source", "date"})
_EMBEDDING_FIELDS = frozenset({"kind", "input", "source", "date"})
_EXAMPLE = (
    '{"models": {"MODEL": {"kind": "chat", "input": "0.40", "cached_input": "0.10", "output": "1.60"}}}'
)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices in integer micro-dollars per 1M tokens (= pico-dollars per token).

    Embedding models have ``cached_input == output == 0``: they bill input tokens only.
    """

    model: str
    kind: Kind
    input: int
    cached_input: int
    output: int
    source: str
    date: str | None

    def describe(self) -> str:
        """One line for people: ``chat  in $0.15  cached $0.075  out $0.60  (2024-10-01, <source>)``."""
        if self.kind == "chat":
            prices = f"in ${_usd(self.input)}  cached ${_usd(self.cached_input)}  out ${_usd(self.output)}"
        else:
            prices = f"in ${_usd(self.input)}"
        when = f"{self.date}, " if self.date else ""
        return f"{self.kind:9} {prices}  ({when}{self.source})"


def usd_per_million_to_micros(value: Decimal | str | int) -> int:
    """Convert a USD-per-1M-tokens price to integer micro-dollars per 1M tokens, exactly.

    Raises ``ValueError`` for a negative amount, a non-finite one, one above
    :data:`MAX_USD_PER_MILLION`, or one with more than six decimal places (a fraction of a
    micro-dollar per 1M tokens cannot be represented exactly).
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise ValueError(f'must be a decimal string like "0.15", got {type(value).__name__}')
    try:
        amount = Decimal(value) if not isinstance(value, str) else Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f'must be a decimal string like "0.15", got {value!r}') from None
    if not amount.is_finite():
        raise ValueError(f"must be a finite amount, got {value!r}")
    if amount < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    if amount > MAX_USD_PER_MILLION:
        raise ValueError(f"must be at most ${MAX_USD_PER_MILLION:,} per 1M tokens, got {value!r}")
    micros = amount * _MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"has more than 6 decimal places: {value!r}")
    return int(micros)


def chat_cost(
    price: ModelPrice, prompt_tokens: int, cached_prompt_tokens: int, completion_tokens: int
) -> int:
    """Micro-dollars for one chat call, rounded up once.

    Uncached prompt tokens bill at ``input``, cached ones at ``cached_input`` and completion tokens
    (which include reasoning tokens) at ``output``.
    """
    if price.kind != "chat":
        raise ValueError(f"{price.model} is an {price.kind} model, not a chat model")
    _check_count("prompt_tokens", prompt_tokens)
    _check_count("cached_prompt_tokens", cached_prompt_tokens)
    _check_count("completion_tokens", completion_tokens)
    if cached_prompt_tokens > prompt_tokens:
        raise ValueError(
            f"cached_prompt_tokens ({cached_prompt_tokens}) exceeds prompt_tokens ({prompt_tokens})"
        )
    picos = (
        (prompt_tokens - cached_prompt_tokens) * price.input
        + cached_prompt_tokens * price.cached_input
        + completion_tokens * price.output
    )
    return _ceil_div(picos, _TOKENS_PER_UNIT)


def embedding_cost(price: ModelPrice, tokens: int) -> int:
    """Micro-dollars for embedding ``tokens`` input tokens, rounded up once."""
    if price.kind != "embedding":
        raise ValueError(f"{price.model} is a {price.kind} model, not an embedding model")
    _check_count("tokens", tokens)
    return _ceil_div(tokens * price.input, _TOKENS_PER_UNIT)


class PriceTable(Mapping[str, ModelPrice]):
    """Prices by model name; a read-only mapping that also resolves dated snapshot names."""

    def __init__(self, prices: Mapping[str, ModelPrice], *, version: str) -> None:
        self._prices: Mapping[str, ModelPrice] = MappingProxyType(dict(prices))
        self.version = version

    @classmethod
    def load(cls, override_file: Path | None = None) -> PriceTable:
        """The shipped table, with ``override_file`` (same JSON shape) merged over it if given.

        An override entry with a ``kind`` replaces the model's entry (a new model needs one); an entry
        without ``kind`` changes only the fields it names, e.g. ``{"gpt-4o": {"output": "12.00"}}``.
        ``source`` defaults to the override file and ``date`` to none.
        """
        shipped_name = "proxy_core/data/prices.json"
        text = resources.files("proxy_core").joinpath("data", "prices.json").read_text(encoding="utf-8")
        shipped = _parse_document(text, shipped_name)
        raw: dict[str, dict[str, Any]] = {name: dict(entry) for name, entry in shipped["models"].items()}
        version = str(shipped.get("version", ""))
        origin = shipped_name
        if override_file is not None:
            origin = str(override_file)
            overrides = _parse_document(_read(override_file), origin)
            for name, entry in overrides["models"].items():
                # An entry naming its "kind" replaces the model's entry; one without patches fields.
                merged = dict(entry) if "kind" in entry else {**raw.get(name, {}), **entry}
                if "source" not in entry:
                    merged["source"] = f"override file {override_file}"
                    if "date" not in entry:
                        merged.pop("date", None)
                raw[name] = merged
            version = f"{version}+{overrides.get('version', 'override')}"
        problems: list[str] = []
        prices: dict[str, ModelPrice] = {}
        for name, entry in raw.items():
            try:
                prices[name] = _model_price(name, entry)
            except ValueError as exc:
                problems.append(f"model {name!r}: {exc}")
        if problems:
            raise ConfigurationError(f"Price file {origin}: " + "; ".join(problems))
        return cls(prices, version=version)

    def price_for(self, model: str, kind: Kind | None = None) -> ModelPrice:
        """The price of ``model``: exact name first, then a dated snapshot's base name.

        ``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``. With ``kind``, a model of the
        other kind (an embedding model configured as the chat model) is a configuration error.
        """
        price = self._prices.get(model)
        if price is None:
            base = _SNAPSHOT.sub("", model)
            price = self._prices.get(base) if base != model else None
        if price is None:
            example = _EXAMPLE.replace("MODEL", model)
            raise ConfigurationError(
                f"No price for model {model!r}, so Penny cannot bill or cap it. Add its price to a JSON "
                f"file and set PENNY_PRICE_FILE to that file's path, for example: {example} "
                f'(USD per 1M tokens; use "kind": "embedding" with only "input" for an embedding '
                f"model). Known models: {', '.join(sorted(self._prices))}."
            )
        if kind is not None and price.kind != kind:
            article = {"chat": "a", "embedding": "an"}
            raise ConfigurationError(
                f"Model {model!r} is {article[price.kind]} {price.kind} model, not {article[kind]} {kind} "
                f"model; set it as the {price.kind} model instead."
            )
        return price

    @property
    def models(self) -> Mapping[str, ModelPrice]:
        """Every priced model by name (read-only)."""
        return self._prices

    # -- Mapping ---------------------------------------------------------------------------------
    def __getitem__(self, model: str) -> ModelPrice:
        return self._prices[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable(version={self.version!r}, models={len(self._prices)})"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"Price file {path} (PENNY_PRICE_FILE) does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"Price file {path} (PENNY_PRICE_FILE) cannot be read: {exc}") from exc


def _parse_document(text: str, origin: str) -> dict[str, Any]:
    """Parse and check the outer shape; JSON numbers become Decimals, never floats."""
    try:
        doc = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"Price file {origin} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ConfigurationError(
            f'Price file {origin} must be a JSON object with a "models" object, like {_EXAMPLE}.'
        )
    if doc.get("currency", CURRENCY) != CURRENCY:
        raise ConfigurationError(f'Price file {origin}: "currency" must be {CURRENCY!r}.')
    if doc.get("unit", UNIT) != UNIT:
        raise ConfigurationError(
            f'Price file {origin}: "unit" must be {UNIT!r}; give every price in USD per 1M tokens.'
        )
    for name, entry in doc["models"].items():
        if not isinstance(entry, dict):
            raise ConfigurationError(f"Price file {origin}: model {name!r} must be a JSON object.")
    return doc


def _model_price(name: str, entry: Mapping[str, Any]) -> ModelPrice:
    kind = entry.get("kind")
    if kind not in ("chat", "embedding"):
        raise ValueError(f'"kind" must be "chat" or "embedding", got {kind!r}')
    allowed = _CHAT_FIELDS if kind == "chat" else _EMBEDDING_FIELDS
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} for a {kind} model")
    source = entry.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError('"source" must be a non-empty string')
    date = entry.get("date")
    if date is not None:
        try:
            _dt.date.fromisoformat(date)
        except (TypeError, ValueError):
            raise ValueError(f'"date" must be a date like "2025-04-14", got {date!r}') from None
    input_ = _price_field(entry, "input")
    if kind == "embedding":
        return ModelPrice(name, "embedding", input_, 0, 0, source, date)
    # No published cached price means no discount: bill cached tokens at the full input price.
    cached = _price_field(entry, "cached_input") if "cached_input" in entry else input_
    output = _price_field(entry, "output")
    if cached > input_:
        raise ValueError('"cached_input" is higher than "input"')
    return ModelPrice(name, "chat", input_, cached, output, source, date)


def _price_field(entry: Mapping[str, Any], field: str) -> int:
    if field not in entry:
        raise ValueError(f'"{field}" is missing (USD per 1M tokens, e.g. "0.40")')
    try:
        return usd_per_million_to_micros(entry[field])
    except ValueError as exc:
        raise ValueError(f'"{field}" {exc}') from None


def _usd(micros_per_million: int) -> str:
    """Micro-dollars per 1M tokens as a USD string with at least two decimals: 75_000 -> '0.075'."""
    usd = (Decimal(micros_per_million) / _MICROS_PER_USD).normalize()
    return f"{usd:.2f}" if usd == usd.quantize(Decimal("0.01")) else f"{usd:f}"


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
