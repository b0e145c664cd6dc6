use super::*;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResourcesBuilder,
};
use std::collections::HashMap;

const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

fn resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64i64 << 20)
                .swap(128i64 << 20)
                .reservation(32i64 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(42i64).build().unwrap())
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(10i64)
                .minor(200i64)
                .access("rw")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

fn read(path: PathBuf) -> String {
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn hybrid_mountinfo_gives_v1_with_unified_joined() {
    let cg = Cgroup::from_mountinfo(HYBRID_MOUNTINFO, Path::new("/twinbox/c1")).unwrap();
    assert_eq!(cg.version(), CgroupVersion::V1);
    let names: Vec<&str> = cg
        .hierarchies()
        .iter()
        .map(|h| h.mount_name.as_str())
        .collect();
    // Named hierarchies (name=systemd) carry no controller and are left alone.
    assert_eq!(names, ["cpu,cpuacct", "memory", "freezer", "unified"]);
    assert_eq!(
        cg.controller_dir("cpuacct").unwrap(),
        PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/twinbox/c1")
    );
    let v2 = Cgroup::from_mountinfo(
        "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        Path::new("/a"),
    )
    .unwrap();
    assert_eq!(v2.version(), CgroupVersion::V2);
    assert_eq!(
        v2.controller_dir("memory").unwrap(),
        PathBuf::from("/sys/fs/cgroup/a")
    );
    assert!(matches!(
        Cgroup::from_mountinfo("", Path::new("/a")),
        Err(CgroupError::NotMounted)
    ));
}

/// A fake v1 cgroupfs: one directory per hierarchy with the parents' cpuset files.
fn fake_v1(root: &Path) -> Cgroup {
    let mut hierarchies = Vec::new();
    for name in [
        "cpu,cpuacct",
        "cpuset",
        "memory",
        "pids",
        "devices",
        "freezer",
    ] {
        let mount = root.join(name);
        fs::create_dir_all(&mount).unwrap();
        if name == "cpuset" {
            fs::write(mount.join("cpuset.cpus"), "0-1\n").unwrap();
            fs::write(mount.join("cpuset.mems"), "0\n").unwrap();
        }
        hierarchies.push(Hierarchy {
            mount_name: name.into(),
            mount_options: name.into(),
            host_mount: mount,
            path: "/twinbox/c1".into(),
        });
    }
    Cgroup::with_hierarchies(CgroupVersion::V1, hierarchies)
}

#[test]
fn v1_limits_land_in_the_v1_files() {
    let dir = tempfile::tempdir().unwrap();
    let cg = fake_v1(dir.path());
    cg.create().unwrap();
    // cpuset was initialized from the parent on every level.
    assert_eq!(read(dir.path().join("cpuset/twinbox/cpuset.cpus")), "0-1");
    // The fake memory dir has no memsw file: swap limits are refused with the reason.
    let err = cg.apply(&resources()).unwrap_err();
    assert!(err.to_string().contains("swap accounting"), "{err}");
    fs::write(
        dir.path()
            .join("memory/twinbox/c1/memory.memsw.limit_in_bytes"),
        "",
    )
    .unwrap();
    cg.apply(&resources()).unwrap();
    let c1 = |f: &str| dir.path().join(f);
    assert_eq!(
        read(c1("memory/twinbox/c1/memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        read(c1("memory/twinbox/c1/memory.memsw.limit_in_bytes")),
        (128u64 << 20).to_string()
    );
    assert_eq!(
        read(c1("memory/twinbox/c1/memory.soft_limit_in_bytes")),
        (32u64 << 20).to_string()
    );
    assert_eq!(read(c1("cpu,cpuacct/twinbox/c1/cpu.shares")), "512");
    assert_eq!(read(c1("cpu,cpuacct/twinbox/c1/cpu.cfs_quota_us")), "50000");
    assert_eq!(read(c1("cpuset/twinbox/c1/cpuset.cpus")), "0");
    assert_eq!(read(c1("pids/twinbox/c1/pids.max")), "42");
    // devices.allow is written once per rule; the fake file keeps the last write: the
    // always-allowed /dev/pts rule.
    assert_eq!(read(c1("devices/twinbox/c1/devices.deny")), "a *:* rwm");
    assert_eq!(read(c1("devices/twinbox/c1/devices.allow")), "c 136:* rwm");
    cg.remove().unwrap();
    assert!(!dir.path().join("memory/twinbox/c1").exists());
    assert!(!cg.exists());
}

#[test]
fn v2_limits_convert_units() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma\n",
    )
    .unwrap();
    fs::write(root.join("cgroup.subtree_control"), "").unwrap();
    let cg = Cgroup::with_hierarchies(
        CgroupVersion::V2,
        vec![Hierarchy {
            mount_name: String::new(),
            mount_options: String::new(),
            host_mount: root.to_path_buf(),
            path: "/twinbox/c1".into(),
        }],
    );
    cg.create().unwrap();
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+cpuset +cpu +io +memory +pids"
    );
    let mut res = resources();
    res.set_unified(Some(HashMap::from([(
        "memory.high".to_string(),
        "50M".to_string(),
    )])));
    cg.apply(&res).unwrap();
    let c1 = |f: &str| root.join("twinbox/c1").join(f);
    assert_eq!(read(c1("memory.max")), (64u64 << 20).to_string());
    assert_eq!(read(c1("memory.swap.max")), (64u64 << 20).to_string());
    assert_eq!(read(c1("memory.low")), (32u64 << 20).to_string());
    assert_eq!(
        read(c1("cpu.weight")),
        resources::shares_to_weight(512).to_string()
    );
    assert_eq!(read(c1("cpu.max")), "50000 100000");
    assert_eq!(read(c1("pids.max")), "42");
    assert_eq!(read(c1("memory.high")), "50M");
    res.set_unified(Some(HashMap::from([(
        "../escape".to_string(),
        "1".to_string(),
    )])));
    assert!(cg.apply(&res).is_err());
}

#[test]
fn shares_to_weight_matches_the_documented_range() {
    assert_eq!(resources::shares_to_weight(2), 1);
    assert_eq!(resources::shares_to_weight(262_144), 10_000);
    assert_eq!(resources::shares_to_weight(1024), 39);
}

/// The real unified hierarchy of this host (controller-less on hybrid hosts, full on v2
/// hosts): processes join, freeze, are killed through cgroup.kill and the cgroup goes away.
#[test]
fn real_v2_freeze_and_kill() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let unified = Cgroup::from_mountinfo(&mountinfo, Path::new("/twinbox-test/freeze-kill"))
        .unwrap()
        .hierarchies()
        .iter()
        .find(|h| h.is_unified())
        .cloned()
        .expect("a cgroup2 mount (hybrid or unified)");
    let path = PathBuf::from(format!("/twinbox-test/freeze-kill-{}", std::process::id()));
    let cg = Cgroup::with_hierarchies(CgroupVersion::V2, vec![Hierarchy { path, ..unified }]);
    cg.create().unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    cg.add_process(child.id() as i32).unwrap();
    assert_eq!(cg.processes().unwrap(), vec![child.id() as i32]);
    cg.freeze().unwrap();
    assert!(cg.is_frozen());
    cg.thaw().unwrap();
    assert!(!cg.is_frozen());
    cg.kill_all(Duration::from_secs(5)).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    cg.remove().unwrap();
    assert!(!cg.exists());
    let parent = cg.hierarchies()[0].container_dir();
    let _ = fs::remove_dir(parent.parent().unwrap());
}
