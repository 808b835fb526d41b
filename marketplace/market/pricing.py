"""Pricing strategies: what a provider asks for a job.

The provider daemon asks a :class:`PricingStrategy` for a price each time it sees a job it
could run. A strategy looks at a :class:`PricingContext` (the job's terms, the provider's
floor, how busy and how idle it is, what the market cleared at recently) and answers with an
ask in token units per GPU-hour, or ``None`` to stay out of the auction.

Prices on chain are integers (token smallest units, 18 decimals, per GPU-hour), so every
strategy works in exact integer and :class:`~fractions.Fraction` arithmetic and rounds its
final ask *up* to a whole unit: no float ever touches a price, and no crafted job can make
rounding produce an ask below the floor or above the job's max.

Two rules hold for every strategy here, whatever its parameters:

* an ask is never below the provider's floor (its hard floor), and
* an ask is never above the job's max price: a strategy that would ask more returns ``None``.

Strategies are built from short specs on the command line::

    fixed                                   ask the floor
    ramp:slope=0.5                          floor × (1 + slope × utilization)
    decay:start=1.5,min=1,half_life=1800    idle providers slide from start×floor toward min×floor
    follow:undercut=0.02                    median of recent clearing prices, less 2 %

with :func:`strategy_from_spec`; ``strategy.spec`` gives the canonical spec back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Protocol, runtime_checkable

from marketplace.errors import ConfigError

__all__ = [
    "FixedFloor",
    "IdleDecay",
    "MarketFollower",
    "PricingContext",
    "PricingStrategy",
    "UtilizationRamp",
    "ceil_fraction",
    "strategy_from_spec",
]


def ceil_fraction(value: Fraction) -> int:
    """Returns the smallest integer at or above ``value`` (exact; no float)."""
    return -((-value.numerator) // value.denominator)


@dataclass(frozen=True, slots=True)
class PricingContext:
    """What a provider knows when it prices one job.

    Money is in token units per GPU-hour; times are whole seconds.
    """

    max_price: int
    """The requester's max price per GPU-hour."""
    gpus: int
    """Devices the job needs on this provider."""
    max_gpu_seconds: int
    """GPU-seconds the requester pays for at most."""
    floor: int
    """The provider's price floor per GPU-hour: its hard floor, never undercut."""
    utilization: Fraction = Fraction(0)
    """Busy devices over all devices of the provider, before this job, in [0, 1]."""
    idle_seconds: int = 0
    """Seconds since the provider's last job ended; 0 while any job runs."""
    recent_prices: tuple[int, ...] = field(default=())
    """Recent clearing prices per GPU-hour for the provider's device class, oldest first."""

    def __post_init__(self) -> None:
        if self.max_price < 0 or self.floor < 0:
            raise ValueError("pricing: prices must not be negative")
        if self.gpus < 1:
            raise ValueError("pricing: a job needs at least one device")
        if self.max_gpu_seconds < 0 or self.idle_seconds < 0:
            raise ValueError("pricing: seconds must not be negative")
        if not 0 <= self.utilization <= 1:
            raise ValueError(f"pricing: utilization {self.utilization} is outside [0, 1]")


@runtime_checkable
class PricingStrategy(Protocol):
    """Decides a provider's ask for one job."""

    @property
    def spec(self) -> str:
        """The spec that :func:`strategy_from_spec` turns back into this strategy."""
        ...

    def ask(self, ctx: PricingContext) -> int | None:
        """Returns the ask in token units per GPU-hour, or ``None`` to not bid."""
        ...


def _exact(name: str, value: object) -> Fraction:
    """Coerces a parameter to an exact Fraction; floats are refused (they are not exact)."""
    if isinstance(value, bool) or not isinstance(value, int | Fraction | Decimal | str):
        raise ConfigError(f"pricing: {name} must be an exact number (int, Fraction, Decimal or str)")
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"pricing: {name}={value!r} is not a number") from None


