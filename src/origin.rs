//! The `overlay.origin` xattr: kernel overlayfs' on-disk file handle of the
//! lower file an upper file was copied up from (`struct ovl_fb`). layerfs
//! writes it on copy-up, so st_ino survives copy-up and remounts under
//! layerfs and kernel overlayfs alike, and reads it back for the same reason.

use crate::sys::FileHandleBytes;

const OVL_FH_VERSION: u8 = 0;
const OVL_FH_MAGIC: u8 = 0xfb;
/// version, magic, len, flags, type, uuid[16].
const HEADER_LEN: usize = 21;
const FLAG_BIG_ENDIAN: u8 = 1 << 0;
const FLAG_ANY_ENDIAN: u8 = 1 << 1;
const FLAG_PATH_UPPER: u8 = 1 << 2;
const FLAGS_ALL: u8 = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;

/// A decoded origin: which filesystem (by UUID) and which file on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub uuid: [u8; 16],
    pub handle: FileHandleBytes,
}

/// Encodes an origin exactly as the kernel's `ovl_encode_real_fh` does.
pub fn encode(uuid: &[u8; 16], handle: &FileHandleBytes) -> Option<Vec<u8>> {
    let len = HEADER_LEN + handle.bytes.len();
    if len > u8::MAX as usize || handle.handle_type <= 0 || handle.handle_type > 0xff {
        return None;
    }
    let flags = if cfg!(target_endian = "big") {
        FLAG_BIG_ENDIAN
    } else {
        0
    };
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&[
        OVL_FH_VERSION,
        OVL_FH_MAGIC,
        len as u8,
        flags,
        handle.handle_type as u8,
    ]);
    v.extend_from_slice(uuid);
    v.extend_from_slice(&handle.bytes);
    Some(v)
}

/// Decodes an origin xattr value; None for anything malformed or written on
/// a machine of the other byte order.
pub fn decode(value: &[u8]) -> Option<Origin> {
    if value.len() < HEADER_LEN {
        return None;
    }
    let (version, magic, len, flags, ftype) = (value[0], value[1], value[2], value[3], value[4]);
    if version != OVL_FH_VERSION || magic != OVL_FH_MAGIC || len as usize != value.len() {
        return None;
    }
    if flags & !FLAGS_ALL != 0 {
        return None;
    }
    let ours = if cfg!(target_endian = "big") {
        FLAG_BIG_ENDIAN
    } else {
        0
    };
    if flags & FLAG_ANY_ENDIAN == 0 && (flags & FLAG_BIG_ENDIAN) != ours {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&value[5..21]);
    Some(Origin {
        uuid,
        handle: FileHandleBytes {
            handle_type: ftype as i32,
            bytes: value[HEADER_LEN..].to_vec(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = FileHandleBytes {
            handle_type: 1,
            bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
        };
        let uuid = [7u8; 16];
        let v = encode(&uuid, &h).unwrap();
        assert_eq!(v.len(), 29);
        assert_eq!(&v[..5], &[0, 0xfb, 29, 0, 1]);
        assert_eq!(decode(&v), Some(Origin { uuid, handle: h }));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0u8; 21]), None);
        let mut v = encode(
            &[0; 16],
            &FileHandleBytes {
                handle_type: 1,
                bytes: vec![0; 8],
            },
        )
        .unwrap();
        v[2] = 5;
        assert_eq!(decode(&v), None);
    }
}
