"""``fastfeat data`` command: ``generate`` reference data, ``list`` the bundled data sets."""

from __future__ import annotations

import sys

__all__ = ["main"]

_USAGE = """usage: fastfeat data {generate,relabel,list} ...

  generate NAME --frames N --temperatures T [T ...] --trajectories K --stride S --out FILE
           [--workers W] [--seed SEED] [--time-limit SECONDS] [--relax-steps N]
      GFN1-xTB (tblite) Langevin MD frames for a built-in system; resumes an interrupted run.
  relabel IN --out FILE [--workers W]
      Recompute energy and forces of every frame with fresh GFN1-xTB single points.
  list
      The bundled data sets with their frame and trajectory counts.
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
        from .loaders import available, load, split_trajectories

        for name in available():
            frames = load(name, split="all")
            split = split_trajectories(frames)
            symbols = sorted(set(frames[0].get_chemical_symbols()))
            print(f"{name}: {len(frames)} frames, {len(frames[0])} atoms, {' '.join(symbols)}, "
                  f"trajectories train {split['train']} val {split['val']} test {split['test']}")
        return 0
    print(f"fastfeat data: unknown command {command!r}\n{_USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
