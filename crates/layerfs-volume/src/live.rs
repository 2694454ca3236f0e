//! Snapshots of a mounted volume, taken by its running layerfs daemon
//! through the daemon's control socket (layerfs' `control` module): the
//! daemon holds mutating requests for a bounded time, turns its upper into
//! a read-only layer and goes on in a new upper; this side then puts the
//! directories where the store layout wants them and records the
//! snapshot.
//!
//! On disk, a live snapshot is (each step a crash may cut):
//! 1. `meta.json` gets `pending_snapshot` with `pending_live`;
//! 2. an empty `upper.next/` is made beside `upper/`;
//! 3. the daemon rotates into `upper.next` (its answer says it happened);
//! 4. `upper/` is renamed to `snapshots/ID/`, `upper.next/` to `upper/`
//!    (the daemon holds fds, not paths: renames do not disturb it);
//! 5. `meta.json` records the snapshot.
//!
//! `Volumes::repair` finishes or forgets a cut one (see `repair_live`).

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::{err, now, Meta, PendingMerge, Snapshot};
use crate::volumes::Volumes;

/// How long a restack may hold the containers' requests.
const RESTACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the new upper is made, beside `upper/`.
pub const NEXT_UPPER: &str = "upper.next";

/// The longest path a unix socket address holds (sun_path, with its NUL).
const SUN_PATH_MAX: usize = 107;

/// The control socket of the daemon serving the volume in `dir`: in the
/// volume's directory where the path fits a socket address and the store
/// is local; else in the runtime directory (`$LAYERFS_RUN_DIR`, else
/// `/run/layerfs` as root, else `$XDG_RUNTIME_DIR/layerfs`), named by a
/// hash of the volume's directory.
pub fn control_socket(dir: &Path) -> PathBuf {
    let local = dir.join("control.sock");
    // A socket file on a network store (GlusterFS through FUSE) is not the
    // place for a host-local daemon's socket.
    let on_fuse = fs::File::open(dir).is_ok_and(|f| {
        layerfs::sys::fstatfs_type(std::os::fd::AsFd::as_fd(&f))
            .is_ok_and(|t| t == layerfs::features::FUSE_SUPER_MAGIC)
    });
    if local.as_os_str().len() <= SUN_PATH_MAX && !on_fuse {
        return local;
    }
    let run = std::env::var_os("LAYERFS_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if layerfs::sys::geteuid() == 0 {
                PathBuf::from("/run/layerfs")
            } else {
                std::env::var_os("XDG_RUNTIME_DIR")
                    .map(|d| PathBuf::from(d).join("layerfs"))
                    .unwrap_or_else(|| {
                        PathBuf::from(format!("/tmp/layerfs-{}", layerfs::sys::geteuid()))
                    })
            }
        });
    let _ = fs::create_dir_all(&run);
    run.join(format!(
        "{:016x}.sock",
        fnv1a(dir.as_os_str().as_encoded_bytes())
    ))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How a request to the daemon ended.
enum Asked {
    /// Its answer line.
    Answer(String),
    /// The daemon could not be reached: the request was never made.
    Unreachable(io::Error),
    /// The request was sent and no answer came: it may have been done.
    NoAnswer(io::Error),
}

/// One request to a daemon's control socket.
fn ask(socket: &Path, line: &str) -> Asked {
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            return Asked::Unreachable(err(format!(
                "cannot reach the daemon of the mounted volume at {}: {e}",
                socket.display()
            )))
        }
    };
    if let Err(e) = writeln!(s, "{line}") {
        return Asked::Unreachable(e);
    }
    let mut answer = String::new();
    match BufReader::new(s).read_line(&mut answer) {
        Ok(n) if n > 0 => Asked::Answer(answer.trim_end().to_string()),
        Ok(_) => Asked::NoAnswer(err("the volume's daemon ended without answering")),
        Err(e) => Asked::NoAnswer(e),
    }
}

/// Whether a daemon serves the volume in `dir` (in whichever mount
/// namespace): its control socket answers, and its mount is not on its
/// way out (a daemon answers for a moment after its unmount).
pub fn daemon_answers(dir: &Path) -> bool {
    let socket = control_socket(dir);
    let answers = socket.exists()
        && matches!(ask(&socket, "status"), Asked::Answer(a) if a.starts_with("ok"));
    answers
        && !layerfs::workdir::current_holder(&dir.join("work"))
            .is_ok_and(|h| h.is_some_and(|h| h.going_away))
}

