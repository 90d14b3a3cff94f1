"""The README is what a new user runs first: its worked example runs and prints what its comments say,
its test command is the one CI runs, every file, module, command, option and keyword argument it names
exists, and its tables of measured speed and of the bundled models give the committed results."""

import contextlib
import importlib.util
import io
import itertools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.exists(), reason="README.md is not part of an installed package")

#: names under a repository folder in the README that are not files of the checkout: the asv HTML report
#: (written by `asv publish`, git-ignored) and the prose "train/val/test" (the three splits)
NOT_FILES = {"benchmarks/html", "train/val/test"}


def _text():
    return README.read_text(encoding="utf-8")


def _code_blocks(text, lang=None):
    """Contents of the fenced code blocks (of one language when given)."""
    blocks = re.findall(r"(?ms)^```(\w*)\n(.*?)^```", text)
    return [body for tag, body in blocks if lang is None or tag == lang]


def _section(text, heading):
    """From `heading` (e.g. "## Worked example") to the next heading of its level or above (lines in code
    blocks, such as a shell comment "# 1. ...", are not headings)."""
    level = len(heading.split()[0])
    lines = text.splitlines(keepends=True)
    start = next(k for k, line in enumerate(lines) if line.startswith(heading))
    fenced = False
    for k in range(start + 1, len(lines)):
        if lines[k].startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", lines[k]):
            return "".join(lines[start:k])
    return "".join(lines[start:])


def _table_rows(heading):
    """The body rows (cells stripped) of the markdown tables in the section under `heading`."""
    rows, body = [], False
    for line in _section(_text(), heading).splitlines():
        if line.startswith("|---"):
            body = True
        elif line.startswith("| ") and body:
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif not line.startswith("|"):
            body = False
    return rows


def test_worked_example_runs_and_prints_the_shapes_its_comments_give():
    """The "Worked example" block, executed as it stands; the shapes its comments state are the real ones."""
    (code,) = _code_blocks(_section(_text(), "## Worked example"), "python")
    env = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "README.md (Worked example)", "exec"), env)  # noqa: S102 - the README's own code
    claimed = re.findall(r"(\w+(?:\.\w+)?) \((\d+(?:, \d+)*)\)", code)
    assert claimed, "the worked example's comments state no shapes"
    checked = 0
    for expr, shape in claimed:
        if expr.split(".")[0] not in env:
            continue
        value = eval(expr, env)  # noqa: S307 - a name from the block above
        assert tuple(value.shape) == tuple(int(x) for x in shape.split(", ")), (expr, value.shape, shape)
        checked += 1
    assert checked >= 2, claimed  # f.invariant and f.covariant
    mae = float(out.getvalue().split()[-1])
    assert 0.0 < mae < 0.1, mae  # the bundled peo model against GFN1-xTB on a test frame (README: MAE 0.037)


