//! virtio devices in a snapshot: what each device was made from (so a
//! restore attaches the same devices in the same order, at the same
//! windows and IRQs) and its transport's state (registers and queues,
//! `MmioState`, serialized where it is defined).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use husk_devices::virtio::transport::MmioState;

/// What a device was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    Disk {
        path: PathBuf,
        read_only: bool,
        id: String,
        /// Its limits (a snapshot of a limited disk restores limited).
        #[serde(default)]
        rate_limiter: Option<husk_devices::rate_limiter::Limits>,
        /// Its read and write limits.
        #[serde(default)]
        read_write: husk_devices::rate_limiter::ReadWriteLimits,
    },
    /// A NIC: on a host TAP (reopened by name at restore) or on a socket
    /// to a userspace network, which a restore must replace.
    Net {
        host: SavedNetHost,
        mac: [u8; 6],
        id: String,
        /// Its limits (a snapshot of a limited NIC restores limited).
        #[serde(default)]
        limits: husk_devices::virtio::net::NetLimits,
    },
    /// The vsock device; its connections do not survive (the guest is
    /// told, as Firecracker does).
    Vsock {
        guest_cid: u64,
        uds_path: PathBuf,
        id: String,
    },
    /// A shared directory whose guest has not mounted it (see
    /// `Fs::snapshot_refusal`): a restore connects to a virtiofsd on
    /// `socket`, or on the one its overrides name.
    Fs {
        socket: PathBuf,
        tag: String,
        id: String,
    },
}

/// A NIC's host side, as far as a snapshot can keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SavedNetHost {
    /// A TAP, by name.
    Tap(String),
    /// A socket to passt: gone with the process; a restore gives a new one
    /// (`Overrides::nets`).
    Stream,
}

/// One device in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub spec: DeviceSpec,
    pub transport: MmioState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueState;

    #[test]
    fn a_device_state_round_trips_through_json() {
        let d = DeviceState {
            spec: DeviceSpec::Disk {
                path: "/d.img".into(),
                read_only: true,
                id: "data".into(),
                rate_limiter: Some(husk_devices::rate_limiter::Limits {
                    bytes: Some(husk_devices::rate_limiter::Bucket {
                        size: 1 << 20,
                        one_time_burst: 0,
                        refill_time_ms: 100,
                    }),
                    ops: None,
                }),
                read_write: husk_devices::rate_limiter::ReadWriteLimits {
                    read: husk_devices::rate_limiter::Limits {
                        bytes: None,
                        ops: Some(husk_devices::rate_limiter::Bucket::per_second(100)),
                    },
                    ..Default::default()
                },
            },
            transport: MmioState {
                status: 15,
                device_features_select: 1,
                driver_features_select: 0,
                driver_features: 1 << 32,
                queue_select: 1,
                config_generation: 2,
                interrupt_status: 1,
                queues: vec![QueueState {
                    max_size: 256,
                    next_avail: 7,
                    next_used: 6,
                    event_idx_enabled: true,
                    size: 128,
                    ready: true,
                    desc_table: 0x1000,
                    avail_ring: 0x2000,
                    used_ring: 0x3000,
                }],
            },
        };
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"next_avail\":7"), "{json}");
        let back: DeviceState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }
}
