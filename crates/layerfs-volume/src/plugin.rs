//! `serve`: the Docker volume plugin API, HTTP with JSON bodies on a unix
//! socket (`Plugin.Activate`, `VolumeDriver.*`), as Docker documents it.
//!
//! Requests are served one at a time: each is short (a mount is a few
//! milliseconds) and serving them in order means two containers starting
//! on one volume cannot race. All state is in the store (holders in each
//! volume's metadata), so a restarted plugin answers as before; at start it
//! forgets the holders of volumes whose mount is gone.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use layerfs::options::parse_lowerdirs;

use crate::store::{err, is_base_spec};
use crate::volumes::Volumes;

/// Docker's default location for a plugin named `layerfs`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/layerfs.sock";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Request {
    #[serde(default)]
    name: String,
    #[serde(default)]
    opts: Option<HashMap<String, String>>,
    #[serde(default, rename = "ID")]
    id: String,
}

/// What `docker volume create -o` asked for: seed directories (top first)
/// or a snapshot to clone.
#[derive(Debug, Default, PartialEq)]
struct CreateOpts {
    seeds: Vec<PathBuf>,
    base: Option<String>,
}

impl CreateOpts {
    /// Docker passes each `-o KEY=VALUE` as it is. Several seeds are one
    /// `from=/a:/b`, written as a `lowerdir=` value (`\:` and `\\` for a
    /// colon or backslash in a path); `from=VOLUME@SNAP` clones.
    fn parse(opts: Option<&HashMap<String, String>>) -> io::Result<CreateOpts> {
        let mut c = CreateOpts::default();
        for (k, v) in opts.into_iter().flatten() {
            match k.as_str() {
                "from" if is_base_spec(v) => c.base = Some(v.clone()),
                "from" => c.seeds.extend(
                    parse_lowerdirs(v).map_err(|e| err(e.0.replacen("lowerdir=", "from=", 1)))?,
                ),
                other => return Err(err(format!("unknown option {other:?} (known: from)"))),
            }
        }
        if c.base.is_some() && !c.seeds.is_empty() {
            return Err(err(
                "from=VOLUME@SNAP cannot be combined with seed directories",
            ));
        }
        Ok(c)
    }
}

fn create(vols: &Volumes, req: &Request) -> io::Result<()> {
    let c = CreateOpts::parse(req.opts.as_ref())?;
    vols.create(&req.name, &c.seeds, c.base.as_deref())
        .map(|_| ())
}

/// Filesystems whose content other hosts see: a store there holds one set
/// of volumes for every engine that mounts it (Docker's `global` scope).
const SHARED_FILESYSTEMS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "ceph",
    "fuse.ceph",
    "fuse.ceph-fuse",
    "glusterfs",
    "fuse.glusterfs",
    "ocfs2",
    "gfs2",
    "lustre",
    "beegfs",
    "fuse.sshfs",
];

/// `global` when the store is on a filesystem other hosts share (the
/// mount holding it, from /proc/self/mountinfo), else `local`.
pub fn scope_of(store: &Path) -> &'static str {
    let Ok(path) = store.canonicalize() else {
        return "local";
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return "local";
    };
    // The deepest mount point above the store holds it.
    let mut best: Option<(usize, &str)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mnt), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        // mountinfo escapes spaces and the like as \ooo; such mount points
        // simply do not match.
        if path.starts_with(mnt) && best.is_none_or(|(len, _)| mnt.len() >= len) {
            best = Some((mnt.len(), fstype));
        }
    }
    match best {
        Some((_, fstype)) if SHARED_FILESYSTEMS.contains(&fstype) => "global",
        _ => "local",
    }
}

