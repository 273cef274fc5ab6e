//! The router and parser, without sockets: every endpoint and every way a
//! request can be wrong.

use husk_api::model::*;
use husk_api::{parse, Request, Response, ROUTES};

/// The error answer, or a panic naming the unexpected success.
fn error(method: &str, path: &str, body: &str) -> Response {
    match parse(method, path, body.as_bytes()) {
        Ok(r) => panic!("{method} {path} {body} parsed as {r:?}"),
        Err(e) => e,
    }
}

fn ok(method: &str, path: &str, body: &str) -> Request {
    parse(method, path, body.as_bytes()).unwrap_or_else(|e| panic!("{method} {path} {body}: {e:?}"))
}

/// Asserts a 400 whose message contains every one of `needles`.
fn bad(method: &str, path: &str, body: &str, needles: &[&str]) {
    let e = error(method, path, body);
    assert_eq!(e.status(), 400, "{method} {path} {body}: {e:?}");
    let msg = e.fault_message().unwrap();
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
}

#[test]
fn gets() {
    assert_eq!(ok("GET", "/", ""), Request::GetInstanceInfo);
    assert_eq!(ok("GET", "/version", ""), Request::GetVersion);
    assert_eq!(ok("GET", "/vm/config", ""), Request::GetVmConfig);
    assert_eq!(ok("GET", "/machine-config", ""), Request::GetMachineConfig);
    // Firecracker's path handling: extra leading slashes, one trailing slash.
    assert_eq!(
        ok("GET", "//machine-config/", ""),
        Request::GetMachineConfig
    );
    assert_eq!(ok("GET", "/vm/config/", ""), Request::GetVmConfig);
}

#[test]
fn get_with_a_body_is_refused() {
    bad("GET", "/", "{}", &["GET / takes no body"]);
    // Whitespace is no body.
    assert_eq!(ok("GET", "/version", " \r\n"), Request::GetVersion);
}

#[test]
fn boot_source() {
    let r = ok(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "./vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1"}"#,
    );
    assert_eq!(
        r,
        Request::PutBootSource(BootSource {
            kernel_image_path: "./vmlinux".into(),
            boot_args: Some("console=ttyS0 reboot=k panic=1".into()),
            initrd_path: None,
        })
    );
    let r = ok(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "k", "initrd_path": "i", "boot_args": null}"#,
    );
    let Request::PutBootSource(b) = r else {
        panic!()
    };
    assert_eq!(b.initrd_path.as_deref(), Some("i"));
    bad(
        "PUT",
        "/boot-source",
        r#"{"boot_args": "x"}"#,
        &["missing field `kernel_image_path`"],
    );
}

#[test]
fn machine_config_put() {
    let r = ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 1024}"#,
    );
    assert_eq!(
        r,
        Request::PutMachineConfig(MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 1024,
            ..MachineConfig::default()
        })
    );
    let r = ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 4, "mem_size_mib": 256, "smt": true, "track_dirty_pages": true,
            "huge_pages": "2M", "cpu_template": "T2S"}"#,
    );
    assert_eq!(
        r,
        Request::PutMachineConfig(MachineConfig {
            vcpu_count: 4,
            mem_size_mib: 256,
            smt: true,
            track_dirty_pages: true,
            huge_pages: HugePages::Hugetlbfs2M,
            cpu_template: Some(CpuTemplate::T2S),
        })
    );
    for (text, value) in [
        ("None", HugePages::None),
        ("Transparent", HugePages::Transparent),
        ("2M", HugePages::Hugetlbfs2M),
    ] {
        let body = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 1, "huge_pages": "{text}"}}"#);
        let Request::PutMachineConfig(m) = ok("PUT", "/machine-config", &body) else {
            panic!()
        };
        assert_eq!(m.huge_pages, value);
    }
    bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 1, "huge_pages": "7M"}"#,
        &["huge_pages", "unknown variant `7M`"],
    );
    bad(
        "PUT",
        "/machine-config",
        r#"{"mem_size_mib": 1024}"#,
        &["missing field `vcpu_count`"],
    );
    bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 0, "mem_size_mib": 1024}"#,
        &["vcpu_count must be at least 1"],
    );
    bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
        &["mem_size_mib must be at least 1"],
    );
    bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 300, "mem_size_mib": 1}"#,
        &["vcpu_count", "300"],
    );
}

