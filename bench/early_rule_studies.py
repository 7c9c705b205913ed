"""Could another early-decision rule reach issue 13's ≤ 85 %? The studies of docs/search-cost.md
("What this says"), each checked leave-one-out on the recorded cpu-quick trajectories and priced on
the replay (bench_search_cost.py), Algorithm 1 at δ 0.05 and 0.03, against its cost without early
decisions:

    python bench/early_rule_studies.py           # ~1 minute; prints one block per study

- margins: `search.strategies.early`'s bounds with a margin of its own for each side;
- ratio: an extra upper bound F_final ≤ F_k / r_k + 0.07, r_k the least F_k / F_final recorded;
- neighbours: the forecast of the 3 recorded trajectories nearest the curve so far, ± the largest
  leave-one-out error at that epoch (+ a margin), checked by nested leave-one-out;
- foresight with a gap: the rule that knows each stable F and decides, at epoch k, the trials more
  than `gap` outside the window: what a rule would need.
"""

from __future__ import annotations

import bisect
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_search_cost, when run as a script
import bench_search_cost as bsc  # noqa: E402

from search.strategies.early import ABOVE, BELOW, CPU_QUICK, Decision, RiseBounds  # noqa: E402
from trainers.config import load_config  # noqa: E402

EPOCHS = 30
WINDOWS = [(c - w, c + w) for c in bsc.TARGETS for w in (0.03, 0.05, 0.06, 0.1)]  # as tests/search/test_early.py


def trajectories(padded: bool) -> list[list[float]]:
    """The recorded per-epoch F, each ending at its stable F; `padded`: held there to epoch 30."""
    rows = [list(r["f_per_epoch"]) for r in bsc.recorded_rows()]
    return [(t + [t[-1]] * EPOCHS)[:EPOCHS] for t in rows] if padded else rows


def interval_rule(interval):
    """A rule from `interval(F so far, max_epochs)` -> (low, forecast, high) or None."""

    def rule(window, fs, n):
        got = interval(list(fs), n) if len(fs) >= 2 else None
        if got is None:
            return None
        low, forecast, high = got
        if low > window[1]:
            return Decision(ABOVE, len(fs), fs[-1], forecast, low, high)
        if high < window[0]:
            return Decision(BELOW, len(fs), fs[-1], forecast, low, high)
        return None

    return rule


def bounds_interval(bounds: RiseBounds, above: float, below: float, ratios: list[float] | None = None):
    """The rise bounds with a margin per side, and optionally the ratio bound on top."""

    def interval(fs, n):
        i = bisect.bisect_right(bounds.fractions, len(fs) / n + 1e-9) - 1
        if i < 0:
            return None
        f = fs[-1]
        high = f + bounds.most[i] + below
        if ratios and ratios[len(fs) - 1] > 0:
            high = min(high, f / ratios[len(fs) - 1] + below)
        return f + bounds.least[i] - above, f + bounds.median[i], high

    return interval


def least_ratios(trajs: list[list[float]], min_count: int = 5) -> list[float]:
    """Per epoch, the least F_k / F_final recorded (0 where fewer than `min_count` trials end above
    0.02), as an envelope from the end."""
    out = []
    for k in range(1, EPOCHS + 1):
        ratios = [t[k - 1] / t[-1] for t in trajs if len(t) >= k and t[-1] > 0.02]
        out.append(min(ratios) if len(ratios) >= min_count else 0.0)
    for k in range(EPOCHS - 2, -1, -1):
        out[k] = min(out[k], out[k + 1])
    return out


def neighbours_forecast(prefix: list[float], library: list[list[float]], count: int = 3) -> float:
    k = len(prefix)
    nearest = sorted((sum((a - b) ** 2 for a, b in zip(prefix, t[:k], strict=False)), t[-1] - t[k - 1])
                     for t in library)[:count]  # fmt: skip
    return prefix[-1] + sum(rise for _, rise in nearest) / count


