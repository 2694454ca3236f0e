//! The lookup merge rule of overlayfs, as a pure function over what each
//! layer holds under one name, top layer first.
//!
//! - the topmost entry wins;
//! - a whiteout hides the name in every layer below it;
//! - a non-directory hides everything below it;
//! - a directory merges with same-named directories below it until one is
//!   opaque, a whiteout is met, or a non-directory is met (that non-directory
//!   and everything below it are ignored).

use std::io;

/// What one layer holds under the looked-up name; `T` is whatever the
/// caller keeps for a layer that contributes (an fd, a layer index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe<T> {
    Absent,
    Whiteout,
    NonDir(T),
    Dir(T, bool),
}

/// The merged result.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved<T> {
    Absent,
    NonDir(T),
    /// Contributing directories, top first.
    Dir(Vec<T>),
}

/// Applies the rule to lazily computed probes: the iterator is not advanced
/// past the layer that ends the merge, so no I/O is spent on hidden layers.
pub fn resolve<T, I>(probes: I) -> io::Result<Resolved<T>>
where
    I: IntoIterator<Item = io::Result<Probe<T>>>,
{
    let mut dirs: Vec<T> = Vec::new();
    for item in probes {
        match item? {
            Probe::Absent => continue,
            Probe::Whiteout => break,
            Probe::NonDir(t) => {
                if dirs.is_empty() {
                    return Ok(Resolved::NonDir(t));
                }
                break;
            }
            Probe::Dir(t, opaque) => {
                dirs.push(t);
                if opaque {
                    break;
                }
            }
        }
    }
    if dirs.is_empty() {
        Ok(Resolved::Absent)
    } else {
        Ok(Resolved::Dir(dirs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test shorthand: what a layer holds, without payload.
    #[derive(Clone, Copy)]
    enum P {
        Absent,
        Whiteout,
        NonDir,
        Dir { opaque: bool },
    }

    fn run(probes: &[P]) -> (Resolved<usize>, usize) {
        let mut probed = 0;
        let it = probes.iter().enumerate().map(|(i, p)| {
            probed += 1;
            Ok(match *p {
                P::Absent => Probe::Absent,
                P::Whiteout => Probe::Whiteout,
                P::NonDir => Probe::NonDir(i),
                P::Dir { opaque } => Probe::Dir(i, opaque),
            })
        });
        let r = resolve(it).unwrap();
        (r, probed)
    }

    use P::*;

    #[test]
    fn topmost_non_dir_wins() {
        assert_eq!(run(&[Absent, NonDir, NonDir]), (Resolved::NonDir(1), 2));
        assert_eq!(
            run(&[NonDir, Dir { opaque: false }]),
            (Resolved::NonDir(0), 1)
        );
    }

    #[test]
    fn whiteout_hides_below() {
        assert_eq!(run(&[Whiteout, NonDir]), (Resolved::Absent, 1));
        assert_eq!(
            run(&[Dir { opaque: false }, Whiteout, Dir { opaque: false }]),
            (Resolved::Dir(vec![0]), 2)
        );
    }

    #[test]
    fn dirs_merge_until_opaque() {
        let d = Dir { opaque: false };
        assert_eq!(run(&[d, Absent, d]), (Resolved::Dir(vec![0, 2]), 3));
        assert_eq!(
            run(&[d, Dir { opaque: true }, d]),
            (Resolved::Dir(vec![0, 1]), 2)
        );
    }

    #[test]
    fn non_dir_below_a_dir_stops_the_merge() {
        let d = Dir { opaque: false };
        assert_eq!(run(&[d, NonDir, d]), (Resolved::Dir(vec![0]), 2));
    }

    #[test]
    fn nothing_found() {
        assert_eq!(run(&[Absent, Absent]), (Resolved::Absent, 2));
        assert_eq!(run(&[]), (Resolved::Absent, 0));
    }
}
