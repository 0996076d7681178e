"""core.optimize.lbfgs: analytic minima, budgets and the strong Wolfe conditions."""

from __future__ import annotations

import pytest
import torch

from MLVIRNETLib.core.optimize import C1, C2, lbfgs


def _rosenbrock(x: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    value = (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()
    value.backward()
    return float(value.detach()), x.grad


def test_rosenbrock_minimum() -> None:
    result = lbfgs(_rosenbrock, torch.tensor([-1.2, 1.0, -0.5, 0.8], dtype=torch.float64), max_iter=200,
                   tolerance_grad=1e-10, tolerance_change=1e-14)
    torch.testing.assert_close(result.x, torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert result.value < 1e-12


@pytest.mark.parametrize("shape", [(4,), (2, 3)])
def test_ill_conditioned_quadratic(shape) -> None:
    """``1/2 x^T A x - b^T x`` with a condition number of 1e3 (any tensor shape): ``x = A^-1 b``."""
    n = int(torch.tensor(shape).prod())
    diag = torch.logspace(0, 3, n, dtype=torch.float64).reshape(shape)
    b = torch.linspace(-1.0, 2.0, n, dtype=torch.float64).reshape(shape)

    def f(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        return float((0.5 * diag * x * x - b * x).sum()), diag * x - b

    result = lbfgs(f, torch.zeros(shape, dtype=torch.float64), max_iter=100, tolerance_grad=1e-10,
                   tolerance_change=1e-16)
    torch.testing.assert_close(result.x, b / diag, atol=1e-6, rtol=0)


def test_budgets_and_reports() -> None:
    seen: list[tuple[int, float]] = []
    result = lbfgs(_rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64), max_iter=5,
                   on_evaluation=lambda k, v: seen.append((k, v)))
    assert result.iterations <= 5 and result.evaluations == len(seen) <= 6
    assert [k for k, _ in seen] == list(range(1, len(seen) + 1))
    assert result.value <= seen[0][1]  # never worse than the start
    limited = lbfgs(_rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64), max_iter=50, max_eval=7)
    assert limited.evaluations <= 7 + 25  # a line search that started may finish its bracket


def test_every_accepted_step_satisfies_sufficient_decrease() -> None:
    values: list[float] = []
    result = lbfgs(_rosenbrock, torch.tensor([0.5, -0.3, 1.5], dtype=torch.float64), max_iter=30,
                   on_evaluation=lambda k, v: values.append(v))
    assert result.value <= min(values) + 1e-12 and result.value < values[0]
    assert 0 < C1 < C2 < 1


def test_converged_start_and_bad_arguments() -> None:
    result = lbfgs(lambda x: (0.0, torch.zeros_like(x)), torch.ones(3), max_iter=10)
    assert result.reason == "gradient" and result.evaluations == 1 and torch.equal(result.x, torch.ones(3))
    with pytest.raises(ValueError, match="max_iter"):
        lbfgs(_rosenbrock, torch.ones(2), max_iter=0)


def test_a_preconditioner_reaches_the_same_minimum_in_fewer_iterations() -> None:
    """A diagonal quadratic with condition number 1e3: with ``P = A^-1`` every direction points at the
    minimum; with a rough ``P`` (off by up to 3x) it still converges to the same ``x = A^-1 b``, and
    in fewer iterations than without one."""
    n = 64
    diag = torch.logspace(0, 3, n, dtype=torch.float64)
    b = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)

    def f(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        return float((0.5 * diag * x * x - b * x).sum()), diag * x - b

    rough = 1.0 / (diag * torch.linspace(0.33, 3.0, n, dtype=torch.float64))
    runs = {}
    for name, p in (("none", None), ("exact", lambda v: v / diag), ("rough", lambda v: v * rough)):
        runs[name] = lbfgs(f, torch.zeros(n, dtype=torch.float64), max_iter=500, tolerance_grad=1e-9,
                           tolerance_change=1e-18, precondition=p)
        torch.testing.assert_close(runs[name].x, b / diag, atol=1e-5, rtol=0)
    assert runs["exact"].iterations <= 2
    assert runs["rough"].iterations < runs["none"].iterations / 5
