//! The in-guest container runtime (work in progress).
