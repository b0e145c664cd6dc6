//! The compare report: one document with every measurement of a `twinbox compare` run.
//!
//! The JSON form is a stable, documented interface (`docs/compare-report.md`, checked against
//! `docs/compare-report.schema.json` in the tests): fields are only added in a new
//! [`REPORT_SCHEMA_VERSION`], and reading rejects unknown fields. Every per-column section
//! names its column by [`Column::id`]; [`Report::from_json`] checks that they all exist.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::CompareError;
use super::stats::Distribution;
use super::timing::StartClock;
use super::verdict::{Verdict, check_title};

/// Version of the report layout.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// The note every renderer shows when VM timings come from an emulated KVM host.
pub const EMULATED_KVM_NOTE: &str = "VM timings come from an emulated KVM host (a nested \
    hypervisor under software emulation): valid only as ratios, not absolute.";

/// A whole compare report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Where, when and what was measured.
    pub header: Header,
    /// The columns: twinbox's modes and the peers, in display order.
    pub columns: Vec<Column>,
    /// Start-time distributions, per column.
    pub start_time: Vec<StartTimes>,
    /// Memory and disk per idle sandbox, per column.
    pub weight: Vec<Weight>,
    /// Memory and start latency as the number of running sandboxes grows, per column.
    pub density: Vec<DensitySeries>,
    /// The isolation table.
    pub isolation: Isolation,
}

/// Where, when and what was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Host name.
    pub host: String,
    /// Host kernel release.
    pub kernel: String,
    /// twinbox version.
    pub twinbox_version: String,
    /// When the run started, RFC 3339 UTC (`2026-01-31T12:00:00Z`).
    pub date: String,
    /// Online CPUs of the host.
    pub cpus: u32,
    /// Host memory (MemTotal), bytes.
    pub memory_bytes: u64,
    /// The image compared.
    pub image: String,
    /// The workload command.
    pub command: Vec<String>,
    /// Timing runs per column.
    pub runs: u32,
    /// What kind of KVM the VM columns ran on.
    pub kvm: KvmHost,
    /// Other remarks for the reader.
    pub notes: Vec<String>,
}

/// The KVM the VM timings come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmHost {
    /// Its kind.
    pub kind: KvmKind,
    /// What the reader must know about it (set for [`KvmKind::Emulated`]).
    pub note: Option<String>,
}

impl KvmHost {
    /// A KVM host of `kind`, with the note that kind requires.
    pub fn new(kind: KvmKind) -> Self {
        let note = (kind == KvmKind::Emulated).then(|| EMULATED_KVM_NOTE.to_string());
        KvmHost { kind, note }
    }
}

/// Kinds of KVM host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmKind {
    /// Hardware virtualization (bare metal, or nested VMX/SVM).
    Hardware,
    /// PVM (`kvm_pvm`): runs only PVM-enabled guest kernels.
    Pvm,
    /// An emulated KVM host (TCG L1): timings are valid only as ratios.
    Emulated,
    /// No VM column ran.
    None,
}

/// One column of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Stable id (`container`, `vm`, `runc`, `runsc`, `qemu-microvm`).
    pub id: String,
    /// Display label.
    pub label: String,
    /// A twinbox mode or a peer runtime.
    pub kind: ColumnKind,
    /// The runtime's version, when known.
    pub version: Option<String>,
    /// Whether it ran.
    pub status: ColumnStatus,
}

/// What a column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// One of twinbox's isolation modes.
    Mode,
    /// Another runtime, measured in the same run.
    Peer,
}

/// Whether a column was measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum ColumnStatus {
    /// Measured.
    Ok,
    /// Not installed on this host.
    Absent {
        /// What is missing.
        reason: String,
    },
    /// Installed but it failed here.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// Start-time distributions of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartTimes {
    /// The column id.
    pub column: String,
    /// Runs attempted.
    pub runs: u32,
    /// Runs that failed (not in the distributions).
    pub failures: u32,
    /// Launch to the probe's start marker.
    pub workload_start: Option<Distribution>,
    /// Which clock timed the workload start.
    pub start_clock: Option<StartClock>,
    /// Launch to the sandbox's exit.
    pub exit: Option<Distribution>,
    /// Phases where measurable.
    pub phases: Vec<PhaseTimes>,
}

/// The distribution of one start phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTimes {
    /// The phase.
    pub phase: Phase,
    /// Its durations.
    pub distribution: Distribution,
}

