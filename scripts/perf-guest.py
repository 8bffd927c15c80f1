#!/usr/bin/env python3
"""Attribute a `perf record` profile of btvisor to guest code.

usage: scripts/perf-guest.py PERF.DATA /tmp/perf-PID.map [KALLSYMS] [TOP]
       (PERF_TIME=START,END limits it to a window of perf's timestamps;
        PERF_USER=1 lists user blocks one by one instead of as one line)

perf shows translated code as samples in the code cache's memfd; this maps
each such sample through the map btvisor writes with -perfmap to the guest
block it belongs to, and (given the guest's /proc/kallsyms of the same
boot) to the guest kernel function. Samples outside the cache are listed
by host symbol. Record without -g: one line per sample.
"""
import bisect
import collections
import os
import subprocess
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data, mapf = sys.argv[1], sys.argv[2]
    ks = sys.argv[3] if len(sys.argv) > 3 else None
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    blocks = []
    for line in open(mapf):
        if len(line.split(None, 2)) < 3:
            continue  # the last line of a map cut short by killing btvisor
        start, size, name = line.split(None, 2)
        blocks.append((int(start, 16), int(size, 16), name.strip()))
    blocks.sort()
    starts = [b[0] for b in blocks]
    syms = []
    if ks:
        for line in open(ks):
            p = line.split()
            try:
                syms.append((int(p[0], 16), p[2]))
            except (IndexError, ValueError):
                continue  # a console line in the middle of the listing
        syms.sort()
    sym_starts = [s[0] for s in syms]
    cmd = ["perf", "script", "-i", data, "-F", "ip,sym,dso"]
    if os.environ.get("PERF_TIME"):
        cmd += ["--time", os.environ["PERF_TIME"]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    count = collections.Counter()
    total = 0
    for line in out.splitlines():
        p = line.split(None, 1)
        if len(p) < 2:
            continue
        total += 1
        if "memfd:btvisor-code" not in p[1]:
            count["host " + p[1].split("(")[0].strip()[:70]] += 1
            continue
        ip = int(p[0], 16)
        i = bisect.bisect_right(starts, ip) - 1
        if i < 0 or ip >= blocks[i][0] + blocks[i][1]:
            count["code cache (unnamed)"] += 1
            continue
        name = blocks[i][2]
        if name.startswith("guest-cpl3") and not os.environ.get("PERF_USER"):
            name = "guest user code"
        elif name.startswith("guest-cpl") and syms:
            g = int(name[-8:], 16)
            j = bisect.bisect_right(sym_starts, g) - 1
            if j >= 0 and g >= 0xC0000000:
                name = "guest kernel " + syms[j][1]
        count[name] += 1
    print(f"{total} samples")
    for name, n in count.most_common(top):
        print(f"{100 * n / max(total, 1):6.2f}% {name}")


if __name__ == "__main__":
    main()
