#!/usr/bin/env python3
"""layerfs benchmark: the same workloads on the native filesystem holding the
merged content, kernel overlayfs, fuse-overlayfs and layerfs, interleaved
(A B C D, repeated), reported as medians, min-max and ratios to kernel
overlayfs measured in the same run.

Run through scripts/bench.sh (which builds layerfs and installs
fuse-overlayfs). Needs root. Stdlib only.
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = ["native", "kernel", "fuse-overlayfs", "layerfs"]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def drop_caches():
    sh("sync")
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


# ---- the image ---------------------------------------------------------------

def build_image(base, scale, big_mib):
    """Three layers like an image: a base, a layer that adds files, a layer
    that deletes and replaces; plus a 10,000-entry directory and big files."""
    rng = random.Random(42)
    layers = [os.path.join(base, f"layer{i}") for i in range(3)]  # 0 = top
    for layer in layers:
        os.makedirs(layer)
    ndirs = [int(2000 * scale), int(600 * scale), int(400 * scale)]
    per_dir = 10
    payload = bytes(rng.getrandbits(8) for _ in range(8192))

    def fill(layer, prefix, dirs):
        for d in range(dirs):
            dp = os.path.join(layer, "usr", f"{prefix}{d // 50}", f"d{d}")
            os.makedirs(dp, exist_ok=True)
            for f in range(per_dir):
                size = 512 + (d * 31 + f * 17) % 7680
                with open(os.path.join(dp, f"f{f}"), "wb") as fh:
                    fh.write(payload[:size])

    fill(layers[2], "lib", ndirs[0])
    fill(layers[1], "share", ndirs[1])
    fill(layers[0], "opt", ndirs[2])
    # Deletions (char 0/0 whiteouts) and replaced directories (opaque).
    for d in range(0, ndirs[0], 20):
        dp = os.path.join(layers[1], "usr", f"lib{d // 50}", f"d{d}")
        os.makedirs(dp, exist_ok=True)
        sh(f"mknod {dp}/f0 c 0 0")
    for d in range(5, ndirs[0], 40):
        dp = os.path.join(layers[0], "usr", f"lib{d // 50}", f"d{d}")
        os.makedirs(dp, exist_ok=True)
        with open(os.path.join(dp, "new"), "w") as fh:
            fh.write("replaced")
        sh(f"setfattr -n trusted.overlay.opaque -v y {dp}")
    big_dir = os.path.join(layers[2], "bigdir")
    os.makedirs(big_dir)
    for i in range(int(10000 * min(scale * 2, 1))):
        open(os.path.join(big_dir, f"entry{i:05d}"), "wb").close()
    with open(os.path.join(layers[2], "big.bin"), "wb") as fh:
        chunk = os.urandom(1 << 20)
        for _ in range(big_mib):
            fh.write(chunk)
    return layers


def many_layers(base, n):
    layers = []
    for i in range(n):
        p = os.path.join(base, f"ml{n}", f"l{i}")
        os.makedirs(os.path.join(p, f"dir{i}"))
        with open(os.path.join(p, f"dir{i}", "file"), "w") as fh:
            fh.write(str(i))
        layers.append(p)
    return layers


# ---- mounts ------------------------------------------------------------------

class Env:
    def __init__(self, base, layers, layerfs):
        self.base = base
        self.layers = layers
        self.layerfs = layerfs
        self.layerfs_opts = ""
        self.mnt = {}
        for t in TARGETS:
            self.mnt[t] = os.path.join(base, "mnt-" + t)
            os.makedirs(self.mnt[t], exist_ok=True)
        # The native target: a plain copy of the merged tree.
        self.native_src = os.path.join(base, "native-src")

    def lowerdir(self, layers=None):
        return ":".join(layers or self.layers)

    def upper(self, t):
        return os.path.join(self.base, "upper-" + t), os.path.join(self.base, "work-" + t)

    def mount(self, t, layers=None, extra=""):
        mnt = self.mnt[t]
        if t == "native":
            # A plain copy of the merged tree; writes use a scratch dir.
            if not os.path.exists(self.native_src):
                self.mount("kernel")
                sh(f"cp -a {self.mnt['kernel']}/. {self.native_src}/")
                self.umount("kernel")
            self.mnt["native"] = self.native_src
            return
        u, w = self.upper(t)
        for d in (u, w):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        lower = self.lowerdir(layers)
        opts = f"lowerdir={lower},upperdir={u},workdir={w}"
        if extra:
            opts += "," + extra
        if t == "kernel":
            sh(f"mount -t overlay overlay -o {opts} {mnt}")
        elif t == "fuse-overlayfs":
            sh(f"fuse-overlayfs -o {opts} {mnt}", stderr=subprocess.DEVNULL)
        else:
            more = f",{self.layerfs_opts}" if self.layerfs_opts else ""
            sh(f"{self.layerfs} -o {opts}{more} {mnt}")

    def umount(self, t):
        if t == "native":
            return
        subprocess.run(["umount", self.mnt[t]], stderr=subprocess.DEVNULL)
        deadline = time.time() + 5
        while os.path.ismount(self.mnt[t]) and time.time() < deadline:
            time.sleep(0.02)

    def umount_all(self):
        for t in TARGETS[1:]:
            for _ in range(3):
                if os.path.ismount(self.mnt[t]):
                    self.umount(t)


def daemon_rss_kib(mnt, name):
    out = subprocess.run(["pgrep", "-f", f"{name}.*{mnt}"], capture_output=True, text=True).stdout.split()
    best = 0
    for pid in out:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best


# ---- workloads ---------------------------------------------------------------
# Each returns seconds for one run on mountpoint `m` (and may use `env`).

def timed(cmd, cwd):
    t0 = time.perf_counter()
    sh(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def warm(cmd):
    def run(env, t, m):
        # Re-warm right before measuring (FUSE needs a few walks).
        for _ in range(2):
            sh(cmd, cwd=m, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return timed(cmd, m)
    return run


def cold(cmd):
    def run(env, t, m):
        drop_caches()
        return timed(cmd, m)
    return run


def stat_all(env, t, m):
    paths = []
    for root, dirs, files in os.walk(m):
        paths.extend(os.path.join(root, f) for f in files)
    for p in paths:
        os.lstat(p)
    t0 = time.perf_counter()
    for _ in range(2):
        for p in paths:
            os.lstat(p)
    return time.perf_counter() - t0


def rand_reads(env, t, m):
    path = os.path.join(m, "big.bin")
    size = os.path.getsize(path)
    rng = random.Random(7)
    fd = os.open(path, os.O_RDONLY)
    for _ in range(500):
        os.pread(fd, 4096, rng.randrange(0, size - 4096) & ~4095)
    t0 = time.perf_counter()
    for _ in range(4000):
        os.pread(fd, 4096, rng.randrange(0, size - 4096) & ~4095)
    os.close(fd)
    return time.perf_counter() - t0


def fresh(env, t):
    """Remounts `t` with an empty upper (native: a scratch dir)."""
    if t == "native":
        d = os.path.join(env.base, "native-scratch")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d
    env.umount(t)
    env.mount(t)
    return env.mnt[t]


def in_fresh(cmd, native=True):
    def run(env, t, m):
        if t == "native" and not native:
            return None
        d = fresh(env, t)
        return timed(cmd.format(big=os.path.join(d, "big.bin"), src=env.native_src), d)
    return run


def copy_up_small(env, t, m):
    if t == "native":
        return None
    d = fresh(env, t)
    files = []
    for root, dirs, fs in os.walk(os.path.join(d, "usr")):
        files.extend(os.path.join(root, f) for f in fs)
        if len(files) >= 1000:
            break
    files = files[:1000]
    t0 = time.perf_counter()
    for p in files:
        with open(p, "ab") as fh:
            fh.write(b"x")
    return time.perf_counter() - t0


def seq_write(env, t, m):
    d = fresh(env, t)
    return timed(f"dd if=/dev/zero of=out.bin bs=1M count={env.big_mib} conv=fsync", d)


def untar(env, t, m):
    d = fresh(env, t)
    return timed(f"tar xf {env.tarball}", d)


def create_delete(env, t, m):
    d = fresh(env, t)
    return timed("mkdir cd && for i in $(seq 1 2000); do : > cd/f$i; done && rm -rf cd", d)


def rm_lower_tree(env, t, m):
    if t == "native":
        return None
    d = fresh(env, t)
    return timed("rm -rf usr", d)


def chown_all(env, t, m):
    if t == "native":
        return None
    d = fresh(env, t)
    return timed("chown -R 1000:1000 .", d)


def chown_all_metacopy(env, t, m):
    """chown -R with metadata-only copy-up where the filesystem offers it
    (kernel overlayfs and layerfs: metacopy=on; fuse-overlayfs has none)."""
    if t == "native":
        return None
    env.umount(t)
    extra = "" if t == "fuse-overlayfs" else "metacopy=on"
    env.mount(t, extra=extra)
    dt = timed("chown -R 1000:1000 .", env.mnt[t])
    env.umount(t)
    env.mount(t)
    return dt


def mount_time(n):
    def run(env, t, m):
        if t == "native":
            return None
        layers = env.many[n]
        env.umount(t)
        # What earlier workloads left in the upper and work dirs (a whole
        # tree of whiteouts after "rm -rf lower tree") is removed before
        # the clock starts: env.mount then removes two empty dirs, the
        # same for every target.
        for d in env.upper(t):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        t0 = time.perf_counter()
        env.mount(t, layers=layers)
        os.listdir(env.mnt[t])
        dt = time.perf_counter() - t0
        env.umount(t)
        env.mount(t)
        return dt
    return run


WORKLOADS = [
    ("find -type f (warm)", warm("find . -type f | wc -l")),
    ("find -type f (cold)", cold("find . -type f | wc -l")),
    ("lstat every file x2 (warm)", stat_all),
    ("du -s (warm)", warm("du -s .")),
    ("du -s (cold)", cold("du -s .")),
    ("ls -lR (warm)", warm("ls -lR .")),
    ("ls -lR (cold)", cold("ls -lR .")),
    ("readdir 10k entries (warm)", warm("ls -f bigdir | wc -l")),
    ("read all small files (warm)", warm("tar cf - usr | cat >/dev/null")),
    ("read all small files (cold)", cold("tar cf - usr | cat >/dev/null")),
    ("seq read big lower file (warm)", warm("dd if=big.bin of=/dev/null bs=1M")),
    ("random 4k reads big file", rand_reads),
    ("seq write new big file", seq_write),
    ("copy-up: append to 1000 files", copy_up_small),
    ("copy-up: open big file for write", in_fresh("python3 -c \"open('big.bin','r+b').close()\"", native=False)),
    ("chown -R whole image", chown_all),
    ("chown -R with metacopy=on", chown_all_metacopy),
    ("untar image", untar),
    ("create+delete 2000 files", create_delete),
    ("rm -rf lower tree", rm_lower_tree),
    ("mount + ls, 10 layers", mount_time(10)),
    ("mount + ls, 50 layers", mount_time(50)),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small image, about a minute")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--layerfs", required=True)
    ap.add_argument("--only", default="", help="comma-separated workload name prefixes")
    ap.add_argument("--layerfs-opts", default="", help="extra -o options for layerfs (experiments)")
    args = ap.parse_args()
    scale, big_mib, reps = (0.15, 64, 5) if args.quick else (1.0, 512, 5)
    if args.reps:
        reps = args.reps
    base = tempfile.mkdtemp(prefix="layerfs-bench-", dir="/var/tmp")
    env = None
    try:
        print(f"building the image in {base} (scale {scale}, big file {big_mib} MiB)...", flush=True)
        layers = build_image(base, scale, big_mib)
        env = Env(base, layers, args.layerfs)
        env.layerfs_opts = args.layerfs_opts
        env.big_mib = big_mib
        env.many = {n: many_layers(base, n) for n in (10, 50)}
        for t in TARGETS:
            env.mount(t)
        env.tarball = os.path.join(base, "image.tar")
        sh(f"tar cf {env.tarball} -C {env.mnt['kernel']} usr")
        results = {}
        only = [o for o in args.only.split(",") if o]
        for name, fn in WORKLOADS:
            if only and not any(name.startswith(o) for o in only):
                continue
            results[name] = {t: [] for t in TARGETS}
            for _ in range(reps):
                for t in TARGETS:
                    v = fn(env, t, env.mnt[t])
                    if v is not None:
                        results[name][t].append(v)
            report_line(name, results[name])
        # Memory: walk everything, let the kernel forget, read the daemons.
        for t in ("fuse-overlayfs", "layerfs"):
            sh("find . > /dev/null", cwd=env.mnt[t])
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        time.sleep(1)
        print(f"daemon RSS after a full walk and drop_caches: layerfs {daemon_rss_kib(env.mnt['layerfs'], 'layerfs') / 1024:.1f} MiB, "
              f"fuse-overlayfs {daemon_rss_kib(env.mnt['fuse-overlayfs'], 'fuse-overlayfs') / 1024:.1f} MiB")
    finally:
        if env:
            env.umount_all()
        # Never delete through a mount that is still there.
        left = [l.split()[1] for l in open("/proc/self/mounts") if base in l.split()[1]]
        for m in left:
            subprocess.run(["umount", "-l", m])
        sh(f"rm -rf {base}")


HEADER_DONE = [False]


def report_line(name, res):
    if not HEADER_DONE[0]:
        print(f"{'workload':38} " + " ".join(f"{t:>22}" for t in TARGETS))
        print(f"{'':38} " + " ".join(f"{'median s (x kernel)':>22}" for _ in TARGETS))
        HEADER_DONE[0] = True
    k = statistics.median(res["kernel"]) if res["kernel"] else None
    cells = []
    for t in TARGETS:
        v = res[t]
        if not v:
            cells.append(f"{'n/a':>22}")
            continue
        med = statistics.median(v)
        ratio = f"{med / k:.2f}x" if k else "-"
        cells.append(f"{med:9.4f} ({ratio:>6})".rjust(22))
    print(f"{name:38} " + " ".join(cells), flush=True)
    ranges = []
    for t in TARGETS:
        v = res[t]
        ranges.append(f"[{min(v):.4f}-{max(v):.4f}]".rjust(22) if v else " " * 22)
    print(f"{'  min-max':38} " + " ".join(ranges), flush=True)


if __name__ == "__main__":
    sys.exit(main())
