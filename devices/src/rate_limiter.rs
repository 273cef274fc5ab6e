//! I/O rate limits as Firecracker's API states them: a token bucket for
//! bytes and one for operations, each of `size` tokens refilled in full
//! every `refill_time` ms (continuously, at `size / refill_time`), plus
//! a `one_time_burst` spent first and never refilled.
//!
//! A device asks what it may do now ([`RateLimiter::allowance`], or
//! [`RateLimiter::may_go`] for one frame of a size it learns only once it
//! has it), says what it did ([`RateLimiter::consume`]), and when the
//! limit stopped it waits on a timer ([`timer`]) for [`RateLimiter::wait`]
//! instead of polling. What goes beyond the bucket (a 64 KiB frame from a
//! bucket holding less) is owed: the bucket refills the debt first, so the
//! average holds whatever the frame sizes. No crate of the field does this on its own (the
//! VMMs each carry theirs), so it is written here.

use serde::{Deserialize, Serialize};
use std::io;
use std::time::{Duration, Instant};
use vmm_sys_util::timerfd::TimerFd;

/// One bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens at the start, spent before the bucket's own.
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket.
    pub refill_time_ms: u64,
}

/// A device's limits as configured (and kept in a snapshot): a bucket for
/// bytes, one for operations; none = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub bytes: Option<Bucket>,
    pub ops: Option<Bucket>,
}

/// Limits on a disk's reads and on its writes, each apart (`husk run
/// --device-read-bps` and its kin, as Docker's blkio throttles), on top
/// of the disk's [`Limits`] on both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadWriteLimits {
    pub read: Limits,
    pub write: Limits,
}

impl ReadWriteLimits {
    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        [self.read, self.write]
            .iter()
            .any(|l| l.bytes.is_some() || l.ops.is_some())
    }
}

impl Bucket {
    /// A steady `per_second` tokens a second: refilled every 100 ms, so
    /// a full bucket at the start lets a tenth of a second's worth through
    /// at once, not a whole second's; every second when a tenth would not
    /// be exact enough (few operations a second).
    pub fn per_second(per_second: u64) -> Bucket {
        let (size, refill_time_ms) = if per_second % 10 == 0 || per_second >= 10_000 {
            (per_second.div_ceil(10), 100)
        } else {
            (per_second, 1000)
        };
        Bucket {
            size,
            one_time_burst: 0,
            refill_time_ms,
        }
    }

    /// Firecracker's rule: a bucket of no size or no refill time limits
    /// nothing.
    fn limits(self) -> Option<Bucket> {
        (self.size > 0 && self.refill_time_ms > 0).then_some(self)
    }
}

/// A bucket and its level.
#[derive(Debug, Clone)]
struct TokenBucket {
    config: Bucket,
    /// Tokens now, in thousandths (refills are fractional per ms);
    /// below zero while a debt is refilled.
    milli_tokens: i128,
    burst: u64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new(config: Bucket, now: Instant) -> Self {
        TokenBucket {
            config,
            milli_tokens: i128::from(config.size) * 1000,
            burst: config.one_time_burst,
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_us =
            i128::try_from(now.saturating_duration_since(self.refilled_at).as_micros())
                .unwrap_or(i128::MAX / 2);
        let full = i128::from(self.config.size) * 1000;
        if self.config.refill_time_ms == 0 {
            self.milli_tokens = full;
        } else {
            // size tokens per refill_time ms = size * 1000 milli-tokens per
            // refill_time * 1000 µs.
            let add = elapsed_us.saturating_mul(i128::from(self.config.size))
                / i128::from(self.config.refill_time_ms);
            self.milli_tokens = self.milli_tokens.saturating_add(add).min(full);
        }
        self.refilled_at = now;
    }

    fn available(&self) -> u64 {
        let own = u64::try_from(self.milli_tokens.max(0) / 1000).unwrap_or(u64::MAX);
        own.saturating_add(self.burst)
    }

    fn consume(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        let rest = i128::from(n - from_burst) * 1000;
        self.milli_tokens = self.milli_tokens.saturating_sub(rest);
    }

    /// How long until `n` tokens (at most a full bucket) are there, any
    /// debt paid first.
    fn time_to(&self, n: u64) -> Duration {
        let want = i128::from(n.min(self.config.size)) * 1000;
        if self.milli_tokens >= want || self.config.size == 0 {
            return Duration::ZERO;
        }
        let missing = want - self.milli_tokens;
        let us =
            missing * i128::from(self.config.refill_time_ms) / i128::from(self.config.size).max(1);
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX).max(1))
    }
}

/// What a device may do now: operations and bytes (`u64::MAX` = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub ops: u64,
    pub bytes: u64,
}

/// A device's limits on bytes and operations.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

/// The smallest wait worth a timer: a byte-limited device resumes once
/// this many bytes (or a full bucket, if smaller) are there, not at every
/// byte.
const RESUME_BYTES: u64 = 64 * 1024;

impl RateLimiter {
    /// Limits from the two buckets; none = no limit.
    pub fn new(limits: Limits) -> Self {
        let now = Instant::now();
        RateLimiter {
            bytes: limits
                .bytes
                .and_then(Bucket::limits)
                .map(|b| TokenBucket::new(b, now)),
            ops: limits
                .ops
                .and_then(Bucket::limits)
                .map(|b| TokenBucket::new(b, now)),
        }
    }

    /// Whether anything is limited.
    pub fn is_limited(&self) -> bool {
        self.bytes.is_some() || self.ops.is_some()
    }

    /// What may be done now.
    pub fn allowance(&mut self) -> Allowance {
        let now = Instant::now();
        let level = |b: &mut Option<TokenBucket>| match b {
            Some(b) => {
                b.refill(now);
                b.available()
            }
            None => u64::MAX,
        };
        Allowance {
            ops: level(&mut self.ops),
            bytes: level(&mut self.bytes),
        }
    }

