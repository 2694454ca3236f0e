//! What the FUSE glue (`fs`) answers with: errnos (with the cause of an
//! EIO logged), times as the syscalls take them, the negative entry.

use std::io;
use std::time::UNIX_EPOCH;

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

use crate::sys::TimeSpec;

pub(crate) fn time_spec(t: TimeOrNow) -> TimeSpec {
    match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSpec::Set(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos() as i64;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                TimeSpec::Set(sec, nsec)
            }
        },
    }
}

/// The errno answered for an operation's error. An EIO says nothing of
/// its cause to the caller: the cause is logged here, where it is known.
pub(crate) fn answer(op: &str, e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::EIO) => {
            log::warn!("{op}: answering EIO: {e}");
            Errno::from_i32(libc::EIO)
        }
        Some(n) => Errno::from_i32(n),
        None => {
            log::error!("{op}: answering EIO for an error with no errno: {e}");
            Errno::from_i32(libc::EIO)
        }
    }
}

/// A cached "no such entry": node id 0 with the entry timeout.
pub(crate) fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}