/// Who holds the volume in `dir` mounted on another host sharing the
/// store (GlusterFS): the holder note of its work dir's lock, when the
/// lock is held from another host.
pub fn held_elsewhere(dir: &Path) -> Option<String> {
    match layerfs::workdir::current_holder(&dir.join("work")) {
        Ok(Some(h)) if h.host != layerfs::sys::hostname() => {
            Some(format!("layerfs pid {} on host {}", h.pid, h.host))
        }
        _ => None,
    }
}

/// The refusal of a change only the host that has the volume mounted can
/// make.
pub(crate) fn refuse_elsewhere(name: &str, dir: &Path) -> io::Result<()> {
    match held_elsewhere(dir) {
        Some(h) => Err(err(format!(
            "volume {name} is mounted on another host ({h}): run this there"
        ))),
        None => Ok(()),
    }
}

/// A request whose answer is needed.
fn request(socket: &Path, line: &str) -> io::Result<String> {
    match ask(socket, line) {
        Asked::Answer(a) => Ok(a),
        Asked::Unreachable(e) | Asked::NoAnswer(e) => Err(e),
    }
}

impl Volumes {
    /// Takes snapshot `id` of the mounted volume `meta` (store lock held).
    /// Mutating requests wait at most `timeout`; if the daemon cannot pause
    /// them in time, nothing changes and the error says so. `Ok(false)`:
    /// nothing was taken because the volume is no longer mounted (its
    /// daemon, met on its way out of an unmount, was gone before the
    /// request), so the caller takes the snapshot offline.
    pub(crate) fn snapshot_live(
        &self,
        meta: &mut Meta,
        id: &str,
        timeout: Duration,
    ) -> io::Result<bool> {
        let name = meta.name.clone();
        let dir = self.store.dir(&name);
        refuse_elsewhere(&name, &dir)?;
        let next = dir.join(NEXT_UPPER);
        meta.pending_snapshot = Some(id.to_string());
        meta.pending_live = true;
        meta.next_snapshot = meta.next_snapshot.max(1) + 1;
        self.store.save(meta)?;
        if next.exists() {
            fs::remove_dir(&next)?;
        }
        fs::create_dir(&next)?;
        // Its root becomes the volume's root the containers see.
        crate::options::Ownership::of(&dir.join("upper"))?.apply(&next)?;
        let socket = control_socket(&dir);
        let line = format!("rotate {NEXT_UPPER} {}", timeout.as_millis().max(1));
        let mut asked = ask(&socket, &line);
        if matches!(&asked, Asked::Answer(a) if a.starts_with("err links ")) {
            // Hardlink sets copied up by one name, whose other names the
            // daemon has not met: a walk of the mount shows it them, and
            // it links them up when asked again.
            let n = look_up_linked_names(&self.mountpoint(&name))?;
            log::info!("volume {name}: looked up {n} hardlink name(s) before the snapshot");
            asked = ask(&socket, &line);
        }
        let refused = match asked {
            Asked::Answer(a) => match a.strip_prefix("ok") {
                Some(stats) => {
                    log::info!("volume {name}: live snapshot {id}:{stats}");
                    None
                }
                None => Some((
                    err(format!(
                        "cannot snapshot mounted volume {name}: {}",
                        a.strip_prefix("err ")
                            .and_then(|a| a.split_once(' '))
                            .map_or(a.as_str(), |(_, m)| m)
                    )),
                    true,
                )),
            },
            Asked::Unreachable(e) => Some((e, false)),
            // Whether the daemon rotated is not known: the pending
            // snapshot stays for `repair` to settle, by what is on disk.
            Asked::NoAnswer(e) => {
                return Err(err(format!(
                    "snapshot {id} of volume {name}: {e}; the next change or mount of the volume finishes or forgets it"
                )))
            }
        };
        if let Some((e, sent)) = refused {
            let _ = fs::remove_dir(&next);
            meta.pending_snapshot = None;
            meta.pending_live = false;
            let offline = !sent && !self.is_mounted(&name);
            if offline {
                // The offline snapshot numbers it again.
                meta.next_snapshot -= 1;
            }
            self.store.save(meta)?;
            if offline {
                log::info!(
                    "volume {name}: unmounted before its live snapshot ({e}): taken offline"
                );
                return Ok(false);
            }
            return Err(e);
        }
        fs::rename(dir.join("upper"), self.store.snapshot_dir(&name, id))?;
        fs::rename(&next, dir.join("upper"))?;
        meta.snapshots.push(Snapshot {
            id: id.to_string(),
            created: now(),
        });
        meta.pending_snapshot = None;
        meta.pending_live = false;
        self.store.save(meta)?;
        Ok(true)
    }

