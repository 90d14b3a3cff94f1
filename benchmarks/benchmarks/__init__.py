"""asv benchmark suite of fastfeat (see /benchmarks/README fragment in the project README).

Run from ``benchmarks/``: ``asv run --python=same --quick --show-stderr``.
"""