    /// Whether one more operation may start now, of any size: a byte
    /// bucket that is not empty lets it go and owes what it lacks.
    pub fn may_go(&mut self) -> bool {
        if !self.is_limited() {
            return true;
        }
        let a = self.allowance();
        a.ops > 0 && a.bytes > 0
    }

    /// Takes what was done from the buckets (beyond what they hold is
    /// owed).
    pub fn consume(&mut self, ops: u64, bytes: u64) {
        if let Some(b) = &mut self.ops {
            b.consume(ops);
        }
        if let Some(b) = &mut self.bytes {
            b.consume(bytes);
        }
    }

    /// How long until one more operation and a useful amount of bytes may
    /// go: what a stopped device waits.
    pub fn wait(&self) -> Duration {
        let ops = self.ops.as_ref().map_or(Duration::ZERO, |b| b.time_to(1));
        let bytes = self
            .bytes
            .as_ref()
            .map_or(Duration::ZERO, |b| b.time_to(RESUME_BYTES));
        ops.max(bytes)
    }
}

/// A timer for a stopped device to wait on, whose read never blocks the
/// event loop (a wakeup that finds it re-armed reads EAGAIN).
pub fn timer() -> io::Result<TimerFd> {
    use std::os::fd::AsRawFd;
    let timer = TimerFd::new().map_err(io::Error::from)?;
    let fd = timer.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor `timer` owns, setting a flag.
    let set = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !set {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

/// Reads a fired timer so it does not wake the loop again; `what` names
/// the device in the log.
pub fn clear_timer(timer: &mut TimerFd, what: &str) {
    match timer.wait() {
        Err(e) if e.errno() != libc::EAGAIN => {
            log::error!("{what}: cannot read the rate limiter's timer: {e}");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, refill_time_ms: u64) -> Bucket {
        Bucket {
            size,
            one_time_burst: burst,
            refill_time_ms,
        }
    }

    #[test]
    fn a_bucket_starts_full_with_its_burst_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(1000, 500, 100), t0);
        assert_eq!(b.available(), 1500);
        b.consume(1200);
        // The burst goes first, then the bucket's own tokens.
        assert_eq!((b.burst, b.available()), (0, 300));
        // 1000 tokens per 100 ms: 10 per ms.
        b.refill(t0 + Duration::from_millis(20));
        assert_eq!(b.available(), 500);
        assert_eq!(b.time_to(600), Duration::from_millis(10));
        // Never above its size; the burst does not come back.
        b.refill(t0 + Duration::from_secs(5));
        assert_eq!(b.available(), 1000);
        assert_eq!(b.time_to(1), Duration::ZERO);
    }

    #[test]
    fn the_limiter_says_what_may_go_and_how_long_to_wait() {
        let mut none = RateLimiter::new(Limits::default());
        assert!(!none.is_limited());
        assert_eq!(none.allowance().bytes, u64::MAX);
        assert_eq!(none.wait(), Duration::ZERO);

        // 1 MiB per second, 10 ops per second.
        let mut l = RateLimiter::new(Limits {
            bytes: Some(bucket(1 << 20, 0, 1000)),
            ops: Some(bucket(10, 0, 1000)),
        });
        let a = l.allowance();
        assert_eq!((a.ops, a.bytes), (10, 1 << 20));
        l.consume(10, 1 << 20);
        let a = l.allowance();
        assert!(a.ops == 0 && a.bytes < 4096, "{a:?}");
        // One op is 100 ms away; 64 KiB is 62.5 ms away: the op decides.
        let w = l.wait();
        assert!(
            w > Duration::from_millis(95) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        // A bucket without a size or a refill time limits nothing.
        let open = RateLimiter::new(Limits {
            bytes: Some(bucket(0, 0, 1000)),
            ops: Some(bucket(10, 0, 0)),
        });
        assert!(!open.is_limited());
    }

    #[test]
    fn a_rate_per_second_is_a_bucket_of_a_tenth_of_a_second_when_that_is_exact() {
        assert_eq!(Bucket::per_second(10 << 20), bucket(1_048_576, 0, 100));
        assert_eq!(Bucket::per_second(1_048_575), bucket(104_858, 0, 100));
        assert_eq!(Bucket::per_second(15), bucket(15, 0, 1000));
        assert_eq!(Bucket::per_second(200), bucket(20, 0, 100));
        assert!(!ReadWriteLimits::default().is_limited());
        let writes = ReadWriteLimits {
            write: Limits {
                bytes: Some(Bucket::per_second(1 << 20)),
                ops: None,
            },
            ..Default::default()
        };
        assert!(writes.is_limited());
    }

    #[test]
    fn a_frame_larger_than_the_bucket_goes_and_its_debt_is_refilled_first() {
        let t0 = Instant::now();
        // 1000 bytes per 100 ms, a 4000-byte frame.
        let mut b = TokenBucket::new(bucket(1000, 0, 100), t0);
        b.consume(4000);
        assert_eq!(b.available(), 0);
        // 3000 owed and 64 wanted: 306.4 ms at 10 per ms.
        assert_eq!(b.time_to(64), Duration::from_micros(306_400));
        b.refill(t0 + Duration::from_millis(200));
        assert_eq!(b.available(), 0);
        b.refill(t0 + Duration::from_millis(350));
        assert_eq!(b.available(), 500);

        let mut l = RateLimiter::new(Limits {
            bytes: Some(bucket(1000, 0, 100)),
            ops: None,
        });
        assert!(l.may_go());
        l.consume(1, 4000);
        assert!(!l.may_go());
        assert!(l.wait() > Duration::from_millis(300), "{:?}", l.wait());
    }
}