/// Start phases. A phase's times run from launch to the phase's end, so the phases of one
/// column are ordered like the milestones that end them and compare directly with
/// `workload_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Namespaces, mounts, cgroups, up to the user process (containers): ends when `create`
    /// returns.
    ContainerSetup,
    /// The VMM process starts and builds the VM: ends at the first vCPU entry.
    VmmStart,
    /// Guest kernel boot: ends at the guest's boot-timer write (the agent started as init).
    KernelBoot,
    /// Guest agent start: ends when the agent connected and completed the handshake.
    AgentReady,
}

impl Phase {
    /// Display label: the milestone that ends the phase.
    pub fn label(self) -> &'static str {
        match self {
            Phase::ContainerSetup => "container set up",
            Phase::VmmStart => "VM entered (VMM start)",
            Phase::KernelBoot => "kernel booted",
            Phase::AgentReady => "agent ready",
        }
    }
}

/// Memory and disk of one idle sandbox of a column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weight {
    /// The column id.
    pub column: String,
    /// Idle sandboxes measured (the figures are means over them).
    pub sandboxes: u32,
    /// PSS of all the sandbox's host processes (including touched guest RAM), bytes.
    pub pss_bytes: u64,
    /// USS of the same processes, bytes.
    pub uss_bytes: u64,
    /// On-disk bytes shared by all sandboxes of the image (layers, cached rootfs).
    pub disk_shared_bytes: u64,
    /// On-disk bytes each sandbox adds (writable layer, state).
    pub disk_per_sandbox_bytes: u64,
}

/// One column's density run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DensitySeries {
    /// The column id.
    pub column: String,
    /// One point per step, by increasing sandbox count.
    pub points: Vec<DensityPoint>,
}

/// The state with K idle sandboxes running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DensityPoint {
    /// K: sandboxes running.
    pub sandboxes: u32,
    /// Total PSS / K, bytes.
    pub pss_per_sandbox_bytes: u64,
    /// Total USS / K, bytes.
    pub uss_per_sandbox_bytes: u64,
    /// Start latencies of the sandboxes started in this step.
    pub start_latency: Option<Distribution>,
    /// Sandboxes of this step that failed to start.
    pub failures: u32,
}

/// The isolation table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Isolation {
    /// One row per check, in check order.
    pub rows: Vec<IsolationRow>,
    /// Isolated rows per column (the table's last line).
    pub totals: Vec<IsolationTotal>,
}

/// One check across the columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationRow {
    /// Stable check id (`capabilities`, `syscall.bpf`, ...).
    pub id: String,
    /// Display title.
    pub title: String,
    /// One cell per column that ran the probe.
    pub cells: Vec<IsolationCell>,
}

/// One check in one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationCell {
    /// The column id.
    pub column: String,
    /// What the probe observed.
    pub observed: String,
    /// Whether it counts as isolated.
    pub isolated: bool,
}

/// A column's isolation count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationTotal {
    /// The column id.
    pub column: String,
    /// Rows that count as isolated.
    pub isolated: u32,
    /// Rows judged.
    pub checks: u32,
}

impl Isolation {
    /// Builds the table from each column's verdicts (as [`super::verdict::assess`] returns
    /// them). Rows keep the order of first appearance.
    pub fn from_verdicts(columns: &[(&str, Vec<Verdict>)]) -> Self {
        let mut rows: Vec<IsolationRow> = Vec::new();
        let mut totals = Vec::new();
        for (column, verdicts) in columns {
            for verdict in verdicts {
                let cell = IsolationCell {
                    column: column.to_string(),
                    observed: verdict.observed.clone(),
                    isolated: verdict.isolated,
                };
                match rows.iter_mut().find(|row| row.id == verdict.id) {
                    Some(row) => row.cells.push(cell),
                    None => rows.push(IsolationRow {
                        id: verdict.id.to_string(),
                        title: check_title(verdict.id).unwrap_or(verdict.id).to_string(),
                        cells: vec![cell],
                    }),
                }
            }
            totals.push(IsolationTotal {
                column: column.to_string(),
                isolated: verdicts.iter().filter(|v| v.isolated).count() as u32,
                checks: verdicts.len() as u32,
            });
        }
        Isolation { rows, totals }
    }
}

