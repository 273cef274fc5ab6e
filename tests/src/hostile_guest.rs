//! A tiny hostile guest, natively runnable like the null guest: it drives
//! the first virtio-mmio device (a virtio-blk disk) straight from its
//! registers and posts one read whose data lands on the queue's own avail
//! ring and request header. With [`self_feeding_disk`] as that disk, every
//! completion publishes the next request, forever: the attack that once
//! kept husk's event loop at 100 % and deaf to its API and to SIGTERM.
//!
//! 32-bit code (PVH entry, flat protected mode, no paging): `mov dword
//! [abs32], imm32` is `C7 05 abs32 imm32` there (in 64-bit mode the same
//! bytes are RIP-relative).

use crate::null_guest::{elf_with, LOAD_ADDR};

/// Where husk puts the first virtio-mmio device.
pub const MMIO_BASE: u32 = 0xd000_0000;
/// What the guest prints once the device is live and notified.
pub const NOTIFIED: &[u8] = b"hostile guest: notified\n";
/// Queue size the guest picks.
const QUEUE: u16 = 16;
/// The rings and buffers: one page after the code.
const DATA: u32 = LOAD_ADDR as u32 + 0x1000;
const DESC: u32 = DATA;
const AVAIL: u32 = DATA + 0x100;
/// Used ring: after the avail ring (4 + 2 * 16 + 2 bytes), 4-aligned.
const USED: u32 = AVAIL + 0x28;
/// The request header, inside the 512 bytes a read over the avail ring
/// overwrites (the used ring ends at AVAIL + 0xae).
pub const HEADER_IN_SECTOR: usize = 0xb0;
const HEADER: u32 = AVAIL + HEADER_IN_SECTOR as u32;
const STATUS: u32 = DATA + 0x400;
/// Sectors of the self-feeding disk: a u16's worth, so avail idx (a u16)
/// matches the sector again when the loop wraps around the disk.
pub const DISK_SECTORS: usize = 1 << 16;

fn print(c: &mut Vec<u8>, line: &[u8]) {
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    for &b in line {
        c.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
}

fn mmio_write(c: &mut Vec<u8>, offset: u32, value: u32) {
    c.extend_from_slice(&[0xc7, 0x05]); // mov dword [abs32], imm32
    c.extend_from_slice(&(MMIO_BASE + offset).to_le_bytes());
    c.extend_from_slice(&value.to_le_bytes());
}

/// Brings the device up with the rings of [`data`] and notifies queue 0.
fn setup(c: &mut Vec<u8>) {
    print(c, b"hostile guest\n");
    for (offset, value) in [
        (0x70, 0),   // Status: reset
        (0x70, 1),   // ACKNOWLEDGE
        (0x70, 3),   // DRIVER
        (0x24, 1),   // DriverFeaturesSel 1
        (0x20, 1),   // VIRTIO_F_VERSION_1 (bit 32)
        (0x24, 0),   // DriverFeaturesSel 0
        (0x20, 0),   // nothing else
        (0x70, 0xb), // FEATURES_OK
        (0x30, 0),   // QueueSel 0
        (0x38, u32::from(QUEUE)),
        (0x80, DESC), // QueueDesc
        (0x84, 0),
        (0x90, AVAIL), // QueueDriver (avail ring)
        (0x94, 0),
        (0xa0, USED), // QueueDevice (used ring)
        (0xa4, 0),
        (0x44, 1),   // QueueReady
        (0x70, 0xf), // DRIVER_OK
        (0x50, 0),   // QueueNotify 0
    ] {
        mmio_write(c, offset, value);
    }
}

fn code() -> Vec<u8> {
    let mut c = Vec::new();
    setup(&mut c);
    print(&mut c, NOTIFIED);
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp $ (interrupts stay off)
    c
}

/// What the flooding guest prints when it is done.
pub const FLOODED: &[u8] = b"hostile guest: flooded\n";

/// `count` notifications of queue 7, which the device does not have (each
/// one a log line in a VMM that does not rate-limit), then a reset.
fn flood_code(count: u32) -> Vec<u8> {
    let mut c = Vec::new();
    setup(&mut c);
    c.push(0xb9); // mov ecx, count
    c.extend_from_slice(&count.to_le_bytes());
    mmio_write(&mut c, 0x50, 7); // L: QueueNotify 7 (10 bytes)
    c.extend_from_slice(&[0x49, 0x75, 0xf3]); // dec ecx; jnz L
    print(&mut c, FLOODED);
    c.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp back to hlt
    c
}

/// The notification flood as an ELF (its disk: any, e.g. one sector).
pub fn notify_flood_elf(count: u32) -> Vec<u8> {
    with_data(flood_code(count))
}

fn desc(addr: u32, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&u64::from(addr).to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// The page after the code: one chain (header → 512-byte read into the
/// avail ring → status) published as avail idx 1.
fn data() -> Vec<u8> {
    let mut d = vec![0u8; 0x500];
    let at = |a: u32| (a - DATA) as usize;
    let (next, write) = (1u16, 2u16);
    d[0..16].copy_from_slice(&desc(HEADER, 16, next, 1));
    d[16..32].copy_from_slice(&desc(AVAIL, 512, next | write, 2));
    d[32..48].copy_from_slice(&desc(STATUS, 1, write, 0));
    d[at(AVAIL) + 2..at(AVAIL) + 4].copy_from_slice(&1u16.to_le_bytes());
    // Header: IN (0) at sector 0 — zeros already. Status: untouched mark.
    d[at(STATUS)] = 0xff;
    d
}

/// The hostile guest as an ELF with a PVH note.
pub fn self_feeding_elf() -> Vec<u8> {
    with_data(code())
}

fn with_data(code: Vec<u8>) -> Vec<u8> {
    let mut blob = code;
    assert!(blob.len() <= 0x1000, "the code outgrew its page");
    blob.resize(0x1000, 0);
    blob.extend_from_slice(&data());
    elf_with(true, blob)
}

/// The disk: sector k, read over the avail ring, says avail idx k + 2 (head
/// 0 again in every ring slot) and points the header at sector k + 1, the
/// last sector pointing back at the first.
pub fn self_feeding_disk() -> Vec<u8> {
    let mut disk = vec![0u8; DISK_SECTORS * 512];
    for (k, s) in disk.chunks_mut(512).enumerate() {
        s[2..4].copy_from_slice(&((k + 2) as u16).to_le_bytes());
        let next = ((k + 1) % DISK_SECTORS) as u64;
        s[HEADER_IN_SECTOR + 8..HEADER_IN_SECTOR + 16].copy_from_slice(&next.to_le_bytes());
    }
    disk
}
