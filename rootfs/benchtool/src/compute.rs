//! CPU and memory workloads, the kind the IBM and VMware container-vs-VM
//! studies ran (Linpack, STREAM, RandomAccess/GUPS), written here so the
//! same static binary measures native, container and microVM alike:
//!
//! - `flops N THREADS`: a blocked N×N f64 matrix multiply (2·N³ flops),
//!   GFLOPS; the rows of the result split over the threads.
//! - `stream MIB THREADS`: STREAM's copy, scale, add and triad over arrays
//!   of MIB MiB each (far larger than the last-level cache), the best of
//!   several passes, GB/s (10^9 bytes, the bytes each kernel moves).
//! - `gups MIB UPDATES THREADS`: random read-modify-write updates of a
//!   table of MIB MiB of u64, millions of updates per second.
//!
//! THREADS 0 means one per online CPU. Each thread works on its own part;
//! the time is the wall time of all of them.

use crate::{Error, Report};
use std::time::Instant;

/// How many times STREAM repeats its four kernels; the best pass counts,
/// as STREAM itself reports.
const STREAM_PASSES: usize = 5;
/// The blocking factor of the matrix multiply: three 64×64 f64 tiles
/// (96 KiB) stay in a core's L2.
const TILE: usize = 64;

/// THREADS, where 0 is one per online CPU.
pub fn threads(requested: u64) -> usize {
    match requested {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// The matrix multiply: C = A·B for N×N matrices, rows of C split over
/// `threads`.
pub fn flops(n: usize, threads: usize) -> Result<Report, Error> {
    let a: Vec<f64> = (0..n * n).map(|i| (i % 7) as f64 * 0.5).collect();
    let b: Vec<f64> = (0..n * n).map(|i| (i % 5) as f64 * 0.25).collect();
    let mut c = vec![0.0f64; n * n];
    let rows_each = n.div_ceil(threads.max(1)).max(1);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (part, rows) in c.chunks_mut(rows_each * n).enumerate() {
            let (a, b) = (&a, &b);
            s.spawn(move || multiply_rows(a, b, rows, part * rows_each, n));
        }
    });
    let secs = t.elapsed().as_secs_f64();
    // The checksum keeps the work from being optimized away and lets a
    // test check the result.
    let sum: f64 = c.iter().sum();
    Ok(Report::new("flops")
        .int("n", n as u64)
        .int("threads", threads as u64)
        .num("secs", secs, 6)
        .num("gflops", 2.0 * (n as f64).powi(3) / secs / 1e9, 3)
        .num("checksum", sum, 1))
}

/// Rows `first..` of C (as many as `c` holds) = A·B, tile by tile.
fn multiply_rows(a: &[f64], b: &[f64], c: &mut [f64], first: usize, n: usize) {
    let rows = c.len() / n;
    for kk in (0..n).step_by(TILE) {
        for jj in (0..n).step_by(TILE) {
            for r in 0..rows {
                let i = first + r;
                let out = &mut c[r * n + jj..r * n + (jj + TILE).min(n)];
                for k in kk..(kk + TILE).min(n) {
                    let aik = a[i * n + k];
                    let brow = &b[k * n + jj..k * n + (jj + TILE).min(n)];
                    for (o, &bv) in out.iter_mut().zip(brow) {
                        *o += aik * bv;
                    }
                }
            }
        }
    }
}

/// One of STREAM's kernels over a thread's part of the arrays a, b, c.
type StreamKernel<'a> = dyn Fn(&mut [f64], &mut [f64], &mut [f64]) + Sync + 'a;

