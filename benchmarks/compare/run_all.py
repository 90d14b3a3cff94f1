"""Run every side-by-side comparison (one process each) and write the report.

Usage (from the repository root)::

    python -m benchmarks.compare.run_all --quick          # smoke test, a few minutes
    python -m benchmarks.compare.run_all                  # full sizes (3 k and 100 k atoms)
    python -m benchmarks.compare.run_all --only torchani  # re-run one comparison, merge it in
    python benchmarks/compare/run_all.py --quick          # same, by path

Outputs in benchmarks/results/ (``compare_quick.*`` for --quick): ``compare.md`` (tables),
``compare.json`` (every measurement + machine info), ``compare_loglog.png`` (time vs atoms),
``compare.log`` (the scripts' output). ``--threads N`` (default 1) sets
OMP/NUMBA/MKL/OPENBLAS_NUM_THREADS, torch.set_num_threads, vesin n_threads, onnxruntime intra-op
threads and LAMMPS's OPENMP package; contenders that cannot use N threads (matscipy, DScribe on one
structure, LAMMPS's SNAP pair style) say what they used in their notes.

The report records where its figures come from: the command line, the git commit and whether the
tree had uncommitted changes (outside benchmarks/results/), for the run and for each comparison
(``--only`` merges comparisons of earlier runs). While a run is in progress the report's first line
names the comparisons still pending; ``--only`` refuses to merge into results of another thread
count (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks.common import machine_info, thread_env  # noqa: E402
from benchmarks.compare._harness import git_revision  # noqa: E402

#: name -> module of benchmarks.compare, in run order
COMPARISONS = {
    "compile": "compile_time",
    "neighbors": "neighbors",
    "torchani": "torchani_features",
    "dscribe": "dscribe_acsf",
    "scaling": "scaling",
    "breakdown": "breakdown",
    "lammps_md": "lammps_md",
    "ase_torchani_md": "ase_torchani_md",
}
RESULTS = _ROOT / "benchmarks" / "results"


def _log(fh, text):
    stamp = time.strftime("%H:%M:%S")
    for line in text.rstrip("\n").splitlines():
        fh.write(f"{stamp} {line}\n")
    fh.flush()


def run_one(name, quick, threads, timeout, logfh):
    module = COMPARISONS[name]
    with tempfile.TemporaryDirectory(prefix="fastfeat-compare-") as tmp:
        out = pathlib.Path(tmp) / f"{name}.json"
        cmd = [sys.executable, "-m", f"benchmarks.compare.{module}", "--threads", str(threads), "--json", str(out)]
        if quick:
            cmd.append("--quick")
        env = thread_env(threads)
        env["PYTHONPATH"] = os.pathsep.join([p for p in (str(_ROOT), env.get("PYTHONPATH")) if p])
        env.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
        _log(logfh, f"$ {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            rc, stdout, stderr = res.returncode, res.stdout, res.stderr
        except subprocess.TimeoutExpired as exc:
            rc, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
        wall = time.perf_counter() - t0
        _log(logfh, stdout)
        if stderr.strip():
            _log(logfh, "stderr:\n" + stderr[-6000:])
        _log(logfh, f"{name}: exit {rc} after {wall:.0f} s")
        print(stdout, end="", flush=True)
        result = None
        if out.exists():  # also on failure: a script that failed a check writes what it measured and its error
            try:
                result = json.loads(out.read_text())
            except ValueError:
                result = None
        if result is None:
            result = {"name": name, "rows": [], "ratios": [], "notes": []}
        if rc != 0:
            tail = stderr.strip()[-1500:]
            result["error"] = (f"exit {rc} after {wall:.0f} s: " + (result.get("error") or tail)
                               + ("" if not result.get("error") or not tail else f"\n{tail[-800:]}"))
        elif result.get("error"):  # a script that reported an error with exit 0 (older harness)
            result["error"] = f"exit 0 after {wall:.0f} s: {result['error']}"
        if result.get("error"):
            print(f"[{name}] FAILED ({rc}); see the log", file=sys.stderr)
        machine = result.setdefault("machine", {})
        machine.setdefault("date_utc", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
        if "commit" not in machine:  # a script that crashed before writing its JSON
            machine.update(git_revision(_ROOT))
        shown = [c for k, c in enumerate(cmd[1:], 1) if c != "--json" and cmd[k - 1] != "--json"]  # not the temp file
        result["command"] = "python " + " ".join(shlex.quote(c) for c in shown)
        result["wall_s"] = wall
        return result


# ----------------------------------------------------------------------------------- report
def _fmt_time(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _fmt_num(x):
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.3g} M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:.3g} k"
    return f"{x:.3g}"


def _revision_text(info):
    """'commit abc1234 (+ uncommitted changes)' from a dict with 'commit' and 'dirty' (may lack both)."""
    commit = info.get("commit")
    if not commit:
        return "commit unknown"
    dirty = info.get("dirty")
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "" if dirty is False else " (tree state unknown)")


def _target_text(r):
    """'≥ 30' / '≤ 1.3' from the ratio's stored higher_is_better (older JSON: guessed from its words)."""
    if r.get("target") is None:
        return "-"
    hib = r.get("higher_is_better")
    if hib is None:  # results written before the flag was stored
        hib = "per atom" not in r["what"] and "memory" not in r["what"]
    return f"{'≥' if hib else '≤'} {r['target']:g}"


