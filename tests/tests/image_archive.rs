//! `load` of archives made by other tools (skopeo's docker-archive, umoci's OCI layout, as
//! a directory and as a tar), `import` with `--change`, and the store commands around
//! them: images (table and JSON), inspect, rmi (untag vs delete) and gc.

use std::process::Command;

use serde_json::json;
use twinbox_tests::oci::{
    Compression, LayerBuilder, OciLayout, busybox_layer, multi_platform_layout,
};
use twinbox_tests::store::{TestStore, runc_run};

fn run_tool(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_bundle(store: &TestStore, image: &str, name: &str) -> String {
    let bundle = store.dir.path().join(name);
    store.ok(&["bundle", image, bundle.to_str().unwrap()]);
    let out = runc_run(&bundle);
    assert!(
        out.status.success(),
        "runc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn docker_archive_from_skopeo_loads_plain_and_gzipped() {
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    let extra = LayerBuilder::new()
        .file("etc/motd", b"docker-archive works\n", 0o644)
        .finish(Compression::Gzip);
    let descriptor = layout.image(
        &[busybox_layer(Compression::Gzip), extra],
        json!({"Cmd": ["/bin/cat", "/etc/motd"]}),
        "amd64",
    );
    layout.tag(descriptor, "v1");
    let archive = work.path().join("app.tar");
    run_tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci:{}:v1", layout.dir.display()),
            &format!("docker-archive:{}:example.com/app:v1", archive.display()),
        ],
    );

    let store = TestStore::new();
    let out = store.ok(&["load", archive.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: example.com/app:v1\n");
    assert_eq!(
        run_bundle(&store, "example.com/app:v1", "b1"),
        "docker-archive works\n"
    );

    // `docker save | gzip` output loads too (-i as with docker load).
    let gz = work.path().join("app.tar.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut std::fs::File::open(&archive).unwrap(), &mut encoder).unwrap();
    encoder.finish().unwrap();
    let other = TestStore::new();
    other.ok(&["load", "-i", gz.to_str().unwrap()]);
    assert_eq!(other.images()[0]["id"], store.images()[0]["id"]);
    assert!(store.entries("tmp").is_empty());
}

#[test]
fn oci_layout_from_umoci_loads_as_dir_and_tar() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("umoci-layout");
    let rootfs = work.path().join("rootfs");
    twinbox_tests::busybox_rootfs(&rootfs).unwrap();
    let layout_v1 = format!("{}:v1", layout.display());
    run_tool("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    run_tool("umoci", &["new", "--image", &layout_v1]);
    run_tool(
        "umoci",
        &[
            "insert",
            "--image",
            &layout_v1,
            rootfs.to_str().unwrap(),
            "/",
        ],
    );
    run_tool(
        "umoci",
        &[
            "config",
            "--image",
            &layout_v1,
            "--config.cmd",
            "/bin/echo",
            "--config.cmd",
            "made by umoci",
            "--config.user",
            "tester",
        ],
    );

    let store = TestStore::new();
    let out = store.ok(&["load", layout.to_str().unwrap(), "--name", "example/umoci"]);
    assert_eq!(out, "Loaded image: docker.io/example/umoci:v1\n");
    assert_eq!(
        run_bundle(&store, "example/umoci:v1", "b1"),
        "made by umoci\n"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.dir.path().join("b1/config.json")).unwrap())
            .unwrap();
    // "tester" resolved through the image's /etc/passwd and /etc/group.
    assert_eq!(config["process"]["user"]["uid"], 1000);
    assert_eq!(config["process"]["user"]["additionalGids"], json!([10]));

    // The same layout as a tar, without --name: named after the file.
    let tar = work.path().join("My Layout.tar");
    run_tool(
        "tar",
        &[
            "-C",
            layout.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    let other = TestStore::new();
    assert_eq!(
        other.ok(&["load", tar.to_str().unwrap()]),
        "Loaded image: localhost/my-layout:v1\n"
    );
}

#[test]
fn import_images_inspect_rmi_and_gc() {
    let store = TestStore::new();
    let rootfs = tempfile::tempdir().unwrap();
    twinbox_tests::busybox_rootfs(rootfs.path()).unwrap();
    let tarball = store.dir.path().join("rootfs.tar.zst");
    let layer = LayerBuilder::new()
        .tree(rootfs.path())
        .finish(Compression::Zstd);
    std::fs::write(&tarball, &layer.blob).unwrap();

    let id = store.ok(&[
        "import",
        tarball.to_str().unwrap(),
        "tools:1",
        "--change",
        r#"CMD ["/bin/sh", "-c", "echo $MODE in $(pwd)"]"#,
        "-c",
        "ENV MODE=imported",
        "-c",
        "WORKDIR /tmp",
        "-c",
        "LABEL purpose=test",
    ]);
    let id = id.trim();
    assert!(id.starts_with("sha256:"), "{id}");
    let inspect: serde_json::Value =
        serde_json::from_str(&store.ok(&["inspect", "tools:1"])).unwrap();
    let config = &inspect[0]["Config"]["config"];
    assert_eq!(
        config["Cmd"],
        json!(["/bin/sh", "-c", "echo $MODE in $(pwd)"])
    );
    assert_eq!(config["WorkingDir"], "/tmp");
    assert_eq!(inspect[0]["layers"][0]["diff_id"], layer.diff_id);
    assert_eq!(run_bundle(&store, "tools:1", "b1"), "imported in /tmp\n");
    // The default spec confines the process: no namespace creation (seccomp + no
    // CAP_SYS_ADMIN), no new privileges, /proc/kcore masked.
    let confined = store.dir.path().join("confined");
    store.ok(&[
        "bundle",
        "tools:1",
        confined.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "unshare -n true 2>/dev/null && echo ESCAPED; grep NoNewPrivs /proc/self/status; test -s /proc/kcore && echo KCORE; echo done",
    ]);
    let out = runc_run(&confined);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "NoNewPrivs:\t1\ndone\n"
    );
    // By short id too.
    store.ok(&["inspect", &id["sha256:".len().."sha256:".len() + 12]]);

    // A second name for the same image: rmi of one name only untags.
    store.ok(&[
        "import",
        tarball.to_str().unwrap(),
        "tools:2",
        "-c",
        r#"CMD ["/bin/true"]"#,
    ]);
    let table = store.ok(&["images"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(
        table.contains("tools") && table.lines().count() == 3,
        "{table}"
    );
    assert_eq!(
        store.entries("layers/sha256").len(),
        1,
        "identical layers are stored once"
    );

    let out = store.ok(&["rmi", "tools:1"]);
    assert!(out.contains("Deleted"), "{out}");
    let err = store.fails(&["rmi", "tools:1"]);
    assert!(err.contains("not in the store"), "{err}");
    store.ok(&["rmi", "tools:2"]);
    assert!(store.images().is_empty());
    assert!(
        store.entries("blobs/sha256").is_empty(),
        "blobs left: {:?}",
        store.entries("blobs/sha256")
    );
    assert!(store.entries("layers/sha256").is_empty());
    assert_eq!(
        store.ok(&["gc"]),
        "Deleted 0 blobs (0B) and 0 unpacked layers\n"
    );
}

#[test]
fn bad_inputs_get_clear_errors() {
    let store = TestStore::new();
    let junk = store.dir.path().join("junk.tar");
    std::fs::write(
        &junk,
        b"this is not a tar archive at all, not even close............",
    )
    .unwrap();
    let err = store.fails(&["import", junk.to_str().unwrap(), "junk:1"]);
    assert!(err.contains("junk.tar"), "{err}");
    let err = store.fails(&["load", store.dir.path().to_str().unwrap()]);
    assert!(err.contains("neither an OCI image layout"), "{err}");
    let err = store.fails(&["import", junk.to_str().unwrap(), "Bad Name"]);
    assert!(err.contains("invalid image reference"), "{err}");
    let err = store.fails(&[
        "import",
        junk.to_str().unwrap(),
        "x:1",
        "-c",
        "FROM scratch",
    ]);
    assert!(err.contains("--change"), "{err}");
    let err = store.fails(&[
        "bundle",
        "missing:1",
        store.dir.path().join("b").to_str().unwrap(),
    ]);
    assert!(err.contains("not in the store"), "{err}");
    assert!(store.entries("tmp").is_empty());
    assert!(
        store.entries("blobs/sha256").is_empty(),
        "{:?}",
        store.entries("blobs/sha256")
    );
}

#[test]
fn multi_platform_layout_loads_the_chosen_platform() {
    let work = tempfile::tempdir().unwrap();
    let layout = multi_platform_layout(&work.path().join("layout"), "example.com/multi:2");

    let store = TestStore::new();
    let dir = layout.dir.to_str().unwrap();
    assert_eq!(
        store.ok(&["load", dir]),
        "Loaded image: example.com/multi:2\n"
    );
    assert_eq!(store.images()[0]["platform"], "linux/amd64");
    store.ok(&["load", dir, "--platform", "linux/arm64"]);
    let images = store.images();
    assert_eq!(images.len(), 2);
    let arm = images
        .iter()
        .find(|i| i["platform"] == "linux/arm64")
        .unwrap();
    assert_eq!(arm["names"], json!(["example.com/multi:2"]));
    let err = store.fails(&["load", dir, "--platform", "linux/riscv64"]);
    assert!(err.contains("linux/riscv64"), "{err}");
}

#[test]
fn save_writes_an_oci_archive_that_load_and_skopeo_read_back() {
    let work = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(&work.path().join("layout"));
    let extra = LayerBuilder::new()
        .file("srv/greeting", b"saved\n", 0o644)
        .finish(Compression::Gzip);
    let descriptor = layout.image(
        &[busybox_layer(Compression::Gzip), extra],
        json!({
            "Env": ["PATH=/bin", "GREETING=from-the-image"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo $GREETING in $(pwd) as $(id -u); cat greeting"],
            "WorkingDir": "/srv",
            "User": "65534:65534",
        }),
        "amd64",
    );
    layout.tag(descriptor, "v1");
    let store = TestStore::new();
    store.ok(&[
        "load",
        layout.dir.to_str().unwrap(),
        "--name",
        "example.com/saved",
    ]);
    let before = run_bundle(&store, "example.com/saved:v1", "b1");
    assert_eq!(before, "from-the-image in /srv as 65534\nsaved\n");

    let archive = work.path().join("saved.tar");
    assert_eq!(
        store.ok(&[
            "save",
            "example.com/saved:v1",
            "-o",
            archive.to_str().unwrap()
        ]),
        ""
    );
    // Another tool reads it as an OCI archive.
    let copied = work.path().join("copied");
    run_tool(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci-archive:{}", archive.display()),
            &format!("oci:{}:copy", copied.display()),
        ],
    );

    // Loaded into a fresh store: same id, name, config and behaviour.
    let other = TestStore::new();
    assert_eq!(
        other.ok(&["load", archive.to_str().unwrap()]),
        "Loaded image: example.com/saved:v1\n"
    );
    let image = |store: &TestStore| {
        let out = store.ok(&["inspect", "--type", "image", "example.com/saved:v1"]);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        value
    };
    let (saved, loaded) = (image(&store), image(&other));
    assert!(saved[0]["id"].as_str().unwrap().starts_with("sha256:"));
    for field in ["id", "manifest", "layers", "Config"] {
        assert_eq!(saved[0][field], loaded[0][field], "{field}: {loaded:#}");
    }
    assert_eq!(loaded[0]["Config"]["config"]["WorkingDir"], "/srv");
    assert_eq!(run_bundle(&other, "example.com/saved:v1", "b2"), before);

    // Unknown images are refused without leaving a file behind; stdout works too.
    let missing = work.path().join("missing.tar");
    let error = store.fails(&[
        "save",
        "example.com/none:v1",
        "-o",
        missing.to_str().unwrap(),
    ]);
    assert!(error.contains("example.com/none"), "{error}");
    assert!(!missing.exists());
    assert_eq!(
        std::fs::read_dir(work.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".twinbox-save"))
            .count(),
        0
    );
    let out = store.run(&["save", "example.com/saved:v1"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(&archive).unwrap());
}
