"""Command-line scaffolding shared by the comparison scripts.

Every comparison script is a module with ``run(quick: bool, threads: int) -> dict`` and a
``main(argv)`` that writes that dict as JSON (``--json PATH``). The dict has

- ``name``: short identifier (also the module name),
- ``title``: one line for the report,
- ``rows``: measurements, one per (tool, task, structure); see :func:`row`,
- ``ratios``: fastfeat speed-ups against peers, see :func:`ratio`,
- ``notes``: list of strings (caveats, checks, skipped parts).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # allow `python benchmarks/compare/x.py`
    sys.path.insert(0, str(_ROOT))

from benchmarks.common import interleaved_medians, machine_info, set_threads  # noqa: E402

__all__ = ["row", "ratio", "main_for", "interleaved_medians", "set_threads", "write_report"]


def write_report(res, out, markdown):
    """Write ``res`` as JSON to ``out`` and ``markdown(res)`` beside it (same name, ``.md``); print the latter."""
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    text = markdown(res)
    with open(os.path.splitext(out)[0] + ".md", "w") as fh:
        fh.write(text)
    print(text)


def row(tool, task, structure, n_atoms, timing, throughput=None, unit=None, **extra):
    """One measurement: median (and min) wall time of `tool` doing `task` on `structure`."""
    out = {
        "tool": tool,
        "task": task,
        "structure": structure,
        "n_atoms": int(n_atoms),
        "median_s": timing["median_s"],
        "min_s": timing["min_s"],
        "repeats": timing["repeats"],
    }
    if throughput is not None:
        out["throughput"] = throughput
        out["throughput_unit"] = unit
    out.update(extra)
    return out


def ratio(what, structure, n_atoms, fastfeat_s, peer_s, target=None, higher_is_better=True, **extra):
    """fastfeat speed-up peer_s / fastfeat_s (or any other dimensionless ratio with `value`)."""
    value = peer_s / fastfeat_s
    out = {"what": what, "structure": structure, "n_atoms": int(n_atoms), "value": value, "target": target}
    if target is not None:
        out["met"] = bool(value >= target) if higher_is_better else bool(value <= target)
    out.update(extra)
    return out


def main_for(run, argv=None, description=""):
    """Parse ``--quick --threads N --json PATH``, set thread counts, run, write JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="threads for every contender (default 1)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    result = run(quick=args.quick, threads=args.threads)
    result.setdefault("notes", [])
    result["threads"] = args.threads
    result["quick"] = args.quick
    result["machine"] = machine_info()
    text = json.dumps(result, indent=1, default=float)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    for r in result.get("ratios", []):
        tgt = f" (target {r['target']})" if r.get("target") is not None else ""
        print(f"[{result['name']}] {r['what']} @ {r['n_atoms']} atoms: {r['value']:.3g}{tgt}", flush=True)
    for n in result["notes"]:
        print(f"[{result['name']}] note: {n}", flush=True)
    return 0


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")
