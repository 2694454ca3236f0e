//! `serve`: the Docker volume plugin API, HTTP with JSON bodies on a unix
//! socket (`Plugin.Activate`, `VolumeDriver.*`), as Docker documents it.
//!
//! Requests are served one at a time: each is short (a mount is a few
//! milliseconds) and serving them in order means two containers starting
//! on one volume cannot race. All state is in the stores (holders in each
//! volume's metadata), so a restarted plugin answers as before; at start it
//! forgets the holders of volumes whose mount is gone. Several labelled
//! stores are served as one set of names (`stores.rs`).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::DEFAULT_LABEL;
use crate::options::CreateOptions;
use crate::store::{err, rfc3339, used_bytes};
use crate::stores::{Labelled, StoreSet};

/// Docker's default location for a plugin named `layerfs`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/layerfs.sock";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Request {
    #[serde(default)]
    name: String,
    #[serde(default)]
    opts: Option<HashMap<String, String>>,
    /// Mount and Unmount: podman's is the container's id; Docker's is an id
    /// of its own per mount, which it keeps in the container's
    /// `config.v2.json` (`MountPoints.*.ID`), not the container's.
    #[serde(default, rename = "ID")]
    id: String,
}

/// Every option is parsed and the store found before anything is made.
fn create(set: &StoreSet, req: &Request) -> io::Result<()> {
    let opts = CreateOptions::from_plugin(req.opts.as_ref())?;
    let target = set.by_label(opts.store.as_deref())?;
    set.create(target, &req.name, &opts).map(|_| ())
}

/// A volume as `Get` and `List` show it: Docker copies `Mountpoint`,
/// `CreatedAt` and `Status` into `docker volume inspect`. The mountpoint
/// is where the volume is (or will be) mounted, as the `local` driver
/// shows its `_data` directory whether in use or not.
fn describe(s: &Labelled, name: &str, status: bool) -> io::Result<Value> {
    let meta = s.vols.store.load(name)?;
    let mut v = json!({
        "Name": name,
        "Mountpoint": s.vols.mountpoint(name),
        "CreatedAt": rfc3339(meta.created),
    });
    if status {
        let upper = s.vols.store.dir(name).join("upper");
        let (used, whole) = used_bytes(&upper).unwrap_or((0, false));
        v["Status"] = json!({
            "Store": s.label,
            "Scope": s.scope.as_str(),
            // Past the walk's limit, "at least": Docker shows it as it is.
            "Size": meta.size,
            "Used": if whole { json!(used) } else { json!(format!(">= {used}")) },
            "Snapshots": meta.snapshots.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            "Seeds": meta.seeds,
            "Base": meta.base.as_ref().map(|b| format!("{}@{}", b.volume, b.snapshot)),
            "Mounted": s.vols.is_mounted(name),
            "Holders": meta.holders,
        });
    }
    Ok(v)
}

/// A plugin run by a user (for rootless podman) mounts through fusermount3
/// in its own mount namespace, while the engine's containers run in the
/// engine's namespace, made earlier: the mount reaches them only if the
/// store's mount is shared. Without that they would write to the empty
/// mountpoint directory, so the mount is refused instead.
fn refuse_unseen_mount(s: &Labelled) -> io::Result<()> {
    let root = &s.vols.store.root;
    if layerfs::sys::geteuid() == 0 || crate::mounts::propagates(root) {
        return Ok(());
    }
    Err(err(format!(
        "store {} at {} is on a mount that does not propagate (see findmnt -o TARGET,PROPAGATION): a rootless engine's containers would not see the volume's mount; make it shared (mount --make-rshared /, as rootless podman expects)",
        s.label,
        root.display()
    )))
}

