"""Algorithm 1 of the paper ("Search for hyper-parameters of Polarization Pruning"), as ask/tell.

The paper's pseudo-code, for a target FLOPs reduction F* and a permissible range δ:

    (λl, λu, t) = (0, 2e-4, 1.2)
    do                                        # λ phase: t fixed, bisection on λ
        λ = (λl + λu) / 2;  train (λ, t) -> F
        if F − F* > 2δ: λu = λ  elif F − F* < −2δ: λl = λ
    while |F − F*| > 2δ
    while |F − F*| > δ:                       # t phase: λ fixed, t ± 0.1
        if F − F* > δ: t -= 0.1 else: t += 0.1
        train (λ, t) -> F

On every deterministic F(λ, t) for which that loop terminates within `max_trials` trials (and before
the λ bracket is narrower than `lam_rtol`, see below), `Algorithm1` proposes the same (λ, t), number
for number (t rounded to 10 decimals against float drift). Where the paper loops forever, ours ends,
by these rules (each fires only where the paper would never stop):

- Budget: at most `max_trials` trials; reason "max_trials reached".
- λ bracket collapse: when λu − λl < lam_rtol·λu, or λu < lam_rtol·(initial λ_high) (λl = 0),
  bisection can no longer change F, so the paper would loop forever. Then:
  - λu was never tried (every F was below the window: the target is out of reach of the λ range):
    widen — double λu and probe it directly next (one trial per doubling), at most `max_widen`
    times; after that, stop with "target unreachable: F(lam_high) below target". When a probe
    gives the same F as the λ below it (within δ/2, F > δ), λ has stopped paying: go to the t phase
    at the probe (t moves up, as the paper's t rule says for F below the window).
  - λl was never tried (every F was above the window, even as λ -> λl): stop with
    "target unreachable: F(lam_low) above target".
  - both ends tried (F is a staircase that jumps across the 2δ window): go to the t phase at the end
    of the bracket whose F is closest to the target — t is the lever left when λ stops paying.
- t phase cycles: with λ fixed, F depends on t alone, so when the next t was already tried at this λ
  the paper cycles forever (F jumps across the δ-window as t moves by one step). Instead the t step is
  halved (the move becomes a bisection between the two t that bracket the window); when the step
  falls below `t_step_min` (default t_step/8), stop with "t step exhausted".
- A failed trial (F None or NaN, e.g. training diverged) counts as "too much regularization":
  in the λ phase λu = λ, in the t phase t moves down (Theorem 3.2: a smaller t prunes less).

t itself is not bounded, as in the paper: where F does not respond to t, the t phase ends at
`max_trials` (search.strategies bounds t to Theorem 3.2's [−2, 2] instead).

Pure Python: no torch, no Ray.
"""

from __future__ import annotations

from typing import Any

from search.strategies.base import Point, Strategy, Trial, register, round_t

# The paper's constants (Algorithm 1): the initial λ bracket [λl, λu], t₀, and the step of t.
LAM_LOW, LAM_HIGH, T_INIT, T_STEP = 0.0, 2e-4, 1.2, 0.1

UNREACHABLE_HIGH = "target unreachable: F(lam_high) below target"
UNREACHABLE_LOW = "target unreachable: F(lam_low) above target"
T_STEP_EXHAUSTED = "t step exhausted"


