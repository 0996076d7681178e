"""L-BFGS with a strong-Wolfe line search, on one flat tensor of unknowns.

Why not ``torch.optim.LBFGS``: constructing any ``torch.optim`` optimiser imports
``torch._dynamo`` on first use, a large share of a registration's time on a CPU
(docs/performance.md, "Profile"). The affine stage and the refinement need
nothing of it: a function ``f(x) -> (value, gradient)`` and a few vector operations.

The method is the textbook one (Nocedal & Wright, *Numerical Optimization*, 2nd ed., algorithms
7.4 and 3.5/3.6): the two-loop recursion over the last ``history`` pairs ``(s, y)`` with the
initial Hessian ``(s.y / y.y) I``, and a line search for a step satisfying the strong Wolfe
conditions (``c1 = 1e-4``, ``c2 = 0.9``) by bracketing and safeguarded cubic interpolation. The
first trial step of the first iteration is ``min(1, 1 / |g|_1)``, of every later one ``1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Objective = Callable[[torch.Tensor], tuple[float, torch.Tensor]]
"""``f(x) -> (value, gradient)`` for a flat tensor ``x``; the gradient has the shape of ``x``."""

C1 = 1e-4
"""Sufficient decrease constant of the strong Wolfe conditions."""

C2 = 0.9
"""Curvature constant of the strong Wolfe conditions."""

MAX_LINE_SEARCH = 25
"""Most evaluations of one line search."""


@dataclass
class LbfgsResult:
    """Outcome of :func:`lbfgs`.

    Attributes:
        x: the last accepted point.
        value: ``f`` there.
        iterations: accepted steps taken.
        evaluations: calls of ``f``, the first one included.
        reason: why it stopped (``"gradient"``, ``"iterations"``, ``"evaluations"``, ``"change"``,
            ``"line search"``).
    """

    x: torch.Tensor
    value: float
    iterations: int
    evaluations: int
    reason: str


def lbfgs(
    f: Objective,
    x0: torch.Tensor,
    max_iter: int,
    max_eval: int | None = None,
    history: int = 10,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    on_evaluation: Callable[[int, float], None] | None = None,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LbfgsResult:
    """Minimise ``f`` from ``x0`` (not modified) with L-BFGS and a strong-Wolfe line search.

    Args:
        f: the objective, ``f(x) -> (value, gradient)``.
        x0: the starting point (any shape; treated as a flat vector).
        max_iter: most accepted steps.
        max_eval: most evaluations of ``f`` (default ``1.25 * max_iter``, as ``torch.optim.LBFGS``).
        history: pairs kept for the inverse Hessian.
        tolerance_grad: stop when every gradient entry is at most this in magnitude.
        tolerance_change: stop when a step moves no entry by more than this, or the value changes
            by less than this.
        on_evaluation: called after every evaluation with ``(evaluations so far, value)``; it may
            raise to stop (a cancel).
        precondition: an optional symmetric positive definite linear map ``P`` (a tensor of the
            shape of ``x`` in, one out): the initial inverse Hessian of every iteration is
            ``gamma P`` with ``gamma = s.y / y.P y`` instead of ``gamma I`` (a preconditioned
            L-BFGS; the first direction is ``-P g``).

    Raises:
        ValueError: ``max_iter < 1`` or ``history < 1``.
    """
    if max_iter < 1 or history < 1:
        raise ValueError(f"max_iter and history must be >= 1, got {max_iter} and {history}")
    max_eval = int(max_eval) if max_eval is not None else max_iter * 5 // 4
    counter = _Counter(f, on_evaluation)
    x = x0.detach().clone()
    value, grad = counter(x)
    if float(grad.abs().max()) <= tolerance_grad:
        return LbfgsResult(x, value, 0, counter.n, "gradient")
    s_list: list[torch.Tensor] = []
    y_list: list[torch.Tensor] = []
    rho: list[float] = []
    h_diag = 1.0
    apply_p = precondition if precondition is not None else (lambda v: v)
    for iteration in range(1, max_iter + 1):
        d = _direction(grad, s_list, y_list, rho, h_diag, apply_p)
        gtd = float(grad.flatten() @ d.flatten())
        if gtd > -tolerance_change:  # not a descent direction (numerical noise): restart along -P g
            s_list.clear(), y_list.clear(), rho.clear()
            d = -apply_p(grad)
            gtd = float(grad.flatten() @ d.flatten())
        step = min(1.0, 1.0 / float(d.abs().sum())) if iteration == 1 else 1.0
        search = _strong_wolfe(counter, x, value, grad, d, gtd, step, tolerance_change, max_eval)
        if search is None:
            return LbfgsResult(x, value, iteration - 1, counter.n, "line search")
        step, new_value, new_grad = search
        s = d * step
        y = new_grad - grad
        ys = float(y.flatten() @ s.flatten())
        if ys > 1e-10:
            if len(s_list) == history:
                s_list.pop(0), y_list.pop(0), rho.pop(0)
            s_list.append(s)
            y_list.append(y)
            rho.append(1.0 / ys)
            h_diag = ys / float(y.flatten() @ apply_p(y).flatten())
        x = x + s
        change = abs(new_value - value)
        value, grad = new_value, new_grad
        if iteration == max_iter:
            return LbfgsResult(x, value, iteration, counter.n, "iterations")
        if counter.n >= max_eval:
            return LbfgsResult(x, value, iteration, counter.n, "evaluations")
        if float(grad.abs().max()) <= tolerance_grad:
            return LbfgsResult(x, value, iteration, counter.n, "gradient")
        if float(s.abs().max()) <= tolerance_change or change < tolerance_change:
            return LbfgsResult(x, value, iteration, counter.n, "change")
    return LbfgsResult(x, value, max_iter, counter.n, "iterations")  # pragma: no cover (loop returns)


class _Counter:
    """``f`` that counts its calls and reports each one."""

    def __init__(self, f: Objective, on_evaluation: Callable[[int, float], None] | None) -> None:
        self.f, self.on_evaluation, self.n = f, on_evaluation, 0

    def __call__(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        value, grad = self.f(x)
        self.n += 1
        value = float(value)
        if self.on_evaluation is not None:
            self.on_evaluation(self.n, value)
        return value, grad.detach()


def _direction(grad: torch.Tensor, s_list: list[torch.Tensor], y_list: list[torch.Tensor], rho: list[float],
               h_diag: float, apply_p: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``-H g`` by the two-loop recursion, with the initial inverse Hessian ``h_diag * P``."""
    q = -grad.clone()
    alphas = []
    for s, y, r in zip(reversed(s_list), reversed(y_list), reversed(rho)):
        a = r * float(s.flatten() @ q.flatten())
        alphas.append(a)
        q.add_(y, alpha=-a)
    q = apply_p(q).mul_(h_diag)
    for (s, y, r), a in zip(zip(s_list, y_list, rho), reversed(alphas)):
        b = r * float(y.flatten() @ q.flatten())
        q.add_(s, alpha=a - b)
    return q


