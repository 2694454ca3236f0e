//! Directory redirects (`overlay.redirect`) against kernel overlayfs: nested
//! redirects met while resolving a redirect in the layers below (a directory
//! renamed twice across remounts, the old upper rotated into the lowers),
//! and the `redirect_dir=on|follow|nofollow|off` modes as the kernel defines
//! them. Every stack is built and read by both implementations, and each
//! reads the other's upper layers back.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const CMP: Compare = Compare {
    ino: false,
    nlink: true,
    mtime: false,
    dir_mtime: false,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Layerfs,
    Kernel,
}

/// Mounts `lowers` (top first) with `upper` (a fresh work dir beside it)
/// under one implementation, with `extra` options.
fn mount_rw(which: Impl, lowers: &[PathBuf], upper: &Path, mnt: &Path, extra: &str) -> Mounted {
    let work = upper.with_extension("work");
    mkdir(upper);
    // The work dir is per mount: a fresh one each time.
    let _ = fs::remove_dir_all(&work);
    mkdir(&work);
    let mut opts = format!("upperdir={},workdir={}", upper.display(), work.display());
    if !extra.is_empty() {
        opts.push(',');
        opts.push_str(extra);
    }
    match which {
        Impl::Layerfs => try_mount_layerfs(&format!("{},{opts}", lowerdir_opt(lowers)), mnt)
            .unwrap_or_else(|e| panic!("mount layerfs on {mnt:?}: {e}")),
        Impl::Kernel => mount_kernel(lowers, mnt, &opts),
    }
}

fn mv(from: &Path, to: &Path) {
    let out = Command::new("mv").arg(from).arg(to).output().unwrap();
    assert!(
        out.status.success(),
        "mv {from:?} {to:?}: {}",
        output_text(&out)
    );
}

