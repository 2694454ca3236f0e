#!/usr/bin/env python3
"""GlusterFS rows of the layerfs benchmark: the same work on the bare
GlusterFS mount, on fuse-overlayfs and on layerfs with lower, upper and work
dir all on that mount, interleaved, reported as medians and ratios to the
bare mount.

Run through scripts/bench/bench-gluster.sh, which starts a throw-away GlusterFS
volume (scripts/dev/gluster-env.sh) and runs this inside a "host" namespace.
Stdlib only.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

TARGETS = ["bare", "fuse-overlayfs", "layerfs", "layerfs fsync=0"]


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def build(base, nfiles):
    """A lower layer of `nfiles` small files in directories of 10, and a
    tarball of the same tree for the untar row."""
    lower = os.path.join(base, "lower")
    payload = os.urandom(4096)
    for i in range(nfiles):
        d = os.path.join(lower, "usr", f"d{i // 10}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i % 10}"), "wb") as f:
            f.write(payload[: 200 + (i * 37) % 3800])
    tar = os.path.join(base, "tree.tar")
    with tarfile.open(tar, "w") as t:
        t.add(os.path.join(lower, "usr"), arcname="usr")
    return lower, tar


class Mounts:
    def __init__(self, base, lower, layerfs):
        self.base, self.lower, self.layerfs = base, lower, layerfs
        self.n = 0

    def fresh(self, target):
        """A fresh view of the lower on `target`: its root path."""
        self.n += 1
        root = os.path.join(self.base, f"run{self.n}")
        if target == "bare":
            # The bare mount: a copy of the lower in place of the merge.
            sh(f"cp -a {self.lower} {root}")
            return root
        up, work, mnt = root + "-u", root + "-w", root + "-m"
        for d in (up, work, mnt):
            os.makedirs(d)
        opts = f"lowerdir={self.lower},upperdir={up},workdir={work}"
        if target == "layerfs":
            sh(f"{self.layerfs} -o {opts} {mnt} 2>/dev/null")
        elif target == "layerfs fsync=0":
            # Like for like: fuse-overlayfs does not fsync its copy-ups.
            sh(f"{self.layerfs} -o {opts},fsync=0 {mnt} 2>/dev/null")
        else:
            sh(f"fuse-overlayfs -o {opts} {mnt}")
        return mnt

    def done(self, target, root):
        if target != "bare":
            sh(f"umount {root}")
            time.sleep(0.1)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def first_write(root, nfiles):
    for i in range(nfiles):
        with open(os.path.join(root, "usr", f"d{i // 10}", f"f{i % 10}"), "ab") as f:
            f.write(b"+")


def find(root):
    subprocess.run(["find", root, "-type", "f"], check=True, stdout=subprocess.DEVNULL)


def read_all(root):
    for d, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                fh.read()


def untar(root, tar):
    dest = os.path.join(root, "untar")
    os.makedirs(dest)
    subprocess.run(["tar", "-xf", tar, "-C", dest], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="a directory on the GlusterFS mount")
    ap.add_argument("--layerfs", required=True)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    lower, tar = build(a.dir, a.files)
    m = Mounts(a.dir, lower, a.layerfs)
    rows = {
        f"first write to {a.files} lower files": lambda r: first_write(r, a.files),
        "untar": lambda r: untar(r, tar),
        "find (warm)": find,
        "read every small file (warm)": read_all,
    }
    results = {name: {t: [] for t in TARGETS} for name in rows}
    for rep in range(a.reps):
        for name, fn in rows.items():
            for t in TARGETS:
                root = m.fresh(t)
                try:
                    if "warm" in name:
                        fn(root)  # warm the caches once
                    results[name][t].append(timed(lambda: fn(root)))
                finally:
                    m.done(t, root)
        print(f"round {rep + 1}/{a.reps} done", file=sys.stderr)
    print("| workload (median) | bare GlusterFS | fuse-overlayfs | layerfs | layerfs fsync=0 |")
    print("|---|---|---|---|---|")
    ahead = 0
    for name in rows:
        med = {t: statistics.median(results[name][t]) for t in TARGETS}
        base = med["bare"]
        fo, lf = med["fuse-overlayfs"] / base, med["layerfs"] / base
        lf0 = med["layerfs fsync=0"] / base
        ahead += min(lf, lf0) <= fo
        print(f"| {name} | 1.00 ({base * 1000:.0f} ms) | {fo:.2f}x | {lf:.2f}x | {lf0:.2f}x |")
    print(f"layerfs (like for like on fsync) at or ahead of fuse-overlayfs on {ahead} of {len(rows)} rows")
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
