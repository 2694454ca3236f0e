//! Mounting layer stacks with the `layerfs` binary: the options it is
//! given, the read-only views the volume operations read through, and
//! finding what is mounted in /proc/self/mounts. Nothing here links to the
//! FUSE code.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::store::err;

/// The layerfs binary: `$LAYERFS_BIN`, else the `layerfs` beside this
/// executable, else `layerfs` on PATH.
pub fn layerfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LAYERFS_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        let beside = exe.with_file_name("layerfs");
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("layerfs")
}

/// Decodes the octal escapes of a /proc/mounts field.
fn unescape_mount_field(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Whether `dir` is a mountpoint in this mount namespace.
pub fn in_proc_mounts(dir: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = dir.as_os_str().as_encoded_bytes();
    text.lines()
        .filter_map(|l| l.split(' ').nth(1))
        .any(|m| unescape_mount_field(m) == want)
}

/// Whether the mount holding `dir` propagates mounts made under it to its
/// peers and slaves (`shared:N` in /proc/self/mountinfo). A rootless
/// engine runs its containers in a mount namespace of its own, made before
/// the plugin mounts a volume: only a shared mount carries the volume's
/// mount there.
pub fn propagates(dir: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut holder: Option<(usize, bool)> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        let mp = PathBuf::from(std::ffi::OsString::from_vec(unescape_mount_field(mp)));
        if !dir.starts_with(&mp) {
            continue;
        }
        let shared = fields[6..]
            .iter()
            .take_while(|f| **f != "-")
            .any(|f| f.starts_with("shared:"));
        // The deepest mountpoint holds it; of two at one place, the later
        // one (mounted over the other).
        let depth = mp.components().count();
        if holder.is_none_or(|(d, _)| depth >= d) {
            holder = Some((depth, shared));
        }
    }
    holder.is_some_and(|(_, shared)| shared)
}

/// The mount options for a layer stack, escaped by the one rule the
/// parser reads (`layerfs::options`).
pub fn stack_options(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> io::Result<String> {
    layerfs::options::encode_stack(lowers, upper).map_err(|e| err(e.0))
}

pub fn run_layerfs(opts: &str, mountpoint: &Path) -> io::Result<()> {
    let bin = layerfs_bin();
    let out = Command::new(&bin)
        .arg("-o")
        .arg(opts)
        .arg(mountpoint)
        .output()
        .map_err(|e| err(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "mount of {} failed: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Unmounts `dir`; `flags` as umount2(2). An unprivileged process (a
/// rootless plugin) may not call umount2 and has fusermount3 do it: the
/// mount is its own, made through fusermount3.
fn umount(dir: &Path, flags: i32) -> io::Result<()> {
    match layerfs::sys::umount(dir, flags) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount_unmount(dir, flags),
        done => done,
    }
}

/// `fusermount3 -u`, its failure carried back as umount2's errno would be.
fn fusermount_unmount(dir: &Path, flags: i32) -> io::Result<()> {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if flags & libc::MNT_DETACH != 0 {
        cmd.arg("-z");
    }
    let out = cmd
        .arg(dir)
        .output()
        .map_err(|e| err(format!("cannot run fusermount3: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    // fusermount3 says what umount2 said, in words.
    let errno = if why.contains("busy") {
        libc::EBUSY
    } else if why.contains("not found in /etc/mtab") || why.contains("Invalid argument") {
        libc::EINVAL
    } else {
        return Err(err(format!("fusermount3 -u: {}", why.trim())));
    };
    Err(io::Error::from_raw_os_error(errno))
}

pub fn unmount_dir(dir: &Path) -> io::Result<()> {
    // A file just closed may hold the mount a moment longer (a forked
    // child's copy of the fd until its exec): busy is asked again a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut result = umount(dir, 0);
    while matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EBUSY))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        result = umount(dir, 0);
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(err(format!(
            "cannot unmount {}: busy (a process still uses it)",
            dir.display()
        ))),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(err(format!("cannot unmount {}: {e}", dir.display()))),
    }
}

/// Detaches `dir` (MNT_DETACH): its daemon may be busy.
pub fn detach(dir: &Path) -> io::Result<()> {
    umount(dir, libc::MNT_DETACH)
}

/// A read-only layerfs mount of some layers, unmounted and removed on drop.
pub struct View {
    pub dir: PathBuf,
}

impl View {
    pub fn mount(at: PathBuf, layers: &[PathBuf]) -> io::Result<View> {
        fs::create_dir_all(&at)?;
        let view = View { dir: at };
        run_layerfs(&stack_options(layers, None)?, &view.dir)?;
        Ok(view)
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if in_proc_mounts(&self.dir) {
            if let Err(e) = unmount_dir(&self.dir) {
                log::warn!("{e}; detaching it");
                let _ = detach(&self.dir);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The read-only views (`.view-PID`, `.settle-PID`) that killed commands
/// left in the volume directory `dir`: unmounted (lazily: their daemon may
/// be busy) and removed. A view mounted in another namespace stays.
pub fn remove_stale_views(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        let Some(pid) = n
            .strip_prefix(".view-")
            .or_else(|| n.strip_prefix(".settle-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        if in_proc_mounts(&path) {
            let _ = detach(&path);
        }
        match fs::remove_dir(&path) {
            Ok(()) => log::info!("{}: removed {n}, left by a killed command", dir.display()),
            Err(e) => log::debug!("{}: {n} stays: {e}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields() {
        assert_eq!(unescape_mount_field("/a\\040b"), b"/a b".to_vec());
        assert_eq!(unescape_mount_field("/a\\\\"), b"/a\\\\".to_vec());
    }
}
