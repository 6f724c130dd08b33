"""How accurate is the simulator? Recompute every fidelity figure from the committed measurements (CPU only).

    python benchmarks/fidelity.py                       # transformers serve on the H100 (issue 5)
    python benchmarks/fidelity.py --plan PLAN.json [--db RESULTS.sqlite] [--out DIR] [--no-plots]

Reads the plan and its results database (read-only; the plan's checkpoints and the GPU need not exist here),
fits each entry's step model on its fixed-concurrency fit runs only, replays every held-out sweep burst (and
every replay of a trace slice the database holds) through the simulated instance with the measured send
times and usage lengths, runs the saturation search on the simulated instance with the same SLO, bursts and
random numbers, and prints the error table. Writes ``fidelity.csv`` (per point), ``fidelity.md`` (the tables),
``summary.json`` and ``fidelity.png`` (measured dots vs simulated lines) to ``--out`` (default: the plan's
``fidelity/`` folder next to its results database). See ``calibrate/fidelity.py`` for the method.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from calibrate.fidelity import (ablation_table, fidelity_report, median_table, open_plan_db, point_table,  # noqa: E402
                                replay_lines, saturation_table, targets_summary, write_outputs)

DEFAULT_PLAN = ROOT / "experiments" / "real_engine" / "plan_h100.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default=str(DEFAULT_PLAN), help="plan JSON file (default: %(default)s)")
    parser.add_argument("--db", default=None, help="results database (default: the plan's results_db)")
    parser.add_argument("--out", default=None, help="output folder (default: <results_db folder>/fidelity)")
    parser.add_argument("--no-plots", action="store_true", help="skip fidelity.png")
    parser.add_argument("--no-ablation", action="store_true", help="skip the instance-model ablation")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    plan, db = open_plan_db(args.plan, args.db)
    with db:
        report = fidelity_report(plan, db, saturation=True, ablation=not args.no_ablation)
    out = Path(args.out) if args.out else Path(db.path).parent / "fidelity"
    print(f"plan '{plan.name}', results {db.path}: {sum(1 for r in report.rows if r.phase == 'sweep')} held-out "
          f"sweep points, {len(report.saturation)} saturation searches\n")
    print(point_table(report))
    print()
    print(median_table(report))
    print()
    print(saturation_table(report))
    if report.ablation:
        print()
        print(ablation_table(report))
    for line in replay_lines(report):
        print(line)
    print()
    for line in targets_summary(report):
        print(line)
    written = write_outputs(report, out, plots=not args.no_plots)
    print(f"\nwrote {', '.join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p) for p in written)} "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
