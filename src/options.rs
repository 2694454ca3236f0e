//! Mount-option parsing, compatible with fuse-overlayfs and with what
//! mount(8) / mount.fuse3 pass along.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::idmap::{overflow_id, parse_ranges, IdMap, IdMapping, IdRange};

/// A mount option the user gave that layerfs cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

fn err<T>(msg: impl Into<String>) -> Result<T, OptionError> {
    Err(OptionError(msg.into()))
}

/// Everything `-o` said, after parsing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountOptions {
    /// Lower layers, top first, as given (relative paths are resolved by the
    /// caller against the working directory).
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// Entry/attribute cache timeout (`timeout=SECONDS`).
    pub timeout: Option<Duration>,
    /// Worker threads (`threaded=0` means one; `threads=N` sets it).
    pub threads: Option<usize>,
    /// `ro`: a read-only mount even with an upper dir.
    pub read_only: bool,
    /// `fsync=0` or `volatile`: skip fsync on the upper layer.
    pub no_fsync: bool,
    /// `metacopy=on`: chmod/chown/utimens/xattr changes copy metadata only.
    pub metacopy: bool,
    /// `writeback=0`: no kernel writeback cache where passthrough is not
    /// used (fuse-overlayfs' option; on by default).
    pub no_writeback: bool,
    /// `passthrough=off`: serve file data through the daemon even where the
    /// kernel could pass it through.
    pub no_passthrough: bool,
    pub debug: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub auto_unmount: bool,
    /// Explicit `dev`/`nodev`, `suid`/`nosuid`, `exec`/`noexec`,
    /// `atime`/`noatime`: None keeps the default.
    pub dev: Option<bool>,
    pub suid: Option<bool>,
    pub exec: Option<bool>,
    pub atime: Option<bool>,
    pub sync: bool,
    pub dirsync: bool,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    /// Options layerfs accepts for compatibility without acting on them.
    pub ignored: Vec<String>,
    /// `uidmapping=` / `gidmapping=`: ids shown differently from how they
    /// are stored (see `idmap`).
    pub uid_ranges: Vec<IdRange>,
    pub gid_ranges: Vec<IdRange>,
    /// `squash_to_uid=` / `squash_to_gid=` (`squash_to_root` sets both to 0
    /// unless they are given).
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    pub squash_to_root: bool,
    /// `userxattr`: write `user.overlay.*` xattrs, as kernel overlayfs
    /// does with this option (and as layerfs does anyway without root).
    pub userxattr: bool,
    /// `redirect_dir=`, when given (`None`: the default, `on`).
    pub redirect_dir: Option<RedirectDir>,
    /// `capacity=BYTES`: the most the mount's own data may take (see
    /// `capacity`).
    pub capacity: Option<u64>,
    /// `capacity_used=BYTES`: what the read-only layers that count against
    /// the limit hold already (a volume's own snapshots).
    pub capacity_used: u64,
    /// Other options with a value that a later step reads (`logfile=`).
    pub extra: Vec<(String, String)>,
}

impl MountOptions {
    /// `control=PATH`: the control socket (see `control`).
    pub fn control(&self) -> Option<&Path> {
        self.extra
            .iter()
            .find(|(k, _)| k == "control")
            .map(|(_, p)| Path::new(p.as_str()))
    }
}

/// `redirect_dir=`: whether renaming a directory that has lower parts
/// writes `overlay.redirect` (else rename(2) answers EXDEV and tools copy),
/// and whether the redirects found in the layers are followed. The meanings
/// are kernel overlayfs' (Documentation/filesystems/overlayfs.rst).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedirectDir {
    /// Create and follow (layerfs' default).
    #[default]
    On,
    /// Follow, never create. `off` means this too: the kernel's `off` is
    /// `follow` when its `redirect_always_follow` module parameter is set,
    /// which is its default build (CONFIG_OVERLAY_FS_REDIRECT_ALWAYS_FOLLOW).
    Follow,
    /// Neither create nor follow: a lookup meeting a redirect with layers
    /// below it fails with EPERM, as in the kernel.
    NoFollow,
}

