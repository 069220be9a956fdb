"""A model's candidate space at a glance: one row per layer, and the size of the whole space.

Built by ``lana.layers.describe_space`` (``lana candidates`` on the command line).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lana.layers import Layer

__all__ = ["SpaceRow", "SpaceSummary"]


@dataclasses.dataclass(frozen=True)
class SpaceRow:
    """One layer of a ``SpaceSummary``: the layer and its number of candidates."""

    layer: Layer
    n_candidates: int


@dataclasses.dataclass(frozen=True)
class SpaceSummary:
    """The candidate space of a model: per-layer counts and the size of the whole space.

    Attributes:
        model: timm model name.
        space: Preset or pattern list given to ``space_for``.
        img_size: Input size the layers were traced at.
        rows: One row per layer, in forward order.
    """

    model: str
    space: str
    img_size: int
    rows: tuple[SpaceRow, ...]

    @property
    def log10_size(self) -> float:
        """log10 of the number of networks in the space: the sum of log10(candidates per layer)."""
        return sum(math.log10(row.n_candidates) for row in self.rows)

    def to_text(self) -> str:
        """A printable table, one line per layer, ending with the space size as ``10^N``."""
        header = f"{'layer':<22} {'kind':<24} {'in -> out':<30} {'stride':>6} {'cands':>5} "
        header += f"{'params':>9} {'MACs':>9}"
        lines = [
            f"{self.model}, space {self.space!r}, {self.img_size} px: {len(self.rows)} layers",
            header,
        ]
        for row in self.rows:
            layer = row.layer
            shapes = f"{'x'.join(map(str, layer.in_shape))} -> {'x'.join(map(str, layer.out_shape))}"
            lines.append(
                f"{layer.name:<22} {layer.kind:<24} {shapes:<30} {layer.stride:>6} "
                f"{row.n_candidates:>5} {_si(layer.params):>9} {_si(layer.macs):>9}"
            )
        total = sum(row.n_candidates for row in self.rows)
        lines.append(f"{total} candidates in all; space size: 10^{self.log10_size:.1f}")
        return "\n".join(lines)


def _si(value: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)
