//! Pulling from a real registry (Debian's docker-registry, images pushed with skopeo):
//! multi-layer images with whiteouts and gzip/zstd/plain layers, multi-platform indexes,
//! pull by digest, bearer-token auth with auth.json, a corrupt blob, the config file's
//! insecure_registries, and the pulled image run with `runc run` from a bundle.

use serde_json::json;
use twinbox_tests::oci::{
    Compression, LayerBuilder, OciLayout, busybox_layer, multi_platform_layout,
};
use twinbox_tests::registry::{Registry, TokenProxy};
use twinbox_tests::store::{TestStore, runc_run};

/// An image whose upper layers delete, replace and hide lower content, with one layer in
/// each compression.
fn layered_image(dir: &std::path::Path) -> OciLayout {
    let mut layout = OciLayout::create(dir);
    let base = busybox_layer(Compression::Gzip);
    let middle = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/msg", b"from the middle layer\n", 0o644)
        .file("etc/removed", b"whited out above\n", 0o644)
        .dir("data", 0o755)
        .file("data/old-1", b"1", 0o644)
        .file("data/old-2", b"2", 0o644)
        .finish(Compression::Zstd);
    let top = LayerBuilder::new()
        .whiteout("etc/removed")
        .opaque("data")
        .file("data/new", b"only me\n", 0o600)
        .file("etc/msg", b"from the top layer\n", 0o644)
        .finish(Compression::None);
    let descriptor = layout.image(
        &[base, middle, top],
        json!({"Cmd": ["/bin/sh", "-c", "cat /etc/msg; ls /data; test -e /etc/removed && echo LEAK; exit 7"],
               "Env": ["GREETING=hello"], "Labels": {"org.example.kind": "test"}}),
        "amd64",
    );
    layout.tag(descriptor, "v1");
    layout
}

#[test]
fn pulled_layers_stack_and_the_bundle_runs_under_runc() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    layered_image(src.path());
    registry.push(src.path(), "v1", "test/layered:v1");

    let store = TestStore::new();
    let reference = format!("{}/test/layered:v1", registry.addr);
    let err = store.fails(&["pull", &reference]);
    assert!(
        err.contains("--insecure-registry"),
        "plain-HTTP hint missing: {err}"
    );
    store.ok(&[
        "pull",
        "--quiet",
        "--insecure-registry",
        &registry.addr,
        &reference,
    ]);

    let images = store.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["names"], json!([reference]));
    let layers = images[0]["layers"].as_array().unwrap();
    let media: Vec<&str> = layers
        .iter()
        .map(|l| l["media_type"].as_str().unwrap())
        .collect();
    assert!(
        media[0].ends_with("gzip") && media[1].ends_with("zstd") && media[2].ends_with(".tar"),
        "{media:?}"
    );
    assert!(
        store.entries("tmp").is_empty(),
        "staging files left: {:?}",
        store.entries("tmp")
    );

    let bundle = store.dir.path().join("bundle");
    store.ok(&["bundle", &reference, bundle.to_str().unwrap()]);
    let out = runc_run(&bundle);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the top layer\nnew\n"
    );

    // A command after `--` replaces Cmd; env and labels come from the image.
    let bundle2 = store.dir.path().join("bundle2");
    store.ok(&[
        "bundle",
        &reference,
        bundle2.to_str().unwrap(),
        "--env",
        "EXTRA=1",
        "--",
        "/bin/sh",
        "-c",
        "echo $GREETING $EXTRA",
    ]);
    let out = runc_run(&bundle2);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 1\n");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle2.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["annotations"]["org.example.kind"], "test");

    // Pulling again by digest finds everything in place and adds the repo digest.
    let digest = images[0]["manifest"].as_str().unwrap();
    let by_digest = format!("{}/test/layered@{digest}", registry.addr);
    store.ok(&[
        "pull",
        "-q",
        "--insecure-registry",
        &registry.addr,
        &by_digest,
    ]);
    assert_eq!(store.images().len(), 1);
    store.ok(&["inspect", &by_digest]);
}

