//! The guest init's protocol, shared with the host: how a command is passed
//! on the kernel command line (`cmdline`) and how its exit status comes back
//! (`status`). The binary (`main.rs`) is PID 1 of every husk guest.

pub mod cmdline;
pub mod status;
