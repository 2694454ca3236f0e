//! Several labelled stores as one set of volume names: which store holds a
//! name, where a new volume goes, and the refusal of a name that a second
//! store would hold. Each store keeps its own lock and metadata; the set
//! keeps nothing of its own.

use std::fs;
use std::io;
use std::path::Path;

use crate::config::{StoreSpec, DEFAULT_LABEL};
use crate::options::{CreateOptions, Ownership};
use crate::store::{check_name, err, Meta, Store};
use crate::volumes::Volumes;

/// Docker's volume scope: `global` when other hosts see the same store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Local,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

/// `statfs` f_type of the filesystems whose content other hosts see:
/// NFS, CIFS, SMB2, Ceph, GFS2, OCFS2, Lustre, AFS, and FUSE, which is how
/// GlusterFS, CephFS and sshfs clients mount (a store on a local FUSE
/// filesystem is rare enough to be called shared too).
const SHARED_MAGIC: &[i64] = &[
    0x6969,     // NFS
    0xFF534D42, // CIFS
    0xFE534D42, // SMB2
    0x517B,     // SMB
    0x00C36400, // Ceph
    0x01161970, // GFS2
    0x7461636F, // OCFS2
    0x0BD00BD0, // Lustre
    0x5346414F, // AFS
    0x65735546, // FUSE
];

/// The scope of a store at `path`, from the filesystem holding it.
pub fn scope_of(path: &Path) -> Scope {
    let f_type = layerfs::sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY)
        .and_then(|fd| layerfs::sys::fstatfs_type(std::os::fd::AsFd::as_fd(&fd)));
    match f_type {
        Ok(t) if SHARED_MAGIC.contains(&t) => Scope::Global,
        _ => Scope::Local,
    }
}

/// One store of the set.
pub struct Labelled {
    pub label: String,
    pub vols: Volumes,
    /// What a new volume's root gets when its create does not say.
    pub defaults: Ownership,
    pub scope: Scope,
}

pub struct StoreSet {
    /// In the order given; `default` wherever it is.
    pub stores: Vec<Labelled>,
    /// Stores that could not be opened, with why: named when asked for.
    pub failed: Vec<(String, String)>,
}

impl StoreSet {
    /// Opens each store ([`open_store`]). One that fails is logged and
    /// left out; the others serve.
    pub fn open(specs: &[StoreSpec]) -> StoreSet {
        let mut set = StoreSet {
            stores: Vec::new(),
            failed: Vec::new(),
        };
        for spec in specs {
            match open_one(spec) {
                Ok(l) => set.stores.push(l),
                Err(e) => {
                    log::error!("{e}; not serving it");
                    set.failed.push((spec.label.clone(), e.to_string()));
                }
            }
        }
        set
    }

    /// The command line's: the store a command names (made if missing, as
    /// ever) first, then the file's other stores that are there, asked
    /// only whether a name is taken.
    pub fn for_cli(chosen: &StoreSpec, others: &[StoreSpec]) -> io::Result<StoreSet> {
        let store = open_store(chosen)?;
        let mut stores = vec![Labelled {
            label: chosen.label.clone(),
            scope: scope_of(&store.root),
            vols: Volumes::new(store),
            defaults: chosen.defaults,
        }];
        for spec in others {
            let same = spec.label == chosen.label
                || fs::canonicalize(&spec.path).ok() == Some(stores[0].vols.store.root.clone());
            if !same && spec.path.is_dir() {
                stores.extend(open_one(spec).ok());
            }
        }
        Ok(StoreSet {
            stores,
            failed: Vec::new(),
        })
    }

    /// The labels served, for messages.
    pub fn labels(&self) -> String {
        let l: Vec<&str> = self.stores.iter().map(|s| s.label.as_str()).collect();
        l.join(", ")
    }

    /// The store a label names; None is `default`.
    pub fn by_label(&self, label: Option<&str>) -> io::Result<&Labelled> {
        let label = label.unwrap_or(DEFAULT_LABEL);
        if let Some(s) = self.stores.iter().find(|s| s.label == label) {
            return Ok(s);
        }
        if let Some((_, why)) = self.failed.iter().find(|(l, _)| l == label) {
            return Err(err(format!("{why}; it is not served")));
        }
        Err(err(format!(
            "unknown store {label:?} (stores: {})",
            self.labels()
        )))
    }

    /// The store holding volume `name`.
    pub fn holding(&self, name: &str) -> io::Result<&Labelled> {
        check_name("volume", name)?;
        self.stores
            .iter()
            .find(|s| s.vols.store.exists(name))
            .ok_or_else(|| err(format!("no such volume: {name}")))
    }

