//! Layer semantics: whiteouts, links, ownership, modes, special files,
//! replacement of what lower layers left.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use husk_image::testimage::{Entry, MTIME};

use crate::common::*;

#[test]
fn whiteouts_delete_files_and_directories() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![
            vec![
                Entry::dir("a", 0o755),
                Entry::file("a/gone", 0o644, "x"),
                Entry::file("a/stays", 0o644, "x"),
                Entry::dir("b", 0o755),
                Entry::dir("b/deep", 0o755),
                Entry::file("b/deep/f", 0o644, "x"),
                Entry::symlink("link", "a"),
            ],
            vec![
                Entry::whiteout("a/gone"),
                Entry::whiteout("b"),
                Entry::whiteout("link"),
                // Of something that never existed: nothing to do.
                Entry::whiteout("a/never"),
                Entry::whiteout("nodir/never"),
            ],
        ]),
        dir.path(),
    );
    assert!(!root.join("a/gone").exists());
    assert!(root.join("a/stays").exists());
    assert!(!root.join("b").exists());
    assert!(fs::symlink_metadata(root.join("link")).is_err());
    assert!(root.join("a").is_dir(), "the symlink's target stays");
    assert!(!root.join("nodir").exists(), "a whiteout creates nothing");
    let names: Vec<String> = listing(&root).into_keys().collect();
    assert!(names.iter().all(|n| !n.contains(".wh.")), "{names:?}");
}

#[test]
fn an_opaque_directory_keeps_only_what_its_layer_adds() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![
            vec![
                Entry::dir("d", 0o755),
                Entry::file("d/lower", 0o644, "x"),
                Entry::dir("d/sub", 0o755),
                Entry::file("d/sub/lower", 0o644, "x"),
                Entry::dir("d/gone", 0o755),
                Entry::file("d/gone/f", 0o644, "x"),
                Entry::file("outside", 0o644, "x"),
            ],
            vec![
                Entry::dir("d", 0o755),
                // Before the marker in the same layer: kept.
                Entry::file("d/before", 0o644, "b"),
                Entry::dir("d/sub", 0o755),
                Entry::file("d/sub/mine", 0o644, "m"),
                Entry::opaque("d"),
                // After it: kept too.
                Entry::file("d/after", 0o644, "a"),
            ],
        ]),
        dir.path(),
    );
    let mut names: Vec<String> = listing(&root.join("d")).into_keys().collect();
    names.sort();
    assert_eq!(names, ["after", "before", "sub", "sub/mine"]);
    assert!(root.join("outside").exists());
}

#[test]
fn an_opaque_marker_alone_keeps_implicit_parents_of_its_layer() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![
            vec![
                Entry::dir("d", 0o755),
                Entry::dir("d/x", 0o755),
                Entry::file("d/x/lower", 0o644, "x"),
            ],
            // No directory headers for d/x: its new file still counts.
            vec![Entry::file("d/x/new", 0o644, "n"), Entry::opaque("d")],
        ]),
        dir.path(),
    );
    assert!(root.join("d/x/new").is_file());
    assert!(!root.join("d/x/lower").exists());
}

#[test]
fn hardlinks_share_an_inode_within_and_across_layers() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![
            vec![
                Entry::file("f", 0o644, "content"),
                Entry::hardlink("same-layer", "f"),
                Entry::symlink("sym", "f"),
            ],
            vec![
                Entry::hardlink("next-layer", "/f"),
                // A hardlink to a symlink links the symlink itself.
                Entry::hardlink("sym-link", "sym"),
            ],
        ]),
        dir.path(),
    );
    let ino = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("f"), ino("same-layer"));
    assert_eq!(ino("f"), ino("next-layer"));
    assert_eq!(fs::metadata(root.join("f")).unwrap().nlink(), 3);
    assert_eq!(ino("sym"), ino("sym-link"));
    assert!(fs::symlink_metadata(root.join("sym-link"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn symlinks_keep_their_targets_verbatim() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![vec![
            Entry::symlink("abs", "/etc/passwd"),
            Entry::symlink("rel", "../../x"),
            Entry::symlink("dangling", "nowhere"),
        ]]),
        dir.path(),
    );
    let target = |p: &str| fs::read_link(root.join(p)).unwrap();
    assert_eq!(target("abs").to_str(), Some("/etc/passwd"));
    assert_eq!(target("rel").to_str(), Some("../../x"));
    assert_eq!(target("dangling").to_str(), Some("nowhere"));
}

