//! `husk compare`: one set of workloads across native, crun, husk and QEMU
//! microvm, and the report written from the figures.

pub mod apps;
pub mod chart;
pub mod envs;
mod error;
pub mod machine;
pub mod report;
pub mod results;
pub mod runner;
pub mod studies;
pub mod workloads;

pub use error::Error;
