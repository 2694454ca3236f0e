//! fuse-overlayfs' dynamic id mapping (`uidmapping=`, `gidmapping=`) and
//! ownership squashing (`squash_to_uid=`, `squash_to_gid=`,
//! `squash_to_root`).
//!
//! containers-storage passes `uidmapping=CONTAINER:HOST:SIZE[:...]` when a
//! container runs with other ids than its image is stored with: instead of
//! chown'ing a copy of every layer, the daemon shows an id stored on disk as
//! CONTAINER+n as HOST+n, and the container's user namespace turns HOST+n
//! back into CONTAINER+n. Writes go the other way. Ids on disk outside
//! every range show as the overflow id (nobody), as in a user namespace.
//!
//! The mapping is applied only at the FUSE boundary (`fs.rs`): everything
//! below it works with the ids stored on disk.

use std::fmt;

/// One `CONTAINER:HOST:SIZE` triple: ids `stored..stored+len` on disk show
/// as `shown..shown+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub stored: u32,
    pub shown: u32,
    pub len: u32,
}

/// The mapping for one kind of id (users or groups).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
    /// Every file shows this owner; ownership changes are best effort.
    squash: Option<u32>,
    /// Shown for stored ids no range covers.
    overflow: u32,
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.stored, self.shown, self.len)
    }
}