#[test]
fn machine_config_patch() {
    let r = ok("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#);
    let Request::PatchMachineConfig(p) = r else {
        panic!()
    };
    assert_eq!(p.mem_size_mib, Some(512));
    assert_eq!(p.vcpu_count, None);
    let merged = p.apply(&MachineConfig::default());
    assert_eq!((merged.vcpu_count, merged.mem_size_mib), (1, 512));
    bad("PATCH", "/machine-config", "{}", &["changes nothing"]);
    bad(
        "PATCH",
        "/machine-config",
        r#"{"vcpu_count": 0}"#,
        &["vcpu_count must be at least 1"],
    );
}

#[test]
fn drives() {
    let r = ok(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "./rootfs.ext4", "is_root_device": true, "is_read_only": false}"#,
    );
    assert_eq!(
        r,
        Request::PutDrive(Drive {
            drive_id: "rootfs".into(),
            path_on_host: Some("./rootfs.ext4".into()),
            is_root_device: true,
            is_read_only: false,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            io_engine: IoEngine::Sync,
            rate_limiter: None,
        })
    );
    let r = ok(
        "PUT",
        "/drives/data_1",
        r#"{"drive_id": "data_1", "path_on_host": "d", "is_root_device": false,
            "partuuid": "0eaa91a0-01", "cache_type": "Writeback", "io_engine": "Async",
            "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100, "one_time_burst": 5},
                             "ops": {"size": 10, "refill_time": 1000}}}"#,
    );
    let Request::PutDrive(d) = r else { panic!() };
    assert_eq!(d.cache_type, CacheType::Writeback);
    assert_eq!(d.io_engine, IoEngine::Async);
    let rl = d.rate_limiter.unwrap();
    assert_eq!(
        rl.bandwidth,
        Some(TokenBucket {
            size: 1000,
            one_time_burst: Some(5),
            refill_time: 100
        })
    );
    assert_eq!(rl.ops.unwrap().one_time_burst, None);

    let r = ok(
        "PATCH",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "new.ext4"}"#,
    );
    assert_eq!(
        r,
        Request::PatchDrive(DrivePatch {
            drive_id: "rootfs".into(),
            path_on_host: Some("new.ext4".into()),
            rate_limiter: None,
        })
    );
    // Firecracker also takes a PATCH that only names the drive.
    ok("PATCH", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#);
}

#[test]
fn drive_errors() {
    bad(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "other", "path_on_host": "x", "is_root_device": true}"#,
        &["\"other\"", "\"rootfs\"", "does not match"],
    );
    bad(
        "PATCH",
        "/drives/rootfs",
        r#"{"drive_id": "other"}"#,
        &["does not match"],
    );
    bad(
        "PUT",
        "/drives/root-fs",
        r#"{"drive_id": "root-fs", "is_root_device": true}"#,
        &["root-fs", "ASCII letters, digits and '_'"],
    );
    bad(
        "PUT",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "path_on_host": "x"}"#,
        &["missing field `is_root_device`"],
    );
    // A PATCH may not change what only PUT sets.
    bad(
        "PATCH",
        "/drives/rootfs",
        r#"{"drive_id": "rootfs", "is_read_only": true}"#,
        &["unknown field `is_read_only`"],
    );
    // A token bucket needs its refill time.
    bad(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "is_root_device": false, "rate_limiter": {"ops": {"size": 1}}}"#,
        &["rate_limiter.ops", "missing field `refill_time`"],
    );
    bad(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "is_root_device": false, "cache_type": "Writethrough"}"#,
        &["cache_type", "unknown variant `Writethrough`"],
    );
}