def neighbours_errors(library: list[list[float]]) -> list[float]:
    """Per epoch, the largest leave-one-out |forecast − stable F| over `library`, an envelope from the end."""
    errors = [0.0] * EPOCHS
    for i, t in enumerate(library):
        others = library[:i] + library[i + 1 :]
        for k in range(2, EPOCHS + 1):
            errors[k - 1] = max(errors[k - 1], abs(neighbours_forecast(t[:k], others) - t[-1]))
    for k in range(EPOCHS - 2, -1, -1):
        errors[k] = max(errors[k], errors[k + 1])
    return errors


def neighbours_interval(library: list[list[float]], margin: float):
    errors = neighbours_errors(library)

    def interval(fs, n):
        f = neighbours_forecast(fs, library)
        return f - errors[len(fs) - 1] - margin, f, f + errors[len(fs) - 1] + margin

    return interval


def leave_one_out(trajs: list[list[float]], interval_of) -> tuple[int, int]:
    """(wrong, made) decisions when each trajectory is judged by `interval_of(the others)`."""
    wrong = made = 0
    for i, t in enumerate(trajs):
        rule = interval_rule(interval_of(trajs[:i] + trajs[i + 1 :]))
        for low, high in WINDOWS:
            decision = next((d for k in range(2, len(t) + 1) if (d := rule((low, high), t[:k], EPOCHS))), None)
            if decision is not None:
                made += 1
                wrong += low <= t[-1] <= high or decision.side != (ABOVE if t[-1] > high else BELOW)
    return wrong, made


def price(rule_of) -> str:
    """Algorithm 1's median trial-epochs with `rule_of(surface)`, as a share of its cost without."""
    cells = []
    for delta in bsc.DELTAS:
        off = statistics.median(c.epochs for *_, c in bsc.replayed("algorithm1", delta, 20, early=False))
        on = statistics.median(c.epochs for *_, c in bsc.replayed("algorithm1", delta, 20, rule_of=rule_of))
        cells.append(f"δ {delta}: {on:g} / {off:g} = {on / off:.2f}x")
    return ", ".join(cells)


def main() -> None:
    trajs, padded = trajectories(padded=False), trajectories(padded=True)
    stable = bsc.stable_rule(load_config("cpu-quick"))
    print(f"{len(trajs)} recorded trajectories")
    for above, below in ((0.07, 0.07), (0.01, 0.07), (0.0, 0.07), (0.07, 0.06)):
        loo = leave_one_out(trajs, lambda o, a=above, b=below: bounds_interval(RiseBounds.measure(o, EPOCHS, 0), a, b))
        rule = interval_rule(bounds_interval(CPU_QUICK, above, below))
        print(f"margins above {above} below {below}: leave-one-out wrong/made {loo}; {price(lambda s, r=rule: r)}")
    loo = leave_one_out(trajs, lambda o: bounds_interval(RiseBounds.measure(o, EPOCHS, 0), 0.07, 0.07, least_ratios(o)))
    rule = interval_rule(bounds_interval(CPU_QUICK, 0.07, 0.07, least_ratios(trajs)))
    print(f"ratio bound: leave-one-out wrong/made {loo}; {price(lambda s: rule)}")
    loo = leave_one_out(padded, lambda o: neighbours_interval(o, 0.03))
    rule = interval_rule(neighbours_interval(padded, 0.03))
    print(f"neighbours (margin 0.03): nested leave-one-out wrong/made {loo}; {price(lambda s: rule)}")
    print("  largest leave-one-out error per epoch:", [round(e, 3) for e in neighbours_errors(padded)])
    for gap in (0.0, 0.05, 0.1):
        for epoch in (2, 5, 10):
            print(f"foresight, gap {gap}, epoch {epoch}: {price(lambda s, g=gap, k=epoch: bsc.foresight(s, stable, k, g))}")


if __name__ == "__main__":
    main()
