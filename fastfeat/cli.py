"""The single `fastfeat` command line entry point.

Each subcommand lives in the module that owns it and is imported lazily, so
``fastfeat md`` never imports torch. A handler is ``main(argv: list[str]) -> int``
and parses its own arguments.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["main"]

#: subcommand -> ("module", "function", "one-line help")
SUBCOMMANDS = {
    "demo": ("fastfeat.runtime.demo", "main", "bundled model -> MD -> accuracy/speed report"),
    "md": ("fastfeat.runtime.md_cli", "main", "run molecular dynamics with a force model"),
    "relax": ("fastfeat.runtime.relax_cli", "main", "relax a structure (FIRE, forces only) with a force model"),
    "check-conservation": ("fastfeat.runtime.conservation", "main", "Jacobian asymmetry and NVE drift of a model"),
    "featurize": ("fastfeat._featurize_cli", "main", "write invariant/covariant features of structures to .npz"),
    "train": ("fastfeat.train.cli", "train_main", "train a direct-force model and export it to ONNX"),
    "evaluate": ("fastfeat.train.cli", "evaluate_main", "force errors of a model on a data set"),
    "data": ("fastfeat.train.datasets.cli", "main", "generate reference data (GFN1-xTB via tblite)"),
}


def _usage() -> str:
    lines = ["usage: fastfeat COMMAND [options]", "", "commands:"]
    for name, (_, _, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<20s}{text}")
    lines.append("")
    lines.append("`fastfeat COMMAND --help` describes a command's options.")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"fastfeat {__version__}")
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"fastfeat: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = SUBCOMMANDS[name]
    handler = getattr(importlib.import_module(module), func)
    try:
        rc = int(handler(argv[1:]) or 0)
        sys.stdout.flush()
    except KeyboardInterrupt as exc:  # Ctrl-C in a command without its own handling: one line, no traceback
        print(f"fastfeat {name}: interrupted" + (f" ({exc})" if str(exc) else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of the output went away (`fastfeat data list | head -1`): stop quietly, as Unix tools do;
        # stdout goes to devnull so that the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