#[test]
fn network_interfaces() {
    let r = ok(
        "PUT",
        "/network-interfaces/net1",
        r#"{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#,
    );
    let Request::PutNetworkInterface(n) = r else {
        panic!()
    };
    assert_eq!(n.guest_mac, Some(MacAddr([6, 0, 0xac, 0x10, 0, 2])));
    assert_eq!(n.host_dev_name, "tap0");
    assert_eq!(
        serde_json::to_value(&n).unwrap()["guest_mac"],
        "06:00:ac:10:00:02"
    );
    let r = ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap1", "mtu": 9000,
            "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}},
            "tx_rate_limiter": {}}"#,
    );
    let Request::PutNetworkInterface(n) = r else {
        panic!()
    };
    assert_eq!(n.mtu, Some(9000));
    assert_eq!(n.tx_rate_limiter, Some(RateLimiter::default()));

    for mac in [
        "06:00:AC:10:00",
        "06:00:AC:10:00:02:03",
        "06:00:AC:10:00:2",
        "06-00-AC-10-00-02",
        "06:00:AC:10:00:0g",
        "",
        "+6:00:ac:10:00:02",
    ] {
        let body = format!(r#"{{"iface_id": "n", "host_dev_name": "tap0", "guest_mac": "{mac}"}}"#);
        bad(
            "PUT",
            "/network-interfaces/n",
            &body,
            &["guest_mac", "invalid MAC address"],
        );
    }
    bad(
        "PUT",
        "/network-interfaces/n",
        r#"{"iface_id": "m", "host_dev_name": "tap0"}"#,
        &["iface_id", "does not match"],
    );
    bad(
        "PUT",
        "/network-interfaces/n",
        r#"{"iface_id": "n"}"#,
        &["missing field `host_dev_name`"],
    );
}

#[test]
fn vsock() {
    let r = ok(
        "PUT",
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#,
    );
    assert_eq!(
        r,
        Request::PutVsock(Vsock {
            vsock_id: None,
            guest_cid: 3,
            uds_path: "/tmp/v.sock".into()
        })
    );
    // The deprecated id is still taken.
    let Request::PutVsock(v) = ok(
        "PUT",
        "/vsock",
        r#"{"vsock_id": "vsock0", "guest_cid": 52, "uds_path": "v"}"#,
    ) else {
        panic!()
    };
    assert_eq!(v.vsock_id.as_deref(), Some("vsock0"));
    for cid in 0..3 {
        let body = format!(r#"{{"guest_cid": {cid}, "uds_path": "v"}}"#);
        bad("PUT", "/vsock", &body, &["guest_cid", "at least 3"]);
    }
    bad(
        "PUT",
        "/vsock",
        r#"{"guest_cid": -3, "uds_path": "v"}"#,
        &["guest_cid", "invalid value"],
    );
}

#[test]
fn logger_and_metrics() {
    let r = ok(
        "PUT",
        "/logger",
        r#"{"log_path": "/tmp/log", "level": "Warning", "show_level": true,
            "show_log_origin": false, "module": "husk_vmm::virtio"}"#,
    );
    let Request::PutLogger(l) = r else { panic!() };
    assert_eq!(l.level, Some(LogLevel::Warning));
    assert_eq!(l.module.as_deref(), Some("husk_vmm::virtio"));
    assert_eq!(
        ok("PUT", "/logger", "{}"),
        Request::PutLogger(Logger::default())
    );
    for (text, level) in [
        ("Off", LogLevel::Off),
        ("error", LogLevel::Error),
        ("WARN", LogLevel::Warning),
        ("Info", LogLevel::Info),
        ("debug", LogLevel::Debug),
        ("Trace", LogLevel::Trace),
    ] {
        let body = format!(r#"{{"level": "{text}"}}"#);
        let Request::PutLogger(l) = ok("PUT", "/logger", &body) else {
            panic!()
        };
        assert_eq!(l.level, Some(level));
    }
    bad(
        "PUT",
        "/logger",
        r#"{"level": "Loud"}"#,
        &["level", "unknown log level \"Loud\""],
    );
    assert_eq!(
        ok("PUT", "/metrics", r#"{"metrics_path": "/tmp/m"}"#),
        Request::PutMetrics(Metrics {
            metrics_path: "/tmp/m".into()
        })
    );
    bad("PUT", "/metrics", "{}", &["missing field `metrics_path`"]);
}

#[test]
fn actions_and_vm_state() {
    for (text, action) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        let body = format!(r#"{{"action_type": "{text}"}}"#);
        assert_eq!(ok("PUT", "/actions", &body), Request::Action(action));
    }
    bad(
        "PUT",
        "/actions",
        r#"{"action_type": "Reboot"}"#,
        &["action_type", "unknown variant `Reboot`"],
    );
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
        Request::PatchVm(VmStateChange::Paused)
    );
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        Request::PatchVm(VmStateChange::Resumed)
    );
    bad(
        "PATCH",
        "/vm",
        r#"{"state": "Running"}"#,
        &["state", "unknown variant `Running`"],
    );
}

