//! Checks the shared fixtures themselves, so a broken fixture fails here and not as a
//! confusing error in every end-to-end test.

#[test]
fn busybox_rootfs_has_shell_and_users() {
    let dir = tempfile::tempdir().unwrap();
    twinbox_tests::busybox_rootfs(dir.path()).unwrap();
    let sh = std::fs::read_link(dir.path().join("bin/sh")).unwrap();
    assert_eq!(sh, std::path::Path::new("busybox"));
    let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("tester:x:1000:1000:")));
    let out = std::process::Command::new("chroot")
        .arg(dir.path())
        .args(["/bin/sh", "-c", "echo $((6*7))"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[test]
fn twinbox_binary_reports_its_version() {
    let out = std::process::Command::new(twinbox_tests::twinbox_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("twinbox version {}", env!("CARGO_PKG_VERSION"))));
    assert!(text.lines().any(|l| l.starts_with("spec: 1.")));
}