#[test]
fn modes_and_mtimes_are_applied() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![vec![
            Entry::dir("tmp", 0o1777),
            Entry::dir("private", 0o700),
            Entry::dir("shared", 0o2775),
            Entry::file("shared/setuid", 0o4755, "x"),
            Entry::file("shared/setgid", 0o2711, "x"),
            Entry::file("shared/plain", 0o640, "x").mtime(1_000_000),
            Entry::dir("ro", 0o555),
            Entry::file("ro/f", 0o444, "x"),
        ]]),
        dir.path(),
    );
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("private"), 0o700);
    assert_eq!(mode("shared"), 0o2775);
    assert_eq!(mode("shared/setuid"), 0o4755);
    assert_eq!(mode("shared/setgid"), 0o2711);
    assert_eq!(mode("shared/plain"), 0o640);
    assert_eq!(mode("ro"), 0o555);
    let mtime = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mtime();
    assert_eq!(mtime("shared/plain"), 1_000_000);
    assert_eq!(mtime("shared/setuid"), MTIME as i64);
    // Set after its children were created.
    assert_eq!(mtime("shared"), MTIME as i64);
    assert_eq!(mtime("ro"), MTIME as i64);
    // So that an unprivileged run can remove the temporary directory.
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn ownership_is_applied_without_following_symlinks() {
    if !is_root() {
        return husk_skip::skip("needs root");
    }
    let dir = tempdir();
    let root = unpack(
        &spec(vec![vec![
            Entry::dir("home", 0o755),
            Entry::dir("home/u", 0o750).owner(1000, 1000),
            Entry::file("home/u/f", 0o4755, "x").owner(1000, 1000),
            Entry::symlink("home/u/l", "f").owner(1001, 1002),
            Entry::file("nobody", 0o644, "x").owner(65534, 65534),
            Entry::file("big-ids", 0o644, "x").owner(100_000, 200_000),
        ]]),
        dir.path(),
    );
    let owner = |p: &str| {
        let m = fs::symlink_metadata(root.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("home/u"), (1000, 1000));
    assert_eq!(owner("home/u/f"), (1000, 1000));
    assert_eq!(owner("home/u/l"), (1001, 1002));
    assert_eq!(owner("nobody"), (65534, 65534));
    assert_eq!(owner("big-ids"), (100_000, 200_000));
    assert_eq!(owner("home"), (0, 0));
    // chown clears setuid; it is applied after.
    let mode = fs::metadata(root.join("home/u/f")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o4755);
}

#[test]
fn devices_and_fifos() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![vec![
            Entry::dir("dev", 0o755),
            Entry::char_device("dev/null", 0o666, 1, 3),
            Entry::block_device("dev/loop9", 0o660, 7, 9).owner(0, 6),
            Entry::fifo("dev/pipe", 0o620),
        ]]),
        dir.path(),
    );
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
    assert!(meta("dev/pipe").file_type().is_fifo());
    assert_eq!(meta("dev/pipe").mode() & 0o7777, 0o620);
    if !is_root() {
        assert!(!root.join("dev/null").exists(), "made without root");
        return husk_skip::skip("device nodes need root");
    }
    assert!(meta("dev/null").file_type().is_char_device());
    assert_eq!(meta("dev/null").rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(meta("dev/null").mode() & 0o7777, 0o666);
    assert!(meta("dev/loop9").file_type().is_block_device());
    assert_eq!(meta("dev/loop9").rdev(), rustix::fs::makedev(7, 9));
    assert_eq!(meta("dev/loop9").gid(), 6);
}

#[test]
fn later_layers_replace_whatever_is_there() {
    let dir = tempdir();
    let outside = dir.path().join("outside-target");
    fs::write(&outside, "untouched").unwrap();
    let outside_str = outside.to_str().unwrap().to_string();
    let root = unpack(
        &spec(vec![
            vec![
                Entry::file("file-then-dir", 0o644, "x"),
                Entry::dir("dir-then-file", 0o755),
                Entry::file("dir-then-file/child", 0o644, "x"),
                Entry::symlink("link-then-file", &outside_str),
                Entry::file("linked", 0o644, "shared"),
                Entry::hardlink("linked-2", "linked"),
                Entry::dir("kept", 0o700),
                Entry::file("kept/child", 0o644, "x"),
            ],
            vec![
                Entry::dir("file-then-dir", 0o755),
                Entry::file("dir-then-file", 0o644, "now a file"),
                Entry::file("link-then-file", 0o644, "replaced"),
                // Rewriting one name of a hardlinked file leaves the other.
                Entry::file("linked-2", 0o644, "new"),
                // A directory over a directory keeps its contents.
                Entry::dir("kept", 0o755),
            ],
        ]),
        dir.path(),
    );
    assert!(root.join("file-then-dir").is_dir());
    assert_eq!(
        fs::read_to_string(root.join("dir-then-file")).unwrap(),
        "now a file"
    );
    let meta = fs::symlink_metadata(root.join("link-then-file")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(fs::read_to_string(&outside).unwrap(), "untouched");
    assert_eq!(fs::read_to_string(root.join("linked")).unwrap(), "shared");
    assert_eq!(fs::read_to_string(root.join("linked-2")).unwrap(), "new");
    assert!(root.join("kept/child").exists());
    assert_eq!(
        fs::metadata(root.join("kept")).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn a_root_entry_and_absolute_paths_land_in_the_destination() {
    let dir = tempdir();
    let root = unpack(
        &spec(vec![vec![
            Entry::dir("./", 0o751),
            Entry::file("/abs/file", 0o644, "a"),
            Entry::file("./dot/file", 0o644, "d"),
            Entry::file("x/../y", 0o644, "y"),
        ]]),
        dir.path(),
    );
    assert_eq!(fs::read_to_string(root.join("abs/file")).unwrap(), "a");
    assert_eq!(fs::read_to_string(root.join("dot/file")).unwrap(), "d");
    assert_eq!(fs::read_to_string(root.join("y")).unwrap(), "y");
    assert_eq!(fs::metadata(&root).unwrap().mode() & 0o7777, 0o751);
    // Implicit parents are made 0755.
    assert_eq!(
        fs::metadata(root.join("abs")).unwrap().mode() & 0o7777,
        0o755
    );
}
