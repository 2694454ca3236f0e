//! Read-only mappings of an immutable file's range, so that a READ's reply
//! is written to /dev/fuse straight from the page cache: one copy of each
//! byte (into the FUSE request's pages) where `pread` into a buffer and
//! `writev` out of it make two.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A shared read-only mapping of `len` bytes of a file from `offset`,
/// unmapped when dropped.
pub struct FileRange {
    base: *mut libc::c_void,
    map_len: usize,
    skip: usize,
    len: usize,
}

impl FileRange {
    /// Maps `len` bytes from `offset` of `fd`. `len` must not reach past
    /// the end of the file, and the file must not shrink while mapped.
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<FileRange> {
        let page = page_size() as u64;
        let start = offset & !(page - 1);
        let skip = (offset - start) as usize;
        let map_len = skip + len;
        if len == 0 {
            return Ok(FileRange {
                base: std::ptr::null_mut(),
                map_len: 0,
                skip: 0,
                len: 0,
            });
        }
        // SAFETY: a new mapping at an address the kernel picks, of an fd
        // we borrow; nothing else refers to it until it is returned.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(FileRange {
            base,
            map_len,
            skip,
            len,
        })
    }

    /// The mapped bytes. Meant to be handed to the kernel (a `writev`):
    /// should the file shrink after all, the kernel's copy faults with
    /// EFAULT where a read of it here would raise SIGBUS.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `base + skip` starts `len` mapped, readable bytes that
        // stay mapped for as long as `self` (the borrow) lives; the file
        // is immutable (a lower layer's), so the bytes do not change.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.skip), self.len) }
    }
}

impl std::fmt::Debug for FileRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileRange({} bytes)", self.len)
    }
}

// SAFETY: the mapping is read-only and of an immutable file: any thread may
// read it, and it is unmapped only by the drop of its single owner.
unsafe impl Send for FileRange {}
// SAFETY: as for Send; `bytes` hands out shared borrows only.
unsafe impl Sync for FileRange {}

impl Drop for FileRange {
    fn drop(&mut self) {
        if self.map_len > 0 {
            // SAFETY: unmaps exactly the mapping made in `map`, which no
            // borrow outlives (`bytes` borrows `self`).
            unsafe { libc::munmap(self.base, self.map_len) };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn maps_a_range_at_any_offset() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        for (off, len) in [(0, 100), (4095, 3), (5000, 15000), (19999, 1), (7, 0)] {
            let r = FileRange::map(f.as_fd(), off as u64, len).unwrap();
            assert_eq!(r.bytes(), &data[off..off + len], "offset {off} len {len}");
        }
    }
}