#[test]
fn malformed_json_names_the_position() {
    bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": }"#,
        &["invalid body for PUT /machine-config", "line 1 column"],
    );
    bad("PUT", "/actions", "garbage", &["expected a JSON object"]);
    bad(
        "PUT",
        "/actions",
        "{garbage",
        &["key must be a string", "line 1"],
    );
    bad(
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"} trailing"#,
        &["trailing characters"],
    );
    bad(
        "PUT",
        "/actions",
        r#"["InstanceStart"]"#,
        &["expected a JSON object"],
    );
    bad("PUT", "/actions", "null", &["expected a JSON object"]);
    bad(
        "PUT",
        "/actions",
        "\u{0}\u{1}",
        &["invalid body for PUT /actions"],
    );
    match parse("PUT", "/actions", &[0xff, 0xfe, b'{']) {
        Err(e) => assert_eq!(e.status(), 400),
        Ok(r) => panic!("{r:?}"),
    }
}

#[test]
fn unknown_field_is_named() {
    bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 1024, "vcpus": 2}"#,
        &["unknown field `vcpus`"],
    );
    bad(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "is_root_device": true, "rate_limiter": {"bw": {}}}"#,
        &["unknown field `bw`"],
    );
}

#[test]
fn wrong_type_names_the_field() {
    bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "2", "mem_size_mib": 1024}"#,
        &["vcpu_count", "invalid type: string \"2\", expected u8"],
    );
    bad(
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "is_root_device": "yes"}"#,
        &["is_root_device", "expected a boolean"],
    );
    bad(
        "PUT",
        "/network-interfaces/n",
        r#"{"iface_id": "n", "host_dev_name": "t", "rx_rate_limiter": {"ops": {"size": "big", "refill_time": 1}}}"#,
        &["rx_rate_limiter.ops.size", "invalid type"],
    );
}