def test_test_command_is_what_ci_runs():
    """README command 2 is, character for character, the command line of .ci/run."""
    lines = _code_blocks(_section(_text(), "## Two commands"), "bash")[0].splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("# 2."))
    readme_cmd = lines[k + 1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_cmds = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert ci_cmds == [readme_cmd]


def _expand(path):
    """`a/{x,y}.onnx` -> a/x.onnx, a/y.onnx; `a/b[_c].json` -> a/b.json, a/b_c.json."""
    parts = re.split(r"(\{[^}]*\}|\[[^\]]*\])", path)
    options = []
    for part in parts:
        if part.startswith("{"):
            options.append(part[1:-1].split(","))
        elif part.startswith("["):
            options.append(["", part[1:-1]])
        else:
            options.append([part])
    return ["".join(choice) for choice in itertools.product(*options)]


def test_every_file_the_readme_names_exists():
    folders = "benchmarks|fastfeat|examples|tests|train|runtime|\\.ci"
    pattern = re.compile(rf"(?<![\w/.~$-])((?:{folders})/[\w./*{{}},<>\[\]-]*)")
    missing = []
    for name in sorted({m.group(1).rstrip(".,;:") for m in pattern.finditer(_text())}):
        if name in NOT_FILES or "<" in name:  # `benchmarks/compare/<module>.py`: a placeholder
            continue
        for path in _expand(name):
            if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                missing.append(path)
    assert not missing, f"README names files that do not exist: {missing}"


def test_every_python_module_the_readme_runs_exists():
    missing = []
    # `python -m benchmarks.compare.<module>` is a placeholder
    for module in sorted(set(re.findall(r"python3? -m ([\w.]+\w)(?![\w.])", _text()))):
        top = module.split(".")[0]
        if top == "benchmarks":  # not installed: a module file or package of the checkout
            path = ROOT / module.replace(".", "/")
            found = path.with_suffix(".py").exists() or (path / "__main__.py").exists()
        elif top == "fastfeat":
            found = importlib.util.find_spec(module) is not None
        else:
            continue  # pytest, venv: not ours
        if not found:
            missing.append(module)
    assert not missing, f"README runs modules that do not exist: {missing}"


def _command_lines(text):
    """`fastfeat ...` command lines of the README: in code blocks (continuation lines joined) and inline."""
    lines = []
    for block in _code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("fastfeat "):
                lines.append(line)
    lines += [m for m in re.findall(r"`(fastfeat [^`]+)`", text)]
    return lines


def _help(argv):
    """`fastfeat ARGV --help`'s output (argparse exits, `fastfeat data list` returns)."""
    from fastfeat.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            code = main(argv + ["--help"])
        except SystemExit as exc:
            code = exc.code
    assert code == 0, argv
    return out.getvalue()


def test_every_command_and_option_the_readme_gives_exists():
    """Each `fastfeat COMMAND ... --option` of the README is a command whose --help lists that option."""
    from fastfeat.cli import SUBCOMMANDS

    helps = {}
    problems = []
    for line in _command_lines(_text()):
        words = shlex.split(line.replace("|", " "))
        if len(words) < 2 or words[1].startswith("-"):
            continue
        command = words[1]
        if command == "COMMAND":  # `fastfeat COMMAND --help`: the placeholder
            continue
        if command not in SUBCOMMANDS:
            problems.append(f"{line}: no command {command!r}")
            continue
        argv = [command]
        if command == "data" and len(words) > 2 and not words[2].startswith("-"):
            argv.append(words[2])  # `fastfeat data generate|relabel|list`
        key = tuple(argv)
        if key not in helps:
            helps[key] = _help(argv)
        for word in words[2:]:
            option = word.split("=")[0]
            if option.startswith("--") and option not in ("--help",) and option not in helps[key]:
                problems.append(f"{line}: `{' '.join(argv)} --help` has no {option}")
    assert not problems, "\n".join(problems)


def _api_namespace():
    """The names the README's Python snippets call, bound to the real objects."""
    import fastfeat
    from fastfeat.runtime import Calculator, ForceModel, MolecularDynamics, run_md
    from fastfeat.runtime.conservation import check_conservation, jacobian_asymmetry, nve_drift
    from fastfeat.train import datasets
    from fastfeat.train.datasets.relabel import label_frame, relabel

    return dict(fastfeat=fastfeat, FeatureSpec=fastfeat.FeatureSpec, datasets=datasets, ForceModel=ForceModel,
                Calculator=Calculator, run_md=run_md, MolecularDynamics=MolecularDynamics,
                check_conservation=check_conservation, jacobian_asymmetry=jacobian_asymmetry, nve_drift=nve_drift,
                relabel=relabel, label_frame=label_frame)


def _signature_snippets(text):
    """(function name, keyword or parameter names) of the README's Python calls and signatures: keyword
    arguments of every call in its python code blocks, and inline `name(...)` spans read as a call or,
    with `*` or defaults, as a signature (`...` standing for parameters left out)."""
    import ast

    found = []
    for body in _code_blocks(text, "python"):
        for node in ast.walk(ast.parse(body)):
            if isinstance(node, ast.Call) and node.keywords:
                found.append((ast.unparse(node.func), [k.arg for k in node.keywords if k.arg]))
    for span in re.findall(r"`([\w.]+\([^`]*\))`", text):
        name, args = span.split("(", 1)
        try:
            node = ast.parse(span, mode="eval").body
            keywords = [k.arg for k in node.keywords if k.arg] if isinstance(node, ast.Call) else []
        except SyntaxError:
            params = re.sub(r",\s*\.\.\.", "", "(" + args)
            try:
                fn = ast.parse(f"def f{params}: pass").body[0].args
            except SyntaxError:
                continue
            keywords = [a.arg for a in fn.args + fn.kwonlyargs]
        if keywords:
            found.append((name, keywords))
    return found


def test_every_keyword_the_readme_passes_is_a_parameter():
    """`run_md(..., every=100)`, `check_conservation(model, atoms, *, h=None, ...)`: each keyword (or
    parameter) the README writes for a fastfeat function is a parameter of the real one."""
    import inspect

    namespace = _api_namespace()
    checked, problems = 0, []
    for name, keywords in _signature_snippets(_text()):
        try:
            target = eval(name, namespace)  # noqa: S307 - dotted names of the API above
        except (NameError, AttributeError):
            continue  # model.forces(...), np.abs(...): not looked up here
        params = inspect.signature(target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        checked += 1
        problems += [f"{name}: no parameter {k!r}" for k in keywords if k not in params and k != "self"]
    assert checked >= 10, f"only {checked} README calls resolved: the snippet parser lost them"
    assert not problems, "\n".join(problems)


def _shown(value, like):
    """`value` written as the README writes `like` ("13.5", "31", "2.25", "1.9e4")."""
    if "e" in like:
        mantissa, exponent = like.split("e")
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return f"{value / 10 ** int(exponent):.{decimals}f}e{int(exponent)}"
    decimals = len(like.split(".")[1]) if "." in like else 0
    return f"{value:.{decimals}f}"


def test_measured_speed_table_is_the_committed_results():
    """Every figure of the README's "Measured speed" table is the one in benchmarks/results/compare.json
    (the file `python -m benchmarks.compare.run_all` writes), as rounded there: a rerun that changes a
    result must change the README too."""
    import json

    results = json.loads((ROOT / "benchmarks" / "results" / "compare.json").read_text())["comparisons"]

    def ratio(comparison, what, structure=None):
        rows = [r for r in results[comparison]["ratios"]
                if r["what"] == what and (structure is None or r["structure"] == structure)]
        assert rows, (comparison, what, structure)
        return [r["value"] for r in rows]

    def peak_memory(structure):
        return (ratio("scaling", "peak memory (RSS growth) / output arrays", structure)
                + ratio("scaling", "peak memory (tracemalloc, NumPy only) / output arrays", structure))

    def both(comparison, what):
        return [ratio(comparison, what, "water 3000"), ratio(comparison, what, "water 100032")]

    paper = ratio("dscribe", "paper row: derivative features (DScribe) / our invariant+covariant")
    expected = {  # row label (start of the first cell) -> [3 000-atom column, 100 032-atom column]
        "features, speed-up vs TorchANI 2.9 AEV forward": both("torchani", "features speed-up vs TorchANI AEV forward"),
        "features, speed-up vs TorchANI forward + autograd": both(
            "torchani", "features speed-up vs TorchANI AEV forward+autograd (conservative path)"),
        "features, speed-up vs DScribe": both("dscribe", "features speed-up vs DScribe ACSF"),
        "neighbour list (i, j, S, d, D), speed-up vs vesin": both("neighbors", "NL speed-up vs vesin"),
        "the same, both `sorted=True`": both("neighbors", "NL speed-up, both sorted=True"),
        "neighbour list vs matscipy": both("neighbors", "NL speed-up vs matscipy"),
        "time per atom at 100 k / at 3 k": [[], ratio("scaling", "features: time per atom at 100032 / at 3000")
                                            + ratio("scaling", "neighbour list: time per atom at 100032 / at 3000")],
        "peak memory / output arrays": [peak_memory("water 3000"), peak_memory("water 100032")],
        "MD atom-steps/s vs ASE + TorchANI": [ratio("ase_torchani_md", "MD atom-steps/s: fastfeat MD / ASE + "
                                                    "TorchANI-style conservative model (both integrators set up "
                                                    "once)"), []],
        "the same, fastfeat's `run_md` end to end": [ratio("ase_torchani_md", "MD atom-steps/s: fastfeat run_md end to "
                                                           "end (set-up in every call) / ASE + TorchANI-style"), []],
        "MD atom-steps/s vs LAMMPS SNAP": [ratio("lammps_md", "MD atom-steps/s: fastfeat run_md / LAMMPS SNAP"), []],
        "the same with the bundled PEO model": [ratio("lammps_md", "MD atom-steps/s: fastfeat run_md / LAMMPS SNAP "
                                                      "(bundled peo model, PEO; other structure)"), []],
        "DScribe numerical derivatives": [[min(paper), max(paper)], []],
    }
    seen = set()
    for cells in _table_rows("### Measured speed"):
        label = next((k for k in expected if cells[0].startswith(k)), None)
        assert label is not None, f"a row of the table without its result in compare.json: {cells[0]}"
        seen.add(label)
        for cell, values in zip(cells[1:3], expected[label]):
            shown = re.findall(r"\d+(?:\.\d+)?(?:e\d+)?", cell)
            assert len(shown) == len(values), (label, cell, values)
            for text, value in zip(shown, values):
                assert _shown(value, text) == text, f"{label}: README {text}, compare.json {value}"
    assert seen == set(expected), sorted(set(expected) - seen)


def test_bundled_models_table_is_the_recorded_training_results():
    """Every row of the README's "Bundled models" table (both heads) gives the test and validation errors,
    epochs, training seconds and ONNX size of benchmarks/results/models.json, and the rows of the shipped
    (basis) models the errors and best epoch their .onnx files record."""
    import json

    import fastfeat
    from fastfeat.train.evaluate import OnnxForceModel

    recorded = json.loads((ROOT / "benchmarks" / "results" / "models.json").read_text())
    models = Path(fastfeat.__file__).parent / "data" / "models"
    rows = _table_rows("#### Bundled models")
    assert len(rows) == 6, rows
    shipped = 0
    for cells in rows:
        name, head = cells[0], cells[1].split()[0]
        run = recorded[name][head]
        sources = [(run["metrics"]["test"], run["metrics"]["val"], run["best_epoch"])]
        if "(bundled)" in cells[1]:
            meta = json.loads(OnnxForceModel(str(models / f"{name}.onnx")).metadata["fastfeat.validation"])
            sources.append((meta["test"], meta["val"], meta["best_epoch"]))
            shipped += 1
        rel = cells[5].split()[0].strip("*")
        for test, val, best in sources:
            for text, value in ((cells[3], test["mae"]), (cells[4], test["rmse"]), (rel, test["rel_rmse"]),
                                (cells[6], test["cosine"]), (cells[7], val["rel_rmse"])):
                assert _shown(value, text) == text, f"{name} {head}: README {text}, recorded {value}"
            epochs, best_shown = re.match(r"(\d+) \((\d+)\)", cells[8]).groups()
            assert (int(epochs), int(best_shown)) == (run["epochs_run"], best), (name, head, cells[8])
        assert _shown(run["train_seconds"], cells[9]) == cells[9], (name, head, cells[9], run["train_seconds"])
        assert round(run["onnx_bytes"] / 1024) == int(cells[10].split()[0]), (name, head, cells[10])
    assert shipped == 3


def test_conservation_table_is_the_committed_check_conservation_output():
    """The README's table of `fastfeat check-conservation` figures equals the JSON outputs it cites
    (benchmarks/results/conservation_{peo,li4p2o7,li4p2o7-water}.json)."""
    import json

    rows = _table_rows("#### Are the forces conservative?")
    assert len(rows) == 3, rows
    for name, lam, drift, doubled, t_end, forces in rows:
        report = json.loads((ROOT / "benchmarks" / "results" / f"conservation_{name}.json").read_text())
        nve = report["nve"]
        assert _shown(report["jacobian"]["lambda"], lam) == lam, (name, lam, report["jacobian"]["lambda"])
        figure = drift.split()[0].lstrip("+")
        assert _shown(nve["drift_K_per_ps"], figure) == figure, (name, drift, nve["drift_K_per_ps"])
        if nve["doubling_time_ps"] is None:
            start, end = re.findall(r"(\d+) → (\d+) K", doubled)[0]
            assert (_shown(nve["temperature_start_K"], start), _shown(nve["temperature_end_K"], end)) == (start, end)
        else:
            figure = doubled.split()[0]
            assert _shown(nve["doubling_time_ps"], figure) == figure, (name, doubled, nve["doubling_time_ps"])
        figure = t_end.split()[0]
        assert _shown(nve["temperature_end_K"], figure) == figure, (name, t_end, nve["temperature_end_K"])
        net, rms = forces.split()[0], forces.split()[2]
        assert (_shown(report["net_force_eV_per_A"], net), _shown(report["rms_force_eV_per_A"], rms)) == (net, rms)


def test_relax_table_is_the_committed_relax_check_output():
    """The README's table of relaxations with the bundled models equals benchmarks/results/relax_check.json,
    the file `python -m benchmarks.compare.relax_check` writes."""
    import json

    report = json.loads((ROOT / "benchmarks" / "results" / "relax_check.json").read_text())
    by_key = {(r["model"], str(r["test_frame"])): r for r in report["rows"]}
    rows = _table_rows("#### Relaxing a structure")
    assert len(rows) == len(by_key), rows
    for name, frame, steps, xtb, further, outside in rows:
        r = by_key[(name, frame)]
        assert outside == f"{r['extrapolating_start']} → {r['extrapolating_end']}", (name, frame, outside)
        assert steps == f"{r['steps']}" + ("" if r["converged"] else " (not converged)"), (name, frame, steps)
        start, end = xtb.split(" → ")
        assert (_shown(r["reference_start"]["fmax"], start), _shown(r["reference_end"]["fmax"], end)) == (start, end)
        if further == "-":
            assert "reference_relax" not in r
        else:
            q = r["reference_relax"]
            n, moved = further.split(", ")
            assert n == f"{q['steps']}" + ("" if q["converged"] else " (not converged)"), (name, frame, further)
            assert _shown(q["moved_rms_A"], moved) == moved, (name, frame, moved, q["moved_rms_A"])


def test_extrapolation_figures_are_the_committed_extrapolation_check_output():
    """The README's shares of test atoms outside the bundled models' training ranges, and the training split's
    zero, are benchmarks/results/extrapolation.json (`python -m benchmarks.compare.extrapolation_check`)."""
    import json

    rows = json.loads((ROOT / "benchmarks" / "results" / "extrapolation.json").read_text())["rows"]
    text = _text()
    for r in rows:
        if r["split"] == "train":
            assert r["mean_fraction"] == 0 and r["frames_with_any"] == 0, r
        if r["split"] == "test":
            line = re.search(rf"  - {re.escape(r['model'])}: ([\d.]+) %.*?, (?:largest excess|up to) (\d+(?:\.\d+)?)", text)
            assert line, r["model"]
            share, excess = line.groups()
            assert _shown(100 * r["mean_fraction"], share) == share, (r["model"], share, r["mean_fraction"])
            assert _shown(r["largest_excess"], excess) == excess, (r["model"], excess, r["largest_excess"])