/// Answers one API call. Errors become `{"Err": "..."}`, never a crash.
pub fn handle(vols: &Volumes, path: &str, body: &[u8]) -> Value {
    let req: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return json!({"Err": format!("bad request body: {e}")}),
        }
    };
    let mp = |name: &str| vols.mountpoint(name).to_string_lossy().into_owned();
    let answer: io::Result<Value> = match path {
        "/Plugin.Activate" => Ok(json!({"Implements": ["VolumeDriver"]})),
        "/VolumeDriver.Capabilities" => {
            Ok(json!({"Capabilities": {"Scope": scope_of(&vols.store.root)}}))
        }
        "/VolumeDriver.Create" => create(vols, &req).map(|_| json!({"Err": ""})),
        "/VolumeDriver.Remove" => vols.remove(&req.name).map(|_| json!({"Err": ""})),
        "/VolumeDriver.Mount" => {
            let holder = if req.id.is_empty() { "docker" } else { &req.id };
            vols.mount(&req.name, holder)
                .map(|p| json!({"Mountpoint": p, "Err": ""}))
        }
        "/VolumeDriver.Unmount" => {
            let holder = if req.id.is_empty() { "docker" } else { &req.id };
            vols.unmount(&req.name, holder).map(|_| json!({"Err": ""}))
        }
        "/VolumeDriver.Path" => vols.store.load(&req.name).map(|_| {
            let m = if vols.is_mounted(&req.name) {
                mp(&req.name)
            } else {
                String::new()
            };
            json!({"Mountpoint": m, "Err": ""})
        }),
        "/VolumeDriver.Get" => vols.store.load(&req.name).and_then(|_| {
            let status = vols.inspect(&req.name)?;
            let m = if vols.is_mounted(&req.name) {
                mp(&req.name)
            } else {
                String::new()
            };
            Ok(json!({"Volume": {"Name": req.name, "Mountpoint": m, "Status": status}, "Err": ""}))
        }),
        "/VolumeDriver.List" => vols.store.list().map(|names| {
            let list: Vec<Value> = names
                .iter()
                .map(|n| {
                    let m = if vols.is_mounted(n) {
                        mp(n)
                    } else {
                        String::new()
                    };
                    json!({"Name": n, "Mountpoint": m})
                })
                .collect();
            json!({"Volumes": list, "Err": ""})
        }),
        other => Err(err(format!("unknown endpoint {other}"))),
    };
    answer.unwrap_or_else(|e| {
        // Docker asks for a volume before creating it: that miss is routine.
        let level = if e.to_string().starts_with("no such volume") {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        log::log!(level, "{path} {}: {e}", req.name);
        json!({"Err": e.to_string()})
    })
}

/// Where the plugin listens: the socket systemd passed (socket
/// activation, `LISTEN_FDS`/`LISTEN_PID`, fd 3), else `socket`, bound here.
fn listen(socket: &Path) -> io::Result<(UnixListener, PathBuf)> {
    // Takes the variables out of the environment too, so the layerfs
    // daemons this process starts do not take the socket for theirs.
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(l) = fds
        .take_unix_listener(0)
        .map_err(|e| err(format!("the socket systemd passed: {e}")))?
    {
        let path = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("(socket from systemd)"));
        return Ok((l, path));
    }
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir)?;
    }
    // A socket left by a killed plugin: connecting to it fails, so it is
    // stale and can go.
    if socket.exists() && UnixStream::connect(socket).is_err() {
        fs::remove_file(socket)?;
    }
    let l = UnixListener::bind(socket)
        .map_err(|e| err(format!("cannot listen on {}: {e}", socket.display())))?;
    Ok((l, socket.to_path_buf()))
}

/// Serves the API on `socket` (or the socket systemd passed) until killed.
pub fn serve(vols: &Volumes, socket: &Path) -> io::Result<()> {
    let (listener, path) = listen(socket)?;
    let mounted = vols.recover()?;
    if !mounted.is_empty() {
        log::info!("volumes still mounted: {}", mounted.join(", "));
    }
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| err(format!("cannot serve on {}: {e}", path.display())))?;
    log::info!("listening on {}", path.display());
    let header = tiny_http::Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/vnd.docker.plugins.v1+json"[..],
    )
    .map_err(|_| err("bad header"))?;
    for mut request in server.incoming_requests() {
        let mut body = Vec::new();
        if let Err(e) = request.as_reader().read_to_end(&mut body) {
            log::warn!("reading a request: {e}");
            continue;
        }
        let url = request.url().to_string();
        let answer = handle(vols, &url, &body);
        log::debug!("{url} {} -> {answer}", String::from_utf8_lossy(&body));
        let response =
            tiny_http::Response::from_string(answer.to_string()).with_header(header.clone());
        if let Err(e) = request.respond(response) {
            log::warn!("answering {url}: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(v: &str) -> io::Result<CreateOpts> {
        let opts = HashMap::from([("from".to_string(), v.to_string())]);
        CreateOpts::parse(Some(&opts))
    }

    #[test]
    fn from_is_a_lowerdir_list() {
        let c = from(r"/srv/a,b:/srv/c\\d:/srv/e\:f:/srv/x@y").unwrap();
        let want = [r"/srv/a,b", r"/srv/c\d", "/srv/e:f", "/srv/x@y"];
        assert_eq!(c.seeds, want.map(PathBuf::from));
        assert_eq!(c.base, None);
        assert_eq!(from("web@s1").unwrap().base.as_deref(), Some("web@s1"));
        let e = from("/a::/b").unwrap_err().to_string();
        assert!(e.starts_with("from=/a::/b: empty layer path"), "{e}");
        let opts = HashMap::from([("colour".to_string(), "red".to_string())]);
        assert!(CreateOpts::parse(Some(&opts)).is_err());
        assert_eq!(CreateOpts::parse(None).unwrap(), CreateOpts::default());
    }

    #[test]
    fn a_local_store_is_local() {
        let t = tempfile::tempdir().unwrap();
        // /tmp is on the machine's own disk (or a tmpfs) here.
        assert_eq!(scope_of(t.path()), "local");
        assert_eq!(scope_of(Path::new("/nonexistent/store")), "local");
    }
}
