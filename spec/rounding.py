"""The one home of channel rounding and width rules. Nothing else rounds a width."""

from __future__ import annotations

from spec.model import Rounding, WidthRule


def make_divisible(value: float, rounding: Rounding) -> int:
    """Nearest multiple of `divisor`, at least `divisor`, and never more than (1 - min_ratio) below."""
    divisor = rounding.divisor
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < rounding.min_ratio * value:
        rounded += divisor
    return rounded


def scaled_width(base: int, width: float, rounding: Rounding) -> int:
    """A width from the stage table, scaled by the multiplier: every block width uses this."""
    return make_divisible(base * width, rounding)


def apply_width_rule(base: int, width: float, rule: WidthRule, rounding: Rounding) -> int:
    """A width outside the stage table (stem, last conv, fc), under its family's or flavor's rule."""
    if rule.fixed_below is not None and width < rule.fixed_below:
        return base
    if rule.scale == "fixed":
        return base
    if rule.scale == "at_least_base":
        return make_divisible(base * max(width, 1.0), rounding)
    return make_divisible(base * width, rounding)