def _bid(ctx: PricingContext, price: Fraction | int) -> int | None:
    """Rounds ``price`` up, lifts it to the floor, and drops it if above the job's max."""
    ask = ceil_fraction(Fraction(price))
    ask = max(ask, ctx.floor, 1)  # a zero ask is refused on chain
    return ask if ask <= ctx.max_price else None


def _fmt(value: Fraction) -> str:
    """Formats a parameter for a spec: an integer, a finite decimal, or ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = max(twos, fives)
    scaled = value * 10**digits
    sign = "-" if scaled < 0 else ""
    whole, frac = divmod(abs(scaled.numerator), 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


@dataclass(frozen=True, slots=True)
class FixedFloor:
    """Asks the provider's floor; skips jobs whose max price is below it."""

    def ask(self, ctx: PricingContext) -> int | None:
        """Returns the floor, or ``None`` when the job's max is below it."""
        return _bid(ctx, ctx.floor)

    @property
    def spec(self) -> str:
        """``fixed``."""
        return "fixed"


@dataclass(frozen=True, slots=True)
class UtilizationRamp:
    """Asks ``floor × (1 + slope × utilization)``: the busier the provider, the dearer.

    A ramp spreads load: an idle provider undercuts a busy one. ``slope`` is a
    non-negative fraction; with slope 0 this is :class:`FixedFloor`.
    """

    slope: Fraction = Fraction(1, 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slope", _exact("slope", self.slope))
        if self.slope < 0:
            raise ConfigError(f"pricing: ramp slope must not be negative, got {_fmt(self.slope)}")

    def ask(self, ctx: PricingContext) -> int | None:
        """Returns the ramped ask, or ``None`` when it is above the job's max."""
        return _bid(ctx, ctx.floor * (1 + self.slope * ctx.utilization))

    @property
    def spec(self) -> str:
        """``ramp:slope=…``."""
        return f"ramp:slope={_fmt(self.slope)}"


@dataclass(frozen=True, slots=True)
class IdleDecay:
    """An idle provider lowers its ask from ``start × floor`` toward ``minimum × floor``.

    The premium above the minimum halves every ``half_life_s`` seconds of idleness
    (piecewise linear between whole half-lives, so the math stays exact). A busy provider
    (``idle_seconds == 0``) asks the full ``start × floor``. The ask never goes below the
    floor: ``minimum`` must be at least 1.
    """

    start: Fraction = Fraction(3, 2)
    minimum: Fraction = Fraction(1)
    half_life_s: int = 1_800

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _exact("start", self.start))
        object.__setattr__(self, "minimum", _exact("min", self.minimum))
        if isinstance(self.half_life_s, bool) or not isinstance(self.half_life_s, int):
            raise ConfigError("pricing: decay half_life must be whole seconds")
        if self.minimum < 1:
            raise ConfigError(
                f"pricing: decay min must be at least 1 (the floor is a hard floor), got {_fmt(self.minimum)}"
            )
        if self.start < self.minimum:
            raise ConfigError(f"pricing: decay start ({_fmt(self.start)}) must be at least min ({_fmt(self.minimum)})")
        if self.half_life_s <= 0:
            raise ConfigError(f"pricing: decay half_life must be positive seconds, got {self.half_life_s}")

    def factor(self, idle_seconds: int) -> Fraction:
        """Returns the share of the premium left after ``idle_seconds``: 1 at 0, 1/2 at a half-life."""
        halvings, rest = divmod(idle_seconds, self.half_life_s)
        if halvings > 200:  # 2**-200 of any realistic premium is far below one token unit
            return Fraction(0)
        return Fraction(2 * self.half_life_s - rest, 2 * self.half_life_s * 2**halvings)

    def ask(self, ctx: PricingContext) -> int | None:
        """Returns the decayed ask, or ``None`` when it is above the job's max."""
        level = self.minimum + (self.start - self.minimum) * self.factor(ctx.idle_seconds)
        return _bid(ctx, ctx.floor * level)

    @property
    def spec(self) -> str:
        """``decay:start=…,min=…,half_life=…``."""
        return f"decay:start={_fmt(self.start)},min={_fmt(self.minimum)},half_life={self.half_life_s}"


