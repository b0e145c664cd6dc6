//! Hostile layers: entries that try to create, follow or overwrite something outside the
//! image root (`..`, absolute paths, symlink-then-write, hardlinks to outside, duplicate
//! entries, whiteouts through symlinks). Each goes through `import` (overlay-form
//! unpacking), `bundle` (layer flattening) when the import is accepted, and `load`
//! (archive extraction, whiteouts applied by deletion); the "host" directory must be
//! untouched every time.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use twinbox_tests::oci::{Compression, LayerBuilder};
use twinbox_tests::store::TestStore;

/// A directory standing for the host: one file whose content and link count are checked.
struct Victim {
    dir: tempfile::TempDir,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "original").unwrap();
        Victim { dir }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// `../` enough times to climb from anywhere in the store to `/`, then the victim.
    fn climb(&self) -> String {
        format!(
            "{}{}",
            "../".repeat(12),
            self.path().trim_start_matches('/')
        )
    }

    fn assert_untouched(&self, case: &str) {
        let names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["secret"], "{case}: the host directory changed");
        let secret = self.dir.path().join("secret");
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "original",
            "{case}: host file overwritten"
        );
        assert_eq!(
            std::fs::symlink_metadata(&secret).unwrap().nlink(),
            1,
            "{case}: host file hardlinked"
        );
    }
}

fn cases(victim: &Victim) -> Vec<(&'static str, LayerBuilder)> {
    let v = victim.path();
    let climb = victim.climb();
    let secret = format!("{v}/secret");
    vec![
        (
            "dot-dot path",
            LayerBuilder::new().file(&format!("{climb}/secret"), b"pwned", 0o644),
        ),
        (
            "dot-dot new file",
            LayerBuilder::new().file(&format!("{climb}/new"), b"pwned", 0o644),
        ),
        (
            "absolute path",
            LayerBuilder::new().file(&secret, b"pwned", 0o644),
        ),
        (
            "symlink dir then write through it",
            LayerBuilder::new()
                .symlink("link", v)
                .file("link/secret", b"pwned", 0o644),
        ),
        (
            "relative symlink climbing out then write",
            LayerBuilder::new()
                .symlink("up", &climb)
                .file("up/secret", b"pwned", 0o644),
        ),
        (
            "symlink to file then file of the same name",
            LayerBuilder::new()
                .symlink("f", &secret)
                .file("f", b"pwned", 0o644),
        ),
        (
            "hardlink to absolute outside path",
            LayerBuilder::new().hardlink("h", &secret),
        ),
        (
            "hardlink climbing out",
            LayerBuilder::new().hardlink("h", &format!("{climb}/secret")),
        ),
        (
            "hardlink through a symlinked dir",
            LayerBuilder::new()
                .symlink("d", v)
                .hardlink("h", "d/secret"),
        ),
        (
            "duplicate entries: dir, then symlink, then write below",
            LayerBuilder::new()
                .dir("dup", 0o755)
                .file("dup/x", b"1", 0o644)
                .symlink("dup", v)
                .file("dup/secret", b"pwned", 0o644),
        ),
        (
            "whiteout through a symlink",
            LayerBuilder::new().symlink("w", v).whiteout("w/secret"),
        ),
        (
            "opaque whiteout through a symlink",
            LayerBuilder::new().symlink("o", v).opaque("o"),
        ),
        (
            "whiteout of ..",
            LayerBuilder::new()
                .dir("a", 0o755)
                .file("a/.wh..", b"", 0o644),
        ),
        (
            "symlink then hardlink then write",
            LayerBuilder::new()
                .symlink("s", &secret)
                .hardlink("hl", "s")
                .file("hl", b"pwned", 0o644),
        ),
    ]
}

#[test]
fn hostile_layers_cannot_touch_the_host() {
    let victim = Victim::new();
    let store = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    for (i, (case, layer)) in cases(&victim).into_iter().enumerate() {
        let tar = layer.into_tar();
        let tarball = work.path().join(format!("case{i}.tar"));
        std::fs::write(&tarball, &tar).unwrap();

        let name = format!("hostile:{i}");
        let imported = store.run(&["import", tarball.to_str().unwrap(), &name]);
        victim.assert_untouched(case);
        if imported.status.success() {
            let bundle = work.path().join(format!("bundle{i}"));
            store.run(&["bundle", &name, bundle.to_str().unwrap(), "--", "/bin/true"]);
            victim.assert_untouched(case);
        } else {
            let err = String::from_utf8_lossy(&imported.stderr);
            assert!(
                err.contains("layer entry") || err.contains("hardlink"),
                "{case}: unclear error: {err}"
            );
        }
        // `load` extracts the archive itself (whiteouts applied by deletion) before it
        // finds out this is no image archive.
        store.run(&["load", tarball.to_str().unwrap()]);
        victim.assert_untouched(case);
    }
    assert!(
        store.entries("tmp").is_empty(),
        "staging left: {:?}",
        store.entries("tmp")
    );
}

#[test]
fn accepted_hostile_entries_land_inside_the_image() {
    let victim = Victim::new();
    let store = TestStore::new();
    let v = victim.path();
    let tar = LayerBuilder::new()
        .symlink("f", &format!("{v}/secret"))
        .file("f", b"replaced", 0o644)
        .symlink("link", v)
        .file("link/secret", b"inside", 0o600)
        .finish(Compression::Gzip)
        .blob;
    let tarball = store.dir.path().join("layer.tgz");
    std::fs::write(&tarball, tar).unwrap();
    store.ok(&["import", tarball.to_str().unwrap(), "contained:1"]);
    let bundle = store.dir.path().join("bundle");
    store.ok(&[
        "bundle",
        "contained:1",
        bundle.to_str().unwrap(),
        "--",
        "/bin/true",
    ]);
    victim.assert_untouched("contained");
    let rootfs = bundle.join("rootfs");
    // "f" became a regular file; "link/secret" was written where the symlink points when
    // resolved inside the image: <rootfs>/<victim path>/secret.
    assert_eq!(
        std::fs::read_to_string(rootfs.join("f")).unwrap(),
        "replaced"
    );
    assert!(
        std::fs::symlink_metadata(rootfs.join("f"))
            .unwrap()
            .is_file()
    );
    let inside = rootfs.join(v.trim_start_matches('/')).join("secret");
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "inside");
    assert!(Path::new(&rootfs).join("link").is_symlink());
}