def _comparison_stamp(res):
    """(date, revision text) of one comparison's own run, from its machine block."""
    m = res.get("machine") or {}
    return m.get("date_utc"), _revision_text(m)


def pending_line(data):
    """The report's first line while a run is in progress (or was interrupted), else None."""
    pending = data.get("pending")
    if not pending:
        return None
    state = "Run interrupted" if data.get("interrupted") else "Run in progress"
    return (f"**{state}: pending {', '.join(pending)}** (not run yet by `{data.get('command', 'run_all')}`; "
            "any figures shown for them below are from an earlier run).")


def write_markdown(data, path, quick):
    m = data["machine"]
    cmd = data.get("command") or ("python -m benchmarks.compare.run_all" + (" --quick" if quick else ""))
    lines = []
    pending = pending_line(data)
    if pending:
        lines += [pending, ""]
    lines += [
        "# fastfeat vs peers: side-by-side measurements" + (" (quick run)" if quick else ""),
        "",
        f"Command: `{cmd}` (from the repository root), at {_revision_text(m)}. "
        f"Thread count requested: **{data['threads']}** (`--threads`); what each contender used is in its notes. "
        "Each comparison ran in one process, contenders interleaved round by round; times are medians.",
        "Ratios are the numbers to read: absolute times on this shared machine are indicative only.",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}. "
        f"Date (UTC): {data['date_utc']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
    ]
    stamps = {name: _comparison_stamp(res) for name, res in data["comparisons"].items()}
    dates = sorted(d for d, _ in stamps.values() if d)
    revisions = sorted({r for _, r in stamps.values()})
    differ = len({d[:10] for d in dates}) > 1 or len(revisions) > 1
    heading = "## Summary (fastfeat speed-ups: peer time / fastfeat time; scaling and memory: lower is better)"
    if dates:
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        lines += [heading, "", f"Measured (UTC) {span}; {', '.join(revisions)}"
                  + (" (per comparison: the `measured` column and each section)" if differ else "") + ".", ""]
    else:
        lines += [heading, ""]
    if differ:
        lines += ["| comparison | measured (UTC) | measure | structure | value | target | met |",
                  "|---|---|---|---|---:|---:|:---:|"]
    else:
        lines += ["| comparison | measure | structure | value | target | met |",
                  "|---|---|---|---:|---:|:---:|"]
    for name, res in data["comparisons"].items():
        when = f" {(stamps[name][0] or '?')[:16]}, {stamps[name][1]} |" if differ else ""
        for r in res.get("ratios", []):
            tgt = _target_text(r)
            if r.get("paper_range"):
                tgt = f"paper {r['paper_range'][0]}-{r['paper_range'][1]}×"
            met = "-" if "met" not in r else ("yes" if r["met"] else "**no**")
            lines.append(f"| {name} |{when} {r['what']} | {r['structure']} | {r['value']:.3g} | {tgt} | {met} |")
        if res.get("error"):
            last = [ln for ln in res["error"].splitlines() if ln.strip()][-1:] or ["?"]
            lines.append(f"| {name} |{when} FAILED | - | - | - | {last[0].strip()[:100]} |")
    for name, res in data["comparisons"].items():
        lines += ["", f"## {res.get('title', name)}", ""]
        date, rev = stamps[name]
        how = f" by `{res['command']}`" if res.get("command") else ""
        if pending and name in data["pending"]:
            lines += [f"*Pending: not run yet by the current command; below: an earlier run, measured {date or '?'} UTC at {rev}{how}.*", ""]
        else:
            lines += [f"Measured {date or '?'} UTC at {rev}{how}.", ""]
        if res.get("error"):
            lines += ["**FAILED**", ""]
            lines += ["```", res["error"][-1500:], "```"]
        if res.get("rows"):
            lines += ["| tool | task | structure | atoms | median time | repeats | throughput |",
                      "|---|---|---|---:|---:|---:|---:|"]
            for r in res["rows"]:
                thr = f"{_fmt_num(r.get('throughput'))} {r.get('throughput_unit', '')}" if r.get("throughput") else "-"
                unit = " /step" if r.get("time_unit") == "s per MD step" else ""
                lines.append(f"| {r['tool']} | {r['task']} | {r['structure']} | {r['n_atoms']} | "
                             f"{_fmt_time(r['median_s'])}{unit} | {r['repeats']} | {thr} |")
        if res.get("memory"):
            lines += ["", "| atoms | outputs | RSS peak growth | tracemalloc peak |", "|---:|---:|---:|---:|"]
            for mm in res["memory"]:
                rss = mm["rss_peak_growth_bytes"]
                lines.append(f"| {mm['n_atoms']} | {mm['output_bytes'] / 2**20:.1f} MiB | "
                             f"{'-' if rss is None else f'{rss / 2**20:.1f} MiB'} | {mm['tracemalloc_peak_bytes'] / 2**20:.1f} MiB |")
        for n in res.get("notes", []):
            lines.append(f"- {n}")
        lines.append(f"- wall time of this comparison: {res.get('wall_s', 0):.0f} s")
    lines += ["", f"![time vs atoms]({path.stem}_loglog.png)", ""]
    path.write_text("\n".join(lines))


