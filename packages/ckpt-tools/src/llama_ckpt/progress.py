"""A byte-counting progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

from tqdm import tqdm


def bar(total_bytes: int, desc: str, enabled: bool = True) -> tqdm:
    return tqdm(
        total=total_bytes,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None if enabled else True,
        leave=False,
    )
