//! When a VM's start phases ended. The VM's init records each milestone on the host's
//! `CLOCK_MONOTONIC` (the clock the VMM's boot timer reports), writes them to
//! [`PHASES_FILE`] in the VM directory just before it reports the workload ready (one small
//! write, no extra round-trip), and `twinbox state ID` shows them as annotations
//! `io.twinbox.vm.phase.<milestone>` whose values are nanoseconds on that clock.
//!
//! A caller that read `CLOCK_MONOTONIC` before `create` (as `twinbox compare` does) subtracts
//! it to get launch-to-milestone times.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file in the VM directory holding the milestones (JSON).
pub const PHASES_FILE: &str = "boot-phases.json";

/// Prefix of the `twinbox state` annotations that carry the milestones.
pub const ANNOTATION_PREFIX: &str = "io.twinbox.vm.phase.";

/// The milestones of a VM's start, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Milestone {
    /// The VM's init (the VMM process) began.
    VmmStarted,
    /// vCPU 0 entered the guest for the first time.
    VmEntered,
    /// The guest kernel reached init: the agent's boot-timer write.
    KernelBooted,
    /// The agent connected and the protocol handshake completed.
    AgentReady,
    /// The agent created the workload (it waits for `start`, unless `run` started it with
    /// its creation).
    WorkloadCreated,
}

impl Milestone {
    /// Every milestone, in order.
    pub const ALL: [Milestone; 5] = [
        Milestone::VmmStarted,
        Milestone::VmEntered,
        Milestone::KernelBooted,
        Milestone::AgentReady,
        Milestone::WorkloadCreated,
    ];

    /// The name used in the file and the annotation key.
    pub fn name(self) -> &'static str {
        match self {
            Milestone::VmmStarted => "vmm-started",
            Milestone::VmEntered => "vm-entered",
            Milestone::KernelBooted => "kernel-booted",
            Milestone::AgentReady => "agent-ready",
            Milestone::WorkloadCreated => "workload-created",
        }
    }

    /// The milestone called `name` (see [`Milestone::name`]).
    pub fn from_name(name: &str) -> Option<Milestone> {
        Milestone::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The `twinbox state` annotation key.
    pub fn annotation(self) -> String {
        format!("{ANNOTATION_PREFIX}{}", self.name())
    }
}

impl From<Milestone> for &'static str {
    fn from(milestone: Milestone) -> Self {
        milestone.name()
    }
}

impl TryFrom<String> for Milestone {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Milestone::from_name(&name).ok_or_else(|| format!("unknown VM start milestone {name:?}"))
    }
}

/// The milestones a VM reached, as `CLOCK_MONOTONIC` nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootPhases(BTreeMap<Milestone, u64>);

impl BootPhases {
    /// Records that `milestone` was reached at `monotonic` (`CLOCK_MONOTONIC`).
    pub fn mark(&mut self, milestone: Milestone, monotonic: Duration) {
        self.0.insert(milestone, monotonic.as_nanos() as u64);
    }

    /// Records that `milestone` is reached now.
    pub fn mark_now(&mut self, milestone: Milestone) {
        self.mark(milestone, vmm::devices::legacy::monotonic_now());
    }

    /// When `milestone` was reached, in `CLOCK_MONOTONIC` nanoseconds.
    pub fn get(&self, milestone: Milestone) -> Option<u64> {
        self.0.get(&milestone).copied()
    }

    /// Writes the milestones to [`PHASES_FILE`] in `vm_dir` (best effort: they are
    /// informational, so a failure is logged and the VM carries on).
    pub fn write(&self, vm_dir: &Path) {
        let path = vm_dir.join(PHASES_FILE);
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&path, text));
        if let Err(error) = written {
            tracing::warn!("recording the boot phases in {}: {error}", path.display());
        }
    }

    /// The milestones recorded in `vm_dir` (none if the VM has not reported ready yet).
    pub fn read(vm_dir: &Path) -> Self {
        std::fs::read(vm_dir.join(PHASES_FILE))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default()
    }

    /// The milestones as `twinbox state` annotations.
    pub fn annotations(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.0
            .iter()
            .map(|(milestone, ns)| (milestone.annotation(), ns.to_string()))
    }

    /// The milestones found in a state's `annotations` (others are ignored; values that are
    /// not nanosecond counts are skipped).
    pub fn from_annotations<'a>(annotations: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut phases = BootPhases::default();
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            if let (Some(milestone), Ok(ns)) = (Milestone::from_name(name), value.parse::<u64>()) {
                phases.0.insert(milestone, ns);
            }
        }
        phases
    }
}

/// Adds the milestones recorded in `vm_dir` to an OCI state's `annotations`.
pub fn annotate_state(vm_dir: &Path, state: &mut serde_json::Value) {
    let phases = BootPhases::read(vm_dir);
    if let Some(annotations) = state["annotations"].as_object_mut() {
        for (key, value) in phases.annotations() {
            annotations.insert(key, serde_json::Value::String(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_round_trip_through_the_file_and_the_state_annotations() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(BootPhases::read(dir.path()), BootPhases::default());
        let mut phases = BootPhases::default();
        phases.mark_now(Milestone::VmmStarted);
        phases.mark(Milestone::KernelBooted, Duration::from_nanos(2_000_000_123));
        phases.write(dir.path());
        let text = std::fs::read_to_string(dir.path().join(PHASES_FILE)).unwrap();
        assert!(text.contains("\"kernel-booted\":2000000123"), "{text}");
        assert_eq!(BootPhases::read(dir.path()), phases);

        let mut state = serde_json::json!({"id": "c", "annotations": {"io.twinbox.name": "x"}});
        annotate_state(dir.path(), &mut state);
        assert_eq!(
            state["annotations"]["io.twinbox.vm.phase.kernel-booted"],
            "2000000123"
        );
        assert_eq!(state["annotations"]["io.twinbox.name"], "x");
        let annotations = state["annotations"].as_object().unwrap();
        let back = BootPhases::from_annotations(
            annotations
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))),
        );
        assert_eq!(back, phases);
    }

    #[test]
    fn foreign_and_malformed_annotations_are_ignored() {
        let phases = BootPhases::from_annotations([
            ("io.twinbox.vm.phase.agent-ready", "42"),
            ("io.twinbox.vm.phase.agent-ready-later", "43"),
            ("io.twinbox.vm.phase.vm-entered", "soon"),
            ("org.example.vm-entered", "7"),
        ]);
        assert_eq!(phases.get(Milestone::AgentReady), Some(42));
        assert_eq!(phases.get(Milestone::VmEntered), None);
        assert_eq!(phases.annotations().count(), 1);
    }
}
