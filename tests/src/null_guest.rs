//! The "null guest": a few bytes of machine code in a tiny ELF that write a
//! line to COM1 and reset through the i8042. It boots on any `/dev/kvm`
//! (kvm_pvm included), so it measures and tests the VMM's own path — launch,
//! KVM setup, kernel loading, exits, teardown — without a Linux boot.
//!
//! The same bytes run in 32-bit protected mode (PVH entry) and in 64-bit
//! mode (Linux 64-bit entry): `mov dx, imm16` needs the 0x66 prefix in both,
//! and `mov al, imm8` / `out` / `hlt` encode identically.

/// Where the code is loaded; above 1 MiB like a kernel.
pub const LOAD_ADDR: u64 = 0x100_0000;
/// What the guest prints.
pub const LINE: &[u8] = b"husk null guest\n";
const CODE_OFFSET: u64 = 0x1000;

/// `mov al, 0xfe; out 0x64, al` (reset through the i8042), then `hlt; jmp`
/// back to the `hlt`.
const RESET_AND_HALT: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// Code that prints [`LINE`] on COM1 (dx left at 0x3f8).
fn print_line() -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &b in LINE {
        c.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    c
}

fn code(status: Option<u8>) -> Vec<u8> {
    let mut c = print_line();
    if let Some(s) = status {
        c.extend_from_slice(&[0xb0, s, 0xe6, 0xf4]); // mov al, s; out 0xf4, al
    }
    c.extend_from_slice(&RESET_AND_HALT);
    c
}

/// Code that prints `x` to COM1 forever, with a busy wait between bytes:
/// a guest that makes progress until it is paused or stopped.
fn ticker_code() -> Vec<u8> {
    vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'x', 0xee, // L: mov al, 'x'; out dx, al
        0xb9, 0x00, 0x20, 0x00,
        0x00, // mov ecx, 0x2000 (kvm_pvm emulates ring-0 code: keep it short)
        0xff, 0xc9, // D: dec ecx
        0x75, 0xfc, // jnz D
        0xeb, 0xf2, // jmp L
    ]
}

/// Code (PVH entry only) that prints [`LINE`] and triple-faults: it loads
/// an empty IDT (six zero bytes of RAM) and raises a breakpoint, which
/// cannot be delivered, nor can the faults that follow.
fn triple_fault_code() -> Vec<u8> {
    let mut c = print_line();
    c.extend_from_slice(&[0x0f, 0x01, 0x1d]); // lidt [EMPTY_IDT]
    c.extend_from_slice(&EMPTY_IDT.to_le_bytes());
    c.extend_from_slice(&[0xcc, 0xf4, 0xeb, 0xfd]); // int3; hlt; jmp back to hlt
    c
}

/// Guest RAM the triple-fault guest takes as its IDT register's image;
/// RAM starts zeroed.
const EMPTY_IDT: u32 = 0x30_0000;

/// Code that prints [`LINE`], then polls the i8042 until a byte arrives
/// (the VMM typed Ctrl-Alt-Del) and resets through it: a guest that ends
/// when asked to, as Linux does on Ctrl-Alt-Del.
fn ctrl_alt_del_code() -> Vec<u8> {
    let mut c = print_line();
    c.extend_from_slice(&[0xe4, 0x64]); // L: in al, 0x64
    c.extend_from_slice(&[0xa8, 0x01]); // test al, 1 (output buffer full)
    c.extend_from_slice(&[0x74, 0xfa]); // jz L
    c.extend_from_slice(&RESET_AND_HALT);
    c
}

/// The guest that prints [`LINE`] and triple-faults (PVH entry). Not on
/// kvm_pvm, whose emulator stops at its `lidt` (a KVM internal error):
/// under hardware KVM (the testbed) only.
pub fn triple_fault_elf() -> Vec<u8> {
    elf_with(true, triple_fault_code())
}

/// The guest that prints [`LINE`] and resets on Ctrl-Alt-Del.
pub fn ctrl_alt_del_elf(pvh: bool) -> Vec<u8> {
    elf_with(pvh, ctrl_alt_del_code())
}

