#!/usr/bin/env python3
"""The timing and statistics half of scripts/bench/bench-live.sh, which
runs it: a continuous writer with per-operation latencies, the first
writes after a snapshot, and percentiles. Stdlib only.

  bench-live.py stats FILE COLUMN           p50 p99 max mean of a column
  bench-live.py writer FILE SECONDS OUT     write 4 KiB blocks, fsync each MiB
  bench-live.py around OUT SNAPTIMES        what the writer saw near snapshots
  bench-live.py firstwrite FILE REPS CMD..  first writes after `CMD.. IDn`
"""

import json
import math
import os
import subprocess
import sys
import time
from array import array

BLOCK = 4096
# A database-like file: written over in place, so that each snapshot leaves
# a file of this size for the next write to copy up, and the disk used stays
# bounded however fast the writer goes.
SPAN = 256 << 20
FSYNC_EVERY = 256  # blocks: one fsync per MiB


def percentiles(xs):
    """p50, p99 (nearest rank: with 30 samples, p99 is the largest), max, mean."""
    xs = sorted(xs)
    if not xs:
        return [float("nan")] * 4

    def rank(p):
        return xs[max(0, math.ceil(p * len(xs)) - 1)]

    return [rank(0.50), rank(0.99), xs[-1], sum(xs) / len(xs)]


def stats(path, column):
    xs = [float(line.split()[int(column)]) for line in open(path) if line.strip()]
    print(" ".join(f"{x:.3f}" for x in percentiles(xs)))


def writer(path, seconds, out):
    """Writes until the time is up; records every write's and fsync's start
    (wall clock, to match the snapshot times the shell takes) and latency."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    buf = os.urandom(BLOCK)
    starts, lats, kinds = array("d"), array("d"), array("b")
    end = time.time() + float(seconds)
    off = n = 0
    t_begin = time.time()
    while True:
        s = time.time()
        if s >= end:
            break
        os.pwrite(fd, buf, off)
        e = time.time()
        starts.append(s)
        lats.append(e - s)
        kinds.append(0)
        off = (off + BLOCK) % SPAN
        n += 1
        if n % FSYNC_EVERY == 0:
            os.fsync(fd)
            f = time.time()
            starts.append(e)
            lats.append(f - e)
            kinds.append(1)
    os.fsync(fd)
    t_end = time.time()
    os.close(fd)
    with open(out, "w") as o:
        json.dump(
            {
                "bytes": n * BLOCK,
                "seconds": t_end - t_begin,
                "starts": starts.tolist(),
                "lats": lats.tolist(),
                "kinds": kinds.tolist(),
            },
            o,
        )


def around(out, snaptimes):
    """MB/s; write and fsync p50/p99/max (ms); the worst operation under
    way at any time from a snapshot's start to 1 s after its end (the first
    fsync after it, which copies the file up, starts in that time), in ms;
    -1 without snapshots."""
    w = json.load(open(out))
    snaps = [tuple(map(float, l.split())) for l in open(snaptimes) if l.strip()]
    mbs = w["bytes"] / w["seconds"] / 1e6
    wr = [l for l, k in zip(w["lats"], w["kinds"]) if k == 0]
    fs = [l for l, k in zip(w["lats"], w["kinds"]) if k == 1]
    worst = -1.0
    for a, b in snaps:
        for s, l in zip(w["starts"], w["lats"]):
            if s <= b + 1.0 and s + l >= a:
                worst = max(worst, l)
    pw, pf = percentiles(wr), percentiles(fs)
    ms = lambda x: f"{x * 1e3:.3f}"
    print(
        f"{mbs:.1f}",
        ms(pw[0]), ms(pw[1]), ms(pw[2]),
        ms(pf[0]), ms(pf[1]), ms(pf[2]),
        ms(worst) if worst >= 0 else "-",
    )


def firstwrite(path, reps, cmd):
    """Per rep, two snapshots: after the first, a descriptor opened before
    it writes 4 KiB and fsyncs, twice (the write lands in the kernel's
    cache; the copy-up comes with the fsync); after the second, a
    descriptor opened then writes 4 KiB twice (the copy-up comes with the
    open, counted in the first). Prints per rep, in ms: held write, fsync,
    write, fsync; open+write, write."""
    buf = os.urandom(BLOCK)
    held = os.open(path, os.O_RDWR)
    quiet = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    for r in range(int(reps)):
        subprocess.run(cmd + [f"fw{r}a"], **quiet)
        t = [time.perf_counter()]
        for k in range(2):
            os.pwrite(held, buf, (r * 2 + k) * BLOCK)
            t.append(time.perf_counter())
            os.fsync(held)
            t.append(time.perf_counter())
        subprocess.run(cmd + [f"fw{r}b"], **quiet)
        t.append(time.perf_counter())
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, buf, (1 << 29) + r * 2 * BLOCK)
        t.append(time.perf_counter())
        os.pwrite(fd, buf, (1 << 29) + (r * 2 + 1) * BLOCK)
        t.append(time.perf_counter())
        os.close(fd)
        lat = [t[1] - t[0], t[2] - t[1], t[3] - t[2], t[4] - t[3], t[6] - t[5], t[7] - t[6]]
        print(" ".join(f"{x * 1e3:.3f}" for x in lat), flush=True)
    os.close(held)


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "stats":
        stats(*args)
    elif what == "writer":
        writer(*args)
    elif what == "around":
        around(*args)
    elif what == "firstwrite":
        firstwrite(args[0], args[1], args[2:])
    else:
        sys.exit(f"unknown: {what}")