    /// Every volume of every store, with its store; a store that cannot be
    /// read is logged and skipped, so one failing disk hides only its own.
    pub fn list(&self) -> Vec<(String, &Labelled)> {
        let mut out = Vec::new();
        for s in &self.stores {
            match s.vols.store.list() {
                Ok(names) => out.extend(names.into_iter().map(|n| (n, s))),
                Err(e) => log::error!("store {}: cannot list it: {e}", s.label),
            }
        }
        out
    }

    /// Refuses a new volume `name` in `target` when another store of the
    /// set holds that name (create, and the CLI's clone and import).
    pub fn refuse_taken(&self, target: &Labelled, name: &str) -> io::Result<()> {
        check_name("volume", name)?;
        match self
            .stores
            .iter()
            .find(|s| s.label != target.label && s.vols.store.exists(name))
        {
            Some(other) => Err(err(format!(
                "cannot create volume {name} in store {}: store {} already has a volume {name}",
                target.label, other.label
            ))),
            None => Ok(()),
        }
    }

    /// Creates a volume in `target` (a store of this set), refused when
    /// another store already holds the name: each name has one store, so
    /// that Mount and Remove know which. The store's defaults fill what
    /// the options leave out.
    pub fn create(&self, target: &Labelled, name: &str, opts: &CreateOptions) -> io::Result<Meta> {
        self.refuse_taken(target, name)?;
        let mut here = opts.clone();
        here.owner = opts.owner.or(target.defaults);
        if let Some(spec) = &opts.base {
            // A clone shares its base's layers, which must be in its store.
            let base = crate::store::parse_base(spec)?;
            if !target.vols.store.exists(&base.volume) {
                if let Ok(s) = self.holding(&base.volume) {
                    return Err(err(format!(
                        "cannot clone {spec} into store {}: volume {} is in store {}, and a clone \
                         shares its layers, so it is made in the same store",
                        target.label, base.volume, s.label
                    )));
                }
            }
        }
        target.vols.create(name, &here)
    }
}

/// Opens a store. `default` is made if missing, as a fresh host's first
/// store is; another must exist, since a missing one is most often a
/// shared filesystem not mounted yet, and making it would put its volumes
/// on the local disk.
pub fn open_store(spec: &StoreSpec) -> io::Result<Store> {
    let ctx = |e: &dyn std::fmt::Display| {
        err(format!(
            "store {} ({}): {e}",
            spec.label,
            spec.path.display()
        ))
    };
    if spec.label != DEFAULT_LABEL && !spec.path.is_dir() {
        return Err(ctx(&"missing (is its filesystem mounted?)"));
    }
    Store::open(&spec.path).map_err(|e| ctx(&e))
}

fn open_one(spec: &StoreSpec) -> io::Result<Labelled> {
    let store = open_store(spec)?;
    let scope = scope_of(&store.root);
    Ok(Labelled {
        label: spec.label.clone(),
        vols: Volumes::new(store),
        defaults: spec.defaults,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_store_is_local() {
        let t = tempfile::tempdir().unwrap();
        // /tmp is on the machine's own disk (or a tmpfs) here.
        assert_eq!(scope_of(t.path()), Scope::Local);
        assert_eq!(scope_of(Path::new("/nonexistent/store")), Scope::Local);
    }

    #[test]
    fn one_name_one_store() {
        let t = tempfile::tempdir().unwrap();
        let spec = |label: &str| StoreSpec {
            label: label.to_string(),
            path: t.path().join(label),
            defaults: Ownership::default(),
        };
        std::fs::create_dir(t.path().join("b")).unwrap();
        let set = StoreSet::open(&[spec("default"), spec("b"), spec("gone")]);
        assert_eq!(set.labels(), "default, b");
        let e = set.by_label(Some("gone")).err().unwrap().to_string();
        assert!(
            e.ends_with("gone): missing (is its filesystem mounted?); it is not served"),
            "{e}"
        );
        let e = set.by_label(Some("x")).err().unwrap().to_string();
        assert!(
            e.contains("unknown store \"x\" (stores: default, b)"),
            "{e}"
        );
        // Made in the store's directory without mounting anything.
        let b = set.by_label(Some("b")).unwrap();
        let owner = Ownership {
            uid: None,
            gid: None,
            mode: Some(0o1750),
        };
        let opts = CreateOptions {
            owner,
            ..Default::default()
        };
        set.create(b, "v", &opts).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let md = std::fs::metadata(t.path().join("b/v/upper")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o1750);
        assert_eq!(set.holding("v").unwrap().label, "b");
        let d = set.by_label(None).unwrap();
        let e = set.create(d, "v", &opts).unwrap_err().to_string();
        assert_eq!(
            e,
            "cannot create volume v in store default: store b already has a volume v"
        );
        assert!(!t.path().join("default/v").exists());
        assert_eq!(set.list().len(), 1);
    }
}
