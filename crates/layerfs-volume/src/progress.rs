//! Progress of the long volume operations (export, import, backup,
//! restore) on the terminal: files, bytes, rate and time left. Nothing is
//! drawn when stderr is not a terminal, so scripts and logs see only the
//! command's own output.

use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::export::{Change, Kind, Sink};

/// One operation's progress bar. Bytes are those of the stream (the tar
/// written or read); files are counted as the entries pass.
pub struct Progress {
    bar: ProgressBar,
    files: AtomicU64,
}

impl Progress {
    /// A bar for `verb` ("export", "import data"), sized `total` bytes when
    /// known; hidden when stderr is not a terminal.
    pub fn new(verb: &str, total: Option<u64>) -> Progress {
        let template = if total.is_some() {
            "{prefix} {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} {wide_bar} {eta} left"
        } else {
            "{prefix} {msg} {bytes} {binary_bytes_per_sec} {spinner} {elapsed}"
        };
        let style =
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        // Styled before it is attached, so the first frame is whole.
        let bar = ProgressBar::hidden()
            .with_style(style)
            .with_prefix(verb.to_string())
            .with_message("0 files");
        if let Some(total) = total {
            bar.set_length(total);
        }
        if Progress::wanted() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            // Redrawn while a large file is read, not only between files.
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Progress {
            bar,
            files: AtomicU64::new(0),
        }
    }

    /// Whether a bar is drawn: callers skip the work of a total otherwise.
    pub fn wanted() -> bool {
        io::stderr().is_terminal()
    }

    pub fn add_bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn add_file(&self) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.bar.is_hidden() {
            self.bar.set_message(format!("{n} files"));
        }
    }

    /// `inner`, counting the files that pass through it.
    pub fn sink<'a>(&'a self, inner: &'a mut dyn Sink) -> Counted<'a> {
        Counted {
            inner,
            progress: self,
        }
    }

    /// `inner`, counting the bytes written through it.
    pub fn writer<W: Write>(&self, inner: W) -> Counting<'_, W> {
        Counting {
            inner,
            progress: self,
        }
    }

    /// `inner`, counting the bytes read through it.
    pub fn reader<R: Read>(&self, inner: R) -> Counting<'_, R> {
        Counting {
            inner,
            progress: self,
        }
    }
}

impl Drop for Progress {
    /// The bar goes away when the operation ends, however it ends: what
    /// follows on the terminal is the command's result or error.
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// A stream that counts its bytes into a [`Progress`].
pub struct Counting<'a, T> {
    inner: T,
    progress: &'a Progress,
}

impl<T: Write> Write for Counting<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Read for Counting<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }
}

/// A sink that counts the files passing into the one it wraps.
pub struct Counted<'a> {
    inner: &'a mut dyn Sink,
    progress: &'a Progress,
}

impl Sink for Counted<'_> {
    fn put(&mut self, change: &Change, data: Option<&mut dyn Read>) -> io::Result<()> {
        self.inner.put(change, data)?;
        if matches!(change, Change::Node(n) if n.kind == Kind::File) {
            self.progress.add_file();
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.inner.finish()
    }
}

/// About the size of a tar of the trees under `dirs`: each entry's header
/// and its data in whole blocks. Shadowed files count in full, so it is
/// an upper bound, good enough for a time left.
pub fn tar_size_of(dirs: &[&Path]) -> u64 {
    let mut total = 0;
    let mut stack: Vec<_> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            total += 512 + meta.len().div_ceil(512) * 512 * u64::from(meta.is_file());
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}
