//! Turning a real file's `struct stat` into the attributes shown at the
//! mountpoint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

use crate::ids::InodeNo;
use crate::sys::Stat;

/// The FUSE file type of a `st_mode`.
pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The FUSE file type of a getdents `d_type`.
pub fn file_type_of_dtype(d_type: u8) -> FileType {
    match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The getdents `d_type` of a `st_mode`.
pub fn dtype_of_mode(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFSOCK => libc::DT_SOCK,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        _ => libc::DT_REG,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

/// The 32-bit device number encoding the FUSE protocol carries
/// (the kernel's `new_encode_dev`).
pub fn encode_rdev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Attributes of the real file `st`, shown under inode number `ino`.
/// `merged_dir` follows kernel overlayfs: a directory merged from several
/// layers reports nlink 1, which `find` and friends accept.
pub fn from_stat(st: &Stat, ino: InodeNo, merged_dir: bool) -> FileAttr {
    let kind = file_type(st.st_mode);
    let nlink = if merged_dir && kind == FileType::Directory {
        1
    } else {
        st.st_nlink as u32
    };
    FileAttr {
        ino: ino.into(),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_rdev(st.st_rdev),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Attributes of a merged object from its top real file: `merged_dir`
/// gives a merged directory nlink 1 (kernel overlayfs), `delta` corrects a
/// copied-up hardlink's count, and a metacopy file reports the blocks of
/// the lower file holding its data.
pub(crate) fn compose(
    st: &Stat,
    number: InodeNo,
    merged_dir: bool,
    delta: Option<i64>,
    data: Option<&Stat>,
) -> FileAttr {
    let mut a = from_stat(st, number, merged_dir);
    if let Some(d) = delta {
        a.nlink = (a.nlink as i64 + d).clamp(1, u32::MAX as i64) as u32;
    }
    if let Some(data) = data {
        a.blocks = data.st_blocks as u64;
    }
    a
}

/// Parses kernel overlayfs' `overlay.nlink` ("U+N" / "L-N"): the overlay
/// link count relative to the upper (U) or lower (L) inode's. Returned as a
/// delta to the upper count; an "L" value, written by kernel overlayfs with
/// the lower count as base, cannot be turned into one here and is ignored.
pub(crate) fn parse_nlink(v: &[u8], upper_nlink: i64) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let rest = s.strip_prefix('U')?;
    // The kernel reads the delta as an int (kstrtoint) and ignores a value
    // out of range or one giving a count below 1.
    let delta = rest.trim_end_matches('\n').parse::<i32>().ok()? as i64;
    (upper_nlink + delta > 0 && upper_nlink + delta <= u32::MAX as i64).then_some(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_kernel() {
        assert_eq!(encode_rdev(libc::makedev(1, 3)), (1 << 8) | 3);
        assert_eq!(
            encode_rdev(libc::makedev(259, 0x1234)),
            (0x34) | (259 << 8) | (0x1200 << 12)
        );
    }

    #[test]
    fn negative_times() {
        assert_eq!(time(-1, 0), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(time(1, 5), UNIX_EPOCH + Duration::new(1, 5));
    }
}
