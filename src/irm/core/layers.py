"""Parse and format layer specifications such as ``all``, ``0-7`` or ``2,3,10-12``."""

from __future__ import annotations

from irm.errors import IRMError


def parse_layers(spec: str | list[int] | tuple[int, ...], num_layers: int) -> list[int]:
    """Return the sorted, de-duplicated layer indices that ``spec`` names.

    ``spec`` is ``"all"``, a comma-separated list of indices and inclusive ranges
    (``"0-7"``, ``"2,3"``, ``"0-3,8"``), or a list of ints. Negative indices count from
    the end (``-1`` is the last layer).
    """
    if isinstance(spec, (list, tuple)):
        items: list[int] = [int(i) for i in spec]
    else:
        text = str(spec).strip().lower()
        if text in ("all", "*"):
            return list(range(num_layers))
        if not text:
            raise IRMError("empty layer spec", hint="use 'all', a range like '0-7' or a list like '2,3'")
        items = []
        for part in text.split(","):
            part = part.strip()
            try:
                if "-" in part[1:]:
                    cut = part.index("-", 1)
                    lo, hi = int(part[:cut]), int(part[cut + 1 :])
                    if lo > hi:
                        raise ValueError
                    if hi >= num_layers or lo < -num_layers:  # out of range: never expand it
                        items.append(hi if hi >= num_layers else lo)
                    else:
                        items.extend(range(lo, hi + 1))
                else:
                    items.append(int(part))
            except ValueError:
                raise IRMError(
                    f"bad layer spec {spec!r}: cannot read {part!r}",
                    hint="use 'all', a range like '0-7' or a list like '2,3' (layers count from 0)",
                ) from None
    resolved = []
    for i in items:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise IRMError(
                f"layer {i} is out of range: the host has {num_layers} layers (0-{num_layers - 1})",
                hint=f"pick layers between 0 and {num_layers - 1}, or 'all'",
            )
        resolved.append(j)
    if not resolved:
        raise IRMError(f"layer spec {spec!r} names no layers", hint="use 'all' or e.g. '0-7'")
    return sorted(set(resolved))


def format_layers(layers: list[int]) -> str:
    """Compact spec for a sorted list of layers: ``[0,1,2,5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    start = prev = None
    for i in sorted(layers):
        if start is None:
            start = prev = i
        elif prev is not None and i == prev + 1:
            prev = i
        else:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)
