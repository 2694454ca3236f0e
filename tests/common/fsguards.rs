//! Scratch filesystems for a test's upper (a tmpfs to fill up, an ext
//! filesystem on a loop device to shut down or to reuse inode numbers),
//! unmounted when the guard drops.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// A filesystem mounted on a directory of the test's, unmounted on drop
/// (and its image file, if it has one, removed).
pub struct ScratchFs {
    dir: PathBuf,
    image: Option<PathBuf>,
}

impl ScratchFs {
    /// Runs `mount ARGS DIR` on `dir`, made if missing.
    pub fn mount(dir: &Path, args: &[&str]) -> ScratchFs {
        mkdir(dir);
        let out = Command::new("mount").args(args).arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            output_text(&out)
        );
        ScratchFs {
            dir: dir.to_path_buf(),
            image: None,
        }
    }

    /// A tmpfs on `dir`, of `size` (mount's `size=` syntax) if given.
    pub fn tmpfs(dir: &Path, size: Option<&str>) -> ScratchFs {
        match size {
            Some(s) => ScratchFs::mount(dir, &["-t", "tmpfs", "-o", &format!("size={s}"), "tmpfs"]),
            None => ScratchFs::mount(dir, &["-t", "tmpfs", "tmpfs"]),
        }
    }

    /// A fresh filesystem of `bytes` made by `mkfs` (the command and its
    /// options, the image path appended) in an image beside `dir`, mounted
    /// on `dir` through a loop device (which `mount -o loop` sets to
    /// detach itself at the unmount).
    pub fn on_loop(dir: &Path, mkfs: &[&str], bytes: u64) -> ScratchFs {
        let image = dir.with_extension("img");
        fs::File::create(&image).unwrap().set_len(bytes).unwrap();
        let out = Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&image)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", mkfs[0]));
        assert!(out.status.success(), "{mkfs:?}: {}", output_text(&out));
        let mut fs = ScratchFs::mount(dir, &["-o", "loop", image.to_str().unwrap()]);
        fs.image = Some(image);
        fs
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        // The union above is gone by now; its daemon may take a moment to
        // let go of the upper.
        let unmounted = (0..100).any(|_| {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(image) = &self.image {
            let _ = fs::remove_file(image);
        }
    }
}