impl RedirectDir {
    pub fn parse(v: &str) -> Result<RedirectDir, OptionError> {
        match v {
            "on" => Ok(RedirectDir::On),
            "follow" | "off" => Ok(RedirectDir::Follow),
            "nofollow" => Ok(RedirectDir::NoFollow),
            _ => err(format!(
                "redirect_dir={v}: bad value (expected on, follow, nofollow or off)"
            )),
        }
    }

    /// Renaming a directory with lower parts writes a redirect.
    pub fn creates(self) -> bool {
        self == RedirectDir::On
    }

    /// Redirects found in the layers are followed.
    pub fn follows(self) -> bool {
        self != RedirectDir::NoFollow
    }

    fn name(self) -> &'static str {
        match self {
            RedirectDir::On => "on",
            RedirectDir::Follow => "follow",
            RedirectDir::NoFollow => "nofollow",
        }
    }
}

/// Options with a value that a later step reads.
const KEPT: &[&str] = &["logfile", "control"];

/// Options accepted and ignored: the generic ones mount(8) passes along,
/// and fuse-overlayfs / kernel overlayfs tunables whose behaviour layerfs has
/// built in (or which only concern other implementations).
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "nofail",
    "_netdev",
    "max_read",
    "blksize",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "xino",
    "ino32_t",
    "index",
    "nfs_export",
    "fast_ino",
    "static_nlink",
    "noacl",
    "xattr_permissions",
    "noxattrs",
    "plugins",
    "comment",
    "uuid",
    "verity",
];

// The option string's escape, one rule for reading (`parse`) and writing
// (`escape` and the `encode_` functions), as kernel overlayfs reads it
// (fs/overlayfs/params.c): `,` separates options and `:` the lowerdir
// entries, and a backslash takes the next character as it is, so `\,`,
// `\:` and `\\` are a literal comma, colon and backslash.

/// Escapes one option value so that `parse` reads it back unchanged: `\`,
/// `,`, `:` and whitespace (an item's unescaped trailing whitespace is
/// trimmed) get a backslash.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | ':') || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One path as an option value. Options are text: a path that is not
/// UTF-8 cannot be given.
pub fn encode_path(path: &Path) -> Result<String, OptionError> {
    match path.to_str() {
        Some(s) => Ok(escape(s)),
        None => err(format!("layer path {} is not UTF-8", path.display())),
    }
}

/// A `lowerdir=` value: the layers top first, each escaped, joined by `:`.
pub fn encode_lowerdirs<P: AsRef<Path>>(dirs: &[P]) -> Result<String, OptionError> {
    let parts = dirs
        .iter()
        .map(|d| encode_path(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(":"))
}

/// The options that mount a layer stack: `lowerdir=` and, for a writable
/// stack, `upperdir=` and `workdir=` (given as `(upper, work)`).
pub fn encode_stack<P: AsRef<Path>>(
    lowers: &[P],
    upper: Option<(&Path, &Path)>,
) -> Result<String, OptionError> {
    let mut opts = format!("lowerdir={}", encode_lowerdirs(lowers)?);
    if let Some((upper, work)) = upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            encode_path(upper)?,
            encode_path(work)?
        ));
    }
    Ok(opts)
}

/// Splits on `sep` where it is not escaped by a backslash; backslashes are
/// kept for the next level to unescape.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

/// An item without the whitespace around it (`-o "ro, nodev"`), keeping an
/// escaped whitespace character at its end, which belongs to a value.
fn trim_item(item: &str) -> &str {
    let item = item.trim_start();
    let mut end = 0;
    let mut chars = item.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            end = match chars.next() {
                Some((j, n)) => j + n.len_utf8(),
                None => i + 1,
            };
        } else if !c.is_whitespace() {
            end = i + c.len_utf8();
        }
    }
    &item[..end]
}

