//! Entries that try to reach outside the destination are refused, and
//! nothing is written outside it.

use std::fs;
use std::path::Path;

use husk_image::testimage::Entry;
use husk_image::Error;

use crate::common::*;

/// A sentinel directory with the image work dir inside it; returns the
/// error of unpacking `layers` and checks the sentinel is as it was.
fn refused(layers: Vec<Vec<Entry>>) -> Error {
    let sentinel = tempdir();
    let victim = sentinel.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("passwd"), "original").unwrap();
    let work = sentinel.path().join("work");
    fs::create_dir(&work).unwrap();
    let layers = layers
        .into_iter()
        .map(|entries| {
            entries
                .into_iter()
                .map(|mut e| {
                    e.path = e.path.replace("@VICTIM@", victim.to_str().unwrap());
                    if let husk_image::testimage::EntryKind::Symlink(t)
                    | husk_image::testimage::EntryKind::Hardlink(t) = &mut e.kind
                    {
                        *t = t.replace("@VICTIM@", victim.to_str().unwrap());
                    }
                    e
                })
                .collect()
        })
        .collect();
    let err = try_unpack(&spec(layers), &work).expect_err("unpack must be refused");
    assert_untouched(sentinel.path(), &victim);
    err
}

fn assert_untouched(sentinel: &Path, victim: &Path) {
    let mut top = dir_names(sentinel);
    top.retain(|n| n != "work");
    assert_eq!(top, ["victim"], "something was created beside the work dir");
    assert_eq!(dir_names(victim), ["passwd"]);
    assert_eq!(
        fs::read_to_string(victim.join("passwd")).unwrap(),
        "original"
    );
    let work = dir_names(&sentinel.join("work"));
    assert!(
        work.iter().all(|n| n == "Layout" || n == "root"),
        "{work:?}"
    );
}

fn assert_refusal(err: &Error, entry: &str, reason: &str) {
    let msg = err.to_string();
    assert!(matches!(err, Error::UnsafeEntry { .. }), "{msg}");
    assert!(msg.contains(&format!("{entry:?}")), "{msg}");
    assert!(msg.contains(reason), "{msg}");
}

#[test]
fn dot_dot_entries_are_refused() {
    let err = refused(vec![vec![Entry::file("../escape", 0o644, "x")]]);
    assert_refusal(&err, "../escape", "escapes the image root");
    let err = refused(vec![vec![Entry::file("a/../../victim/passwd", 0o644, "x")]]);
    assert_refusal(&err, "a/../../victim/passwd", "escapes the image root");
    let err = refused(vec![vec![Entry::dir("../../..", 0o755)]]);
    assert_refusal(&err, "../../..", "escapes the image root");
}

#[test]
fn writing_through_an_absolute_symlink_is_refused() {
    let err = refused(vec![
        vec![Entry::symlink("evil", "@VICTIM@")],
        vec![Entry::file("evil/passwd", 0o644, "pwned")],
    ]);
    assert_refusal(&err, "evil/passwd", "\"evil\" is a symlink");
}

#[test]
fn writing_through_a_relative_symlink_is_refused() {
    // root is work/root: ../../victim is the sentinel's victim directory.
    let err = refused(vec![
        vec![Entry::symlink("evil", "../../victim")],
        vec![Entry::file("evil/passwd", 0o644, "pwned")],
    ]);
    assert_refusal(&err, "evil/passwd", "\"evil\" is a symlink");
    // Deeper in the tree and within one layer.
    let err = refused(vec![vec![
        Entry::dir("a", 0o755),
        Entry::symlink("a/up", "../../../victim"),
        Entry::dir("a/up/new", 0o755),
    ]]);
    assert_refusal(&err, "a/up/new", "\"a/up\" is a symlink");
}

#[test]
fn symlinks_to_the_root_cannot_be_used_either() {
    let err = refused(vec![
        vec![
            Entry::symlink("etc", "/"),
            Entry::symlink("up", "../../../.."),
        ],
        vec![Entry::file("etc/@VICTIM@/passwd", 0o644, "pwned")],
    ]);
    assert!(matches!(err, Error::UnsafeEntry { .. }), "{err}");
    let err = refused(vec![
        vec![Entry::symlink("up", "../../../../../..")],
        vec![Entry::symlink("up/link", "/")],
    ]);
    assert_refusal(&err, "up/link", "\"up\" is a symlink");
}

#[test]
fn hardlinks_out_of_the_tree_are_refused() {
    let err = refused(vec![vec![Entry::hardlink("pw", "../../etc/passwd")]]);
    assert_refusal(&err, "pw", "hardlink target \"../../etc/passwd\"");
    // Through a symlinked directory.
    let err = refused(vec![
        vec![Entry::symlink("evil", "@VICTIM@")],
        vec![Entry::hardlink("pw", "evil/passwd")],
    ]);
    assert_refusal(&err, "pw", "\"evil\" is a symlink");
}

#[test]
fn an_absolute_hardlink_target_means_inside_the_tree() {
    // /etc/passwd of the host must not be linked: the tree has none.
    let err = refused(vec![vec![Entry::hardlink("pw", "/etc/passwd")]]);
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(matches!(err, Error::Entry { .. }), "{err}");
}

#[test]
fn whiteouts_do_not_reach_through_symlinks() {
    let err = refused(vec![
        vec![Entry::symlink("evil", "@VICTIM@")],
        vec![Entry::whiteout("evil/passwd")],
    ]);
    assert_refusal(&err, "evil/.wh.passwd", "\"evil\" is a symlink");
    let err = refused(vec![
        vec![Entry::symlink("evil", "@VICTIM@")],
        vec![Entry::opaque("evil")],
    ]);
    assert_refusal(&err, "evil/.wh..wh..opq", "\"evil\" is a symlink");
    let err = refused(vec![vec![Entry::file(".wh...", 0o644, "")]]);
    assert_refusal(&err, ".wh...", "invalid whiteout name");
}

#[test]
fn a_symlink_over_the_victim_is_replaced_not_followed() {
    // Replacing the symlink itself is fine; its target is left alone.
    let sentinel = tempdir();
    let victim = sentinel.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("passwd"), "original").unwrap();
    let work = sentinel.path().join("work");
    fs::create_dir(&work).unwrap();
    let target = victim.join("passwd");
    let root = unpack(
        &spec(vec![
            vec![
                Entry::symlink("file", target.to_str().unwrap()),
                Entry::symlink("dir", victim.to_str().unwrap()),
            ],
            vec![
                Entry::file("file", 0o644, "mine"),
                Entry::dir("dir", 0o755),
                Entry::file("dir/passwd", 0o644, "mine"),
            ],
        ]),
        &work,
    );
    assert_eq!(fs::read_to_string(root.join("file")).unwrap(), "mine");
    assert_eq!(fs::read_to_string(root.join("dir/passwd")).unwrap(), "mine");
    assert_untouched(sentinel.path(), &victim);
}
