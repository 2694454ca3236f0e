#!/usr/bin/env python3
"""layerfs benchmark: the same workloads on the native filesystem holding the
merged content, kernel overlayfs, fuse-overlayfs and layerfs, interleaved
(A B C D, repeated), reported as medians, min-max and ratios to kernel
overlayfs measured in the same run.

Run through scripts/bench/bench.sh (which builds layerfs and installs
fuse-overlayfs). Needs root. Stdlib only.

--rootless runs the same workloads as an unprivileged user in its own user
namespace, as rootless podman does (see rootless_main): the root process
builds the image, makes the user, and then only serves drop_caches for the
cold rows; everything measured, mounts included, runs in a worker process
that is that user, root in its namespace.
"""

import argparse
import os
import random
import resource
import shlex
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TARGETS = ["native", "kernel", "fuse-overlayfs", "layerfs"]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def write_drop_caches(what):
    sh("sync")
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(what)


# In rootless mode the worker cannot write /proc/sys/vm/drop_caches (it is
# root only in its own user namespace): it asks the root parent over two
# pipes (requests to the parent, replies from it).
ROOT_PARENT = [None]


def drop_caches(what="3"):
    if ROOT_PARENT[0] is None:
        write_drop_caches(what)
        return
    req, rep = ROOT_PARENT[0]
    os.write(req, f"drop {what}\n".encode())
    if os.read(rep, 16) != b"ok\n":
        raise RuntimeError("the root parent did not drop the caches")


# ---- the image ---------------------------------------------------------------

def image_layers(base):
    return [os.path.join(base, f"layer{i}") for i in range(3)]  # 0 = top


def build_image(base, scale, big_mib, opaque_xattr="trusted.overlay.opaque"):
    """Three layers like an image: a base, a layer that adds files, a layer
    that deletes and replaces; plus a 10,000-entry directory and big files.
    Opaque directories are marked with `opaque_xattr`: trusted.* is
    invisible in a user namespace, where overlayfs (`userxattr`), layerfs
    and fuse-overlayfs read user.overlay.opaque instead."""
    rng = random.Random(42)
    layers = image_layers(base)
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
        sh(f"setfattr -n {opaque_xattr} -v y {dp}")
    big_dir = os.path.join(layers[2], "bigdir")
    os.makedirs(big_dir)
    for i in range(int(10000 * min(scale * 2, 1))):
        open(os.path.join(big_dir, f"entry{i:05d}"), "wb").close()
    with open(os.path.join(layers[2], "big.bin"), "wb") as fh:
        chunk = os.urandom(1 << 20)
        for _ in range(big_mib):
            fh.write(chunk)
    return layers


def many_layer_paths(base, n):
    return [os.path.join(base, f"ml{n}", f"l{i}") for i in range(n)]


def many_layers(base, n):
    layers = many_layer_paths(base, n)
    for i, p in enumerate(layers):
        os.makedirs(os.path.join(p, f"dir{i}"))
        with open(os.path.join(p, f"dir{i}", "file"), "w") as fh:
            fh.write(str(i))
    return layers


# ---- mounts ------------------------------------------------------------------

class Env:
    def __init__(self, base, layers, layerfs):
        self.base = base
        self.layers = layers
        self.layerfs = layerfs
        self.layerfs_opts = ""
        # Rootless: kernel overlayfs needs `userxattr` in a user namespace,
        # and layerfs' start-up warning (no file handles there) goes to a
        # log instead of once per mount.
        self.rootless = False
        self.layerfs_log = None
        self.mnt = {}
        # More mount options per target, for the rows that change them.
        self.extra = {t: "" for t in TARGETS}
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
        for more in (extra, self.extra[t]):
            if more:
                opts += "," + more
        if t == "kernel":
            if self.rootless:
                opts += ",userxattr"
            sh(f"mount -t overlay overlay -o {opts} {mnt}")
        elif t == "fuse-overlayfs":
            sh(f"fuse-overlayfs -o {opts} {mnt}", stderr=subprocess.DEVNULL)
        else:
            more = f",{self.layerfs_opts}" if self.layerfs_opts else ""
            if self.layerfs_log:
                with open(self.layerfs_log, "a") as log:
                    sh(f"{self.layerfs} -o {opts}{more} {mnt}", stderr=log)
            else:
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
    r = subprocess.run(cmd, shell=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"`{cmd}` in {cwd} failed ({r.returncode}): " + " / ".join(err[:3] + ["..."] + err[-3:] if len(err) > 6 else err))
    return dt


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