def _cubic_minimum(t1: float, f1: float, g1: float, t2: float, f2: float, g2: float, lo: float, hi: float) -> float:
    """Minimiser in ``[lo, hi]`` of the cubic through ``(t1, f1, g1)`` and ``(t2, f2, g2)``
    (value and slope at two steps); the bisection point when the cubic has none there."""
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (t1 - t2)
    square = d1 * d1 - g1 * g2
    if square >= 0.0:
        d2 = math.copysign(math.sqrt(square), t2 - t1)
        t = t2 - (t2 - t1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        if math.isfinite(t):
            return min(max(t, lo), hi)
    return (lo + hi) / 2.0


def _strong_wolfe(counter: _Counter, x: torch.Tensor, f0: float, g0: torch.Tensor, d: torch.Tensor, gtd0: float,
                  step: float, tolerance_change: float, max_eval: int) -> tuple[float, float, torch.Tensor] | None:
    """A step ``t`` along ``d`` satisfying the strong Wolfe conditions (or the best found when the
    budget runs out), with ``f`` and its gradient there; ``None`` when no step decreased ``f``."""
    d_max = float(d.abs().max())
    prev = (0.0, f0, g0, gtd0)
    best: tuple[float, float, torch.Tensor] | None = None
    for trial in range(MAX_LINE_SEARCH):
        value, grad = counter(x + step * d)
        gtd = float(grad.flatten() @ d.flatten())
        if value < f0 + C1 * step * gtd0 and (best is None or value < best[1]):
            best = (step, value, grad)
        if value > f0 + C1 * step * gtd0 or (trial > 0 and value >= prev[1]):
            return _zoom(counter, x, f0, gtd0, d, d_max, prev, (step, value, grad, gtd), tolerance_change,
                         max_eval, best)
        if abs(gtd) <= -C2 * gtd0:
            return step, value, grad
        if gtd >= 0:
            return _zoom(counter, x, f0, gtd0, d, d_max, (step, value, grad, gtd), prev, tolerance_change,
                         max_eval, best)
        if counter.n >= max_eval:
            return best
        lo, hi = step + 0.01 * (step - prev[0]), step * 10.0
        next_step = _cubic_minimum(prev[0], prev[1], prev[3], step, value, gtd, lo, hi)
        prev = (step, value, grad, gtd)
        step = next_step
    return best


def _zoom(counter: _Counter, x: torch.Tensor, f0: float, gtd0: float, d: torch.Tensor, d_max: float, low: tuple,
          high: tuple, tolerance_change: float, max_eval: int,
          best: tuple[float, float, torch.Tensor] | None) -> tuple[float, float, torch.Tensor] | None:
    """Algorithm 3.6: shrink the bracket ``[low, high]`` (``low`` has the lower value) to a strong-Wolfe step."""
    for _ in range(MAX_LINE_SEARCH):
        if abs(high[0] - low[0]) * d_max < tolerance_change or counter.n >= max_eval:
            break
        a, b = sorted((low[0], high[0]))
        margin = 0.1 * (b - a)
        step = _cubic_minimum(low[0], low[1], low[3], high[0], high[1], high[3], a + margin, b - margin)
        value, grad = counter(x + step * d)
        gtd = float(grad.flatten() @ d.flatten())
        if value < f0 + C1 * step * gtd0 and (best is None or value < best[1]):
            best = (step, value, grad)
        if value > f0 + C1 * step * gtd0 or value >= low[1]:
            high = (step, value, grad, gtd)
        else:
            if abs(gtd) <= -C2 * gtd0:
                return step, value, grad
            if gtd * (high[0] - low[0]) >= 0:
                high = low
            low = (step, value, grad, gtd)
    if low[0] > 0 and low[1] < f0 and (best is None or low[1] <= best[1]):
        return low[0], low[1], low[2]
    return best
