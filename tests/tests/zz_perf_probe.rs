//! TEMP: profile the VM start path in L1 (not committed).
use std::time::Duration;
use twinbox_tests::kvm_host::{kvm_host, l2_initramfs};
use twinbox_tests::vm::{Bundles, vm_job, vm_steps};

#[test]
fn profile() {
    let mut bundles = Bundles::new();
    bundles.add("echo", &["echo", "started"], |_| {});
    bundles.add("echo128", &["echo", "started"], |config| {
        config["linux"]["resources"] = serde_json::json!({"memory": {"limit": 128u64 << 20}});
    });
    bundles.add("echonet", &["echo", "started"], |config| {
        config["linux"]["resources"] = serde_json::json!({"memory": {"limit": 128u64 << 20}});
        let ns = config["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
    });
    bundles.add("sleep128", &["sleep", "100000"], |config| {
        config["linux"]["resources"] = serde_json::json!({"memory": {"limit": 128u64 << 20}});
    });
    let script = std::fs::read_to_string("/tmp/profile.sh").unwrap();
    let steps = vm_steps().step("profile", Duration::from_secs(900), &script);
    let work = tempfile::tempdir().unwrap();
    let job = vm_job(&steps, &bundles, work.path(), Duration::from_secs(1000)).data(
        "/job/bare.cpio",
        l2_initramfs("#!/bin/sh\nmknod /dev/mem c 1 1\ndevmem 0xd0000000 8 123\nreboot -f\n")
            .unwrap(),
        0o644,
    );
    let out = kvm_host().run(&job).unwrap();
    let step = out.step("profile").unwrap();
    println!("{}", step.output);
}