/// Where the counter guest keeps its count (guest-physical; paging is
/// off in the PVH entry's protected mode, and RAM starts zeroed).
pub const COUNTER_ADDR: u32 = 0x20_0000;

/// 32-bit code (PVH entry only) that counts in memory at
/// [`COUNTER_ADDR`], printing each count's low byte to COM1 with a busy
/// wait between them, and at `limit` reports status 0 and resets. Its
/// state is its memory and its registers: what a snapshot must carry.
fn counter_code(limit: u32) -> Vec<u8> {
    let addr = COUNTER_ADDR.to_le_bytes();
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    c.extend_from_slice(&[0xff, 0x05]); // L: inc dword [addr]
    c.extend_from_slice(&addr);
    c.push(0xa1); // mov eax, [addr]
    c.extend_from_slice(&addr);
    c.push(0xee); // out dx, al
    c.extend_from_slice(&[0xb9, 0x00, 0x20, 0x00, 0x00]); // mov ecx, 0x2000
    c.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc]); // D: dec ecx; jnz D
    c.push(0x3d); // cmp eax, limit
    c.extend_from_slice(&limit.to_le_bytes());
    c.extend_from_slice(&[0x72, 0xe4]); // jb L (back 28 bytes)
    c.extend_from_slice(&[0xb0, 0x00, 0xe6, 0xf4]); // mov al, 0; out 0xf4, al
    c.extend_from_slice(&RESET_AND_HALT);
    c
}

/// The counter guest (see `counter_code`) as an ELF with a PVH note.
pub fn counter_elf(limit: u32) -> Vec<u8> {
    elf_with(true, counter_code(limit))
}

/// An x86-64 ELF that prints [`LINE`], optionally reports `status` on the
/// status port, and resets. With `pvh`, a Xen PVH note points at the code.
pub fn elf(pvh: bool, status: Option<u8>) -> Vec<u8> {
    elf_with(pvh, code(status))
}

/// The ticker guest (see `ticker_code`) as an ELF.
pub fn ticker_elf(pvh: bool) -> Vec<u8> {
    elf_with(pvh, ticker_code())
}

/// An ELF whose one loadable segment holds `code` at [`LOAD_ADDR`] (and
/// whatever data the caller appended to it).
pub fn elf_with(pvh: bool, code: Vec<u8>) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let mut e = Vec::new();
    // ELF header.
    e.extend_from_slice(b"\x7fELF");
    e.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    e.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    e.extend_from_slice(&phnum.to_le_bytes());
    e.extend_from_slice(&[0; 6]); // no sections
    let note_offset = 64 + 56 * u64::from(phnum);
    let phdr = |e: &mut Vec<u8>, kind: u32, flags: u32, off: u64, addr: u64, size: u64| {
        e.extend_from_slice(&kind.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&off.to_le_bytes());
        e.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        e.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        e.extend_from_slice(&size.to_le_bytes()); // p_filesz
        e.extend_from_slice(&size.to_le_bytes()); // p_memsz
        e.extend_from_slice(&4u64.to_le_bytes()); // p_align
    };
    phdr(&mut e, 1, 5, CODE_OFFSET, LOAD_ADDR, code.len() as u64); // PT_LOAD r-x
    if pvh {
        phdr(&mut e, 4, 4, note_offset, 0, 20); // PT_NOTE
        e.extend_from_slice(&4u32.to_le_bytes()); // n_namesz
        e.extend_from_slice(&4u32.to_le_bytes()); // n_descsz
        e.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        e.extend_from_slice(b"Xen\0");
        e.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    }
    e.resize(CODE_OFFSET as usize, 0);
    e.extend_from_slice(&code);
    e
}

/// Writes [`elf`] to `path`.
pub fn write(path: &std::path::Path, pvh: bool, status: Option<u8>) -> std::io::Result<()> {
    std::fs::write(path, elf(pvh, status))
}