#[test]
fn shared_directories() {
    let body = r#"{"fs_id":"share","tag":"data","socket":"/run/fs.sock"}"#;
    assert_eq!(
        ok("PUT", "/fs/share", body),
        Request::PutFs(SharedFs {
            fs_id: "share".into(),
            tag: "data".into(),
            socket: "/run/fs.sock".into(),
        })
    );
    bad("PUT", "/fs/other", body, &["does not match"]);
    let long = "t".repeat(37);
    bad(
        "PUT",
        "/fs/a",
        &format!(r#"{{"fs_id":"a","tag":"{long}","socket":"/s"}}"#),
        &["tag", "1 to 36 bytes"],
    );
    bad(
        "PUT",
        "/fs/a",
        r#"{"fs_id":"a","tag":"a b","socket":"/s"}"#,
        &["no spaces"],
    );
    bad(
        "PUT",
        "/fs/a",
        r#"{"fs_id":"a","tag":"t","socket":""}"#,
        &["socket must not be empty"],
    );
    bad(
        "PUT",
        "/fs/a",
        r#"{"fs_id":"a","tag":"t","socket":"/s","num_queues":2}"#,
        &["num_queues"],
    );
    assert_eq!(error("PUT", "/fs", body).status(), 404);
    assert_eq!(error("GET", "/fs/a", "").status(), 405);
}

#[test]
fn missing_body_is_refused() {
    for route in ROUTES.iter().filter(|r| r.method != "GET") {
        let path = route
            .path
            .replace("{drive_id}", "a")
            .replace("{iface_id}", "a")
            .replace("{fs_id}", "a");
        bad(route.method, &path, "", &["needs a JSON body"]);
        bad(route.method, &path, "  \n", &["needs a JSON body"]);
    }
}

#[test]
fn unknown_path_is_404() {
    for path in [
        "/nope",
        "/machine-config/x",
        "/vm/state",
        "/vm/config/x",
        "/drives",
        "/drives/a/b",
        "/network-interfaces",
        "/versions",
        "/snapshot/nope",
        "/balloon",
        "/mmds",
    ] {
        let e = error("GET", path, "");
        assert_eq!(e.status(), 404, "{path}: {e:?}");
        assert!(e.fault_message().unwrap().contains(path), "{e:?}");
    }
    let e = error("PUT", "/balloon", "{}");
    assert!(
        e.fault_message()
            .unwrap()
            .contains("not implemented by husk"),
        "{e:?}"
    );
}

#[test]
fn wrong_method_is_405_with_allow() {
    for (method, path, allowed) in [
        ("PUT", "/", &["GET"][..]),
        ("POST", "/version", &["GET"]),
        ("DELETE", "/machine-config", &["GET", "PUT", "PATCH"]),
        ("GET", "/drives/rootfs", &["PUT", "PATCH"]),
        ("GET", "/network-interfaces/eth0", &["PUT", "PATCH"]),
        ("GET", "/vm", &["PATCH"]),
        ("PUT", "/vm", &["PATCH"]),
        ("GET", "/actions", &["PUT"]),
        ("HEAD", "/", &["GET"]),
        ("get", "/", &["GET"]),
    ] {
        let e = error(method, path, "{}");
        let Response::MethodNotAllowed {
            allowed: got,
            message,
        } = &e
        else {
            panic!("{method} {path}: {e:?}")
        };
        assert_eq!(e.status(), 405);
        assert_eq!(*got, allowed, "{method} {path}");
        assert!(message.contains(method), "{message}");
    }
}

#[test]
fn invalid_ids_in_the_path() {
    bad(
        "PUT",
        "/drives/a%20b",
        r#"{"drive_id": "a b", "is_root_device": true}"#,
        &["drive id in the path", "a%20b"],
    );
    bad(
        "PUT",
        "/drives//",
        r#"{"drive_id": "", "is_root_device": true}"#,
        &["must not be empty"],
    );
    bad(
        "PUT",
        "/network-interfaces/eth.0",
        "{}",
        &["iface id in the path"],
    );
}

#[test]
fn errors_come_in_a_fixed_order() {
    // 404 before 405 before 400.
    assert_eq!(error("POST", "/nope", "garbage").status(), 404);
    assert_eq!(error("POST", "/vm", "garbage").status(), 405);
    // A bad id before a bad body.
    bad("PUT", "/drives/a-b", "garbage", &["drive id in the path"]);
}

#[test]
fn every_route_is_served() {
    for route in ROUTES {
        let path = route
            .path
            .replace("{drive_id}", "a")
            .replace("{iface_id}", "a");
        if let Err(e) = parse(route.method, &path, b"") {
            assert!(e.status() != 404 && e.status() != 405, "{route:?}: {e:?}");
        }
    }
}

#[test]
fn responses_become_http_status_codes() {
    assert_eq!(Response::NoContent.status(), 204);
    assert_eq!(Response::json(&serde_json::json!({"a": 1})).status(), 200);
    assert_eq!(Response::BadRequest("x".into()).status(), 400);
    assert_eq!(Response::BadRequest("x".into()).fault_message(), Some("x"));
    assert_eq!(Response::NoContent.fault_message(), None);
}

/// A poor man's fuzzer (xorshift, no dependency): mutated valid requests
/// and random methods/paths never panic and never answer 5xx.
#[test]
fn mutated_requests_never_panic_or_5xx() {
    let seeds: &[(&str, &str, &str)] = &[
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 1024, "huge_pages": "2M"}"#,
        ),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "r", "is_root_device": true, "rate_limiter": {"ops": {"size": 1, "refill_time": 2}}}"#,
        ),
        (
            "PUT",
            "/network-interfaces/n",
            r#"{"iface_id": "n", "host_dev_name": "t", "guest_mac": "06:00:ac:10:00:02"}"#,
        ),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PUT", "/logger", r#"{"level": "Info", "show_level": true}"#),
        ("GET", "/vm/config", ""),
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"{}[]\":,0123456789-+.eE \\/abcnlstrufx_%\x00\xff";
    for _ in 0..20_000 {
        let (method, path, body) = seeds[(next() % seeds.len() as u64) as usize];
        let mut body = body.as_bytes().to_vec();
        let mut path = path.as_bytes().to_vec();
        for _ in 0..(next() % 4 + 1) {
            let target = if next() % 5 == 0 {
                &mut path
            } else {
                &mut body
            };
            let c = alphabet[(next() % alphabet.len() as u64) as usize];
            let at = if target.is_empty() {
                0
            } else {
                (next() % target.len() as u64) as usize
            };
            match next() % 3 {
                0 if !target.is_empty() => target[at] = c,
                1 if !target.is_empty() => {
                    target.remove(at);
                }
                _ => target.insert(at, c),
            }
        }
        let path = String::from_utf8_lossy(&path);
        if let Err(e) = parse(method, &path, &body) {
            assert!(e.status().as_u16() < 500, "{e:?}");
            assert!(e.fault_message().is_some());
        }
    }
}