    /// Has the mounted volume's daemon put `merged` (a directory in the
    /// volume's directory, holding what `layers` show together) in place
    /// of `layers`, so that they can be removed. On failure the merged
    /// layer is removed and nothing changed.
    pub(crate) fn restack_live(
        &self,
        name: &str,
        layers: &[PathBuf],
        merged: &Path,
    ) -> io::Result<()> {
        let dir = self.store.dir(name);
        let done = (|| {
            refuse_elsewhere(name, &dir)?;
            let rel = merged
                .strip_prefix(&dir)
                .map_err(|_| err(format!("{} is not in volume {name}", merged.display())))?;
            let ids: Vec<String> = layers
                .iter()
                .map(|l| fs::metadata(l).map(|m| format!("{}:{}", m.dev(), m.ino())))
                .collect::<io::Result<_>>()?;
            let line = format!(
                "restack {} {} {}",
                rel.display(),
                ids.join(","),
                RESTACK_TIMEOUT.as_millis()
            );
            let answer = match ask(&control_socket(&dir), &line) {
                Asked::Answer(a) => a,
                Asked::Unreachable(e) => return Err(e),
                // The daemon may use it: it stays until the volume is
                // next mounted (`repair` removes `.merge-*` then).
                Asked::NoAnswer(e) => {
                    return Ok(Err(err(format!(
                    "the mounted volume {name} did not answer while taking the merged layer: {e}"
                ))))
                }
            };
            match answer.strip_prefix("ok") {
                Some(stats) => {
                    log::info!("volume {name}: the mount took the merged layer:{stats}");
                    Ok(Ok(()))
                }
                None => Err(err(format!(
                    "the mounted volume {name} cannot take the merged layer: {}",
                    answer
                        .strip_prefix("err ")
                        .and_then(|a| a.split_once(' '))
                        .map_or(answer.as_str(), |(_, m)| m)
                ))),
            }
        })();
        match done {
            Ok(kept) => kept,
            Err(e) => {
                let _ = fs::remove_dir_all(merged);
                Err(e)
            }
        }
    }

    /// Has the mounted volume's daemon take `merged` in place of `range`
    /// (`restack_live`), the intent written first (`Meta::pending_merge`):
    /// `merged` is to take the place of `above`, and the snapshots
    /// `dropped` to leave the metadata. The caller puts it in place and
    /// clears the intent with its last write of the metadata.
    pub(crate) fn merge_live(
        &self,
        meta: &mut Meta,
        range: &[PathBuf],
        merged: &Path,
        above: &Path,
        dropped: Vec<String>,
    ) -> io::Result<()> {
        let name = meta.name.clone();
        let dir = self.store.dir(&name);
        let rel = |p: &Path| {
            p.strip_prefix(&dir)
                .map(|r| r.to_string_lossy().into_owned())
                .map_err(|_| err(format!("{} is not in volume {name}", p.display())))
        };
        let md = fs::metadata(merged)?;
        meta.pending_merge = Some(PendingMerge {
            merged: rel(merged)?,
            id: format!("{}:{}", md.dev(), md.ino()),
            above: rel(above)?,
            dropped,
        });
        self.store.save(meta)?;
        let taken = self.restack_live(&name, range, merged);
        if taken.is_err() && !merged.exists() {
            // Refused, and its merged layer removed: nothing to settle.
            meta.pending_merge = None;
            self.store.save(meta)?;
        }
        taken
    }