@register
class Algorithm1(Strategy):
    """The paper's Algorithm 1: bisection on λ until |F − F*| ≤ 2δ, then t ± t_step until ≤ δ."""

    name = "algorithm1"
    recalls = True

    def __init__(self, settings: Any = None, /, *, max_widen: int = 8, lam_rtol: float = 1e-3,
                 t_step_min: float | None = None, **fields: Any) -> None:  # fmt: skip
        super().__init__(settings, **fields)
        lam_low, lam_high, t_step = self.settings.lam_low, self.settings.lam_high, self.settings.t_step
        self.lam_rtol = float(lam_rtol)
        self.max_widen = int(max_widen)
        self.t_step_min = float(t_step / 8 if t_step_min is None else t_step_min)
        self._lam_high0 = lam_high
        self._s: dict[str, Any] = {
            "phase": "lambda",
            "lam_low": lam_low,
            "lam_high": lam_high,
            "low_tried": False,  # λl / λu are trial values (not the initial bounds)
            "high_tried": False,
            "f_low": None,  # F at λl / λu (None: untried or failed)
            "f_high": None,
            "widenings": 0,
            "probe_top": False,  # after widening, the next trial is λu itself
            "lam": (lam_low + lam_high) / 2,
            "t": self.settings.t_init,
            "t_step": t_step,
            "t_tried": [],  # t values tried at λ during the t phase
        }

    def window(self, proposal: Any) -> tuple[float, float] | None:
        """The λ phase asks for the side of the 2δ window, the t phase for that of the δ window."""
        return self._window(2 * self.delta if self._s["phase"] == "lambda" else self.delta)

    def _recalled(self) -> None:
        """Earlier trials (at t₀) as trials of this λ phase: the one closest to F* within 2δ ends it;
        else each inside (λl, λu) narrows the bracket as a trial of this search would."""
        s, target = self._s, self.target
        near = [tr for tr in self._trials if abs(tr.flops_reduction - target) <= 2 * self.delta]
        if near:
            best = min(near, key=lambda tr: abs(tr.flops_reduction - target))
            self._start_t_phase(best.lam, best.flops_reduction)
            return
        for tr in self._trials:
            if s["lam_low"] < tr.lam < s["lam_high"]:
                above = tr.flops_reduction > target
                s.update({"lam_high": tr.lam, "f_high": tr.flops_reduction, "high_tried": True} if above else
                         {"lam_low": tr.lam, "f_low": tr.flops_reduction, "low_tried": True})  # fmt: skip

    def _propose(self) -> list[Point]:
        s = self._s
        if s["phase"] == "lambda":
            s["lam"] = s["lam_high"] if s["probe_top"] else (s["lam_low"] + s["lam_high"]) / 2
        return [(s["lam"], s["t"])]

    def _observe(self, trial: Trial) -> None:
        if self._s["phase"] == "lambda":
            self._observe_lambda(trial)
        else:
            self._move_t(trial.flops_reduction)

    def _observe_lambda(self, trial: Trial) -> None:
        s, f = self._s, trial.flops_reduction
        probed, f_prev = s["probe_top"], s["f_low"]
        s["probe_top"] = False
        if f is None or f - self.target > 2 * self.delta:
            s["lam_high"], s["f_high"], s["high_tried"] = trial.lam, f, True
        elif f - self.target < -2 * self.delta:
            s["lam_low"], s["f_low"], s["low_tried"] = trial.lam, f, True
            if probed and f_prev is not None and f > self.delta and abs(f - f_prev) < self.delta / 2:
                self._start_t_phase(trial.lam, f)  # doubling λ no longer moves F: t is the lever left
                return
        else:
            self._start_t_phase(trial.lam, f)
            return
        lam_low, lam_high = s["lam_low"], s["lam_high"]
        if lam_high - lam_low >= self.lam_rtol * lam_high and lam_high >= self.lam_rtol * self._lam_high0:
            return
        # The bracket collapsed: the paper's bisection would go on forever from here.
        if not s["high_tried"]:
            if s["widenings"] >= self.max_widen:
                self._finish(UNREACHABLE_HIGH)
                return
            s["widenings"] += 1
            s["lam_high"], s["probe_top"] = 2 * lam_high, True
        elif not s["low_tried"]:
            self._finish(UNREACHABLE_LOW)
        elif s["f_high"] is not None and abs(s["f_high"] - self.target) < abs(s["f_low"] - self.target):
            self._start_t_phase(lam_high, s["f_high"])
        else:
            self._start_t_phase(lam_low, s["f_low"])

    def _start_t_phase(self, lam: float, f: float) -> None:
        s = self._s
        s["phase"], s["lam"], s["t_tried"] = "t", lam, [s["t"]]
        self._move_t(f)

    def _move_t(self, f: float | None) -> None:
        """The paper's t step (down when F is above the window or the trial failed), or half of it."""
        s = self._s
        sign = -1.0 if f is None or f - self.target > self.delta else 1.0
        while True:
            t_next = round_t(s["t"] + sign * s["t_step"])
            if not any(abs(t_next - tt) < 1e-9 for tt in s["t_tried"]):
                break
            s["t_step"] /= 2  # F crossed the δ-window between here and t_next: refine
            if s["t_step"] < self.t_step_min:
                self._finish(T_STEP_EXHAUSTED)
                return
        s["t"] = t_next
        s["t_tried"].append(t_next)

    def _extra_state(self) -> dict[str, Any]:
        return dict(self._s, t_tried=list(self._s["t_tried"]))

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._s = dict(state, t_tried=list(state["t_tried"]))
