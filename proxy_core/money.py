"""Money as people read it. Amounts are integer micro-dollars; formatting never goes through a float."""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Context, Decimal

__all__ = ["MICROS_PER_USD", "format_usd"]

MICROS_PER_USD = 1_000_000
_WIDE = Context(prec=60)  # quantize's digits: any sum of micro-dollars, not the default context's 28


def format_usd(micros: int, *, down: bool = False) -> str:
    """Money as a person reads it: $3.40, $0.0012, $0.000034, $0.

    Rounded half up in decimal: micro-dollars are exact, so no float may decide a digit. ``down``
    rounds towards zero instead, for what is *left* of a budget: $4.9973 left of $5 is "$4.99",
    never "$5.00".
    """
    if micros == 0:
        return "$0"
    sign = "-" if micros < 0 else ""
    size = abs(micros)
    amount = Decimal(size).scaleb(-6)
    rounding = ROUND_DOWN if down else ROUND_HALF_UP
    if size >= 1_000_000:
        return f"{sign}${_round(amount, 2, rounding):,f}"
    text = f"{_round(amount, 4 if size >= 100 else 6, rounding):f}".rstrip("0")
    if len(text.split(".")[1]) < 2:
        text = f"{_round(amount, 2, rounding):f}"
    return f"{sign}${text}"


def _round(amount: Decimal, places: int, rounding: str) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-places), rounding=rounding, context=_WIDE)
