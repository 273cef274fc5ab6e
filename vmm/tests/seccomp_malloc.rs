//! A filtered thread that frees memory: glibc's malloc reads
//! /proc/sys/vm/overcommit_memory the first time any thread shrinks a
//! per-thread arena's heap, which a vCPU or API thread's filter does not
//! allow (the API thread was stopped that way under load). In a process
//! of its own, so that nothing else has had malloc read it first, and
//! without libtest's harness, whose threads allocate around each test.

use husk_vmm::seccomp::{install, vcpu_filter, Kind, Watch};

fn main() {
    a_filtered_thread_frees_without_a_forbidden_call();
    println!("test a_filtered_thread_frees_without_a_forbidden_call ... ok");
}

fn a_filtered_thread_frees_without_a_forbidden_call() {
    let watch: &'static Watch = Box::leak(Box::new(Watch::new().unwrap()));
    let filter = vcpu_filter(&[]).unwrap();
    std::thread::spawn(move || {
        install(&filter, Kind::Vcpu, watch).unwrap();
        // Below the mmap threshold, so from this thread's arena; freed,
        // they leave its heap's top larger than the trim threshold.
        let a = std::hint::black_box(vec![1u8; 100 << 10]);
        let b = std::hint::black_box(vec![2u8; 100 << 10]);
        drop(b);
        drop(a);
    })
    .join()
    .unwrap();
    assert_eq!(watch.describe(), None);
}