impl Report {
    /// The column with `id`.
    pub fn column(&self, id: &str) -> Option<&Column> {
        self.columns.iter().find(|column| column.id == id)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// Reads a JSON report: rejects unknown fields, other schema versions and sections that
    /// name columns the report does not have.
    pub fn from_json(text: &str) -> Result<Self, CompareError> {
        let report: Report =
            serde_json::from_str(text).map_err(|e| CompareError::Report(e.to_string()))?;
        if report.schema_version != REPORT_SCHEMA_VERSION {
            return Err(CompareError::Report(format!(
                "schema version {} is not the supported {REPORT_SCHEMA_VERSION}",
                report.schema_version
            )));
        }
        report.check_columns()?;
        Ok(report)
    }

    /// Checks that every per-column entry names a declared column.
    pub fn check_columns(&self) -> Result<(), CompareError> {
        let referenced = self
            .start_time
            .iter()
            .map(|s| &s.column)
            .chain(self.weight.iter().map(|w| &w.column))
            .chain(self.density.iter().map(|d| &d.column))
            .chain(self.isolation.totals.iter().map(|t| &t.column))
            .chain(
                self.isolation
                    .rows
                    .iter()
                    .flat_map(|row| row.cells.iter().map(|c| &c.column)),
            );
        for column in referenced {
            if self.column(column).is_none() {
                return Err(CompareError::Report(format!(
                    "an entry names column {column:?}, which the report does not declare"
                )));
            }
        }
        Ok(())
    }
}

/// `time` as RFC 3339 UTC with seconds (`2026-01-31T12:00:00Z`).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

impl Header {
    /// A header for a run on this host, starting now.
    pub fn for_this_host(
        image: &str,
        command: &[String],
        runs: u32,
        kvm: KvmHost,
    ) -> Result<Self, CompareError> {
        let host = super::verdict::HostFacts::collect()?;
        let hostname = twinbox_probe::checks::kernel::clone_identity()
            .map(|identity| identity.hostname)
            .map_err(|message| CompareError::HostFacts {
                what: "host name",
                message,
            })?;
        Ok(Header {
            host: hostname,
            kernel: host.kernel.release,
            twinbox_version: env!("CARGO_PKG_VERSION").to_string(),
            date: rfc3339_utc(SystemTime::now()),
            cpus: host.resources.online_cpus,
            memory_bytes: host.resources.mem_total_kib * 1024,
            image: image.to_string(),
            command: command.to_vec(),
            runs,
            kvm,
            notes: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(rfc3339_utc(leap_day), "2000-02-29T01:01:01Z");
        let new_year = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(rfc3339_utc(new_year), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn emulated_kvm_carries_the_ratio_note() {
        assert_eq!(
            KvmHost::new(KvmKind::Emulated).note.as_deref(),
            Some(EMULATED_KVM_NOTE)
        );
        assert_eq!(KvmHost::new(KvmKind::Hardware).note, None);
    }

    #[test]
    fn isolation_table_counts_per_column() {
        let verdict = |id, isolated| Verdict {
            id,
            observed: format!("{id} seen"),
            isolated,
        };
        let table = Isolation::from_verdicts(&[
            (
                "container",
                vec![verdict("seccomp", true), verdict("capabilities", false)],
            ),
            (
                "vm",
                vec![verdict("seccomp", true), verdict("capabilities", true)],
            ),
        ]);
        assert_eq!(table.rows.len(), 2);
        assert_eq!(table.rows[1].title, "Capabilities (CapEff/CapBnd)");
        assert_eq!(table.rows[1].cells.len(), 2);
        assert_eq!((table.totals[0].isolated, table.totals[0].checks), (1, 2));
        assert_eq!(table.totals[1].isolated, 2);
    }

    #[test]
    fn json_round_trips_and_matches_the_documented_schema() {
        let report = crate::compare::sample::sample_report();
        let json = report.to_json();
        assert_eq!(Report::from_json(&json).unwrap(), report);

        let schema: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/compare-report.schema.json"
        )))
        .unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let document: serde_json::Value = serde_json::from_str(&json).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");

        // Both the schema and the reader reject what the schema does not describe.
        let mut extra = document.clone();
        extra["header"]["surprise"] = serde_json::json!(1);
        assert!(!validator.is_valid(&extra));
        assert!(Report::from_json(&extra.to_string()).is_err());
        let mut missing = document.clone();
        missing["weight"][0]
            .as_object_mut()
            .unwrap()
            .remove("uss_bytes");
        assert!(!validator.is_valid(&missing));
        assert!(Report::from_json(&missing.to_string()).is_err());
    }

    #[test]
    fn reader_rejects_undeclared_columns_and_other_versions() {
        let mut report = crate::compare::sample::sample_report();
        report.weight[0].column = "kata".into();
        let err = Report::from_json(&report.to_json())
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"kata\""), "{err}");
        let mut report = crate::compare::sample::sample_report();
        report.schema_version = 2;
        let err = Report::from_json(&report.to_json())
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema version 2"), "{err}");
    }
}