    /// Finishes or forgets a merge a crash cut (`Meta::pending_merge`).
    /// Finished where the merged layer is in use: by the mounted volume's
    /// daemon (`mounted`: its `status` lists it among its lower layers; a
    /// request still running for the killed command is answered first, as
    /// the daemon serves one at a time), or, not mounted, already in its
    /// place. Else forgotten: its directory goes.
    pub(crate) fn settle_merge(&self, meta: &mut Meta, mounted: bool) -> io::Result<()> {
        let Some(p) = meta.pending_merge.clone() else {
            return Ok(());
        };
        let name = meta.name.clone();
        let dir = self.store.dir(&name);
        // An exchange cut half-way (three renames, see `swap`) first.
        crate::swap::settle(&dir)?;
        let (merged, above) = (dir.join(&p.merged), dir.join(&p.above));
        let in_place =
            fs::metadata(&above).is_ok_and(|m| format!("{}:{}", m.dev(), m.ino()) == p.id);
        let taken = if mounted {
            refuse_elsewhere(&name, &dir)?;
            let status = request(&control_socket(&dir), "status")?;
            status
                .split(' ')
                .find_map(|w| w.strip_prefix("lowers="))
                .is_some_and(|l| l.split(',').any(|id| id == p.id))
        } else {
            in_place
        };
        if taken {
            log::warn!("volume {name}: finishing a merge cut by a crash");
            if !in_place {
                crate::swap::exchange(&merged, &above, &dir)?;
            }
            meta.snapshots.retain(|s| !p.dropped.contains(&s.id));
        } else {
            log::warn!("volume {name}: forgetting a merge cut by a crash");
        }
        meta.pending_merge = None;
        self.store.save(meta)?;
        // What the merged layer replaced (after the exchange, at its old
        // name), or the merged layer itself, forgotten.
        if merged.exists() {
            fs::remove_dir_all(&merged)?;
        }
        if taken {
            for id in &p.dropped {
                match fs::remove_dir_all(self.store.snapshot_dir(&name, id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Finishes a live snapshot a crash cut, the volume not mounted: a
    /// rotation that happened (the new upper has content, or the old one
    /// was already renamed) is completed; one that did not (an empty new
    /// upper: the view is the same either way) is forgotten. The work dir
    /// is kept: its index belongs to whichever upper stays.
    pub(crate) fn repair_live(&self, meta: &mut Meta) -> io::Result<()> {
        let Some(id) = meta.pending_snapshot.clone() else {
            return Ok(());
        };
        let next = self.store.dir(&meta.name).join(NEXT_UPPER);
        let next_used = fs::read_dir(&next).is_ok_and(|mut d| d.next().is_some());
        let rotated = self.store.snapshot_dir(&meta.name, &id).exists() || next_used;
        self.finish_live(meta, &id, rotated)
    }

    /// The same with the volume still mounted (this side was killed, its
    /// daemon was not): whether the rotation happened is whether the
    /// daemon now writes to the new upper.
    pub(crate) fn repair_live_mounted(&self, meta: &mut Meta) -> io::Result<()> {
        let (Some(id), true) = (meta.pending_snapshot.clone(), meta.pending_live) else {
            return Ok(());
        };
        let dir = self.store.dir(&meta.name);
        refuse_elsewhere(&meta.name, &dir)?;
        let status = request(&control_socket(&dir), "status")?;
        let writes_to = status
            .split(' ')
            .find_map(|w| w.strip_prefix("upper="))
            .unwrap_or("none");
        let next = fs::metadata(dir.join(NEXT_UPPER))
            .map(|m| format!("{}:{}", m.dev(), m.ino()))
            .ok();
        let rotated =
            self.store.snapshot_dir(&meta.name, &id).exists() || next.as_deref() == Some(writes_to);
        self.finish_live(meta, &id, rotated)
    }

    fn finish_live(&self, meta: &mut Meta, id: &str, rotated: bool) -> io::Result<()> {
        let dir = self.store.dir(&meta.name);
        let next = dir.join(NEXT_UPPER);
        let snap = self.store.snapshot_dir(&meta.name, id);
        let upper = dir.join("upper");
        if rotated {
            if !snap.exists() {
                fs::rename(&upper, &snap)?;
            }
            if next.exists() {
                fs::rename(&next, &upper)?;
            } else if !upper.exists() {
                fs::create_dir(&upper)?;
            }
            log::warn!(
                "volume {}: finishing live snapshot {id}, cut by a crash",
                meta.name
            );
            meta.snapshots.push(Snapshot {
                id: id.to_string(),
                created: now(),
            });
        } else {
            if next.exists() {
                fs::remove_dir(&next)?;
            }
            log::warn!(
                "volume {}: forgetting live snapshot {id}, cut by a crash before it was taken",
                meta.name
            );
        }
        meta.pending_snapshot = None;
        meta.pending_live = false;
        self.store.save(meta)
    }
}

/// Looks up (stats) every name of every file with several links under
/// `mnt`, a live mount, so that its daemon knows them. Returns how many.
fn look_up_linked_names(mnt: &Path) -> io::Result<usize> {
    let mut n = 0;
    let mut stack = vec![mnt.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let md = fs::symlink_metadata(e.path())?;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() && md.nlink() > 1 {
                n += 1;
            }
        }
    }
    Ok(n)
}
