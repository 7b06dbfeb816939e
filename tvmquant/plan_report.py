"""The plan's part of the compile summary: per layer the choice, family and bytes, then predicted against
measured size, output error and accuracy (the prediction is the per-layer measurements summed)."""

from __future__ import annotations

import numpy as np

from .batching import run_batched
from .compile import CompileResult, Evaluation
from .plan import Plan
from .plan_search import output_error, quantized_outputs


def measured_bytes(result: CompileResult, plan: Plan) -> dict[str, int]:
    """Bytes per planned layer as the artifact holds them (the pass's constants; float32 layers: their weights)."""
    return {name: result.lowered.const_bytes.get(name, choice.bytes) for name, choice in plan.layers.items()}


def plan_accuracy(result: CompileResult) -> tuple[float, float]:
    """(error, flips) of the whole quantized model on the calibration data, measured as each option was."""
    src, scheme = result.source, result.scheme
    acts = {name: layer.act for name, layer in scheme.layers.items()}
    weights = {name: layer.weight for name, layer in scheme.layers.items()}
    fp32 = run_batched(src.fp32, src.calib, src.batch_size)
    out = quantized_outputs(src.gm, src.layers, acts, weights, src.calib, src.batch_size)
    return output_error(fp32, out)


def _pct(outputs: np.ndarray | None, labels: np.ndarray | None) -> float | None:
    if outputs is None or labels is None:
        return None
    return 100.0 * float((outputs.reshape(len(outputs), -1).argmax(1) == labels).mean())


def print_plan_summary(result: CompileResult, evaluation: Evaluation) -> None:
    plan = result.plan
    sizes = measured_bytes(result, plan)
    head = "per-layer plan"
    if plan.budget_bytes is not None:
        head += f" for a budget of {plan.budget_bytes} B ({plan.budget_bytes / plan.fp32_bytes:.3g} of {plan.fp32_bytes} B fp32)"
    print(f"\n{head}:")
    width = max(len("layer"), *map(len, plan.layers)) + 2
    print(f"  {'layer':<{width}}{'choice':<20}{'family':<12}{'predicted B':>12}{'deployed B':>12}{'error (KL)':>12}{'flips':>8}")
    for name, c in plan.layers.items():
        error = "-" if c.error is None else f"{c.error:.2e}"
        flips = "-" if c.flips is None else f"{100 * c.flips:.1f} %"
        print(f"  {name:<{width}}{c.label():<20}{c.family or 'tvm':<12}{c.bytes:>12}{sizes[name]:>12}{error:>12}{flips:>8}")
    predicted, measured = plan.predicted_bytes, sum(sizes.values())
    verdict = "" if plan.budget_bytes is None else (" (within the budget)" if measured <= plan.budget_bytes else " (OVER the budget)")
    print(f"  size: predicted {predicted} B, deployed {measured} B{verdict}, {plan.fp32_bytes / max(measured, 1):.1f}x "
          f"smaller than fp32")
    error, flips = plan_accuracy(result)
    known = [c for c in plan.layers.values() if c.error is not None]
    if len(known) == len(plan.layers):
        sum_error, sum_flips = sum(c.error for c in known), sum(c.flips for c in known)
        print(f"  output error on the calibration data (KL from fp32): predicted {sum_error:.2e} (sum over layers), "
              f"measured {error:.2e}; top-1 flips: predicted {100 * sum_flips:.1f} %, measured {100 * flips:.1f} %")
        fp32_acc = _pct(evaluation.fp32, result.source.eval_y)
        if fp32_acc is not None:
            print(f"  accuracy on {result.source.eval_label}: predicted {fp32_acc - 100 * sum_flips:.2f} % "
                  f"(fp32 {fp32_acc:.2f} % minus the predicted flips), quantized reference "
                  f"{_pct(evaluation.reference, result.source.eval_y):.2f} %, compiled "
                  + ("not run" if evaluation.compiled is None else f"{_pct(evaluation.compiled, result.source.eval_y):.2f} %"))
    else:
        print(f"  output error on the calibration data (KL from fp32): measured {error:.2e}, top-1 flips "
              f"{100 * flips:.1f} % (a loaded plan carries no per-layer measurements to predict from)")
