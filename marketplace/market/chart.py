"""The price index as a PNG chart (``flopex market report``): clearing prices per class with their
TWAP, forward prices of reservations, and volume.
"""

from __future__ import annotations

from pathlib import Path

from marketplace.market.index import MarketIndex, compute_index, parse_window
from marketplace.types import format_tokens

__all__ = ["render_report"]


def render_report(index: MarketIndex, path: str | Path, *, window: str | None = None) -> Path:
    """Draw the index as a PNG: clearing prices over time per class with the TWAP, and volume bars."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    h = index.history
    window = window or max(index.windows, key=lambda w: parse_window(w) or 10**18, default="all")
    stats = index.windows.get(window) or compute_index(h, [window]).windows[window]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def when(t: int) -> datetime:
        return datetime.fromtimestamp(t, tz=UTC)

    fig, (ax_price, ax_volume) = plt.subplots(
        2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    end = h.now
    starts = [s.window_start for s in stats.values()]
    start = min(starts) if starts else end - 3_600
    span = max(end - start, 60)
    bucket = max(60, span // 24)
    for i, (cls, s) in enumerate(stats.items()):
        color = colors[i % len(colors)]
        leases = [lease for lease in h.leases if lease.device_class == cls and lease.time <= end]
        shown = [lease for lease in leases if lease.time >= start]
        before = [lease for lease in leases if lease.time < start]
        steps_t = [when(start)] if before else []  # the price that stood when the chart opens
        steps_p = [before[-1].price / 1e18] if before else []
        for lease in shown:
            steps_t.append(when(lease.time))
            steps_p.append(lease.price / 1e18)
        if steps_t:
            steps_t.append(when(end))
            steps_p.append(steps_p[-1])
            ax_price.step(steps_t, steps_p, where="post", color=color, linewidth=1.6, label=f"{cls} clearing price")
        ax_price.scatter(
            [when(lease.time) for lease in shown], [lease.price / 1e18 for lease in shown], color=color, s=22, zorder=3
        )
        sales = [r for r in h.reservations if r.device_class == cls and start <= r.time <= end]
        if sales:
            ax_price.scatter(
                [when(r.time) for r in sales],
                [r.price / 1e18 for r in sales],
                color=color,
                s=46,
                marker="^",
                edgecolors="black",
                linewidths=0.6,
                zorder=4,
                label=f"{cls} reserved ahead (forward price)",
            )
        if s.twap is not None:
            ax_price.hlines(
                s.twap / 1e18,
                when(s.window_start),
                when(end),
                colors=color,
                linestyles="--",
                linewidth=1.2,
                label=f"{cls} TWAP {format_tokens(s.twap, 4)}",
            )
        buckets: dict[int, int] = {}
        for lease in shown:
            b = start + (lease.time - start) // bucket * bucket
            buckets[b] = buckets.get(b, 0) + lease.max_gpu_seconds
        if buckets:
            n = len(stats)
            width = bucket / 86_400 / max(n, 1) * 0.9
            offset = i * bucket / 86_400 / max(n, 1)
            xs = [mdates.date2num(when(b)) + offset for b in sorted(buckets)]  # type: ignore[no-untyped-call]
            ax_volume.bar(
                xs,
                [buckets[b] / 3_600 for b in sorted(buckets)],
                width=width,
                align="edge",
                color=color,
                alpha=0.75,
                label=cls,
            )
    ax_price.set_title(f"flopex compute price index — window {window}, block {h.block}")
    ax_price.set_ylabel("tokens per GPU-hour")
    ax_price.grid(True, alpha=0.3)
    ax_price.set_ylim(bottom=0)
    if stats:
        ax_price.legend(fontsize=8, loc="best")
    else:
        ax_price.text(0.5, 0.5, "no leases yet", transform=ax_price.transAxes, ha="center", va="center")
    ax_volume.set_ylabel("leased GPU-hours")
    ax_volume.grid(True, axis="y", alpha=0.3)
    ax_volume.set_xlim(when(start), when(end))
    ax_volume.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=UTC))  # type: ignore[no-untyped-call]
    ax_volume.set_xlabel("block time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
