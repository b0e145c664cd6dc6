//! Named volumes, kept in the store as docker keeps them: `volumes/<name>/_data` (what
//! containers mount) and `volumes/<name>/volume.json` (when it was made, whether it is
//! anonymous). They outlive the containers that use them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::EngineError;
use crate::state::{rfc3339_now, write_atomic};

/// One volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    /// The name.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The directory containers mount.
    pub mountpoint: PathBuf,
    /// Made for one container by `-v /path` (removed with `rm -v` / `--rm`).
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VolumeMeta {
    created_at: String,
    #[serde(default)]
    anonymous: bool,
}

/// The volumes of one store.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    dir: PathBuf,
}

const DATA: &str = "_data";
const META: &str = "volume.json";

impl VolumeStore {
    /// The volumes of the store at `store_root` (the directory is created, mode 0700).
    pub fn open(store_root: &Path) -> Result<VolumeStore, EngineError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = store_root.join("volumes");
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            Ok(()) => {}
            Err(e) => return Err(EngineError::io("creating", &dir)(e)),
        }
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        Ok(VolumeStore { dir })
    }

    fn not_found(name: &str) -> EngineError {
        EngineError::Volume {
            name: name.to_string(),
            reason: "no such volume; `twinbox volume ls` lists them".into(),
        }
    }

    /// The volume `name`.
    pub fn get(&self, name: &str) -> Result<Volume, EngineError> {
        super::validate_name("volume", name)?;
        let dir = self.dir.join(name);
        let meta_path = dir.join(META);
        let meta: VolumeMeta = match fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| EngineError::Volume {
                name: name.to_string(),
                reason: format!("{} is damaged ({e})", meta_path.display()),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Self::not_found(name)),
            Err(e) => return Err(EngineError::io("reading", &meta_path)(e)),
        };
        Ok(Volume {
            name: name.to_string(),
            created_at: meta.created_at,
            mountpoint: dir.join(DATA),
            anonymous: meta.anonymous,
        })
    }

    /// Creates volume `name` (a generated name when None); an existing volume of that name is
    /// returned as it is, as `docker volume create` does. The bool says whether it is new.
    pub fn create(
        &self,
        name: Option<&str>,
        anonymous: bool,
    ) -> Result<(Volume, bool), EngineError> {
        let name = match name {
            Some(name) => name.to_string(),
            None => super::random_hex(32),
        };
        super::validate_name("volume", &name)?;
        if let Ok(volume) = self.get(&name) {
            return Ok((volume, false));
        }
        let dir = self.dir.join(&name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // Made concurrently, or left half-made by a killed twinbox: finish it below.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EngineError::io("creating", &dir)(e)),
        }
        let data = dir.join(DATA);
        match fs::create_dir(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(EngineError::io("creating", &data)(e)),
        }
        let meta = VolumeMeta {
            created_at: rfc3339_now(),
            anonymous,
        };
        write_atomic(
            &dir.join(META),
            &serde_json::to_vec(&meta).expect("volume metadata serializes"),
        )?;
        Ok((self.get(&name)?, true))
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, EngineError> {
        let entries = fs::read_dir(&self.dir).map_err(EngineError::io("listing", &self.dir))?;
        let mut volumes: Vec<Volume> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| self.get(&name).ok())
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// Deletes volume `name` and its data (the caller checked that no container uses it).
    pub fn remove(&self, name: &str) -> Result<(), EngineError> {
        self.get(name)?;
        let dir = self.dir.join(name);
        // The metadata goes first: a volume interrupted while being removed is no volume.
        let _ = fs::remove_file(dir.join(META));
        crate::image::fsutil::remove_tree(&dir).map_err(EngineError::io("removing", &dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_created_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        let (data, new) = store.create(Some("data"), false).unwrap();
        assert!(new && data.mountpoint.is_dir());
        std::fs::write(data.mountpoint.join("file"), "kept").unwrap();
        let (again, new) = store.create(Some("data"), false).unwrap();
        assert!(!new, "an existing volume is reused");
        assert_eq!(again, data);
        let (anonymous, _) = store.create(None, true).unwrap();
        assert_eq!(anonymous.name.len(), 64);
        assert!(anonymous.anonymous);
        let names: Vec<String> = store.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"data".to_string()));
        store.remove("data").unwrap();
        assert!(!dir.path().join("volumes/data").exists());
        assert!(store.get("data").is_err());
        assert!(store.remove("data").is_err());
        assert!(store.create(Some("../escape"), false).is_err());
    }
}
