//! What a new volume is asked to be: the options of `docker volume create
//! -o KEY=VALUE` and `layerfs-volume create -o`, parsed in one place into
//! [`CreateOptions`] before anything is made, so a refused option leaves
//! nothing behind.
//!
//! Each key has one arm in [`CreateOptions::set`]; a new option (a size
//! limit, say) is a field there and an arm here.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use layerfs::options::parse_lowerdirs;

use crate::store::{check_name, err, is_base_spec};

/// The keys `set` knows, as the refusal of an unknown one lists them.
const KNOWN: &str = "from, store (or VolumeStore), size (or Capacity), uid, gid, mode, o";

/// Who owns the new volume's root directory, and its mode. What is not
/// given stays as made (root's, 0755), or comes from the store's defaults.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits, at most 0o7777.
    pub mode: Option<u32>,
}

impl Ownership {
    /// Each field given here, else the one in `defaults`.
    pub fn or(self, defaults: Ownership) -> Ownership {
        Ownership {
            uid: self.uid.or(defaults.uid),
            gid: self.gid.or(defaults.gid),
            mode: self.mode.or(defaults.mode),
        }
    }

    /// The owner and mode of `dir`.
    pub fn of(dir: &Path) -> io::Result<Ownership> {
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        Ok(Ownership {
            uid: Some(md.uid()),
            gid: Some(md.gid()),
            mode: Some(md.mode() & 0o7777),
        })
    }

    /// Sets `dir`, a new volume's upper: its root is what the mount shows
    /// as the volume's root directory. Owner first: chown(2) may clear
    /// set-id bits that the mode then sets.
    pub fn apply(&self, dir: &Path) -> io::Result<()> {
        let failed = |what: &str, e: io::Error| {
            err(format!("cannot set the {what} of {}: {e}", dir.display()))
        };
        if self.uid.is_some() || self.gid.is_some() {
            std::os::unix::fs::chown(dir, self.uid, self.gid).map_err(|e| failed("owner", e))?;
        }
        if let Some(mode) = self.mode {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode))
                .map_err(|e| failed("mode", e))?;
        }
        Ok(())
    }
}

/// A create request, options parsed and checked.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CreateOptions {
    /// The store's label (`store=`, VIC's `VolumeStore=`); None: `default`.
    pub store: Option<String>,
    /// Seed directories, top first.
    pub seeds: Vec<PathBuf>,
    /// `VOLUME@SNAPSHOT` to clone.
    pub base: Option<String>,
    pub owner: Ownership,
    /// The most the volume's own data may take, in bytes (`size=`, VIC's
    /// `Capacity=`).
    pub size: Option<u64>,
}

impl CreateOptions {
    /// The plugin's `Opts`: Docker passes each `-o KEY=VALUE` as it is.
    pub fn from_plugin(opts: Option<&HashMap<String, String>>) -> io::Result<CreateOptions> {
        let mut c = CreateOptions::default();
        // Sorted, so that of two bad options the same one is named each time.
        let mut pairs: Vec<_> = opts.into_iter().flatten().collect();
        pairs.sort();
        for (k, v) in pairs {
            c.set(k, v)?;
        }
        c.check()?;
        Ok(c)
    }

    /// The command line's `-o KEY=VALUE[,KEY=VALUE...]` (each given may
    /// hold several, as podman's `o=` does); seeds come with `--from`.
    pub fn from_cli(opts: &[String]) -> io::Result<CreateOptions> {
        let mut c = CreateOptions::default();
        for o in opts {
            c.set_list(o)?;
        }
        if c.store.is_some() {
            return Err(err(
                "store=: on the command line the store is chosen with --store LABEL|PATH",
            ));
        }
        if !c.seeds.is_empty() || c.base.is_some() {
            return Err(err(
                "from=: on the command line seeds and clones are given with --from",
            ));
        }
        Ok(c)
    }

