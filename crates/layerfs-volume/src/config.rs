//! Which stores there are: the `--store` arguments and the configuration
//! file that names stores by label and gives their defaults.
//!
//! The file is TOML (`/etc/layerfs/volumes.toml`, or the file named by
//! `$LAYERFS_VOLUME_CONFIG`), one table per store:
//!
//! ```toml
//! [stores.default]
//! path = "/var/lib/layerfs/volumes"
//!
//! [stores.shared]
//! path = "/mnt/gluster/layerfs"
//! uid = 1000        # defaults for a new volume's root directory
//! gid = 1000
//! mode = "0750"
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::options::Ownership;
use crate::store::{check_name, default_store, err};

pub const CONFIG_FILE: &str = "/etc/layerfs/volumes.toml";
pub const CONFIG_ENV: &str = "LAYERFS_VOLUME_CONFIG";
/// Where a volume goes when no store is named, and the label of a store
/// given as a plain path.
pub const DEFAULT_LABEL: &str = "default";

/// A store by label, with the defaults of the volumes made in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub label: String,
    pub path: PathBuf,
    pub defaults: Ownership,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    stores: BTreeMap<String, Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    path: PathBuf,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(default, deserialize_with = "crate::options::mode_from_toml")]
    mode: Option<u32>,
}

/// The configuration file's stores (none when there is no file).
#[derive(Debug, Default)]
pub struct Config {
    /// Where it was read from, for messages.
    pub file: PathBuf,
    /// `default` first, then by label.
    pub stores: Vec<StoreSpec>,
}

impl Config {
    /// Reads `$LAYERFS_VOLUME_CONFIG`, else `/etc/layerfs/volumes.toml`.
    /// The latter may be missing (no labels then); a file named by the
    /// variable must be there.
    pub fn load() -> io::Result<Config> {
        let (file, required) = match std::env::var_os(CONFIG_ENV) {
            Some(f) => (PathBuf::from(f), true),
            None => (PathBuf::from(CONFIG_FILE), false),
        };
        match fs::read_to_string(&file) {
            Ok(text) => Config::parse(&text, &file),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => Ok(Config {
                file,
                stores: Vec::new(),
            }),
            Err(e) => Err(err(format!("configuration file {}: {e}", file.display()))),
        }
    }

    pub fn parse(text: &str, file: &Path) -> io::Result<Config> {
        let bad = |e: String| err(format!("configuration file {}: {e}", file.display()));
        let parsed: File = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut stores = Vec::new();
        for (label, e) in parsed.stores {
            check_name("store", &label).map_err(|e| bad(e.to_string()))?;
            if !e.path.is_absolute() {
                return Err(bad(format!(
                    "store {label}: path {} is not absolute",
                    e.path.display()
                )));
            }
            stores.push(StoreSpec {
                label,
                path: e.path,
                defaults: Ownership {
                    uid: e.uid,
                    gid: e.gid,
                    mode: e.mode,
                },
            });
        }
        stores.sort_by_key(|s| s.label != DEFAULT_LABEL);
        Ok(Config {
            file: file.to_path_buf(),
            stores,
        })
    }

    pub fn get(&self, label: &str) -> Option<&StoreSpec> {
        self.stores.iter().find(|s| s.label == label)
    }

    /// The labels, for a message listing what is allowed.
    pub fn labels(&self) -> String {
        if self.stores.is_empty() {
            return format!("none: {} names no stores", self.file.display());
        }
        let l: Vec<&str> = self.stores.iter().map(|s| s.label.as_str()).collect();
        format!("{} in {}", l.join(", "), self.file.display())
    }

    /// The defaults the file gives a store of this label at this path.
    fn defaults_for(&self, label: &str, path: &Path) -> Ownership {
        self.get(label)
            .filter(|s| s.path == path)
            .map(|s| s.defaults)
            .unwrap_or_default()
    }

    /// One `--store`: `LABEL=PATH`; a path (label `default`); or a label of
    /// the file. A value with no '/' that is no directory here is a label.
    pub fn resolve(&self, arg: &str) -> io::Result<StoreSpec> {
        if let Some((label, path)) = arg.split_once('=') {
            if check_name("store", label).is_ok() {
                let path = PathBuf::from(path);
                return Ok(StoreSpec {
                    label: label.to_string(),
                    defaults: self.defaults_for(label, &path),
                    path,
                });
            }
        }
        let path = Path::new(arg);
        if arg.contains('/') || path.is_dir() {
            return Ok(StoreSpec {
                label: DEFAULT_LABEL.to_string(),
                defaults: self.defaults_for(DEFAULT_LABEL, path),
                path: path.to_path_buf(),
            });
        }
        self.get(arg).cloned().ok_or_else(|| {
            err(format!(
                "unknown store {arg:?} (labels: {}; a path needs a '/', as in ./{arg})",
                self.labels()
            ))
        })
    }