/// Parses `C:H:S[:C:H:S...]`. Empty fields are skipped, as fuse-overlayfs
/// does: containers-storage sends a leading colon (`uidmapping=:0:100:5000`).
pub fn parse_ranges(v: &str) -> Result<Vec<IdRange>, String> {
    let nums = v
        .split(':')
        .filter(|f| !f.is_empty())
        .map(|f| {
            f.parse::<u32>()
                .map_err(|_| format!("'{f}' is not a user or group id"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    if nums.is_empty() || nums.len() % 3 != 0 {
        return Err("expected CONTAINER-ID:HOST-ID:SIZE triples separated by ':'".into());
    }
    nums.chunks(3)
        .map(|c| {
            let r = IdRange {
                stored: c[0],
                shown: c[1],
                len: c[2],
            };
            let fits = |start: u32| start.checked_add(r.len).is_some();
            if r.len == 0 || !fits(r.stored) || !fits(r.shown) {
                Err(format!("{r}: empty range or one past the last id"))
            } else {
                Ok(r)
            }
        })
        .collect()
}

impl IdMap {
    pub fn new(ranges: Vec<IdRange>, squash: Option<u32>, overflow: u32) -> IdMap {
        IdMap {
            ranges,
            squash,
            overflow,
        }
    }

    /// Nothing to translate: the common case, checked on every reply.
    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty() && self.squash.is_none()
    }

    pub fn squashed(&self) -> bool {
        self.squash.is_some()
    }

    /// The id the kernel is told for an id stored on disk.
    pub fn shown(&self, stored: u32) -> u32 {
        if let Some(s) = self.squash {
            return s;
        }
        if self.ranges.is_empty() {
            return stored;
        }
        self.ranges
            .iter()
            .find(|r| stored >= r.stored && stored - r.stored < r.len)
            .map_or(self.overflow, |r| r.shown + (stored - r.stored))
    }

    /// The id to store on disk for an id the kernel sent (a caller's id,
    /// or the new owner in a chown). An id no range covers is stored as
    /// the overflow id, as fuse-overlayfs does.
    pub fn stored(&self, shown: u32) -> u32 {
        if self.ranges.is_empty() {
            return shown;
        }
        self.ranges
            .iter()
            .find(|r| shown >= r.shown && shown - r.shown < r.len)
            .map_or(self.overflow, |r| r.stored + (shown - r.shown))
    }
}

/// The user and group mappings of one mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMapping {
    pub uid: IdMap,
    pub gid: IdMap,
}

impl IdMapping {
    pub fn is_identity(&self) -> bool {
        self.uid.is_identity() && self.gid.is_identity()
    }

    /// With squashing, a chown that the backing filesystem refuses is not
    /// an error: the owner shown never changes anyway.
    pub fn squashed(&self) -> bool {
        self.uid.squashed() || self.gid.squashed()
    }
}

/// POSIX ACL xattrs name users and groups by id: those ids are mapped
/// like owners. `to_shown` picks the direction.
pub fn map_acl(ids: &IdMapping, name: &[u8], value: &mut [u8], to_shown: bool) {
    const ACL_USER: u16 = 0x02;
    const ACL_GROUP: u16 = 0x08;
    if ids.is_identity()
        || !(name == b"system.posix_acl_access" || name == b"system.posix_acl_default")
    {
        return;
    }
    // A 4-byte version header, then 8-byte entries {tag u16, perm u16, id u32}.
    for e in value.get_mut(4..).unwrap_or_default().chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let map = match tag {
            ACL_USER => &ids.uid,
            ACL_GROUP => &ids.gid,
            _ => continue,
        };
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let id = if to_shown {
            map.shown(id)
        } else {
            map.stored(id)
        };
        e[4..8].copy_from_slice(&id.to_le_bytes());
    }
}

/// The kernel's overflow id (`/proc/sys/kernel/overflow{u,g}id`), shown for
/// ids outside the mapping; 65534 where /proc does not say.
pub fn overflow_id(kind: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/kernel/overflow{kind}id"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_triples_and_skips_empty_fields() {
        let r = parse_ranges(":0:100:5000").unwrap();
        assert_eq!(
            r,
            vec![IdRange {
                stored: 0,
                shown: 100,
                len: 5000
            }]
        );
        assert_eq!(parse_ranges("0:1000:1:1:110000:65536").unwrap().len(), 2);
        assert!(parse_ranges("0:1000").is_err());
        assert!(parse_ranges("0:x:1").is_err());
        assert!(parse_ranges("0:1:0").is_err());
        assert!(parse_ranges("4294967295:0:2").is_err());
        assert!(parse_ranges("").is_err());
    }

    #[test]
    fn maps_both_ways_and_overflows() {
        let m = IdMap::new(
            parse_ranges("0:1000:1:1:110000:65536").unwrap(),
            None,
            65534,
        );
        assert_eq!(m.shown(0), 1000);
        assert_eq!(m.shown(1), 110000);
        assert_eq!(m.shown(65536), 175535);
        assert_eq!(m.shown(65537), 65534);
        assert_eq!(m.stored(1000), 0);
        assert_eq!(m.stored(110005), 6);
        assert_eq!(m.stored(5), 65534);
        assert!(!m.is_identity());
        assert!(IdMap::default().is_identity());
        assert_eq!(IdMap::default().shown(42), 42);
    }

    #[test]
    fn acl_entries_are_mapped() {
        let ids = IdMapping {
            uid: IdMap::new(parse_ranges("0:1000:100").unwrap(), None, 65534),
            gid: IdMap::new(parse_ranges("0:2000:100").unwrap(), None, 65534),
        };
        let mut acl = vec![2, 0, 0, 0];
        for (tag, id) in [(1u16, u32::MAX), (2, 5), (8, 7), (0x20, u32::MAX)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&7u16.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let orig = acl.clone();
        map_acl(&ids, b"system.posix_acl_access", &mut acl, true);
        let id_at =
            |a: &[u8], i: usize| u32::from_le_bytes(a[8 + i * 8..12 + i * 8].try_into().unwrap());
        assert_eq!(
            (id_at(&acl, 0), id_at(&acl, 1), id_at(&acl, 2)),
            (u32::MAX, 1005, 2007)
        );
        map_acl(&ids, b"system.posix_acl_access", &mut acl, false);
        assert_eq!(acl, orig);
        map_acl(&ids, b"user.other", &mut acl, true);
        assert_eq!(acl, orig);
    }

    #[test]
    fn squash_wins_over_ranges_when_shown() {
        let m = IdMap::new(parse_ranges("0:1000:10").unwrap(), Some(7), 65534);
        assert_eq!(m.shown(3), 7);
        assert_eq!(m.shown(99), 7);
        assert_eq!(m.stored(1003), 3);
        assert!(m.squashed());
    }
}
