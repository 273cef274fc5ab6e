//! husk-image against images built on the fly, in every on-disk form.
//! Ownership and device checks need root and are skipped without it; the
//! block image and test image tests need mkfs.erofs and /bin/busybox
//! (erofs-utils and busybox-static, installed by scripts/setup).

mod cache;
mod common;
mod corrupt;
mod forms;
mod testimage;
mod traversal;
mod unpack;
