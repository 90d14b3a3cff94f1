"""Command-line scaffolding shared by the comparison scripts.

Every comparison script is a module with ``run(quick: bool, threads: int) -> dict`` and a
``main(argv)`` that writes that dict as JSON (``--json PATH``). The dict has

- ``name``: short identifier (also the module name),
- ``title``: one line for the report,
- ``rows``: measurements, one per (tool, task, structure); see :func:`row`,
- ``ratios``: fastfeat speed-ups against peers, see :func:`ratio`,
- ``notes``: list of strings (caveats, checks, skipped parts),
- ``error`` (optional): why the comparison failed (an agreement check, a contender that raised);
  :func:`main_for` still writes the JSON (rows measured so far included) and exits 1, and
  ``run_all`` reports the comparison FAILED.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # allow `python benchmarks/compare/x.py`
    sys.path.insert(0, str(_ROOT))

from benchmarks.common import interleaved_medians, machine_info, set_threads  # noqa: E402

__all__ = ["row", "ratio", "main_for", "interleaved_medians", "set_threads", "write_report", "git_revision"]

#: paths whose changes do not make the tree "dirty" for the record (the results themselves)
_RESULTS_PREFIX = "benchmarks/results/"


def _porcelain_paths(line):
    """The path(s) of one ``git status --porcelain`` (v1) line: both sides of a rename."""
    body = line[3:]
    parts = body.split(" -> ") if " -> " in body else [body]
    return [p.strip().strip('"') for p in parts]


def git_revision(root=None):
    """``{"commit": short hash or None, "dirty": bool or None}`` of the checkout at `root`.

    ``dirty``: uncommitted changes (untracked files included) outside benchmarks/results/. None
    where git or the repository is missing. Runs only read-only git commands
    (``--no-optional-locks``: no index refresh written).
    """
    root = pathlib.Path(root or _ROOT)

    def git(*args):
        res = subprocess.run(["git", "--no-optional-locks", *args], cwd=root, capture_output=True, text=True,
                             timeout=30)
        if res.returncode != 0:
            raise RuntimeError(res.stderr.strip())
        return res.stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip() or None
    except Exception:  # no git, not a repository
        return {"commit": None, "dirty": None}
    try:
        status = git("status", "--porcelain", "--untracked-files=normal")
        changed = [ln for ln in status.splitlines()
                   if ln.strip() and not all(p.startswith(_RESULTS_PREFIX) for p in _porcelain_paths(ln))]
        dirty = bool(changed)
    except Exception:
        dirty = None
    return {"commit": commit, "dirty": dirty}


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
    out = {"what": what, "structure": structure, "n_atoms": int(n_atoms), "value": value, "target": target,
           "higher_is_better": bool(higher_is_better)}
    if target is not None:
        out["met"] = bool(value >= target) if higher_is_better else bool(value <= target)
    out.update(extra)
    return out


def main_for(run, argv=None, description=""):
    """Parse ``--quick --threads N --json PATH``, set thread counts, run, write JSON.

    Returns 0, or 1 when the result has an ``error`` (written to the JSON all the same).
    """
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
    result["machine"].update(git_revision())
    text = json.dumps(result, indent=1, default=float)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    for r in result.get("ratios", []):
        tgt = f" (target {r['target']})" if r.get("target") is not None else ""
        print(f"[{result['name']}] {r['what']} @ {r['n_atoms']} atoms: {r['value']:.3g}{tgt}", flush=True)
    for n in result["notes"]:
        print(f"[{result['name']}] note: {n}", flush=True)
    if result.get("error"):
        print(f"[{result['name']}] FAILED: {result['error']}", file=sys.stderr, flush=True)
        return 1
    return 0


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")
