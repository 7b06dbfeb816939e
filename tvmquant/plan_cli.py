"""`compile --budget-bytes N | --budget-ratio R [--plan OUT.json]` and `compile --plan-in PLAN.json`: the
flags, their checks before any work, and the step that turns them into a Plan.

UX: a budget makes compile measure every layer's options and solve for the plan (plan_search, plan_solve);
`--plan FILE` also saves that plan (after the compile succeeded) so it can be edited and compiled again with
`--plan-in FILE`, which skips the search and compiles the file's choices as they are. `--plan-in` never writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError
from .outputs import ARTIFACT_SUFFIX

HELP_EPILOG = """  python -m tvmquant compile --budget-ratio 0.1 --plan plan.json      choose bits and methods per layer
  python -m tvmquant compile --plan-in plan.json                       compile an (edited) plan"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got '{text}'")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 8:  # 8: a sanity bound; any ratio >= 1 already lets every layer stay float32
        raise argparse.ArgumentTypeError(f"must be a number in (0, 8], got '{text}'")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "per-layer plan", "choose each layer's method, weight/activation bits (and so its kernel family) to keep "
        "the most accuracy within a budget of deployed weight bytes; --method/--bits/--first-last-bits are then "
        "not used")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=_positive_int, metavar="N",
                        help="deployed bytes of the quantized layers' constants, at most N")
    budget.add_argument("--budget-ratio", type=_ratio, metavar="R",
                        help="the same budget as a fraction of the fp32 weight bytes of those layers (0.1 = 10x smaller)")
    budget.add_argument("--plan-in", type=Path, metavar="PLAN.json",
                        help="compile this plan (written by --plan, maybe edited) instead of searching one")
    group.add_argument("--plan", type=Path, metavar="PLAN.json",
                       help="with a budget: save the chosen plan here (JSON: per layer method, wbits, abits, family, bytes)")


def wants_plan(args: argparse.Namespace) -> bool:
    return bool(args.budget_bytes or args.budget_ratio or args.plan_in)


def check_arguments(args: argparse.Namespace, inputs: list) -> None:
    """Mistakes found before any work (one line each)."""
    if args.plan and not (args.budget_bytes or args.budget_ratio):
        raise UserError("--plan saves a plan that --budget-bytes or --budget-ratio searched; to compile a plan file use --plan-in")
    if not wants_plan(args):
        return
    if args.train:
        raise UserError("a per-layer plan is post-training: --budget-bytes/--budget-ratio/--plan-in cannot be used with --train")
    if args.plan:
        for given in filter(None, inputs):
            if Path(given).resolve() == args.plan.resolve():
                raise UserError(f"--plan {args.plan} would overwrite an input file")
        if args.plan.is_dir() or not args.plan.resolve().parent.is_dir():
            raise UserError(f"--plan {args.plan}: not a file in an existing folder")


def default_output(args: argparse.Namespace, model: str, target: str) -> Path:
    """tvmquant_out/MODEL-TARGET-{budget-NB | budget-rR | plan-STEM}[-KERNEL].so for a planned compile."""
    if args.plan_in:
        what = f"plan-{args.plan_in.stem}"
    else:
        what = f"budget-{args.budget_bytes}B" if args.budget_bytes else f"budget-r{args.budget_ratio:g}"
    suffix = "" if args.kernel == "auto" else f"-{args.kernel}"
    return Path("tvmquant_out") / f"{model}-{target}-{what}{suffix}{ARTIFACT_SUFFIX}"


def make_plan(args: argparse.Namespace, source, config, target):
    """The plan to compile: loaded from --plan-in, or measured and solved for the budget."""
    from . import plan as plan_file
    from .plan_apply import supported_layers

    layers = supported_layers(source.layers)
    fp32 = sum(4 * source.gm.get_parameter(info.weight).numel() for info in layers)
    if args.plan_in:
        loaded = plan_file.load(args.plan_in, [info.name for info in layers])
        loaded.fp32_bytes = fp32
        return loaded
    from .plan_search import measure_options
    from .plan_solve import solve

    budget = args.budget_bytes or int(args.budget_ratio * fp32)
    print(f"plan: measuring each layer's options on {len(source.calib)} calibration samples (budget {budget} B, "
          f"fp32 weights {fp32} B)")
    options = measure_options(source.gm, source.layers, source.calib, config, source.batch_size, target, args.kernel,
                              budget=budget)
    return plan_file.Plan(source.name, solve(options, budget), budget, fp32)


def finish(args: argparse.Namespace, result, evaluation) -> None:
    """The plan's summary, and --plan's file (with the families and bytes the compile measured)."""
    from .plan import save
    from .plan_report import print_plan_summary

    print_plan_summary(result, evaluation)
    if args.plan:
        save(result.plan, args.plan)
        print(f"plan:     {args.plan} (edit it and compile it with --plan-in {args.plan})")
