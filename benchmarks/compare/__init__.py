"""Side-by-side comparisons of fastfeat with its peers (one process per comparison).

Run everything: ``python -m benchmarks.compare.run_all [--quick]`` from the repository root.
"""