def small_writes(bs_kib, mib, sync):
    """A new file written `bs_kib` KiB at a time: the page cache's work in
    the kernel, FUSE's writeback cache (or passthrough) in layerfs."""
    def run(env, t, m):
        d = fresh(env, t)
        count = mib * 1024 // bs_kib
        conv = " conv=fsync" if sync else ""
        return timed(f"dd if=/dev/zero of=out.bin bs={bs_kib}k count={count}{conv}", d)
    return run


def untar(env, t, m):
    d = fresh(env, t)
    return timed(f"tar xf {env.tarball}", d)


def first_read_big(env, t, m):
    """The first read of a lower file through a mount made a moment ago,
    with the file already in the host's page cache: the data of each
    binary and library a container runs for the first time. Kernel
    overlayfs reads the lower file's cache; a FUSE mount's page cache is
    its own, so every byte goes through its daemon."""
    src = os.path.join(env.layers[2], "big.bin")
    sh(f"cat {src} >/dev/null")
    if t == "native":
        return timed(f"cat {src} >/dev/null", env.base)
    d = fresh(env, t)
    return timed("cat big.bin >/dev/null", d)


CREATE_2000 = "mkdir cd && for i in $(seq 1 2000); do : > cd/f$i; done"


def create_files(env, t, m):
    d = fresh(env, t)
    return timed(CREATE_2000, d)


def rm_new_files(env, t, m):
    """rm -rf of 2,000 empty files made in the upper a moment before."""
    d = fresh(env, t)
    sh(CREATE_2000, cwd=d)
    return timed("rm -rf cd", d)


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


def without_sync(fn):
    """The same workload with the copy-up's fsync off wherever there is one
    to turn off: kernel overlayfs `volatile`, layerfs `fsync=0`;
    fuse-overlayfs never syncs a copy-up. The like-for-like comparison
    with fuse-overlayfs."""
    def run(env, t, m):
        if t == "native":
            return None
        env.extra[t] = {"kernel": "volatile", "layerfs": "fsync=0"}.get(t, "")
        try:
            return fn(env, t, m)
        finally:
            env.extra[t] = ""
            env.umount(t)
            env.mount(t)
    return run


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
    ("first read big lower file (host-cached)", first_read_big),
    ("seq write new big file", seq_write),
    ("4k writes, 256 MiB, fsync", small_writes(4, 256, True)),
    ("1k writes, 64 MiB", small_writes(1, 64, False)),
    ("copy-up: append to 1000 files", copy_up_small),
    ("copy-up: open big file for write", in_fresh("python3 -c \"open('big.bin','r+b').close()\"", native=False)),
    ("copy-up: append, no fsync", without_sync(copy_up_small)),
    ("copy-up: open big, no fsync",
     without_sync(in_fresh("python3 -c \"open('big.bin','r+b').close()\"", native=False))),
    ("chown -R whole image", chown_all),
    ("chown -R, no fsync", without_sync(chown_all)),
    ("chown -R with metacopy=on", chown_all_metacopy),
    ("untar image", untar),
    ("create+delete 2000 files", create_delete),
    ("create 2000 files", create_files),
    ("rm -rf 2000 new files", rm_new_files),
    ("rm -rf lower tree", rm_lower_tree),
    ("mount + ls, 10 layers", mount_time(10)),
    ("mount + ls, 50 layers", mount_time(50)),
]


# Rows whose meaning needs what a user namespace does not give, with why.
ROOTLESS_SKIP = {
    "chown -R with metacopy=on": "userxattr mode has no metacopy: kernel overlayfs refuses "
                                 "metacopy=on with userxattr (EINVAL), layerfs follows its rules, "
                                 "fuse-overlayfs has none",
}