/// Drops the escaping backslashes (a trailing lone one too, as the kernel).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `lowerdir=` value: colon-separated, top first, a backslash
/// escapes the next character (`\:` a colon, `\\` a backslash).
pub fn parse_lowerdirs(v: &str) -> Result<Vec<PathBuf>, OptionError> {
    let mut dirs = Vec::new();
    for part in split_escaped(v, ':') {
        if part.is_empty() {
            // "a::b" is how kernel overlayfs separates data-only layers; an
            // empty entry is otherwise a typo worth naming.
            return err(format!(
                "lowerdir={v}: empty layer path (two colons in a row, or a leading/trailing colon)"
            ));
        }
        dirs.push(PathBuf::from(unescape(&part)));
    }
    Ok(dirs)
}

fn parse_bool(name: &str, v: Option<&str>) -> Result<bool, OptionError> {
    match v {
        None | Some("1") | Some("on") | Some("true") | Some("yes") => Ok(true),
        Some("0") | Some("off") | Some("false") | Some("no") => Ok(false),
        Some(other) => err(format!("{name}={other}: expected 0 or 1")),
    }
}

impl MountOptions {
    /// Parses every `-o` argument (each a comma-separated list). Empty items
    /// (`a,,b`, a trailing comma) are skipped, as containers-storage sends them.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        for arg in args {
            for item in split_escaped(arg.as_ref(), ',') {
                let item = trim_item(&item);
                if item.is_empty() {
                    continue;
                }
                o.apply(item)?;
            }
        }
        o.check_conflicts()?;
        if o.capacity.is_some() && (o.upperdir.is_none() || o.read_only) {
            return err("capacity= needs a writable mount (upperdir= and workdir=)");
        }
        Ok(o)
    }

    /// The `redirect_dir` mode in force.
    pub fn redirect_mode(&self) -> RedirectDir {
        self.redirect_dir.unwrap_or_default()
    }

    /// Combinations kernel overlayfs refuses, refused with its reasons.
    fn check_conflicts(&self) -> Result<(), OptionError> {
        let Some(mode) = self.redirect_dir else {
            return Ok(());
        };
        if self.userxattr && mode != RedirectDir::NoFollow {
            // Anyone may write user.overlay.redirect: the kernel neither
            // creates nor follows redirects with userxattr.
            return err(format!(
                "conflicting options: userxattr,redirect_dir={} (userxattr allows only redirect_dir=nofollow)",
                mode.name()
            ));
        }
        // A metacopy file renamed needs a redirect to find its data; the
        // kernel accepts `follow` only on a read-only stack.
        let refused = match mode {
            RedirectDir::On => false,
            RedirectDir::Follow => self.upperdir.is_some(),
            RedirectDir::NoFollow => true,
        };
        if self.metacopy && refused {
            return err(format!(
                "conflicting options: metacopy=on,redirect_dir={} (metacopy needs redirect_dir=on)",
                mode.name()
            ));
        }
        Ok(())
    }

    /// The id translation these options ask for.
    pub fn id_mapping(&self) -> IdMapping {
        let root = self.squash_to_root.then_some(0);
        // Only an id outside every range shows as the overflow id: without
        // ranges the kernel's setting need not be read (two files of /proc
        // on every mount).
        let overflow = |ranges: &[IdRange], kind| {
            if ranges.is_empty() {
                65534
            } else {
                overflow_id(kind)
            }
        };
        IdMapping {
            uid: IdMap::new(
                self.uid_ranges.clone(),
                self.squash_uid.or(root),
                overflow(&self.uid_ranges, "u"),
            ),
            gid: IdMap::new(
                self.gid_ranges.clone(),
                self.squash_gid.or(root),
                overflow(&self.gid_ranges, "g"),
            ),
        }
    }

    fn apply(&mut self, item: &str) -> Result<(), OptionError> {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        // A value with its escapes resolved (lowerdir= splits first).
        let need = |what: &str| -> Result<String, OptionError> {
            match value {
                Some(v) if !v.is_empty() => Ok(unescape(v)),
                _ => err(format!("option {name} needs a value: {name}={what}")),
            }
        };
        match name {
            "lowerdir" => {
                need("DIR[:DIR...]")?;
                self.lowerdirs = parse_lowerdirs(value.unwrap_or_default())?;
            }
            "upperdir" => self.upperdir = Some(PathBuf::from(need("DIR")?)),
            "workdir" => self.workdir = Some(PathBuf::from(need("DIR")?)),
            "timeout" => {
                let v = need("SECONDS")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| OptionError(format!("timeout={v}: not a number of seconds")))?;
                self.timeout = Some(Duration::from_secs_f64(secs.min(1e9)));
            }
            "threaded" => {
                if !parse_bool(name, value)? {
                    self.threads = Some(1);
                }
            }
            "threads" => {
                let v = need("N")?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| OptionError(format!("threads={v}: expected 1 to 1024")))?;
                self.threads = Some(n);
            }
            "fsync" => self.no_fsync = !parse_bool(name, value)?,
            "volatile" => self.no_fsync = true,
            "metacopy" => self.metacopy = parse_bool(name, value)?,
            "passthrough" => self.no_passthrough = !parse_bool(name, value)?,
            "writeback" => self.no_writeback = !parse_bool(name, value)?,
            "debug" => self.debug = true,
            "ro" => self.read_only = true,
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            // Always on (the kernel checks permissions against the merged
            // attributes, as overlayfs does), so there is nothing to record.
            "default_permissions" => {}
            "auto_unmount" => self.auto_unmount = true,
            "dev" => self.dev = Some(true),
            "nodev" => self.dev = Some(false),
            "suid" => self.suid = Some(true),
            "nosuid" => self.suid = Some(false),
            "exec" => self.exec = Some(true),
            "noexec" => self.exec = Some(false),
            "atime" => self.atime = Some(true),
            "noatime" => self.atime = Some(false),
            "sync" => self.sync = true,
            "async" => self.sync = false,
            "dirsync" => self.dirsync = true,
            "uidmapping" | "gidmapping" => {
                let v = need("CONTAINER-ID:HOST-ID:SIZE[:...]")?;
                let ranges =
                    parse_ranges(&v).map_err(|e| OptionError(format!("{name}={v}: {e}")))?;
                if name == "uidmapping" {
                    self.uid_ranges = ranges;
                } else {
                    self.gid_ranges = ranges;
                }
            }
            "squash_to_uid" | "squash_to_gid" => {
                let v = need("ID")?;
                let id: u32 = v
                    .parse()
                    .map_err(|_| OptionError(format!("{name}={v}: not a numeric id")))?;
                if name == "squash_to_uid" {
                    self.squash_uid = Some(id);
                } else {
                    self.squash_gid = Some(id);
                }
            }
            "squash_to_root" => self.squash_to_root = true,
            "userxattr" => self.userxattr = true,
            "redirect_dir" => {
                self.redirect_dir = Some(RedirectDir::parse(value.unwrap_or_default())?)
            }
            "capacity" | "capacity_used" => {
                let v = need("BYTES")?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| OptionError(format!("{name}={v}: expected a number of bytes")))?;
                if name == "capacity_used" {
                    self.capacity_used = n;
                } else if n == 0 {
                    return err(format!("{name}={v}: a limit of 0 bytes allows nothing"));
                } else {
                    self.capacity = Some(n);
                }
            }
            "fsname" => self.fsname = Some(need("NAME")?),
            "subtype" => self.subtype = Some(need("NAME")?),
            n if KEPT.contains(&n) => self.extra.push((n.to_string(), need("VALUE")?)),
            n if IGNORED.contains(&n) || n.starts_with("x-") => self.ignored.push(item.to_string()),
            _ => {
                return err(format!(
                    "unknown mount option '{item}' (see layerfs --help for the accepted options)"
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn basic() {
        let o = MountOptions::parse(&["lowerdir=/a:/b,upperdir=/u,workdir=/w"]).unwrap();
        assert_eq!(o.lowerdirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
    }

    #[test]
    fn escaped_colons_and_commas() {
        let o = MountOptions::parse(&[r"lowerdir=/a\:b:/c\,d"]).unwrap();
        assert_eq!(
            o.lowerdirs,
            vec![PathBuf::from("/a:b"), PathBuf::from("/c,d")]
        );
    }

    #[test]
    fn escaping_as_the_kernel_reads_it() {
        assert_eq!(escape(r"/a,b\c:d e "), r"/a\,b\\c\:d\ e\ ");
        let o = MountOptions::parse(&[r"lowerdir=/c\\d:/x\y, upperdir=/u\ ,workdir=/w\\"]).unwrap();
        assert_eq!(o.lowerdirs, [PathBuf::from(r"/c\d"), PathBuf::from("/xy")]);
        assert_eq!(o.upperdir, Some(PathBuf::from("/u ")), "escaped space kept");
        assert_eq!(o.workdir, Some(PathBuf::from(r"/w\")));
        let o = MountOptions::parse(&["lowerdir=/a , ro"]).unwrap();
        assert_eq!(o.lowerdirs, [PathBuf::from("/a")], "bare space trimmed");
        assert!(o.read_only);
        let bad = std::ffi::OsStr::from_bytes(b"/a\xff");
        assert!(encode_path(Path::new(bad)).is_err());
    }

    /// Encode then parse gives back every path, whatever it holds: a
    /// small generator with a fixed seed over the characters that matter.
    #[test]
    fn encoded_stacks_parse_back_unchanged() {
        const CHARS: &[char] = &[
            '\\', ',', ':', ' ', '\t', '=', '/', '.', 'a', 'Z', '0', '"', '\'', 'é', '\n', '@',
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let path = |next: &mut dyn FnMut(usize) -> usize| -> PathBuf {
            let len = 1 + next(12);
            PathBuf::from(
                (0..len)
                    .map(|_| CHARS[next(CHARS.len())])
                    .collect::<String>(),
            )
        };
        for _ in 0..2000 {
            let lowers: Vec<PathBuf> = (0..1 + next(4)).map(|_| path(&mut next)).collect();
            let (upper, work) = (path(&mut next), path(&mut next));
            let opts = encode_stack(&lowers, Some((&upper, &work))).unwrap();
            let o = MountOptions::parse(&[format!(" {opts} ,ro")])
                .unwrap_or_else(|e| panic!("{opts:?}: {e}"));
            assert_eq!(o.lowerdirs, lowers, "{opts:?}");
            assert_eq!(o.upperdir.as_ref(), Some(&upper), "{opts:?}");
            assert_eq!(o.workdir.as_ref(), Some(&work), "{opts:?}");
            assert!(o.read_only);
            let from = encode_lowerdirs(&lowers).unwrap();
            assert_eq!(parse_lowerdirs(&from).unwrap(), lowers, "{from:?}");
        }
    }

    #[test]
    fn empty_items_and_generic_options() {
        let o = MountOptions::parse(&[
            "lowerdir=l/A:l/B,,volatile,",
            "rw,nodev,noatime,x-systemd.automount,nofail,_netdev,defaults",
        ])
        .unwrap();
        assert_eq!(o.lowerdirs.len(), 2);
        assert!(o.no_fsync);
        assert_eq!(o.dev, Some(false));
        assert_eq!(o.atime, Some(false));
        assert!(o.ignored.contains(&"x-systemd.automount".to_string()));
    }

    #[test]
    fn unknown_option_is_named() {
        let e = MountOptions::parse(&["lowerdir=/a,bogus=1"]).unwrap_err();
        assert!(e.0.contains("bogus=1"), "{e}");
    }

    #[test]
    fn values_required_and_checked() {
        assert!(MountOptions::parse(&["lowerdir="]).is_err());
        assert!(MountOptions::parse(&["lowerdir=/a::/b"]).is_err());
        assert!(MountOptions::parse(&["timeout=abc"]).is_err());
        assert_eq!(
            MountOptions::parse(&["timeout=2.5"]).unwrap().timeout,
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            MountOptions::parse(&["threaded=0"]).unwrap().threads,
            Some(1)
        );
        assert!(MountOptions::parse(&["fsync=maybe"]).is_err());
        assert!(MountOptions::parse(&["fsync=0"]).unwrap().no_fsync);
        assert!(MountOptions::parse(&["writeback=0"]).unwrap().no_writeback);
        let o = MountOptions::parse(&["upperdir=/u,workdir=/w,capacity=4096,capacity_used=5"]);
        assert_eq!(
            o.map(|o| (o.capacity, o.capacity_used)),
            Ok((Some(4096), 5))
        );
        for bad in [
            "upperdir=/u,capacity=0",
            "upperdir=/u,capacity=1G",
            "capacity=4096",
        ] {
            assert!(MountOptions::parse(&[bad]).is_err(), "{bad}");
        }
        assert!(!MountOptions::parse(&["writeback=1"]).unwrap().no_writeback);
    }

    #[test]
    fn redirect_dir_modes() {
        let mode = |s: &str| MountOptions::parse(&[s]).map(|o| o.redirect_mode());
        assert_eq!(mode("lowerdir=/a"), Ok(RedirectDir::On), "default");
        assert_eq!(mode("redirect_dir=on"), Ok(RedirectDir::On));
        assert_eq!(mode("redirect_dir=follow"), Ok(RedirectDir::Follow));
        assert_eq!(mode("redirect_dir=off"), Ok(RedirectDir::Follow));
        assert_eq!(mode("redirect_dir=nofollow"), Ok(RedirectDir::NoFollow));
        for bad in [
            "redirect_dir=ON",
            "redirect_dir=",
            "redirect_dir",
            "redirect_dir=1",
        ] {
            let e = mode(bad).unwrap_err();
            assert!(
                e.0.contains("redirect_dir=") && e.0.contains("nofollow"),
                "{e}"
            );
        }
        assert!(!RedirectDir::Follow.creates() && RedirectDir::Follow.follows());
        assert!(!RedirectDir::NoFollow.creates() && !RedirectDir::NoFollow.follows());
        assert!(RedirectDir::On.creates() && RedirectDir::On.follows());
    }

    #[test]
    fn redirect_dir_conflicts_as_in_the_kernel() {
        let ok = |s: &str| MountOptions::parse(&[s]).is_ok();
        assert!(!ok("userxattr,redirect_dir=on"));
        assert!(!ok("userxattr,redirect_dir=off"));
        assert!(ok("userxattr,redirect_dir=nofollow"));
        assert!(ok("userxattr"));
        assert!(!ok("upperdir=/u,metacopy=on,redirect_dir=follow"));
        assert!(ok("metacopy=on,redirect_dir=follow"), "read-only stack");
        assert!(!ok("metacopy=on,redirect_dir=nofollow"));
        assert!(ok("upperdir=/u,metacopy=on,redirect_dir=on"));
        assert!(ok("upperdir=/u,metacopy=on"));
    }

    #[test]
    fn id_mapping_options() {
        let o = MountOptions::parse(&["uidmapping=:0:1000:1,gidmapping=0:2000:5,squash_to_root"])
            .unwrap();
        let m = o.id_mapping();
        assert_eq!(m.uid.stored(1000), 0);
        assert_eq!(m.gid.stored(2004), 4);
        assert_eq!(m.uid.shown(0), 0, "squash_to_root shows root");
        let o = MountOptions::parse(&["squash_to_root,squash_to_uid=5"]).unwrap();
        assert_eq!(o.id_mapping().uid.shown(9), 5);
        assert_eq!(o.id_mapping().gid.shown(9), 0);
        assert!(MountOptions::parse(&["uidmapping=0:1"]).is_err());
        assert!(MountOptions::parse(&["squash_to_uid=me"]).is_err());
        assert_eq!(
            MountOptions::parse(&["logfile=/tmp/x"])
                .unwrap()
                .extra
                .len(),
            1
        );
    }
}