#[test]
fn snapshot_bodies_are_firecrackers_and_unsupported_settings_are_refused() {
    use husk_api::model::{MemBackendType, SnapshotType};
    let create = parse(
        "PUT",
        "/snapshot/create",
        br#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#,
    )
    .unwrap();
    match create {
        Request::CreateSnapshot(c) => {
            assert_eq!(c.snapshot_type, SnapshotType::Full);
            assert_eq!(
                (c.snapshot_path.as_str(), c.mem_file_path.as_str()),
                ("/s", "/m")
            );
        }
        other => panic!("{other:?}"),
    }
    let load = parse(
        "PUT",
        "/snapshot/load",
        br#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
    )
    .unwrap();
    match load {
        Request::LoadSnapshot(l) => {
            assert_eq!(l.mem_file(), "/m");
            assert!(!l.resume_vm);
            assert_eq!(l.mem_backend.unwrap().backend_type, MemBackendType::File);
        }
        other => panic!("{other:?}"),
    }
    let old_style = parse(
        "PUT",
        "/snapshot/load",
        br#"{"snapshot_path": "/s", "mem_file_path": "/m", "resume_vm": true}"#,
    );
    assert!(
        matches!(old_style, Ok(Request::LoadSnapshot(l)) if l.mem_file() == "/m" && l.resume_vm)
    );
    // Dirty pages tracked from the restore on, under either name.
    for field in ["track_dirty_pages", "enable_diff_snapshots"] {
        let body = format!(r#"{{"snapshot_path": "/s", "mem_file_path": "/m", "{field}": true}}"#);
        let Ok(Request::LoadSnapshot(l)) = parse("PUT", "/snapshot/load", body.as_bytes()) else {
            panic!("{body}")
        };
        assert!(l.tracks_dirty_pages(), "{body}");
    }
    let diff = parse(
        "PUT",
        "/snapshot/create",
        br#"{"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"}"#,
    );
    assert!(
        matches!(&diff, Ok(Request::CreateSnapshot(c)) if c.snapshot_type == SnapshotType::Diff),
        "{diff:?}"
    );
    for (path, body, says) in [
        (
            "/snapshot/create",
            r#"{"snapshot_path": "/s", "mem_file_path": "/s"}"#,
            "must be different",
        ),
        (
            "/snapshot/create",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "version": "1.0"}"#,
            "unknown field",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path": "/s"}"#,
            "mem_backend (or mem_file_path) is required",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
            "not both",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#,
            "Uffd memory backend is not supported",
        ),
        (
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "track_dirty_pages": true, "enable_diff_snapshots": true}"#,
            "not both",
        ),
    ] {
        let e = error("PUT", path, body);
        assert_eq!(e.status(), 400, "{body}: {e:?}");
        assert!(e.fault_message().unwrap().contains(says), "{body}: {e:?}");
    }
}