/// Answers one API call. Errors become `{"Err": "..."}`, never a crash.
pub fn handle(set: &StoreSet, path: &str, body: &[u8]) -> Value {
    let req: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return json!({"Err": format!("bad request body: {e}")}),
        }
    };
    let holder = if req.id.is_empty() { "docker" } else { &req.id };
    let answer: io::Result<Value> = match path {
        "/Plugin.Activate" => Ok(json!({"Implements": ["VolumeDriver"]})),
        // Docker asks once per driver: the scope of the store a volume
        // goes to by default; each volume's own is in its Status.
        "/VolumeDriver.Capabilities" => {
            let scope = set
                .by_label(Some(DEFAULT_LABEL))
                .ok()
                .or(set.stores.first())
                .map_or("local", |s| s.scope.as_str());
            Ok(json!({"Capabilities": {"Scope": scope}}))
        }
        "/VolumeDriver.Create" => create(set, &req).map(|_| json!({"Err": ""})),
        "/VolumeDriver.Remove" => set
            .holding(&req.name)
            .and_then(|s| s.vols.remove(&req.name))
            .map(|_| json!({"Err": ""})),
        "/VolumeDriver.Mount" => set
            .holding(&req.name)
            .and_then(|s| refuse_unseen_mount(s).map(|_| s))
            .and_then(|s| s.vols.mount(&req.name, holder))
            .map(|p| json!({"Mountpoint": p, "Err": ""})),
        "/VolumeDriver.Unmount" => set
            .holding(&req.name)
            .and_then(|s| s.vols.unmount(&req.name, holder))
            .map(|_| json!({"Err": ""})),
        "/VolumeDriver.Path" => set.holding(&req.name).map(|s| {
            let m = if s.vols.is_mounted_here(&req.name) {
                s.vols.mountpoint(&req.name).to_string_lossy().into_owned()
            } else {
                String::new()
            };
            json!({"Mountpoint": m, "Err": ""})
        }),
        "/VolumeDriver.Get" => set
            .holding(&req.name)
            .and_then(|s| describe(s, &req.name, true))
            .map(|v| json!({"Volume": v, "Err": ""})),
        "/VolumeDriver.List" => {
            let list: Vec<Value> = set
                .list()
                .into_iter()
                .filter_map(|(n, s)| describe(s, &n, false).ok())
                .collect();
            Ok(json!({"Volumes": list, "Err": ""}))
        }
        other => Err(err(format!("unknown endpoint {other}"))),
    };
    answer.unwrap_or_else(|e| {
        // Docker asks Get before every Create: a missing volume is routine.
        if path == "/VolumeDriver.Get" {
            log::debug!("{path} {}: {e}", req.name);
        } else {
            log::info!("{path} {}: {e}", req.name);
        }
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
pub fn serve(set: &StoreSet, socket: &Path) -> io::Result<()> {
    if set.stores.is_empty() {
        return Err(err("no store can be served (see the errors above)"));
    }
    let (listener, path) = listen(socket)?;
    log::info!("listening on {}", path.display());
    for s in &set.stores {
        let mounted = match s.vols.recover() {
            Ok(m) => m,
            Err(e) => {
                log::error!("store {}: {e}", s.label);
                continue;
            }
        };
        log::info!(
            "store {} at {} ({}): {} volumes{}",
            s.label,
            s.vols.store.root.display(),
            s.scope.as_str(),
            s.vols.store.list()?.len(),
            if mounted.is_empty() {
                String::new()
            } else {
                format!(", still mounted: {}", mounted.join(", "))
            }
        );
    }
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| err(format!("cannot serve on {}: {e}", path.display())))?;
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
        let answer = handle(set, &url, &body);
        log::debug!("{url} {} -> {answer}", String::from_utf8_lossy(&body));
        // An error is a 500 with its `Err`, as Docker's plugin helpers
        // answer: podman reads `Err` only from a status other than 200,
        // and would take a refused mount or removal for done.
        let failed = answer
            .get("Err")
            .and_then(Value::as_str)
            .is_some_and(|e| !e.is_empty());
        let response = tiny_http::Response::from_string(answer.to_string())
            .with_header(header.clone())
            .with_status_code(if failed { 500 } else { 200 });
        if let Err(e) = request.respond(response) {
            log::warn!("answering {url}: {e}");
        }
    }
    Ok(())
}