#[test]
fn platform_is_selected_from_an_index() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    multi_platform_layout(src.path(), "multi");
    registry.push(src.path(), "multi", "test/multi:1");

    let store = TestStore::new();
    std::fs::write(
        store.dir.path().join("config.toml"),
        format!("insecure_registries = [\"{}\"]\n", registry.addr),
    )
    .unwrap();
    let reference = format!("{}/test/multi:1", registry.addr);
    store.ok(&["pull", "-q", &reference]);
    assert_eq!(store.images()[0]["platform"], "linux/amd64");
    store.ok(&["pull", "-q", "--platform", "linux/arm64", &reference]);
    let images = store.images();
    let arm = images
        .iter()
        .find(|i| i["platform"] == "linux/arm64")
        .expect("arm64 image");
    // The tag moved to the image pulled last; the amd64 one stays, untagged.
    assert_eq!(arm["names"], json!([reference]));
    assert!(arm["index"].is_string());
    let err = store.fails(&["pull", "--platform", "linux/s390x", &reference]);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn bearer_token_auth_uses_auth_json() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(src.path());
    let descriptor = layout.image(
        &[busybox_layer(Compression::Gzip)],
        json!({"Cmd": ["/bin/true"]}),
        "amd64",
    );
    layout.tag(descriptor, "v1");
    registry.push(src.path(), "v1", "private/app:v1");
    let proxy = TokenProxy::start(&registry.addr, "alice", "s3cret");

    let store = TestStore::new();
    let reference = format!("{}/private/app:v1", proxy.addr);
    let err = store.fails(&["pull", "-q", "--insecure-registry", &proxy.addr, &reference]);
    assert!(err.contains("auth"), "{err}");

    let authfile = store.dir.path().join("auth.json");
    let b64 = |s: &str| base64_encode(s);
    std::fs::write(
        &authfile,
        json!({"auths": {proxy.addr.clone(): {"auth": b64("alice:wrong")}}}).to_string(),
    )
    .unwrap();
    store.fails(&[
        "pull",
        "-q",
        "--insecure-registry",
        &proxy.addr,
        "--authfile",
        authfile.to_str().unwrap(),
        &reference,
    ]);

    std::fs::write(
        &authfile,
        json!({"auths": {proxy.addr.clone(): {"auth": b64("alice:s3cret")}}}).to_string(),
    )
    .unwrap();
    store.ok(&[
        "pull",
        "-q",
        "--insecure-registry",
        &proxy.addr,
        "--authfile",
        authfile.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(store.images().len(), 1);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn a_corrupt_blob_is_rejected_and_nothing_is_kept() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut layout = OciLayout::create(src.path());
    let layer = LayerBuilder::new()
        .file("hello", b"hello world\n", 0o644)
        .finish(Compression::Gzip);
    let layer_digest = twinbox_tests::oci::sha256(&layer.blob);
    let descriptor = layout.image(&[layer], json!({"Cmd": ["/hello"]}), "amd64");
    layout.tag(descriptor, "v1");
    registry.push(src.path(), "v1", "test/corrupt:v1");
    // Same length, different bytes: only the digest check can notice.
    let data_path = registry.blob_data_path(&layer_digest);
    let mut data = std::fs::read(&data_path).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&data_path, data).unwrap();

    let store = TestStore::new();
    let err = store.fails(&[
        "pull",
        "--insecure-registry",
        &registry.addr,
        &format!("{}/test/corrupt:v1", registry.addr),
    ]);
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(store.images().is_empty());
    let hex = layer_digest.trim_start_matches("sha256:");
    assert!(
        !store.entries("blobs/sha256").iter().any(|b| b == hex),
        "corrupt blob stored"
    );
    assert!(store.entries("layers/sha256").is_empty());
    assert!(
        store.entries("tmp").is_empty(),
        "staging files left: {:?}",
        store.entries("tmp")
    );

    let missing = format!("{}/test/corrupt:nope", registry.addr);
    let err = store.fails(&["pull", "--insecure-registry", &registry.addr, &missing]);
    assert!(err.contains("check the repository name"), "{err}");
}

#[test]
fn concurrent_pulls_of_one_image_share_the_store_safely() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    layered_image(src.path());
    registry.push(src.path(), "v1", "test/concurrent:v1");
    let store = TestStore::new();
    let reference = format!("{}/test/concurrent:v1", registry.addr);
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(twinbox_tests::twinbox_bin())
                .arg("--root")
                .arg(store.root())
                .args([
                    "pull",
                    "-q",
                    "--insecure-registry",
                    &registry.addr,
                    &reference,
                ])
                .env("TWINBOX_CONFIG", store.dir.path().join("config.toml"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = pulls
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let images = store.images();
    assert_eq!(images.len(), 1);
    assert_eq!(store.entries("layers/sha256").len(), 3);
    assert!(
        store.entries("tmp").is_empty(),
        "{:?}",
        store.entries("tmp")
    );
    // Every stored blob still matches its name.
    for name in store.entries("blobs/sha256") {
        let data = std::fs::read(store.root().join("blobs/sha256").join(&name)).unwrap();
        assert_eq!(twinbox_tests::oci::sha256(&data), format!("sha256:{name}"));
    }
    let bundle = store.dir.path().join("bundle");
    store.ok(&["bundle", &reference, bundle.to_str().unwrap()]);
    assert_eq!(runc_run(&bundle).status.code(), Some(7));
}
