//! Unique container names: one file per name under `<run root>/.names/`, created atomically
//! with link(2), holding the container id and the process that reserved it. A reservation
//! whose container never came to exist and whose reserver is dead (twinbox was killed in
//! between) is stale and is taken over.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::EngineError;
use crate::state::{ProcessIdentity, RunRoot};

/// The names of one run root.
pub(crate) struct Names {
    dir: PathBuf,
    run_root: RunRoot,
}

/// Checks a container or volume name as docker does: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), EngineError> {
    let mut chars = name.chars();
    let valid = name.len() >= 2
        && name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(EngineError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

const ADJECTIVES: [&str; 32] = [
    "agile", "bold", "brave", "bright", "calm", "clever", "crisp", "eager", "fair", "fancy",
    "gentle", "happy", "jolly", "keen", "kind", "lively", "lucid", "merry", "modest", "nimble",
    "noble", "proud", "quick", "quiet", "sharp", "shiny", "steady", "sturdy", "swift", "tidy",
    "vivid", "witty",
];

const NOUNS: [&str; 32] = [
    "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "faraday", "fermi",
    "gauss", "hopper", "hypatia", "kepler", "knuth", "lamport", "liskov", "lovelace", "maxwell",
    "meitner", "newton", "noether", "pascal", "planck", "ritchie", "shannon", "tesla", "thompson",
    "torvalds", "turing", "volta", "wozniak", "yalow",
];

/// A random docker-style name such as `brave_turing`; after a collision, `attempt` > 0 adds
/// a number.
pub fn generate_name(attempt: u32) -> String {
    let random = super::random_hex(4);
    let value = u32::from_str_radix(&random, 16).unwrap_or_default();
    let adjective = ADJECTIVES[(value as usize) % ADJECTIVES.len()];
    let noun = NOUNS[(value as usize / ADJECTIVES.len()) % NOUNS.len()];
    if attempt == 0 {
        format!("{adjective}_{noun}")
    } else {
        format!("{adjective}_{noun}_{}", value % 1000)
    }
}

struct Reservation {
    id: String,
    reserver: ProcessIdentity,
}

impl Names {
    pub(crate) fn new(run_root: &RunRoot) -> Names {
        Names {
            dir: run_root.path().join(".names"),
            run_root: run_root.clone(),
        }
    }

    fn read(&self, name: &str) -> Option<Reservation> {
        let text = fs::read_to_string(self.dir.join(name)).ok()?;
        let mut fields = text.split_whitespace();
        let id = fields.next()?.to_string();
        let pid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let start_time = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        Some(Reservation {
            id,
            reserver: ProcessIdentity { pid, start_time },
        })
    }

    fn is_stale(&self, reservation: &Reservation) -> bool {
        !self.run_root.container_dir(&reservation.id).exists() && !reservation.reserver.is_alive()
    }

    /// The container id that has `name`.
    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        if validate_name("container", name).is_err() {
            return None;
        }
        self.read(name).filter(|r| !self.is_stale(r)).map(|r| r.id)
    }

    /// Gives `name` to container `id`; fails if another container has it.
    pub(crate) fn reserve(&self, name: &str, id: &str) -> Result<(), EngineError> {
        validate_name("container", name)?;
        fs::create_dir_all(&self.dir).map_err(EngineError::io("creating", &self.dir))?;
        let temp = self.write_record(id)?;
        let target = self.dir.join(name);
        let result = loop {
            match fs::hard_link(&temp, &target) {
                Ok(()) => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match self.read(name) {
                    Some(other) if self.is_stale(&other) => {
                        tracing::info!("taking over the stale name {name} of {}", other.id);
                        let _ = fs::remove_file(&target);
                    }
                    Some(other) => {
                        break Err(EngineError::NameInUse {
                            name: name.to_string(),
                            id: other.id,
                        });
                    }
                    // Removed meanwhile: try again.
                    None => {}
                },
                Err(e) => break Err(EngineError::io("reserving the name", &target)(e)),
            }
        };
        let _ = fs::remove_file(&temp);
        result
    }

    /// Makes this process the reserver of `name` (held by container `id`): the forked
    /// monitor takes over from the `run` that reserved it, which may exit or be killed before
    /// the container exists.
    pub(crate) fn adopt(&self, name: &str, id: &str) -> Result<(), EngineError> {
        if self.read(name).is_none_or(|r| r.id != id) {
            return Err(EngineError::NoSuchContainer(name.to_string()));
        }
        let temp = self.write_record(id)?;
        let target = self.dir.join(name);
        fs::rename(&temp, &target).map_err(|e| {
            let _ = fs::remove_file(&temp);
            EngineError::io("reserving the name", &target)(e)
        })
    }

    /// Writes the reservation record of `id` held by this process to a temporary file of the
    /// names directory, to be linked or renamed into place.
    fn write_record(&self, id: &str) -> Result<PathBuf, EngineError> {
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap_or_default();
        let temp = self.dir.join(format!(".{id}"));
        fs::write(&temp, format!("{id} {} {}\n", me.pid, me.start_time))
            .map_err(EngineError::io("writing", &temp))?;
        Ok(temp)
    }

    /// Reservations left by a killed `run` (name, id): the reserver is dead and the container
    /// never came to exist.
    pub(crate) fn stale(&self) -> Vec<(String, String)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .filter_map(|name| {
                let reservation = self.read(&name)?;
                self.is_stale(&reservation)
                    .then_some((name, reservation.id))
            })
            .collect()
    }

    /// Frees `name` if container `id` has it.
    pub(crate) fn release(&self, name: &str, id: &str) {
        if self.read(name).is_some_and(|r| r.id == id) {
            let _ = fs::remove_file(self.dir.join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker_rules() {
        for good in ["web", "a1", "my-app_2.0", "X9"] {
            validate_name("container", good).unwrap();
        }
        for bad in ["", "a", "-x", "_x", ".x", "a b", "a/b", "é1"] {
            assert!(validate_name("container", bad).is_err(), "{bad:?}");
        }
        for attempt in [0, 1] {
            validate_name("container", &generate_name(attempt)).unwrap();
        }
    }

    #[test]
    fn a_name_belongs_to_one_container_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let root = RunRoot::new(Some(dir.path()));
        let names = Names::new(&root);
        names.reserve("web", "id1").unwrap();
        // Reserved by this live process: taken even before the container exists.
        let err = names.reserve("web", "id2").unwrap_err();
        assert!(
            matches!(&err, EngineError::NameInUse { id, .. } if id == "id1"),
            "{err}"
        );
        root.create_container_dir("id1").unwrap();
        assert_eq!(names.lookup("web").as_deref(), Some("id1"));
        names.release("web", "id2");
        assert_eq!(names.lookup("web").as_deref(), Some("id1"), "not id2's");
        names.release("web", "id1");
        assert_eq!(names.lookup("web"), None);
        assert!(
            names.adopt("web", "id1").is_err(),
            "released names cannot be adopted"
        );
        names.reserve("web", "id2").unwrap();
        assert!(
            root.ids().unwrap() == vec!["id1".to_string()],
            ".names is no container"
        );
    }

    #[test]
    fn a_reservation_of_a_dead_process_without_container_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = RunRoot::new(Some(dir.path()));
        let names = Names::new(&root);
        std::fs::create_dir_all(dir.path().join(".names")).unwrap();
        // pid 0 / start time 0 never is alive: the reserver was killed.
        std::fs::write(dir.path().join(".names/db"), "ghost 0 0\n").unwrap();
        assert_eq!(names.lookup("db"), None);
        assert_eq!(names.stale(), vec![("db".to_string(), "ghost".to_string())]);
        names.reserve("db", "fresh").unwrap();
        assert!(names.stale().is_empty());
        // A monitor takes the reservation over from the run that made it.
        names.adopt("db", "fresh").unwrap();
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        assert_eq!(names.read("db").unwrap().reserver, me);
        assert_eq!(names.read("db").unwrap().id, "fresh");
    }
}
