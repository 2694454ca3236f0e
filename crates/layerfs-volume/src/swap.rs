//! Putting a merged layer in the place of the one it replaces, in one
//! step where the filesystem can (`RENAME_EXCHANGE`), else in three renames
//! through a `.swap-NAME` directory of the volume that `settle` puts right
//! after a crash (GlusterFS answers EINVAL to `RENAME_EXCHANGE`).

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::store::err;

const SWAP: &str = ".swap-";

/// Swaps directories `a` (the merged layer) and `b` (its place: `upper` or
/// `snapshots/ID` of the volume in `voldir`).
pub fn exchange(a: &Path, b: &Path, voldir: &Path) -> io::Result<()> {
    let parent = |p: &Path| -> io::Result<(std::os::fd::OwnedFd, std::ffi::OsString)> {
        let dir = p
            .parent()
            .ok_or_else(|| err(format!("{}: no parent", p.display())))?;
        let name = p
            .file_name()
            .ok_or_else(|| err(format!("{}: no name", p.display())))?;
        Ok((
            layerfs::sys::open_path(dir, libc::O_PATH | libc::O_DIRECTORY)?,
            name.to_os_string(),
        ))
    };
    let (da, na) = parent(a)?;
    let (db, nb) = parent(b)?;
    match layerfs::sys::renameat2(da.as_fd(), &na, db.as_fd(), &nb, libc::RENAME_EXCHANGE) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
            ) =>
        {
            log::debug!("no RENAME_EXCHANGE here ({e}): three renames");
            // The old layer steps aside under a name `settle` knows, the
            // merged one takes its place, and the old one goes where the
            // merged one was (for the caller to remove).
            let aside = voldir.join(format!("{SWAP}{}", nb.to_string_lossy()));
            fs::rename(b, &aside)?;
            fs::rename(a, b)?;
            fs::rename(&aside, a)
        }
        r => r,
    }
}

/// After a crash inside `exchange`'s three renames: an old layer set aside
/// whose place is empty goes back (the merge did not happen); one whose
/// place the merged layer took is removed (it shows nothing the merged
/// layer does not).
pub fn settle(voldir: &Path) -> io::Result<()> {
    for e in fs::read_dir(voldir)? {
        let e = e?;
        let n = e.file_name();
        let Some(what) = n.to_str().and_then(|n| n.strip_prefix(SWAP)) else {
            continue;
        };
        let place: PathBuf = if what == "upper" {
            voldir.join("upper")
        } else {
            voldir.join("snapshots").join(what)
        };
        if place.exists() {
            log::warn!(
                "{}: removing {}, swapped out by an interrupted merge",
                voldir.display(),
                n.to_string_lossy()
            );
            fs::remove_dir_all(e.path())?;
        } else {
            log::warn!(
                "{}: putting {} back, an interrupted merge's",
                voldir.display(),
                n.to_string_lossy()
            );
            fs::rename(e.path(), &place)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_swap_is_put_right() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path();
        fs::create_dir_all(v.join("snapshots/s1")).unwrap();
        fs::create_dir(v.join(".swap-s2")).unwrap();
        fs::write(v.join(".swap-s2/f"), b"old").unwrap();
        fs::create_dir(v.join(".swap-s1")).unwrap();
        settle(v).unwrap();
        // s2's place was empty: it goes back; s1's was taken: it goes.
        assert_eq!(fs::read(v.join("snapshots/s2/f")).unwrap(), b"old");
        assert!(!v.join(".swap-s1").exists());
        assert!(v.join("snapshots/s1").exists());
    }
}
