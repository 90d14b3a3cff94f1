"""Where the 100 k-atom neighbour list's time goes besides the search: the first touch of its output.

    python -m benchmarks.compare.list_memory [--atoms N] [--repeats R]

The list of a 100 k-atom water box (cutoff 5.2 Å, 1 thread) returns ~300 MB of arrays, mapped
afresh on every call; the 3 k list's 9 MB come back from the allocator. This script splits one
list build into its counting pass (``count``), its writing pass into freshly allocated output
arrays (``write, fresh``: the search plus the page faults of first touch) and the same writing
pass again into the now-touched arrays (``write, again``: the search alone), and reads how much of
the process is backed by 2 MiB pages (AnonHugePages). It does so in two positions of each round,
the way ``benchmarks.compare.scaling`` interleaves its calls: right after 33 calls of the 3 k list,
and right after a 100 k featurize call and 33 calls of the 3 k list. The public call is timed
right after each split build.

What it shows (2026-12-01, this 2-core VM, kernel 6.18.44-fc, transparent huge pages "madvise",
which NumPy asks for on large arrays): the search does the same work in either position (``write,
again``: ~150 ms), while the first touch of the fresh output costs from ~20 ms to ~300 ms from one
round to the next, in either position. The guest kernel is not the cause: every one of the 138
page faults gets a 2 MiB page at once (no compaction stall, no fallback to 4 KiB pages, counters of
/proc/vmstat). The spread comes from below it, most likely the hypervisor backing guest memory that
was freed and handed back (a Firecracker VM); the public call right after a split build, which has
just freed arrays of the same sizes, pays the small figure.

Internals (``fastfeat._neighbors``) are used for the split; the public call is timed too.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _anon_huge_mib():
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("AnonHugePages"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


_VMSTAT = ("compact_stall", "thp_fault_alloc", "thp_fault_fallback")


def _vmstat():
    """The kernel's counters of direct compaction stalls and 2 MiB page faults (zeros if unreadable)."""
    out = dict.fromkeys(_VMSTAT, 0)
    try:
        with open("/proc/vmstat") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key in out:
                    out[key] = int(value)
    except OSError:
        pass
    return out


def _split_build(positions, cell, pbc, cutoff):
    """(count s, write into fresh arrays s, write again s, AnonHugePages MiB, vmstat deltas of the fresh
    write) of one CPU list build."""
    from fastfeat import _neighbors as nb

    t0 = time.perf_counter()
    cl, offset = nb._binned_counts(positions, cell, pbc, cutoff)
    t1 = time.perf_counter()
    p = int(offset[-1])
    out = (np.empty(p, np.int32), np.empty(p, np.int32), np.empty((p, 3), np.int32), np.empty((p, 3)), np.empty(p))
    v0 = _vmstat()
    nb._fill(cl, cell, cutoff, offset, *out, False)
    t2 = time.perf_counter()
    v1 = _vmstat()
    huge = _anon_huge_mib()
    nb._fill(cl, cell, cutoff, offset, *out, False)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, huge, {k: v1[k] - v0[k] for k in _VMSTAT}


def run(n_atoms=100000, repeats=5):
    import fastfeat
    from benchmarks.common import ani1x_spec, set_threads, water_system

    set_threads(1)
    spec = ani1x_spec()
    small, large = water_system(3000), water_system(n_atoms)
    pbc = np.array([True, True, True])
    k = max(1, round(len(large) / len(small)))

    def small_lists():
        for _ in range(k):
            fastfeat.neighbor_list(small.positions, small.cell.array, True, spec.cutoff)

    def public():
        t0 = time.perf_counter()
        fastfeat.neighbor_list(large.positions, large.cell.array, True, spec.cutoff)
        return time.perf_counter() - t0

    split = lambda: _split_build(large.positions, large.cell.array, pbc, spec.cutoff)  # noqa: E731
    public(), split(), small_lists(), fastfeat.featurize(large, spec)  # JIT cache, allocator warm-up
    rows = {"after lists": [], "after featurize": []}
    for _ in range(repeats):
        small_lists()
        rows["after lists"].append(split() + (public(),))
        fastfeat.featurize(large, spec)
        small_lists()
        rows["after featurize"].append(split() + (public(),))
    print(f"neighbour list of {len(large)} water atoms, cutoff {spec.cutoff} Å, 1 thread, median of {repeats} "
          f"(public call timed right after the split build, in the same position)")
    print("| position | count | write, fresh | write, again | first touch (fresh - again), each round | "
          "compaction stalls, 2 MiB faults (fallbacks) in the fresh write, each round | AnonHugePages | "
          "public neighbor_list |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for name, r in rows.items():
        a = np.array([x[:3] + (x[5],) for x in r])
        c, f, g, p = np.median(a, axis=0) * 1e3
        touch = ", ".join(f"{(x[1] - x[2]) * 1e3:.0f}" for x in r)
        vm = ", ".join(f"{x[4]['compact_stall']}/{x[4]['thp_fault_alloc']}({x[4]['thp_fault_fallback']})" for x in r)
        huge = [x[3] for x in r]
        print(f"| {name} | {c:.0f} ms | {f:.0f} ms | {g:.0f} ms | {touch} ms | {vm} | {min(huge)}-{max(huge)} MiB | "
              f"{p:.0f} ms |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, default=100000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.atoms, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
