"""Choose one option per layer: least summed output error with the deployed bytes within a budget.

This is a multiple-choice knapsack. It is solved exactly as an integer linear program (scipy.optimize.milp,
HiGHS branch and bound with a zero optimality gap): binary x[l, o], one option per layer, sum of bytes <= the
budget, minimise sum of errors. Under plan_search's additive error model the result is the optimum, not a
greedy approximation; options another option of the same layer beats on both bytes and error are removed
first (they are never in an optimum), which keeps the program small. Ties in error go to fewer bytes.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from .errors import UserError
from .plan import LayerChoice

TIE_BREAK = 1e-9  # weight of bytes / budget in the objective: among equal errors, the smaller plan


def pareto(options: list[LayerChoice]) -> list[LayerChoice]:
    """The options no other option beats on both bytes and error (the cheapest of equal ones kept)."""
    front: list[LayerChoice] = []
    for option in sorted(options, key=lambda o: (o.bytes, o.error)):
        if not front or option.error < front[-1].error:
            front.append(option)
    return front


def solve(options: dict[str, list[LayerChoice]], budget: int) -> dict[str, LayerChoice]:
    """The optimal choice per layer; a one-line error when even the smallest options exceed the budget."""
    fronts = {name: pareto(opts) for name, opts in options.items()}
    smallest = sum(front[0].bytes for front in fronts.values())
    if smallest > budget:
        raise UserError(f"budget of {budget} B is below the smallest plan this model has ({smallest} B deployed)")
    flat = [(name, o) for name, front in fronts.items() for o in front]
    sizes = np.array([o.bytes for _, o in flat], np.float64)
    cost = np.array([o.error for _, o in flat], np.float64) + TIE_BREAK * sizes / max(budget, 1)
    names = list(fronts)
    one_each = np.array([[1.0 if n == name else 0.0 for n, _ in flat] for name in names])
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(sizes[None, :], 0, budget)]
    res = milp(cost, integrality=np.ones(len(flat)), bounds=Bounds(0, 1), constraints=constraints,
               options={"mip_rel_gap": 0.0})
    if res.status != 0:
        raise RuntimeError(f"the plan's integer program was not solved: {res.message}")
    picked = {name: o for (name, o), x in zip(flat, res.x) if x > 0.5}
    return {name: picked[name] for name in names}