def mode_line(env, uid=None, subid=None):
    opts = env.layerfs_opts or ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if env.rootless:
        return (f"mode: rootless: uid {uid}, root in its own user namespace (ids 1-65535 mapped to "
                f"{subid}-{subid + 65534}), which also holds the mounts; open files {soft}, hard "
                f"limit {hard}; kernel overlayfs with "
                f"userxattr; fuse-overlayfs and layerfs mounted with mount(2) there; no FUSE "
                f"passthrough (it needs CAP_SYS_ADMIN in the initial namespace): layerfs serves "
                f"file data itself, "
                + ("without" if "writeback=0" in opts.replace(" ", "") else "with")
                + " the kernel's writeback cache"
                + (f"; layerfs -o {opts}" if opts else ""))
    passthrough = "passthrough=off" not in opts.replace(" ", "")
    return ("mode: root; layerfs "
            + ("with FUSE passthrough for upper files" if passthrough else "without FUSE passthrough")
            + (f"; layerfs -o {opts}" if opts else ""))


def run_benchmark(env, args, reps):
    """Mounts every target on the image under env.base and prints one line
    pair per workload, then the daemons' memory."""
    for t in TARGETS:
        env.mount(t)
    if env.layerfs_log and os.path.exists(env.layerfs_log):
        with open(env.layerfs_log) as log:
            said = log.read().strip()
        if said:
            print(f"layerfs at start-up (every mount): {said.splitlines()[0]}", flush=True)
    # The same tree on every target, or the rows compare different work.
    counts = {t: subprocess.run("find . | wc -l", shell=True, cwd=env.mnt[t], capture_output=True,
                                text=True).stdout.strip() for t in TARGETS[1:]}
    if len(set(counts.values())) != 1:
        print(f"WARNING: the targets show different trees (entries: {counts})", flush=True)
    env.tarball = os.path.join(env.base, "image.tar")
    sh(f"tar cf {env.tarball} -C {env.mnt['kernel']} usr")
    results = {}
    only = [o for o in args.only.split(",") if o]
    for name, fn in WORKLOADS:
        if only and not any(name.startswith(o) for o in only):
            continue
        if env.rootless and name in ROOTLESS_SKIP:
            print(f"{name:38} skipped: {ROOTLESS_SKIP[name]}", flush=True)
            continue
        results[name] = {t: [] for t in TARGETS}
        failed = {}
        for _ in range(reps):
            for t in TARGETS:
                if t in failed:
                    continue
                try:
                    v = fn(env, t, env.mnt[t])
                except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
                    # One target failing a workload is a result, not the
                    # end of the run: say so on the row, start that target
                    # afresh and go on.
                    failed[t] = str(e)
                    results[name][t] = []
                    if t != "native":
                        env.umount(t)
                        env.mount(t)
                    continue
                if v is not None:
                    results[name][t].append(v)
        report_line(name, results[name], failed)
    # Memory: walk everything, let the kernel forget, read the daemons.
    for t in ("fuse-overlayfs", "layerfs"):
        sh("find . > /dev/null", cwd=env.mnt[t])
    drop_caches("2")
    time.sleep(1)
    print(f"daemon RSS after a full walk and drop_caches: layerfs {daemon_rss_kib(env.mnt['layerfs'], 'layerfs') / 1024:.1f} MiB, "
          f"fuse-overlayfs {daemon_rss_kib(env.mnt['fuse-overlayfs'], 'fuse-overlayfs') / 1024:.1f} MiB")


def unmount_left(base):
    # Never delete through a mount that is still there.
    left = [l.split()[1] for l in open("/proc/self/mounts") if base in l.split()[1]]
    for m in left:
        subprocess.run(["umount", "-l", m])


# ---- rootless mode -----------------------------------------------------------
# The model is tests/rootless.rs: a user that exists only inside a private
# mount namespace (passwd, group, subuid and subgid bind-mounted over /etc,
# and a /dev/fuse it may open, since this host's is 0600), who then enters a
# user namespace of its own mapping it to root and its subordinate ids to
# 1-65535, as podman does. The worker runs there for the whole benchmark, so
# no timed command pays for entering a namespace.

