//! Unpacking one large layer: twinbox's hostile-input-safe unpacker against umoci, side by
//! side in one run.
//!
//! The layer is a gzip-compressed Debian root filesystem built with debootstrap (a few
//! hundred MB unpacked), cached under `target/bench-cache/`. Each tool unpacks it from the
//! same OCI layout into a fresh directory on the same filesystem, `RUNS` times; the table
//! shows the median wall time and each peer's time as a ratio to twinbox's
//! (above 1.00 = twinbox is faster).
//!
//! Run as root: `cargo bench -p twinbox-benches --bench unpack`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest as _, Sha256};
use twinbox::image::compression::LayerStream;
use twinbox::image::unpack::{WhiteoutMode, apply_layer};

const RUNS: usize = 3;
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache")
}

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(status.success(), "{command:?} failed");
}

/// The debootstrap rootfs as a gzip tarball, built once.
fn rootfs_tarball() -> PathBuf {
    let tarball = cache_dir().join(format!("debootstrap-{SUITE}.tar.gz"));
    if tarball.is_file() {
        return tarball;
    }
    std::fs::create_dir_all(cache_dir()).unwrap();
    let staging = tempfile::tempdir_in(cache_dir()).unwrap();
    let rootfs = staging.path().join("rootfs");
    eprintln!("building the bench layer: debootstrap {SUITE} (a few minutes, once)");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=perl,python3,libssl3"])
        .arg(SUITE)
        .arg(&rootfs)
        .arg(MIRROR));
    let partial = staging.path().join("layer.tar.gz");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-czf"])
        .arg(&partial)
        .arg("."));
    std::fs::rename(&partial, &tarball).unwrap();
    tarball
}

fn sha256_file(path: &Path) -> (String, u64) {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut File::open(path).unwrap(), &mut hasher).unwrap();
    (format!("sha256:{}", hex::encode(hasher.finalize())), size)
}

/// An OCI layout holding the tarball as a one-layer image tagged `bench`.
fn layout(tarball: &Path, dir: &Path) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let (layer_digest, layer_size) = sha256_file(tarball);
    let layer_blob = blobs.join(layer_digest.trim_start_matches("sha256:"));
    std::fs::hard_link(tarball, &layer_blob)
        .or_else(|_| std::fs::copy(tarball, &layer_blob).map(drop))
        .unwrap();
    let diff_id = {
        let mut stream = LayerStream::new(File::open(tarball).unwrap()).unwrap();
        std::io::copy(&mut stream, &mut std::io::sink()).unwrap();
        stream.finish().unwrap().to_string()
    };
    let blob = |value: serde_json::Value| {
        let data = serde_json::to_vec(&value).unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), &data).unwrap();
        (digest, data.len())
    };
    let (config, config_size) = blob(json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}}));
    let (manifest, manifest_size) = blob(
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}]}),
    );
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "bench"}}]})
        .to_string(),
    )
    .unwrap();
    layer_blob
}

fn time(mut f: impl FnMut(&Path), scratch: &Path) -> Duration {
    let mut times = Vec::new();
    for i in 0..RUNS {
        let target = scratch.join(format!("run{i}"));
        let start = Instant::now();
        f(&target);
        times.push(start.elapsed());
        std::fs::remove_dir_all(&target).unwrap();
    }
    times.sort();
    times[RUNS / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("unpack: bench");
        return;
    }
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the unpack bench needs root (ownership, device nodes, debootstrap)"
    );
    let tarball = rootfs_tarball();
    let work = tempfile::tempdir_in(cache_dir()).unwrap();
    let layout_dir = work.path().join("layout");
    let blob = layout(&tarball, &layout_dir);
    let image = format!("{}:bench", layout_dir.display());
    let unpacked_size = dir_size(&{
        let probe = work.path().join("probe");
        std::fs::create_dir(&probe).unwrap();
        apply_layer(
            LayerStream::new(File::open(&blob).unwrap()).unwrap(),
            &probe,
            WhiteoutMode::Overlay,
        )
        .unwrap();
        probe
    });

    let twinbox = time(
        |target| {
            std::fs::create_dir(target).unwrap();
            let mut stream = LayerStream::new(File::open(&blob).unwrap()).unwrap();
            apply_layer(&mut stream, target, WhiteoutMode::Overlay).unwrap();
            stream.finish().unwrap();
        },
        work.path(),
    );
    let umoci_raw = time(
        |target| {
            run(Command::new("umoci")
                .args(["raw", "unpack", "--image", &image])
                .arg(target))
        },
        work.path(),
    );
    let umoci_full = time(
        |target| {
            run(Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(target))
        },
        work.path(),
    );

    let compressed = std::fs::metadata(&blob).unwrap().len();
    println!();
    println!(
        "unpack: one gzip layer, {:.0} MB compressed, {:.0} MB unpacked (debootstrap {SUITE}); median of {RUNS}",
        compressed as f64 / 1e6,
        unpacked_size as f64 / 1e6
    );
    println!(
        "{:<34} {:>10} {:>12} {:>16}",
        "tool", "seconds", "MB/s out", "time / twinbox"
    );
    for (name, t) in [
        ("twinbox apply_layer (+diff-id)", twinbox),
        ("umoci raw unpack (rootfs only)", umoci_raw),
        ("umoci unpack (bundle + mtree)", umoci_full),
    ] {
        println!(
            "{name:<34} {:>10.2} {:>12.0} {:>16.2}",
            t.as_secs_f64(),
            unpacked_size as f64 / 1e6 / t.as_secs_f64(),
            t.as_secs_f64() / twinbox.as_secs_f64()
        );
    }
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
