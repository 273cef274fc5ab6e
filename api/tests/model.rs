//! The model types on their own: defaults, JSON forms, and the
//! `--config-file` schema.

use husk_api::model::*;
use serde_json::json;

#[test]
fn machine_config_defaults_are_firecrackers() {
    let m = MachineConfig::default();
    assert_eq!((m.vcpu_count, m.mem_size_mib), (1, 128));
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
               "track_dirty_pages": false, "huge_pages": "None"})
    );
    let patch = MachineConfigPatch {
        smt: Some(true),
        cpu_template: Some(CpuTemplate::C3),
        ..Default::default()
    };
    let merged = patch.apply(&m);
    assert!(merged.smt);
    assert_eq!(merged.cpu_template, Some(CpuTemplate::C3));
    assert_eq!(merged.mem_size_mib, 128);
}

#[test]
fn instance_info_json() {
    for (state, text) in [
        (InstanceState::NotStarted, "Not started"),
        (InstanceState::Running, "Running"),
        (InstanceState::Paused, "Paused"),
    ] {
        let info = InstanceInfo {
            id: "vm0".into(),
            state,
            vmm_version: "0.1.0".into(),
            app_name: "husk".into(),
        };
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            json!({"id": "vm0", "state": text, "vmm_version": "0.1.0", "app_name": "husk"})
        );
    }
}

#[test]
fn mac_addresses() {
    let mac: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
    assert_eq!(mac, MacAddr([0x06, 0, 0xac, 0x10, 0, 0x02]));
    assert_eq!(mac.to_string(), "06:00:ac:10:00:02");
    assert_eq!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>().unwrap().0, [0xff; 6]);
    for bad in [
        "",
        ":",
        "06:00:ac:10:00",
        "06:00:ac:10:00:02:",
        "6:00:ac:10:00:02",
        "06:00:ac:10:00:002",
        "0x:00:ac:10:00:02",
    ] {
        let err = bad.parse::<MacAddr>().unwrap_err();
        assert!(err.contains("invalid MAC address"), "{bad}: {err}");
    }
    // Not a string at all.
    let err = serde_json::from_value::<MacAddr>(json!(6)).unwrap_err();
    assert!(err.to_string().contains("expected a string"), "{err}");
}

#[test]
fn log_levels() {
    for level in [
        LogLevel::Off,
        LogLevel::Error,
        LogLevel::Warning,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ] {
        let text = serde_json::to_value(level).unwrap();
        assert_eq!(text, level.as_str());
        assert_eq!(serde_json::from_value::<LogLevel>(text).unwrap(), level);
        assert_eq!(
            level.as_str().to_uppercase().parse::<LogLevel>().unwrap(),
            level
        );
    }
    assert_eq!("warn".parse::<LogLevel>().unwrap(), LogLevel::Warning);
}

#[test]
fn ids() {
    check_id("drive_id", "rootfs_1").unwrap();
    check_id("drive_id", "A9").unwrap();
    assert!(check_id("drive_id", "")
        .unwrap_err()
        .contains("must not be empty"));
    for bad in ["a-b", "a b", "a/b", "é", "a.b"] {
        assert!(check_id("drive_id", bad).is_err(), "{bad}");
    }
}

/// A Firecracker-style configuration file, as `firecracker --config-file`
/// takes it (the sections husk has).
const CONFIG: &str = r#"{
  "boot-source": {
    "kernel_image_path": "vmlinux",
    "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
    "initrd_path": null
  },
  "drives": [
    {
      "drive_id": "rootfs",
      "partuuid": null,
      "is_root_device": true,
      "cache_type": "Unsafe",
      "is_read_only": false,
      "path_on_host": "rootfs.ext4",
      "io_engine": "Sync",
      "rate_limiter": null
    }
  ],
  "machine-config": {
    "vcpu_count": 2,
    "mem_size_mib": 1024,
    "smt": false,
    "track_dirty_pages": false,
    "huge_pages": "None"
  },
  "network-interfaces": [
    {"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}
  ],
  "vsock": {"guest_cid": 3, "uds_path": "./v.sock"},
  "logger": {"log_path": "fc.log", "level": "Debug"},
  "metrics": {"metrics_path": "fc.metrics"}
}"#;

#[test]
fn config_file() {
    let config = VmConfigFile::from_json(CONFIG.as_bytes()).unwrap();
    assert_eq!(
        config.boot_source.as_ref().unwrap().kernel_image_path,
        "vmlinux"
    );
    assert_eq!(config.machine_config.as_ref().unwrap().vcpu_count, 2);
    assert_eq!(config.drives.len(), 1);
    assert!(config.drives[0].is_root_device);
    assert_eq!(config.network_interfaces[0].host_dev_name, "tap0");
    assert_eq!(config.vsock.as_ref().unwrap().guest_cid, 3);
    assert_eq!(config.logger.as_ref().unwrap().level, Some(LogLevel::Debug));
    assert_eq!(config.metrics.as_ref().unwrap().metrics_path, "fc.metrics");
    // What GET /vm/config sends parses back to the same thing.
    let sent = serde_json::to_vec(&config).unwrap();
    assert_eq!(VmConfigFile::from_json(&sent).unwrap(), config);
    // An empty file configures nothing.
    assert_eq!(
        VmConfigFile::from_json(b"{}").unwrap(),
        VmConfigFile::default()
    );
}

#[test]
fn config_file_errors_name_the_key() {
    let err = VmConfigFile::from_json(br#"{"balloon": {}}"#).unwrap_err();
    assert!(err.contains("unknown field `balloon`"), "{err}");
    let err = VmConfigFile::from_json(br#"{"boot_source": {}}"#).unwrap_err();
    assert!(err.contains("unknown field `boot_source`"), "{err}");
    let err = VmConfigFile::from_json(br#"{"drives": [{"drive_id": "a", "is_root_device": 1}]}"#)
        .unwrap_err();
    assert!(
        err.starts_with("drives[0].is_root_device: invalid type"),
        "{err}"
    );
    let err =
        VmConfigFile::from_json(br#"{"drives": [{"drive_id": "a-b", "is_root_device": true}]}"#)
            .unwrap_err();
    assert!(
        err.starts_with("drives[0]: drive_id \"a-b\" is not valid"),
        "{err}"
    );
    let err =
        VmConfigFile::from_json(br#"{"vsock": {"guest_cid": 2, "uds_path": "v"}}"#).unwrap_err();
    assert!(err.starts_with("vsock: guest_cid 2 is reserved"), "{err}");
    let err =
        VmConfigFile::from_json(br#"{"machine-config": {"vcpu_count": 0, "mem_size_mib": 1}}"#)
            .unwrap_err();
    assert!(err.starts_with("machine-config: vcpu_count"), "{err}");
    let err = VmConfigFile::from_json(
        br#"{"network-interfaces": [{"iface_id": "n", "host_dev_name": "t", "guest_mac": "x"}]}"#,
    )
    .unwrap_err();
    assert!(
        err.starts_with("network-interfaces[0].guest_mac: invalid MAC"),
        "{err}"
    );
    let err = VmConfigFile::from_json(b"{} {}").unwrap_err();
    assert!(err.contains("trailing characters"), "{err}");
}