    /// The store of a command that works on one: the one given, else the
    /// file's `default`, else the built-in default.
    pub fn one_store(&self, args: &[String]) -> io::Result<StoreSpec> {
        match args {
            [] => Ok(self
                .get(DEFAULT_LABEL)
                .cloned()
                .unwrap_or_else(|| StoreSpec {
                    label: DEFAULT_LABEL.to_string(),
                    path: default_store(),
                    defaults: Ownership::default(),
                })),
            [one] => self.resolve(one),
            _ => Err(err(
                "--store is given once for this command (several are for serve)",
            )),
        }
    }

    /// The stores `serve` serves: those given, else the file's, else the
    /// built-in default. Two with one label or one path are refused.
    pub fn serve_stores(&self, args: &[String]) -> io::Result<Vec<StoreSpec>> {
        let specs = if args.is_empty() && !self.stores.is_empty() {
            self.stores.clone()
        } else if args.is_empty() {
            vec![self.one_store(&[])?]
        } else {
            args.iter()
                .map(|a| self.resolve(a))
                .collect::<io::Result<Vec<_>>>()?
        };
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[..i] {
                if a.label == b.label {
                    return Err(err(format!(
                        "two stores are labelled {}: {} and {} (give LABEL=PATH)",
                        a.label,
                        b.path.display(),
                        a.path.display()
                    )));
                }
                if a.path == b.path {
                    return Err(err(format!(
                        "stores {} and {} are both {}",
                        b.label,
                        a.label,
                        a.path.display()
                    )));
                }
            }
        }
        Ok(specs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_file_reads() {
        let text = include_str!("../../../contrib/etc/volumes.toml");
        let c = Config::parse(text, Path::new("volumes.toml")).unwrap();
        assert_eq!(c.stores.len(), 1);
        assert_eq!(c.stores[0].label, DEFAULT_LABEL);
        assert_eq!(c.stores[0].path, Path::new("/var/lib/layerfs/volumes"));
    }

    const FILE: &str = r#"
[stores.shared]
path = "/mnt/gluster/layerfs"
uid = 1000
mode = "0750"

[stores.default]
path = "/var/lib/layerfs/volumes"
"#;

    #[test]
    fn labels_paths_and_defaults() {
        let c = Config::parse(FILE, Path::new("v.toml")).unwrap();
        assert_eq!(c.stores[0].label, "default", "default first");
        let s = c.resolve("shared").unwrap();
        assert_eq!(s.path, PathBuf::from("/mnt/gluster/layerfs"));
        assert_eq!((s.defaults.uid, s.defaults.mode), (Some(1000), Some(0o750)));
        let s = c.resolve("shared=/mnt/gluster/layerfs").unwrap();
        assert_eq!(
            s.defaults.uid,
            Some(1000),
            "same label and path: its defaults"
        );
        let s = c.resolve("shared=/elsewhere").unwrap();
        assert_eq!(s.defaults, Ownership::default());
        let s = c.resolve("/srv/a=b").unwrap();
        assert_eq!(
            (s.label.as_str(), s.path.as_path()),
            ("default", Path::new("/srv/a=b"))
        );
        let e = c.resolve("nosuch").unwrap_err().to_string();
        assert!(
            e.contains("unknown store \"nosuch\" (labels: default, shared in v.toml"),
            "{e}"
        );
        assert_eq!(c.serve_stores(&[]).unwrap().len(), 2);
        let e = c
            .serve_stores(&["/a".into(), "/b".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("two stores are labelled default"), "{e}");
        let e = c
            .serve_stores(&["a=/a".into(), "b=/a".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("stores a and b are both /a"), "{e}");
    }

    #[test]
    fn bad_files_are_refused_naming_the_problem() {
        for (text, want) in [
            ("[stores.x]\npath = \"rel\"\n", "not absolute"),
            ("[stores.x]\npath = \"/a\"\nmode = \"999\"\n", "mode=999"),
            ("[stores.x]\npath = \"/a\"\nuid = \"bob\"\n", "uid"),
            ("[stores.x]\npath = \"/a\"\ncolour = 1\n", "colour"),
            ("[stores.\"a/b\"]\npath = \"/a\"\n", "bad store name"),
        ] {
            let e = Config::parse(text, Path::new("v.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
