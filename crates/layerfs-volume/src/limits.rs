//! Volume size limits (`-o size=`, `resize`). The layerfs daemon of each
//! mount enforces the limit (layerfs' `capacity`: `capacity=BYTES`); this
//! module gives it the limit and what the volume's own snapshots already
//! hold, and changes the limit later, on a mounted volume through the
//! daemon's control socket (`limit BYTES`).
//!
//! What counts is the volume's own data: its upper and its snapshots, not
//! its seeds nor the base a clone shares. Each is measured by the daemon's
//! own rule (`layerfs::capacity::usage_of`), so a count made here and one
//! made by a mount agree.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use layerfs::capacity::usage_of;

use crate::store::{err, Meta};
use crate::volumes::Volumes;

/// A size for people: bytes, and the largest binary unit under it.
pub fn human(bytes: u64) -> String {
    let units = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    match units.iter().find(|(shift, _)| bytes >= 1 << shift) {
        Some((shift, u)) => format!(
            "{bytes} bytes ({:.1}{u})",
            bytes as f64 / (1u64 << shift) as f64
        ),
        None => format!("{bytes} bytes"),
    }
}

impl Volumes {
    /// What the volume's own snapshots hold.
    fn snapshots_usage(&self, meta: &Meta) -> io::Result<u64> {
        let mut total = 0u64;
        for s in &meta.snapshots {
            let dir = self.store.snapshot_dir(&meta.name, &s.id);
            total = total.saturating_add(
                usage_of(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?,
            );
        }
        Ok(total)
    }

    /// The mount options of a volume's limit (`,capacity=N,capacity_used=M`),
    /// or nothing for a volume without one.
    pub(crate) fn capacity_options(&self, meta: &Meta) -> io::Result<String> {
        let Some(size) = meta.size else {
            return Ok(String::new());
        };
        let below = self.snapshots_usage(meta)?;
        Ok(format!(",capacity={size},capacity_used={below}"))
    }

    /// Sets volume `name`'s limit to `size` bytes; refused below what the
    /// volume uses. A mounted volume's daemon takes the new limit at once
    /// (and is the one that knows the use, to the last write).
    pub fn resize(&self, name: &str, size: u64) -> io::Result<()> {
        let _lock = self.store.lock()?;
        let mut meta = self.store.load(name)?;
        let refused = |used: u64| {
            err(format!(
                "cannot resize volume {name} to {}: it uses {} (free space first, or give a \
                 size at least that)",
                human(size),
                human(used)
            ))
        };
        if self.is_mounted(name) {
            if meta.size.is_none() {
                return Err(err(format!(
                    "volume {name} is mounted without a size limit, so its use is not \
                     counted: unmount it, resize it, and mount it again"
                )));
            }
            let socket = crate::live::control_socket(&self.store.dir(name));
            let answer = ask_daemon(&socket, &format!("limit {size}"))?;
            if let Some(used) = answer
                .strip_prefix("err usage limit ")
                .and_then(|a| a.split(' ').nth(4))
                .and_then(|u| u.parse().ok())
            {
                return Err(refused(used));
            }
            if !answer.starts_with("ok ") {
                return Err(err(format!("volume {name}: the daemon refused: {answer}")));
            }
        } else {
            let upper = self.store.dir(name).join("upper");
            let used = usage_of(&upper)
                .map_err(|e| err(format!("{}: {e}", upper.display())))?
                .saturating_add(self.snapshots_usage(&meta)?);
            if size < used {
                return Err(refused(used));
            }
        }
        meta.size = Some(size);
        self.store.save(&meta)
    }
}

/// One request line to a mounted volume's daemon, and its answer line.
fn ask_daemon(socket: &Path, line: &str) -> io::Result<String> {
    let reach = |e: io::Error| {
        err(format!(
            "cannot reach the daemon of the mounted volume at {}: {e}",
            socket.display()
        ))
    };
    let mut conn = UnixStream::connect(socket).map_err(reach)?;
    writeln!(conn, "{line}").map_err(reach)?;
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer)?;
    Ok(answer.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(64 << 20), "67108864 bytes (64.0M)");
        assert_eq!(human(3 << 29), "1610612736 bytes (1.5G)");
    }
}
