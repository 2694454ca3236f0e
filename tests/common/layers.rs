//! Building layers: files, whiteouts, opaque dirs and xattrs in the kernel's
//! format, random stacks, and their OCI twins.
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn write(p: &Path, content: &[u8]) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, content).unwrap();
}

pub fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap();
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

pub fn link_sym(target: &str, p: &Path) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    symlink(target, p).unwrap();
}

pub fn mknod_whiteout(p: &Path) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let st = Command::new("mknod")
        .arg(p)
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod {p:?}");
}

pub fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success(), "mkfifo {p:?}");
}

pub fn setxattr(p: &Path, name: &str, value: &[u8]) {
    lsetxattr(p, name, value).unwrap_or_else(|e| panic!("setxattr {name} on {p:?}: {e}"));
}

/// lsetxattr(2): sets xattr `name` of `p` itself, not of a symlink's
/// target (through an O_PATH fd, which names the symlink).
pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let fd = layerfs::sys::open_path(p, libc::O_PATH | libc::O_NOFOLLOW)?;
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    layerfs::sys::setxattr_fd(std::os::fd::AsFd::as_fd(&fd), &c, value, 0)
}

/// The value of xattr `name` of `p` (not following a symlink).
pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let fd = layerfs::sys::open_path(p, libc::O_PATH | libc::O_NOFOLLOW)?;
    let c = std::ffi::CString::new(name).unwrap();
    layerfs::sys::getxattr_fd(std::os::fd::AsFd::as_fd(&fd), &c)
}

pub fn set_opaque(p: &Path) {
    setxattr(p, "trusted.overlay.opaque", b"y");
}

/// The OCI twins of `layers`, made under `base` as oci0, oci1, ...
pub fn oci_twins(layers: &[PathBuf], base: &Path) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let dst = base.join(format!("oci{i}"));
            to_oci(l, &dst);
            dst
        })
        .collect()
}

/// Converts a kernel-format layer tree into its OCI twin: char 0/0
/// whiteouts become `.wh.NAME` files and opaque dirs get `.wh..wh..opq`.
pub fn to_oci(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
    convert_dir(dst);
}

fn convert_dir(dir: &Path) {
    let opaque = {
        let fd = layerfs::sys::open_path(dir, libc::O_PATH).unwrap();
        layerfs::sys::getxattr_fd(std::os::fd::AsFd::as_fd(&fd), c"trusted.overlay.opaque")
            .map(|v| v == b"y")
            .unwrap_or(false)
    };
    if opaque {
        remove_opaque_xattr(dir);
        fs::write(dir.join(".wh..wh..opq"), b"").unwrap();
    }
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let md = e.metadata().unwrap();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_char_device() && md.rdev() == 0 {
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(e.file_name().as_bytes());
            fs::remove_file(e.path()).unwrap();
            fs::write(dir.join(OsStr::from_bytes(&wh)), b"").unwrap();
        } else if ft.is_dir() {
            convert_dir(&e.path());
        }
    }
}

/// A small deterministic PRNG (xorshift64*), so random stacks are
/// reproducible from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Fills `dir` (one layer) with a random tree over a small pool of names,
/// so that layers collide: files, dirs (some opaque), symlinks, fifos,
/// whiteouts, user xattrs, odd modes and owners.
pub fn random_layer(rng: &mut Rng, dir: &Path, depth: u32, is_bottom: bool) {
    const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
    mkdir(dir);
    for name in NAMES {
        if !rng.chance(45) {
            continue;
        }
        let p = dir.join(name);
        let roll = rng.below(100);
        if roll < 35 {
            let len = rng.below(3000) as usize;
            let content: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            write(&p, &content);
            chmod(&p, *rng.pick(&[0o644, 0o600, 0o755, 0o4755, 0o640]));
            if rng.chance(20) {
                chown(&p, 1000, 1000);
            }
            if rng.chance(20) {
                setxattr(&p, "user.test", format!("v{}", rng.below(9)).as_bytes());
            }
        } else if roll < 65 && depth > 0 {
            random_layer(rng, &p, depth - 1, is_bottom);
            chmod(&p, *rng.pick(&[0o755, 0o700, 0o1777, 0o750]));
            if rng.chance(15) {
                set_opaque(&p);
            }
            if rng.chance(15) {
                setxattr(&p, "user.dir", b"yes");
            }
        } else if roll < 75 {
            let target = rng.pick(&["a", "../b", "/nonexistent/target", "d/e"]);
            link_sym(target, &p);
        } else if roll < 80 {
            mkfifo(&p);
        } else if !is_bottom {
            mknod_whiteout(&p);
        }
    }
}

/// Builds a random stack of `n` layers under `base` (l0 is the top).
pub fn random_stack(seed: u64, n: usize, base: &Path) -> Vec<PathBuf> {
    let mut rng = Rng::new(seed);
    let mut layers = Vec::new();
    for i in 0..n {
        let dir = base.join(format!("l{i}"));
        random_layer(&mut rng, &dir, 3, i == n - 1);
        layers.push(dir);
    }
    layers
}

/// Rewrites a layer's `trusted.overlay.opaque` marks as
/// `user.overlay.opaque`, the form a rootless (`userxattr`) stack has.
pub fn to_user_xattrs(dir: &Path) {
    if let Ok(v) = getxattr(dir, "trusted.overlay.opaque") {
        remove_opaque_xattr(dir);
        setxattr(dir, "user.overlay.opaque", &v);
    }
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            to_user_xattrs(&e.path());
        }
    }
}

fn remove_opaque_xattr(dir: &Path) {
    let st = Command::new("setfattr")
        .args(["-x", "trusted.overlay.opaque"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
}