/// STREAM over three arrays of `mib` MiB each, split over `threads`.
pub fn stream(mib: u64, threads: usize) -> Result<Report, Error> {
    let len = (mib as usize * crate::MIB) / std::mem::size_of::<f64>();
    let mut a = vec![1.0f64; len];
    let mut b = vec![2.0f64; len];
    let mut c = vec![0.0f64; len];
    let chunk = len.div_ceil(threads.max(1)).max(1);
    let scalar = 3.0;
    let mut best = [f64::MAX; 4];
    let kernels: [&StreamKernel<'_>; 4] = [
        // copy: c = a
        &|a, _, c| c.copy_from_slice(a),
        // scale: b = s·c
        &|_, b, c| {
            b.iter_mut()
                .zip(c.iter())
                .for_each(|(b, c)| *b = scalar * c)
        },
        // add: c = a + b
        &|a, b, c| {
            c.iter_mut()
                .zip(a.iter().zip(b.iter()))
                .for_each(|(c, (a, b))| *c = a + b)
        },
        // triad: a = b + s·c
        &|a, b, c| {
            a.iter_mut()
                .zip(b.iter().zip(c.iter()))
                .for_each(|(a, (b, c))| *a = b + scalar * c)
        },
    ];
    for _ in 0..STREAM_PASSES {
        for (k, kernel) in kernels.iter().enumerate() {
            let t = Instant::now();
            std::thread::scope(|s| {
                for ((a, b), c) in a
                    .chunks_mut(chunk)
                    .zip(b.chunks_mut(chunk))
                    .zip(c.chunks_mut(chunk))
                {
                    s.spawn(move || kernel(a, b, c));
                }
            });
            best[k] = best[k].min(t.elapsed().as_secs_f64());
        }
    }
    // Bytes moved per element: copy and scale read one array and write
    // one, add and triad read two and write one.
    let bytes = |arrays: f64| arrays * (len * std::mem::size_of::<f64>()) as f64;
    let gbs = |k: usize, arrays: f64| bytes(arrays) / best[k] / 1e9;
    Ok(Report::new("stream")
        .int("mib", mib)
        .int("threads", threads as u64)
        .num("copy_gbs", gbs(0, 2.0), 3)
        .num("scale_gbs", gbs(1, 2.0), 3)
        .num("add_gbs", gbs(2, 3.0), 3)
        .num("triad_gbs", gbs(3, 3.0), 3)
        .num("check", a[len / 2] + b[len / 3] + c[len / 4], 1))
}

/// `updates` random xor updates of a table of `mib` MiB of u64, split
/// over `threads` (each updates the whole table with its own sequence, as
/// RandomAccess does; races between threads only change which value wins).
pub fn gups(mib: u64, updates: u64, threads: usize) -> Result<Report, Error> {
    let len = (mib as usize * crate::MIB) / std::mem::size_of::<u64>();
    // A power of two, so an index is a mask away.
    let len = if len.is_power_of_two() {
        len
    } else {
        len.next_power_of_two() / 2
    };
    let table: Vec<std::sync::atomic::AtomicU64> = (0..len as u64)
        .map(std::sync::atomic::AtomicU64::new)
        .collect();
    let each = updates.div_ceil(threads.max(1) as u64);
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads.max(1) {
            let table = &table;
            s.spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (th as u64 + 1);
                for _ in 0..each {
                    // xorshift64: cheap, and spread over the table.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let slot = &table[(x as usize) & (len - 1)];
                    // A plain load and store, as GUPS does (not an atomic
                    // read-modify-write, which would measure the lock).
                    slot.store(slot.load(Relaxed) ^ x, Relaxed);
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let done = each * threads.max(1) as u64;
    Ok(Report::new("gups")
        .int("mib", (len * 8 / crate::MIB) as u64)
        .int("updates", done)
        .int("threads", threads as u64)
        .num("secs", secs, 6)
        .num("mups", done as f64 / secs / 1e6, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked multiply gives what the textbook one does, whatever
    /// the split and with a size that is no multiple of the tile.
    #[test]
    fn the_blocked_multiply_is_a_multiply() {
        let n = 70;
        let a: Vec<f64> = (0..n * n).map(|i| (i % 7) as f64 * 0.5).collect();
        let b: Vec<f64> = (0..n * n).map(|i| (i % 5) as f64 * 0.25).collect();
        let mut want = 0.0;
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    want += a[i * n + k] * b[k * n + j];
                }
            }
        }
        for threads in [1, 3] {
            let r = flops(n, threads).unwrap();
            assert_eq!(r.get_f64("checksum").unwrap(), want, "{r}");
            assert!(r.get_f64("gflops").unwrap() > 0.0);
        }
    }

    #[test]
    fn stream_reports_each_kernel_and_computes_them() {
        let r = stream(2, 2).unwrap();
        for k in ["copy_gbs", "scale_gbs", "add_gbs", "triad_gbs"] {
            assert!(r.get_f64(k).unwrap() > 0.0, "{r}");
        }
        // Every element goes through the same passes: copy, scale, add,
        // triad, from a = 1, b = 2, c = 0.
        let (mut a, mut b, mut c) = (1.0f64, 2.0f64, 0.0f64);
        for _ in 0..STREAM_PASSES {
            c = a;
            b = 3.0 * c;
            c = a + b;
            a = b + 3.0 * c;
        }
        assert_eq!(r.get_f64("check").unwrap(), a + b + c, "{r}");
    }

    #[test]
    fn gups_does_the_updates_it_says() {
        let r = gups(1, 100_000, 2).unwrap();
        assert_eq!(r.get("updates"), Some("100000"));
        assert_eq!(r.get("mib"), Some("1"));
        assert!(r.get_f64("mups").unwrap() > 0.0);
    }

    #[test]
    fn zero_threads_is_one_per_cpu() {
        assert!(threads(0) >= 1);
        assert_eq!(threads(3), 3);
    }
}