@dataclass(frozen=True, slots=True)
class MarketFollower:
    """Asks the median of recent clearing prices less ``undercut``; the floor when none.

    Never below the floor: a follower in a market that clears under its costs asks its floor.
    """

    undercut: Fraction = Fraction(0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "undercut", _exact("undercut", self.undercut))
        if not 0 <= self.undercut < 1:
            raise ConfigError(f"pricing: follow undercut must be in [0, 1), got {_fmt(self.undercut)}")

    def ask(self, ctx: PricingContext) -> int | None:
        """Returns the market-following ask, or ``None`` when it is above the job's max."""
        if not ctx.recent_prices:
            return _bid(ctx, ctx.floor)
        ordered = sorted(ctx.recent_prices)
        n = len(ordered)
        median = Fraction(ordered[(n - 1) // 2] + ordered[n // 2], 2)
        return _bid(ctx, median * (1 - self.undercut))

    @property
    def spec(self) -> str:
        """``follow:undercut=…``."""
        return f"follow:undercut={_fmt(self.undercut)}"


# ---------------------------------------------------------------- specs

_Builder = Callable[[Mapping[str, Fraction]], PricingStrategy]


def _whole_seconds(name: str, value: Fraction) -> int:
    if value.denominator != 1:
        raise ConfigError(f"pricing: {name} must be whole seconds, got {_fmt(value)}")
    return value.numerator


def _build_decay(p: Mapping[str, Fraction]) -> PricingStrategy:
    defaults = IdleDecay()
    return IdleDecay(
        start=p.get("start", defaults.start),
        minimum=p.get("min", defaults.minimum),
        half_life_s=_whole_seconds("half_life", p.get("half_life", Fraction(defaults.half_life_s))),
    )


_STRATEGIES: dict[str, tuple[frozenset[str], _Builder]] = {
    "fixed": (frozenset(), lambda p: FixedFloor()),
    "ramp": (frozenset({"slope"}), lambda p: UtilizationRamp(slope=p.get("slope", Fraction(1, 2)))),
    "decay": (frozenset({"start", "min", "half_life"}), _build_decay),
    "follow": (frozenset({"undercut"}), lambda p: MarketFollower(undercut=p.get("undercut", Fraction(0)))),
}
_ALIASES = {"floor": "fixed"}


def _parse_number(spec: str, key: str, text: str) -> Fraction:
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"pricing: {key}={text!r} in {spec!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"pricing: {key} in {spec!r} must not be negative")
    return value


def strategy_from_spec(spec: str) -> PricingStrategy:
    """Builds a strategy from a spec such as ``"ramp:slope=0.5"``.

    The spec is a name (``fixed``, ``ramp``, ``decay``, ``follow``), optionally followed by
    ``:`` and comma-separated ``key=value`` parameters; values are exact decimals or
    fractions (``0.5``, ``1/3``). Raises :class:`~marketplace.errors.ConfigError` with a
    one-line reason for an unknown name, an unknown, repeated or malformed parameter, or a
    value out of range.
    """
    text = spec.strip()
    names = ", ".join(sorted(_STRATEGIES))
    if not text:
        raise ConfigError(f"pricing: empty strategy spec; expected one of {names}")
    name, colon, rest = text.partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in _STRATEGIES:
        raise ConfigError(f"pricing: unknown strategy {name!r} in {spec!r}; expected one of {names}")
    accepted, build = _STRATEGIES[name]
    params: dict[str, Fraction] = {}
    if rest.strip():
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or not key or not value.strip():
                raise ConfigError(f"pricing: expected key=value in {spec!r}, got {item.strip()!r}")
            if key not in accepted:
                known = ", ".join(sorted(accepted)) or "none"
                raise ConfigError(f"pricing: {name} takes no parameter {key!r} (accepted: {known})")
            if key in params:
                raise ConfigError(f"pricing: parameter {key!r} given twice in {spec!r}")
            params[key] = _parse_number(spec, key, value)
    elif colon:
        raise ConfigError(f"pricing: missing parameters after ':' in {spec!r}")
    return build(params)