    /// `KEY=VALUE,KEY=VALUE`: podman's `o=` and the CLI's `-o`.
    fn set_list(&mut self, list: &str) -> io::Result<()> {
        for pair in list.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(err(format!(
                    "option {pair:?}: expected KEY=VALUE (keys: size, uid, gid, mode)"
                )));
            };
            if matches!(k.to_ascii_lowercase().as_str(), "o" | "from") {
                return Err(err(format!(
                    "option {pair:?}: {k}= cannot be given inside a list"
                )));
            }
            self.set(k, v)?;
        }
        Ok(())
    }

    /// One option. Keys are matched without case: Docker keeps what the
    /// user typed, and VIC documents `VolumeStore`.
    fn set(&mut self, key: &str, value: &str) -> io::Result<()> {
        match key.to_ascii_lowercase().as_str() {
            // A lowerdir list (`\:` and `\\` for a colon or backslash in a
            // path), or VOLUME@SNAP to clone.
            "from" if is_base_spec(value) => self.base = Some(value.to_string()),
            "from" => self.seeds.extend(
                parse_lowerdirs(value).map_err(|e| err(e.0.replacen("lowerdir=", "from=", 1)))?,
            ),
            "store" | "volumestore" => {
                check_name("store", value).map_err(|e| err(format!("{key}={value}: {e}")))?;
                self.store = Some(value.to_string());
            }
            "size" | "capacity" => self.size = Some(parse_size(key, value)?),
            "uid" => self.owner.uid = Some(parse_id(key, value)?),
            "gid" => self.owner.gid = Some(parse_id(key, value)?),
            "mode" => self.owner.mode = Some(parse_mode(value)?),
            "o" => self.set_list(value)?,
            _ => return Err(err(format!("unknown option {key:?} (known: {KNOWN})"))),
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.base.is_some() && !self.seeds.is_empty() {
            return Err(err(
                "from=VOLUME@SNAP cannot be combined with seed directories",
            ));
        }
        Ok(())
    }
}

/// A uid or gid: a number, and not -1 (which chown(2) reads as "leave").
fn parse_id(key: &str, value: &str) -> io::Result<u32> {
    match value.parse::<u32>() {
        Ok(n) if n != u32::MAX => Ok(n),
        _ => Err(err(format!(
            "{key}={value}: a number from 0 to 4294967294 is expected (e.g. {key}=1000)"
        ))),
    }
}

/// A size limit: a whole number and a binary unit, K, M, G or T (`10G`;
/// `KiB`/`KB` and lower case are read the same), above zero.
pub fn parse_size(key: &str, value: &str) -> io::Result<u64> {
    let allowed = "a whole number then K, M, G or T (binary: 1K = 1024 bytes)";
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (num, unit) = value.split_at(digits);
    let shift = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "" if !num.is_empty() => {
            return Err(err(format!(
                "{key}={value}: a unit is needed: {allowed}, e.g. {key}={value}G"
            )))
        }
        _ => {
            return Err(err(format!(
                "{key}={value}: expected {allowed}, e.g. {key}=10G"
            )))
        }
    };
    match num.parse::<u64>().ok().map(|n| n.checked_mul(1 << shift)) {
        Some(Some(0)) => Err(err(format!(
            "{key}={value}: a size of zero allows nothing: {allowed}, above zero"
        ))),
        Some(Some(n)) => Ok(n),
        _ => Err(err(format!(
            "{key}={value}: expected {allowed}, at most 16383P, e.g. {key}=10G"
        ))),
    }
}

/// Octal permission bits, `755` or `0755`, up to `7777`.
pub fn parse_mode(value: &str) -> io::Result<u32> {
    match u32::from_str_radix(value, 8) {
        Ok(m) if m <= 0o7777 && !value.starts_with('+') => Ok(m),
        _ => Err(err(format!(
            "mode={value}: octal permission bits from 0 to 7777 are expected (e.g. mode=0750)"
        ))),
    }
}

