"""Kubernetes resource quantities ("500m", "2", "4Gi", "1.5G") as integers.

Why here: the wire protocol carries CPU and memory as Kubernetes quantity strings. The client
validates what users pass and the server (``sandboxd``) parses profiles and requests with the
same rules, so both import this one light module.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "K": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_PATTERN = re.compile(r"^\s*([+]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]{0,2})\s*$")


class QuantityError(ValueError):
    """A string that is not a valid, non-negative Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Decimal:
    """Return the quantity's value in base units (cores or bytes) as a Decimal."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise QuantityError(f"quantity must not be negative: {value!r}")
        return Decimal(str(value))
    match = _PATTERN.match(value)
    if not match:
        raise QuantityError(f"not a quantity: {value!r} (examples: '500m', '2', '4Gi')")
    number, suffix = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex already checked
        raise QuantityError(f"not a quantity: {value!r}") from exc
    if suffix in _BINARY:
        return amount * _BINARY[suffix]
    if suffix in _DECIMAL:
        return amount * _DECIMAL[suffix]
    raise QuantityError(f"unknown unit {suffix!r} in quantity {value!r}")


def cpu_millicores(value: str | int | float) -> int:
    """CPU quantity → millicores ("500m" → 500, "2" → 2000), rounded up."""
    millis = parse_quantity(value) * 1000
    return int(millis.to_integral_value(rounding="ROUND_CEILING"))


def memory_bytes(value: str | int | float) -> int:
    """Memory quantity → bytes ("4Gi" → 4294967296, "1G" → 10**9), rounded up."""
    return int(parse_quantity(value).to_integral_value(rounding="ROUND_CEILING"))


def format_cpu(millicores: int) -> str:
    """Millicores as a quantity a person would write: 2000 → "2", 1500 → "1500m"."""
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def format_memory(nbytes: int) -> str:
    """Bytes as a quantity a person would write: exact where it can be ("500Gi", "500G").

    Of the exact forms (the value divided by a binary or decimal unit without remainder),
    the shortest wins, binary on a tie, so 500Gi stays "500Gi" and 500G stays "500G"; a
    value no unit divides (a live "free" figure, say) is shown rounded, in the largest
    binary unit that keeps it at or above 1 ("11.72Gi").
    """
    if nbytes == 0:
        return "0"
    exact = [str(nbytes)]
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"):
        unit = _BINARY.get(suffix) or int(_DECIMAL[suffix])
        if nbytes % unit == 0:
            exact.append(f"{nbytes // unit}{suffix}")
    best = min(exact, key=len)  # min keeps the first of equal lengths: binary before decimal
    if len(best) <= 6:
        return best
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        if nbytes >= _BINARY[suffix]:
            return f"{nbytes / _BINARY[suffix]:.2f}".rstrip("0").rstrip(".") + suffix
    return best
