#!/usr/bin/env python3
"""Shrinks a failing differential sequence of tests/write_path.rs.

    scripts/dev/minimize-diff.py TEST SEED OPS 'REGEX'

runs TEST (e.g. random_operations_match_kernel_overlayfs) for one seed with
only a subset of its first OPS operations applied (LAYERFS_DIFF_ONLY) and
keeps removing operations (ddmin) while the output still matches REGEX (the
failure's signature, e.g. 'op #428 Stat\\("a/a/f"\\): layerfs'). Prints the
operations left. Needs root; runs each try in a private mount namespace.
"""
import os
import re
import subprocess
import sys

test, seed, ops, sig = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), re.compile(sys.argv[4])
out = subprocess.run(
    ["cargo", "test", "--release", "--test", "write_path", "--no-run", "--message-format=json"],
    capture_output=True, text=True).stdout
binary = [m for m in re.findall(r'"executable":"([^"]*write_path[^"]*)"', out)][-1]


def fails(keep):
    env = dict(os.environ, LAYERFS_DIFF_SEEDS="1", LAYERFS_DIFF_SEED_START=str(seed),
               LAYERFS_DIFF_OPS=str(ops), LAYERFS_DIFF_ONLY=",".join(map(str, keep)),
               LAYERFS_DIFF_HISTORY="100000")
    r = subprocess.run(["timeout", "120", "unshare", "-m", "--propagation", "private",
                        binary, "--exact", test], env=env, capture_output=True, text=True)
    return sig.search(r.stdout + r.stderr) is not None, r.stdout + r.stderr


keep = list(range(ops))
ok, _ = fails(keep)
if not ok:
    sys.exit("the full sequence does not show the signature")
n = 2
while len(keep) >= 2:
    chunk = max(1, len(keep) // n)
    reduced = False
    for start in range(0, len(keep), chunk):
        trial = keep[:start] + keep[start + chunk:]
        if trial and fails(trial)[0]:
            keep, n, reduced = trial, max(n - 1, 2), True
            print(f"{len(keep)} operations left", file=sys.stderr)
            break
    if not reduced:
        if chunk == 1:
            break
        n = min(len(keep), n * 2)
_, text = fails(keep)
print("kept operations:", keep)
for line in text.splitlines():
    if line.startswith("  #") or "differs" in line or "layerfs" in line and "kernel" in line:
        print(line)