def write_plot(data, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import re

    panels = {"neighbour list": {}, "features": {}}
    for name, res in data["comparisons"].items():
        if name in ("lammps_md", "ase_torchani_md", "compile", "breakdown", "scaling"):
            continue  # not peer comparisons (scaling: fastfeat alone, another run's absolute times)
        for r in res.get("rows", []):
            if "[grad group]" in r["task"]:
                continue  # second fastfeat timing of an older torchani script version
            panel = "neighbour list" if "neighbour list" in r["task"] else "features"
            label = re.sub(r"default spec \(.*?\)", "default spec", f"{r['tool']}: {r['task']}")
            if r["tool"] == "fastfeat" and panel == "features":
                label += f" [{name} run]"  # each peer is compared with the fastfeat timing of its own run
            series = panels[panel].setdefault(label, {"pts": {}, "water": True})
            series["pts"][r["n_atoms"]] = r["median_s"]
            series["water"] &= r["structure"].startswith("water")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    markers = "osD^v<>ph*"
    for ax, (title, all_series) in zip(axes, panels.items()):
        for k, (label, sr) in enumerate(sorted(all_series.items())):
            ns = sorted(sr["pts"])
            style = "-" if sr["water"] else "none"  # different small systems: markers only
            ax.loglog(ns, [sr["pts"][n] for n in ns], marker=markers[k % len(markers)], linestyle=style, label=label)
        ax.set_xlabel("atoms")
        ax.set_ylabel("median wall time (s)")
        ax.set_title(f"{title} ({data['threads']} thread(s))")
        ax.grid(True, which="both", alpha=0.3)
        if all_series:
            ax.legend(fontsize=7)
    fig.suptitle(f"fastfeat vs peers, side by side — {data['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (writes compare_quick.*)")
    parser.add_argument("--threads", type=int, default=1, help="threads for every contender (default 1)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(COMPARISONS)}; merged into existing results")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="output folder (default benchmarks/results)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per comparison (default 900)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the existing .json")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(n.strip() for n in args.only.split(",") if n.strip())) or list(COMPARISONS)
    unknown = [n for n in names if n not in COMPARISONS]
    if unknown:
        parser.error(f"unknown comparison(s) {unknown}; choose from {list(COMPARISONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "compare_quick" if args.quick else "compare"
    json_path = args.out / f"{stem}.json"
    if args.report_only:
        data = json.loads(json_path.read_text())
        write_markdown(data, args.out / f"{stem}.md", args.quick)
        write_plot(data, args.out / f"{stem}_loglog.png")
        print(f"rewrote {stem}.md and {stem}_loglog.png from {json_path.name}")
        return 0
    data = {"comparisons": {}}
    if args.only and json_path.exists():
        old = json.loads(json_path.read_text())
        if old.get("threads") != args.threads:
            print(f"run_all: {json_path} holds results measured with --threads {old.get('threads')}, this run asks "
                  f"for --threads {args.threads}; merging --only {args.only} into them would mix thread counts "
                  f"(or drop the other comparisons). Write elsewhere with --out DIR (e.g. --out {args.out / f'threads{args.threads}'}) "
                  f"or rerun with --threads {old.get('threads')}.", file=sys.stderr)
            return 2
        data = old
    command = "python -m benchmarks.compare.run_all" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    data["machine"] = machine_info()
    data["machine"].update(git_revision(_ROOT))
    data["threads"] = args.threads
    data["command"] = command
    data["date_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    data["pending"] = list(names)
    data.pop("interrupted", None)
    print(f"$ {command}  ({_revision_text(data['machine'])}, {data['date_utc']} UTC)", flush=True)

    def write_all():
        data["comparisons"] = {k: data["comparisons"][k] for k in COMPARISONS if k in data["comparisons"]}
        if not data.get("pending"):
            data.pop("pending", None)
        json_path.write_text(json.dumps(data, indent=1))
        write_markdown(data, args.out / f"{stem}.md", args.quick)
        write_plot(data, args.out / f"{stem}_loglog.png")

    with open(args.out / f"{stem}.log", "a") as logfh:
        _log(logfh, f"=== {command} ({_revision_text(data['machine'])}) only={names}")
        write_all()  # the report says at once which comparisons this run will replace
        try:
            for name in names:
                data["comparisons"][name] = run_one(name, args.quick, args.threads, args.timeout, logfh)
                data["pending"].remove(name)
                write_all()
        except BaseException:  # Ctrl-C, timeout of a caller: the report says which comparisons were not run
            data["interrupted"] = True
            write_all()
            raise
    print(f"wrote {args.out / (stem + '.md')}, {json_path.name}, {stem}_loglog.png, {stem}.log")
    failed = [n for n in names if data["comparisons"][n].get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