/// A config file's `mode`: a string of octal digits (TOML has no octal
/// that reads as the user meant without a `0o`).
pub fn mode_from_toml<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_mode(&s).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(pairs: &[(&str, &str)]) -> io::Result<CreateOptions> {
        let opts: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CreateOptions::from_plugin(Some(&opts))
    }

    fn fails(pairs: &[(&str, &str)]) -> String {
        plugin(pairs).unwrap_err().to_string()
    }

    #[test]
    fn from_is_a_lowerdir_list() {
        let c = plugin(&[("from", r"/srv/a,b:/srv/c\\d:/srv/e\:f:/srv/x@y")]).unwrap();
        let want = [r"/srv/a,b", r"/srv/c\d", "/srv/e:f", "/srv/x@y"];
        assert_eq!(c.seeds, want.map(PathBuf::from));
        assert_eq!(c.base, None);
        let c = plugin(&[("from", "web@s1")]).unwrap();
        assert_eq!(c.base.as_deref(), Some("web@s1"));
        let e = fails(&[("from", "/a::/b")]);
        assert!(e.starts_with("from=/a::/b: empty layer path"), "{e}");
        assert_eq!(
            CreateOptions::from_plugin(None).unwrap(),
            CreateOptions::default()
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(plugin(&[("size", "64M")]).unwrap().size, Some(64 << 20));
        assert_eq!(plugin(&[("Capacity", "2G")]).unwrap().size, Some(2 << 30));
        assert_eq!(plugin(&[("o", "size=1t")]).unwrap().size, Some(1 << 40));
        assert_eq!(parse_size("size", "3KiB").unwrap(), 3072);
        let c = CreateOptions::from_cli(&["size=10G,uid=1".into()]).unwrap();
        assert_eq!(c.size, Some(10 << 30));
    }

    #[test]
    fn stores_and_ownership() {
        let c = plugin(&[("VolumeStore", "shared"), ("uid", "1000"), ("mode", "0750")]).unwrap();
        assert_eq!(c.store.as_deref(), Some("shared"));
        assert_eq!(c.owner.uid, Some(1000));
        assert_eq!(c.owner.mode, Some(0o750));
        // podman's -o o=uid=..,gid=..
        let c = plugin(&[("o", "uid=1,gid=2,mode=1777")]).unwrap();
        let want = Ownership {
            uid: Some(1),
            gid: Some(2),
            mode: Some(0o1777),
        };
        assert_eq!(c.owner, want);
        let c = CreateOptions::from_cli(&["uid=1,gid=2".into(), "mode=1777".into()]).unwrap();
        assert_eq!(c.owner, want);
        let defaults = Ownership {
            uid: Some(5),
            gid: None,
            mode: Some(0o700),
        };
        let mixed = Ownership {
            uid: Some(1),
            ..Default::default()
        }
        .or(defaults);
        assert_eq!(
            (mixed.uid, mixed.gid, mixed.mode),
            (Some(1), None, Some(0o700))
        );
    }

    #[test]
    fn refusals_name_the_option_and_what_is_allowed() {
        for (pairs, want) in [
            (vec![("uid", "bob")], "uid=bob: a number"),
            (vec![("gid", "-1")], "gid=-1: a number"),
            (vec![("uid", "4294967295")], "uid=4294967295: a number"),
            (vec![("mode", "0799")], "mode=0799: octal"),
            (vec![("mode", "17777")], "mode=17777: octal"),
            (
                vec![("colour", "red")],
                "unknown option \"colour\" (known: from",
            ),
            (
                vec![("o", "uid=1,size")],
                "option \"size\": expected KEY=VALUE",
            ),
            (vec![("o", "colour=red")], "unknown option \"colour\""),
            (vec![("store", "a/b")], "store=a/b: bad store name"),
            (
                vec![("size", "10")],
                "size=10: a unit is needed: a whole number then K, M, G or T",
            ),
            (
                vec![("Capacity", "0G")],
                "Capacity=0G: a size of zero allows nothing",
            ),
            (
                vec![("size", "1.5G")],
                "size=1.5G: expected a whole number then K, M, G or T",
            ),
            (vec![("size", "10X")], "size=10X: expected a whole number"),
            (vec![("size", "99999999T")], "size=99999999T: expected"),
        ] {
            let e = fails(&pairs);
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
        let e = CreateOptions::from_cli(&["store=x".into()]).unwrap_err();
        assert!(e.to_string().contains("--store"), "{e}");
    }
}