fn errno_of<T>(r: io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// What a lookup and a listing of `rel` answer: the error number, or the
/// sorted names.
fn probe(root: &Path, rel: &str) -> Result<Vec<String>, i32> {
    let p = root.join(rel);
    errno_of(fs::symlink_metadata(&p))?;
    let mut names: Vec<String> = errno_of(fs::read_dir(&p))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// The base layer of the nested-redirect scenario (unionmount-testsuite's
/// rename-move-dir): a directory with content, and an empty one beside it.
fn base_layer(l0: &Path) {
    write(&l0.join("a/dir/pop/b"), b"b");
    write(&l0.join("a/dir/c"), b"c");
    write(&l0.join("a/dir/pop/deep/d"), b"d");
    mkdir(&l0.join("a/empty"));
}

/// The three mounts of the scenario, each step by the implementation given:
/// step 1 renames `a/dir` (`first_dest`), step 2 moves a subdirectory of it
/// out, step 3 mounts the three layers with a fresh upper. Returns the
/// final upper stack (top first).
fn two_renames(
    base: &Path,
    tag: &str,
    steps: [Impl; 2],
    first_dest: &str,
    second: (&str, &str),
) -> Vec<PathBuf> {
    let l0 = base.join("l0");
    let u0 = base.join(format!("{tag}-u0"));
    let u1 = base.join(format!("{tag}-u1"));
    let mnt = base.join(format!("{tag}-m"));
    {
        let m = mount_rw(
            steps[0],
            std::slice::from_ref(&l0),
            &u0,
            &mnt,
            "redirect_dir=on",
        );
        mv(&m.path("a/dir"), &m.path(first_dest));
    }
    {
        let m = mount_rw(
            steps[1],
            &[u0.clone(), l0.clone()],
            &u1,
            &mnt,
            "redirect_dir=on",
        );
        mv(&m.path(second.0), &m.path(second.1));
    }
    vec![u1, u0, l0]
}

/// Mounts `lowers` with a fresh upper under both implementations, checks the
/// two trees are equal, and returns the tree.
fn read_both(base: &Path, tag: &str, lowers: &[PathBuf]) -> BTreeMap<Vec<u8>, Node> {
    let k = mount_rw(
        Impl::Kernel,
        lowers,
        &base.join(format!("{tag}-ku")),
        &base.join(format!("{tag}-km")),
        "redirect_dir=on",
    );
    let ours = mount_rw(
        Impl::Layerfs,
        lowers,
        &base.join(format!("{tag}-ou")),
        &base.join(format!("{tag}-om")),
        "redirect_dir=on",
    );
    let want = snapshot(&k.dir);
    let got = snapshot(&ours.dir);
    let d = diff(&got, &want, CMP);
    assert!(
        d.is_empty(),
        "{tag}: layerfs (first) and kernel overlayfs (second) differ:\n{}",
        d.join("\n")
    );
    want
}

fn names(tree: &BTreeMap<Vec<u8>, Node>) -> Vec<String> {
    tree.keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Defect 5 of issue 10: resolving the absolute redirect `/a/empty/dir/pop`
/// in the layers below must follow the redirect of `a/empty/dir` (to
/// `/a/dir`) on the way, as kernel overlayfs does layer by layer. The
/// uppers of each step are written by either implementation and read by
/// both.
#[test]
fn nested_redirects_across_remounts() {
    require!("mv");
    let t = tmp();
    let base = t.path();
    base_layer(&base.join("l0"));
    use Impl::*;
    for steps in [
        [Kernel, Kernel],
        [Layerfs, Layerfs],
        [Kernel, Layerfs],
        [Layerfs, Kernel],
    ] {
        let tag = format!("{:?}{:?}", steps[0], steps[1]).to_lowercase();
        let stack = two_renames(
            base,
            &tag,
            steps,
            "a/empty/dir",
            ("a/empty/dir/pop", "a/empty/pop"),
        );
        let tree = read_both(base, &tag, &stack);
        let n = names(&tree);
        for want in ["a/empty/pop/b", "a/empty/pop/deep/d", "a/empty/dir/c"] {
            assert!(n.iter().any(|x| x == want), "{tag}: no {want} in {n:?}");
        }
        assert!(
            !n.iter().any(|x| x == "a/dir" || x == "a/empty/dir/pop"),
            "{tag}: a moved directory is still visible at its old place: {n:?}"
        );
    }
}

/// The same with a rename inside one directory first: kernel overlayfs then
/// writes a relative redirect (`dir2` → `dir`), which the walk of the
/// absolute path `/a/dir2/pop` must follow on the way too.
#[test]
fn nested_relative_redirect_on_the_way() {
    require!("mv");
    let t = tmp();
    let base = t.path();
    base_layer(&base.join("l0"));
    use Impl::*;
    for steps in [[Kernel, Kernel], [Kernel, Layerfs], [Layerfs, Layerfs]] {
        let tag = format!("{:?}{:?}", steps[0], steps[1]).to_lowercase();
        let stack = two_renames(base, &tag, steps, "a/dir2", ("a/dir2/pop", "a/pop"));
        let tree = read_both(base, &tag, &stack);
        let n = names(&tree);
        for want in ["a/pop/b", "a/pop/deep/d", "a/dir2/c"] {
            assert!(n.iter().any(|x| x == want), "{tag}: no {want} in {n:?}");
        }
    }
}

/// A directory carrying a relative redirect (written by kernel overlayfs
/// for a rename within one directory) moved to another directory must get
/// an absolute redirect: the relative one names a lower entry of the old
/// parent only.
#[test]
fn relative_redirect_moved_to_another_directory() {
    require!("mv");
    let t = tmp();
    let base = t.path();
    base_layer(&base.join("l0"));
    use Impl::*;
    for steps in [[Kernel, Kernel], [Kernel, Layerfs]] {
        let tag = format!("{:?}{:?}", steps[0], steps[1]).to_lowercase();
        let stack = two_renames(base, &tag, steps, "a/dir2", ("a/dir2", "a/empty/dir3"));
        let tree = read_both(base, &tag, &stack);
        let n = names(&tree);
        for want in ["a/empty/dir3/c", "a/empty/dir3/pop/b"] {
            assert!(n.iter().any(|x| x == want), "{tag}: no {want} in {n:?}");
        }
    }
}

/// The same on one upper: kernel overlayfs renames `a/dir` to `a/dir2`
/// (a relative redirect `dir`), then layerfs, on the same upper, moves
/// `a/dir2` to another directory: the redirect must become absolute
/// (`/a/dir`), as the kernel makes it, or the content is lost.
#[test]
fn relative_redirect_in_upper_moved_to_another_directory() {
    require!("mv");
    let t = tmp();
    let base = t.path();
    let l0 = base.join("l0");
    base_layer(&l0);
    let mut trees = Vec::new();
    for second in [Impl::Layerfs, Impl::Kernel] {
        let upper = base.join(format!("{second:?}-u"));
        let mnt = base.join(format!("{second:?}-m"));
        {
            let m = mount_rw(
                Impl::Kernel,
                std::slice::from_ref(&l0),
                &upper,
                &mnt,
                "redirect_dir=on",
            );
            mv(&m.path("a/dir"), &m.path("a/dir2"));
        }
        let relative = getxattr(&upper.join("a/dir2"), "trusted.overlay.redirect").unwrap();
        assert_eq!(relative, b"dir", "the kernel writes a relative redirect");
        {
            let m = mount_rw(
                second,
                std::slice::from_ref(&l0),
                &upper,
                &mnt,
                "redirect_dir=on",
            );
            mv(&m.path("a/dir2"), &m.path("a/empty/dir3"));
            trees.push(snapshot(&m.dir));
        }
        let redirect = getxattr(&upper.join("a/empty/dir3"), "trusted.overlay.redirect");
        assert_eq!(redirect.unwrap(), b"/a/dir", "{second:?}: redirect");
    }
    let d = diff(&trees[0], &trees[1], CMP);
    assert!(
        d.is_empty(),
        "layerfs (first) and kernel (second) differ:\n{}",
        d.join("\n")
    );
    assert!(trees[1].contains_key(&b"a/empty/dir3/pop/b"[..]));
    // And each upper reads back under the other implementation.
    let read = |which: Impl, upper: &str, mnt: &str| {
        let lowers = [base.join(upper), l0.clone()];
        let m = match which {
            Impl::Layerfs => try_mount_layerfs(&lowerdir_opt(&lowers), &base.join(mnt)).unwrap(),
            Impl::Kernel => mount_kernel(&lowers, &base.join(mnt), ""),
        };
        snapshot(&m.dir)
    };
    for (tree, what) in [
        (
            read(Impl::Kernel, "Layerfs-u", "rb1"),
            "layerfs' upper under the kernel",
        ),
        (
            read(Impl::Layerfs, "Kernel-u", "rb2"),
            "the kernel's upper under layerfs",
        ),
    ] {
        let d = diff(&tree, &trees[1], CMP);
        assert!(d.is_empty(), "{what} differs:\n{}", d.join("\n"));
    }
}

/// `redirect_dir=off|follow|nofollow` (defect 6 of issue 10): renaming a
/// directory with lower parts answers EXDEV as in kernel overlayfs, `mv`
/// then copies, and the result (tree and upper) is the kernel's. A new
/// directory still renames. `on` keeps renaming with a redirect.
#[test]
fn redirect_dir_modes_rename_like_kernel() {
    require!("mv");
    let t = tmp();
    let base = t.path();
    let l0 = base.join("l0");
    base_layer(&l0);
    for mode in ["off", "follow", "nofollow", "on"] {
        let opt = format!("redirect_dir={mode}");
        let mut trees = Vec::new();
        for which in [Impl::Layerfs, Impl::Kernel] {
            let tag = format!("{mode}-{which:?}");
            let upper = base.join(format!("{tag}-u"));
            let m = mount_rw(
                which,
                std::slice::from_ref(&l0),
                &upper,
                &base.join(format!("{tag}-m")),
                &opt,
            );
            let r = errno_of(fs::rename(m.path("a/dir"), m.path("a/renamed")));
            if mode == "on" {
                assert_eq!(r, Ok(()), "{tag}: rename of a lower dir");
            } else {
                assert_eq!(r, Err(libc::EXDEV), "{tag}: rename of a lower dir");
                mv(&m.path("a/dir"), &m.path("a/renamed"));
            }
            mkdir(&m.path("new/sub"));
            write(&m.path("new/sub/f"), b"f");
            assert_eq!(
                errno_of(fs::rename(m.path("new"), m.path("a/empty/new"))),
                Ok(()),
                "{tag}: rename of a directory made on this mount"
            );
            let redirect = getxattr(&upper.join("a/renamed"), "trusted.overlay.redirect");
            assert_eq!(
                redirect.is_ok(),
                mode == "on",
                "{tag}: redirect on disk: {redirect:?}"
            );
            trees.push(snapshot(&m.dir));
        }
        let d = diff(&trees[0], &trees[1], CMP);
        assert!(
            d.is_empty(),
            "redirect_dir={mode}: layerfs (first) and kernel (second) differ:\n{}",
            d.join("\n")
        );
        // Each upper reads back under the other implementation.
        for (which, other) in [(Impl::Layerfs, Impl::Kernel), (Impl::Kernel, Impl::Layerfs)] {
            let upper = base.join(format!("{mode}-{which:?}-u"));
            let rb = base.join(format!("{mode}-{which:?}-rb"));
            let lowers = [upper, l0.clone()];
            let m = match other {
                Impl::Layerfs => try_mount_layerfs(&lowerdir_opt(&lowers), &rb).unwrap(),
                Impl::Kernel => mount_kernel(&lowers, &rb, ""),
            };
            let d = diff(&snapshot(&m.dir), &trees[1], CMP);
            assert!(
                d.is_empty(),
                "redirect_dir={mode}: {which:?}'s upper under {other:?} differs:\n{}",
                d.join("\n")
            );
        }
    }
}

/// A stack holding redirects (written by kernel overlayfs) read with each
/// mode: `nofollow` refuses to follow them, and kernel overlayfs then
/// answers EPERM for the lookup of a redirected directory that has layers
/// below it; `off` (the kernel's default `redirect_always_follow`) and
/// `follow` follow them.
#[test]
fn redirect_dir_modes_follow_like_kernel() {
    require!("mv");
    let t = tmp();
    let base = t.path();
    base_layer(&base.join("l0"));
    use Impl::*;
    let stack = two_renames(
        base,
        "k",
        [Kernel, Kernel],
        "a/empty/dir",
        ("a/empty/dir/pop", "a/empty/pop"),
    );
    let paths = [
        "a",
        "a/empty",
        "a/empty/dir",
        "a/empty/pop",
        "a/empty/pop/deep",
    ];
    // layerfs' `off` is the kernel's under its default module parameter
    // redirect_always_follow=Y; a kernel built without it means `nofollow`.
    let always_follow = fs::read_to_string("/sys/module/overlay/parameters/redirect_always_follow")
        .map_or(true, |v| v.trim() != "N");
    for mode in ["nofollow", "follow", "off", "on"] {
        let mut answers = Vec::new();
        for which in [Layerfs, Kernel] {
            let tag = format!("{mode}-{which:?}");
            let opt = match (mode, which) {
                ("off", Kernel) if !always_follow => "follow",
                _ => mode,
            };
            let m = mount_rw(
                which,
                &stack,
                &base.join(format!("{tag}-u")),
                &base.join(format!("{tag}-m")),
                &format!("redirect_dir={opt}"),
            );
            let a: Vec<_> = paths.iter().map(|p| (p, probe(&m.dir, p))).collect();
            answers.push(a);
        }
        assert_eq!(
            answers[0], answers[1],
            "redirect_dir={mode}: layerfs (first) and kernel (second) answer differently"
        );
        let pop = &answers[1][3].1;
        if mode == "nofollow" {
            assert_eq!(pop, &Err(libc::EPERM), "kernel refuses the redirect");
        } else {
            assert_eq!(pop, &Ok(vec!["b".to_string(), "deep".to_string()]));
        }
    }
}

/// Values the kernel refuses are refused at mount time, with a message.
#[test]
fn redirect_dir_bad_values_refused() {
    require!("mv");
    let t = tmp();
    let base = t.path();
    let l0 = base.join("l0");
    base_layer(&l0);
    let up = base.join("u");
    let work = base.join("w");
    mkdir(&up);
    mkdir(&work);
    let rw = format!("upperdir={},workdir={}", up.display(), work.display());
    for (extra, says) in [
        ("redirect_dir=bogus", "redirect_dir=bogus"),
        ("redirect_dir=ON", "redirect_dir=ON"),
        ("redirect_dir", "redirect_dir"),
        ("userxattr,redirect_dir=on", "userxattr"),
        ("userxattr,redirect_dir=off", "userxattr"),
        ("metacopy=on,redirect_dir=follow", "metacopy"),
        ("metacopy=on,redirect_dir=nofollow", "metacopy"),
    ] {
        let opts = format!("{},{rw},{extra}", lowerdir_opt(std::slice::from_ref(&l0)));
        let mnt = base.join("m");
        mkdir(&mnt);
        let out = Command::new(layerfs_bin())
            .arg("-o")
            .arg(&opts)
            .arg(&mnt)
            .output()
            .unwrap();
        let text = output_text(&out);
        if out.status.success() {
            let _ = Command::new("umount").arg(&mnt).status();
            panic!("{extra}: mounted");
        }
        assert!(text.contains(says), "{extra}: message {text:?}");
        assert!(!is_mounted(&mnt), "{extra}: left a mount");
    }
    // What the kernel accepts is accepted.
    for extra in [
        "redirect_dir=nofollow,userxattr",
        "metacopy=on,redirect_dir=on",
    ] {
        let opts = format!("{},{rw},{extra}", lowerdir_opt(std::slice::from_ref(&l0)));
        let _ = fs::remove_dir_all(&work);
        mkdir(&work);
        let m = try_mount_layerfs(&opts, &base.join("m"));
        assert!(m.is_ok(), "{extra}: {:?}", m.err());
    }
}
