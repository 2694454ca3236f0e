//! The control socket (`-o control=PATH`): how a tool asks a running
//! daemon for what only it can do, such as a rotation (`rotation`) for a
//! live snapshot.
//!
//! A unix stream socket made with mode 0600; a peer whose uid is neither
//! 0 nor the daemon's is refused. One request per line, one answer line
//! each, in order; requests of all connections are served one at a time:
//!
//! - `status` → `ok layers=N rotations=N upper=DEV:INO lowers=DEV:INO,...`
//!   (the upper root's identity: which directory the daemon writes to now;
//!   the lower layers' roots, top first: which a restack took)
//! - `rotate NAME [TIMEOUT_MS]` → `ok barrier_us=N stopped_us=N sync_us=N inodes=N`
//!   (NAME: an empty directory beside the upper dir; TIMEOUT_MS defaults
//!   to 1000)
//! - `restack PATH DEV:INO[,DEV:INO...] [TIMEOUT_MS]` → `ok stopped_us=N
//!   inodes=N relooked=N`: the lower layers with those root identities (a
//!   run of the stack, top first) are replaced by the layer at PATH
//!   (relative to the upper dir's parent), which must show what they
//!   showed together (see `restack`)
//! - `limit [BYTES]` → `ok limit=N used=N` (a mount with `capacity=`:
//!   sets the limit to BYTES, refused below what is used; without BYTES
//!   only says both; see `capacity`)
//!
//! An error is `err KIND MESSAGE`, KIND one of `timeout`, `links`
//! (hardlink sets to link up first), `usage`, `io`. After an error
//! nothing has changed.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::overlay::LayerFs;
use crate::rotation::RotateError;
use crate::sys;

/// The longest barrier a request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Listens on `path` (replacing a socket a dead daemon left) and serves
/// it from a thread for as long as the process lives.
pub fn serve(fs: Arc<LayerFs>, path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()) => {
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("control={}: exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let old = sys::set_umask(0o077);
    let bound = UnixListener::bind(path);
    sys::set_umask(old);
    let listener =
        bound.map_err(|e| io::Error::new(e.kind(), format!("control={}: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("layerfs-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => {
                        if let Err(e) = serve_conn(&fs, c) {
                            log::debug!("control connection: {e}");
                        }
                    }
                    Err(e) => log::warn!("control socket: {e}"),
                }
            }
        })?;
    Ok(())
}

fn serve_conn(fs: &LayerFs, conn: UnixStream) -> io::Result<()> {
    let uid = sys::peer_uid(conn.as_fd())?;
    let mut out = conn.try_clone()?;
    if uid != 0 && uid != sys::geteuid() {
        log::warn!("control socket: refused a peer with uid {uid}");
        return writeln!(out, "err usage permission denied");
    }
    for line in BufReader::new(conn).lines() {
        let answer = answer(fs, line?.trim());
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

/// The answer line to one request line.
pub fn answer(fs: &LayerFs, line: &str) -> String {
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("status"), None, ..) => {
            let layers = fs.layers();
            let upper = layers
                .upper()
                .and_then(|i| sys::fstat(layers.root_fd(i)).ok())
                .map_or("none".to_string(), |st| {
                    format!("{}:{}", st.st_dev, st.st_ino)
                });
            let lowers: Vec<String> = layers
                .iter()
                .filter(|(i, _)| Some(*i) != layers.upper())
                .filter_map(|(i, _)| sys::fstat(layers.root_fd(i)).ok())
                .map(|st| format!("{}:{}", st.st_dev, st.st_ino))
                .collect();
            format!(
                "ok layers={} rotations={} upper={upper} lowers={}",
                layers.len(),
                fs.rotations.load(Ordering::SeqCst),
                lowers.join(",")
            )
        }
        (Some("restack"), Some(path), Some(roots), timeout) if words.next().is_none() => {
            let timeout = match parse_timeout(timeout) {
                Ok(t) => t,
                Err(e) => return e,
            };
            let ids: Option<Vec<(u64, u64)>> = roots
                .split(',')
                .map(|r| {
                    let (d, i) = r.split_once(':')?;
                    Some((d.parse().ok()?, i.parse().ok()?))
                })
                .collect();
            let Some(ids) = ids else {
                return "err usage expected layer roots as DEV:INO[,DEV:INO...]".into();
            };
            match fs.restack(&ids, std::ffi::OsStr::new(path), timeout) {
                Ok(r) => format!(
                    "ok stopped_us={} inodes={} relooked={}",
                    r.stopped.as_micros(),
                    r.inodes,
                    r.relooked
                ),
                Err(e) => error_line(e),
            }
        }
        (Some("rotate"), Some(name), timeout, None) => {
            let timeout = match parse_timeout(timeout) {
                Ok(t) => t,
                Err(e) => return e,
            };
            match fs.rotate(std::ffi::OsStr::new(name), timeout) {
                Ok(r) => format!(
                    "ok barrier_us={} stopped_us={} sync_us={} inodes={}",
                    r.barrier.as_micros(),
                    r.stopped.as_micros(),
                    r.sync.as_micros(),
                    r.inodes
                ),
                Err(e) => error_line(e),
            }
        }
        (Some("limit"), bytes, None, _) => limit(fs, bytes),
        _ => format!(
            "err usage unknown request {:?}: expected `status`, `rotate NAME [TIMEOUT_MS]`, \
             `restack PATH DEV:INO[,...] [TIMEOUT_MS]` or `limit [BYTES]`",
            one_line(line)
        ),
    }
}

fn parse_timeout(ms: Option<&str>) -> Result<Duration, String> {
    match ms.map(str::parse::<u64>) {
        None => Ok(Duration::from_secs(1)),
        Some(Ok(ms)) if ms > 0 && Duration::from_millis(ms) <= MAX_TIMEOUT => {
            Ok(Duration::from_millis(ms))
        }
        Some(_) => Err(format!(
            "err usage timeout: expected milliseconds from 1 to {}",
            MAX_TIMEOUT.as_millis()
        )),
    }
}

fn error_line(e: RotateError) -> String {
    let kind = match &e {
        RotateError::Timeout(_) => "timeout",
        RotateError::PartialLinks(_) => "links",
        RotateError::Io(e) if e.kind() == io::ErrorKind::InvalidInput => "usage",
        RotateError::Io(_) => "io",
    };
    log::warn!("control request refused: {e}");
    format!("err {kind} {}", one_line(&e.to_string()))
}

/// `limit [BYTES]`: the capacity's answer line.
fn limit(fs: &LayerFs, bytes: Option<&str>) -> String {
    let Some(cap) = fs.capacity() else {
        return "err usage this mount has no capacity= limit: remount with one".into();
    };
    match bytes.map(str::parse::<u64>) {
        None => {}
        Some(Ok(n)) if n > 0 => {
            if let Err(used) = cap.set_limit(n) {
                return format!("err usage limit {n} is below the {used} bytes in use");
            }
            log::info!("capacity limit now {n} bytes");
        }
        Some(_) => return "err usage limit: expected a number of bytes above 0".into(),
    }
    format!("ok limit={} used={}", cap.limit(), cap.used())
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}