SUBID_BASE = 400000
SUBID_COUNT = 65535
NOFILE_HARD = 524288


def free_id(start):
    """A uid (and gid of the same number) no account and no process uses."""
    used = set()
    for f in ("/etc/passwd", "/etc/group"):
        for line in open(f):
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isdigit():
                used.add(int(parts[2]))
    used.update(uid for _, uid in processes())
    return next(i for i in range(start, 60000) if i not in used)


def processes():
    """(pid, uid) of every process."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                yield int(pid), os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue


def kill_user(uid):
    """Kills the benchmark user's processes (layerfs and fuse-overlayfs
    daemons a failed worker left), which also ends its namespaces and so
    their mounts. The uid was free when the run began: they are all ours."""
    deadline = time.time() + 5
    while time.time() < deadline:
        pids = [pid for pid, u in processes() if u == uid]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


def rootless_main(args, scale, big_mib, reps):
    for tool in ("setpriv", "unshare", "newuidmap", "newgidmap", "fuse-overlayfs"):
        if not shutil.which(tool):
            sys.exit(f"--rootless needs {tool}")
    # base (root's): etc and dev for the namespace; base/img: the user's.
    base = tempfile.mkdtemp(prefix="layerfs-bench-rootless-", dir="/var/tmp")
    os.chmod(base, 0o755)
    img = os.path.join(base, "img")
    uid = free_id(2900)
    name = "lfsbench"
    try:
        print(f"building the image in {img} (scale {scale}, big file {big_mib} MiB)...", flush=True)
        os.makedirs(img)
        build_image(img, scale, big_mib, opaque_xattr="user.overlay.opaque")
        for n in (10, 50):
            many_layers(img, n)
        bindir = os.path.join(img, "bin")
        os.makedirs(bindir)
        shutil.copy(args.layerfs, os.path.join(bindir, "layerfs"))
        shutil.copy(os.path.abspath(__file__), os.path.join(bindir, "bench.py"))
        sh(f"chown -R {uid}:{uid} {img}")
        etc = os.path.join(base, "etc")
        os.makedirs(etc)
        os.makedirs(os.path.join(base, "dev"))
        with open(os.path.join(etc, "passwd"), "w") as f:
            f.write(open("/etc/passwd").read() + f"{name}:x:{uid}:{uid}::{img}:/bin/sh\n")
        with open(os.path.join(etc, "group"), "w") as f:
            f.write(open("/etc/group").read() + f"{name}:x:{uid}:\n")
        for f in ("subuid", "subgid"):
            with open(os.path.join(etc, f), "w") as fh:
                fh.write(f"{name}:{SUBID_BASE}:{SUBID_COUNT}\n")

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        worker = [
            "python3", os.path.join(bindir, "bench.py"), "--worker",
            "--base", img, "--layerfs", os.path.join(bindir, "layerfs"),
            "--ctl", f"{req_w},{rep_r}", "--uid", str(uid), "--reps", str(reps),
            "--only", args.only, "--layerfs-opts", args.layerfs_opts,
        ] + (["--quick"] if args.quick else [])
        script = (
            "set -e\n"
            f"for f in passwd group subuid subgid; do mount --bind {etc}/$f /etc/$f; done\n"
            f"mount -t tmpfs tmpfs {base}/dev && mknod -m 666 {base}/dev/fuse c 10 229\n"
            f"mount --bind {base}/dev/fuse /dev/fuse\n"
            # systemd's default for a login session (DefaultLimitNOFILE),
            # which a rootless podman user has, where root may raise the
            # hard limit (without CAP_SYS_RESOURCE, as in some containers,
            # the inherited one stays; the mode line shows which ran).
            # layerfs and fuse-overlayfs raise the soft limit to the hard.
            f"ulimit -H -n {NOFILE_HARD} 2>/dev/null || true\n"
            "ulimit -S -n 1024\n"
            f"exec setpriv --reuid={uid} --regid={uid} --clear-groups "
            f"unshare --user --mount --map-root-user "
            f"--map-users={SUBID_BASE},1,{SUBID_COUNT} --map-groups={SUBID_BASE},1,{SUBID_COUNT} "
            + " ".join(shlex.quote(a) for a in worker) + "\n"
        )
        user_env = {"HOME": img, "USER": name, "LOGNAME": name,
                    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                pass_fds=(req_w, rep_r), env=user_env, cwd=img)
        os.close(req_w)
        os.close(rep_r)
        # Serve drop_caches until the worker closes its end.
        with os.fdopen(req_r) as requests:
            for line in requests:
                what = line.split()
                if len(what) == 2 and what[0] == "drop" and what[1] in ("1", "2", "3"):
                    write_drop_caches(what[1])
                    os.write(rep_w, b"ok\n")
                else:
                    os.write(rep_w, b"no\n")
        os.close(rep_w)
        rc = proc.wait()
        if rc != 0:
            sys.exit(f"the rootless worker failed ({rc})")
    finally:
        kill_user(uid)
        unmount_left(base)
        sh(f"rm -rf {base}")


def worker_main(args, scale, big_mib, reps):
    req, rep = (int(x) for x in args.ctl.split(","))
    ROOT_PARENT[0] = (req, rep)
    env = Env(args.base, image_layers(args.base), args.layerfs)
    env.rootless = True
    env.layerfs_log = os.path.join(args.base, "layerfs.log")
    env.layerfs_opts = args.layerfs_opts
    env.big_mib = big_mib
    env.many = {n: many_layer_paths(args.base, n) for n in (10, 50)}
    print(mode_line(env, uid=args.uid, subid=SUBID_BASE), flush=True)
    try:
        run_benchmark(env, args, reps)
    finally:
        env.umount_all()
        unmount_left(args.base)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small image, about a minute")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--layerfs", required=True)
    ap.add_argument("--only", default="", help="comma-separated workload name prefixes")
    ap.add_argument("--layerfs-opts", default="", help="extra -o options for layerfs (experiments)")
    ap.add_argument("--rootless", action="store_true",
                    help="as an unprivileged user in a user namespace (still started as root)")
    # Internal: the rootless worker, started by rootless_main.
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--ctl", help=argparse.SUPPRESS)
    ap.add_argument("--uid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    scale, big_mib, reps = (0.15, 64, 5) if args.quick else (1.0, 512, 5)
    if args.reps:
        reps = args.reps
    if args.worker:
        return worker_main(args, scale, big_mib, reps)
    if os.geteuid() != 0:
        sys.exit("run as root (--rootless too: root makes the user and drops caches)")
    if args.rootless:
        return rootless_main(args, scale, big_mib, reps)
    base = tempfile.mkdtemp(prefix="layerfs-bench-", dir="/var/tmp")
    env = None
    try:
        print(f"building the image in {base} (scale {scale}, big file {big_mib} MiB)...", flush=True)
        layers = build_image(base, scale, big_mib)
        env = Env(base, layers, args.layerfs)
        env.layerfs_opts = args.layerfs_opts
        env.big_mib = big_mib
        env.many = {n: many_layers(base, n) for n in (10, 50)}
        print(mode_line(env), flush=True)
        run_benchmark(env, args, reps)
    finally:
        if env:
            env.umount_all()
        unmount_left(base)
        sh(f"rm -rf {base}")


HEADER_DONE = [False]


def report_line(name, res, failed=None):
    failed = failed or {}
    if not HEADER_DONE[0]:
        print(f"{'workload':38} " + " ".join(f"{t:>22}" for t in TARGETS))
        print(f"{'':38} " + " ".join(f"{'median s (x kernel)':>22}" for _ in TARGETS))
        HEADER_DONE[0] = True
    k = statistics.median(res["kernel"]) if res["kernel"] else None
    cells = []
    for t in TARGETS:
        v = res[t]
        if t in failed:
            cells.append(f"{'FAILED':>22}")
            continue
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
    for t, why in failed.items():
        print(f"  {t} failed: {why}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
