"""``fastfeat data`` command: ``generate`` reference data, ``relabel`` it, ``list`` the bundled data sets.

``fastfeat data generate --help`` / ``relabel --help`` describe every option."""

from __future__ import annotations

import sys

__all__ = ["main"]

_LIST = "The bundled data sets with their frame and trajectory counts."

_USAGE = f"""usage: fastfeat data {{generate,relabel,list}} ...

  generate NAME --out FILE [--frames N] [--temperatures T [T ...]] [--trajectories K] [--stride S]
           [--workers W] [--seed SEED] [--time-limit SECONDS] [--relax-steps N]
           [--first-trajectory K] [--parts DIR]
      GFN1-xTB (tblite) Langevin MD frames for a built-in system (peo, li4p2o7, li4p2o7-water);
      defaults: 450 frames, 300 600 1000 K, 5 trajectories, stride 3. Resumes an interrupted run.
  relabel IN --out FILE [--workers W] [--time-limit SECONDS] [--parts DIR]
      Recompute energy and forces of every frame with fresh GFN1-xTB single points.
  list
      {_LIST}

`fastfeat data generate --help` and `fastfeat data relabel --help` describe every option.
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``fastfeat data`` subcommands; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "generate":
        from .generate import main as generate_main

        return generate_main(rest)
    if command == "relabel":
        from .relabel import main as relabel_main

        return relabel_main(rest)
    if command == "list":
        if rest and rest[0] in ("-h", "--help"):
            print(f"usage: fastfeat data list\n\n{_LIST}")
            return 0
        if rest:
            print(f"fastfeat data list: error: takes no arguments, got {' '.join(rest)}", file=sys.stderr)
            return 2
        from .loaders import available, load, split_trajectories

        for name in available():
            frames = load(name, split="all")
            split = split_trajectories(frames)
            symbols = sorted(set(frames[0].get_chemical_symbols()))
            print(f"{name}: {len(frames)} frames, {len(frames[0])} atoms, {' '.join(symbols)}, "
                  f"trajectories train {split['train']} val {split['val']} test {split['test']}")
        return 0
    print(f"fastfeat data: error: unknown command {command!r}\n{_USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
