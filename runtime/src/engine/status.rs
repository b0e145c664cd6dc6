//! What `ps` shows of a container, derived from its state, annotations, exit record and the
//! live system.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Engine, ExitRecord, annotations, display_name};
use crate::lifecycle::Container;
use crate::state::Status;

/// One container as `ps` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    /// Full id.
    pub id: String,
    /// Name.
    pub names: String,
    /// The image as given to `run`.
    pub image: String,
    /// The image id.
    pub image_id: String,
    /// The command, as docker shows it.
    pub command: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// created, running, paused, exited or dead.
    pub state: String,
    /// Human status: "Up 5 seconds", "Exited (0) 3 minutes ago", ...
    pub status: String,
    /// The exit code, once recorded.
    pub exit_code: Option<i32>,
    /// Whether the OOM killer struck.
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    /// The init's host pid (0 when stopped).
    pub pid: i32,
    /// container or vm.
    pub isolation: String,
}

/// Seconds since an RFC 3339 time (0 if it does not parse or lies ahead).
fn age(time: &str) -> Duration {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .and_then(|t| {
            let then = SystemTime::UNIX_EPOCH
                + Duration::new(t.timestamp().max(0) as u64, t.timestamp_subsec_nanos());
            SystemTime::now().duration_since(then).ok()
        })
        .unwrap_or_default()
}

/// A duration as docker prints it ("Less than a second", "5 seconds", "About a minute",
/// "3 hours", "2 weeks", ...).
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    match () {
        _ if seconds < 1 => "Less than a second".into(),
        _ if seconds < 60 => plural(seconds, "second"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => plural(minutes, "minute"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => plural(hours, "hour"),
        _ if days < 14 => plural(days, "day"),
        _ if days < 90 => plural(days / 7, "week"),
        _ if days < 730 => plural(days / 30, "month"),
        _ => plural(days / 365, "year"),
    }
}

/// The command as docker's COMMAND column: the JSON array of the process args joined by
/// spaces, in double quotes.
fn command_text(container: &Container) -> String {
    let args: Vec<String> = container
        .record()
        .annotations
        .get(annotations::COMMAND)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    format!("\"{}\"", args.join(" "))
}

impl Engine {
    /// The `ps` view of `container`.
    pub fn summary(&self, container: &Container) -> ContainerSummary {
        let record = container.record();
        let status = container.status();
        let exit: Option<ExitRecord> = (status == Status::Stopped)
            .then(|| self.exit_record(container.id()))
            .flatten();
        let since_created = human_duration(age(&record.created));
        let (state, text) = match status {
            Status::Creating => ("created", "Creating".to_string()),
            Status::Created => ("created", "Created".to_string()),
            Status::Running => ("running", format!("Up {since_created}")),
            Status::Paused => ("paused", format!("Up {since_created} (Paused)")),
            Status::Stopped => match &exit {
                Some(exit) => (
                    "exited",
                    format!(
                        "Exited ({}) {} ago{}",
                        exit.exit_code,
                        human_duration(age(&exit.finished_at)),
                        if exit.oom_killed { " (OOM killed)" } else { "" }
                    ),
                ),
                // Its waiter is writing the record right now.
                None if record.creator.is_alive() => ("exited", "Exited".to_string()),
                None if record.status == Status::Running => {
                    ("exited", "Exited (unknown)".to_string())
                }
                None => ("dead", "Dead".to_string()),
            },
        };
        let annotation = |key: &str| record.annotations.get(key).cloned().unwrap_or_default();
        ContainerSummary {
            id: container.id().to_string(),
            names: display_name(container).to_string(),
            image: annotation(annotations::IMAGE),
            image_id: annotation(annotations::IMAGE_ID),
            command: command_text(container),
            created_at: record.created.clone(),
            state: state.to_string(),
            status: text,
            exit_code: exit.as_ref().map(|e| e.exit_code),
            oom_killed: exit.as_ref().is_some_and(|e| e.oom_killed),
            pid: if status == Status::Stopped {
                0
            } else {
                record.init.pid
            },
            isolation: record.backend.to_string(),
        }
    }

    /// The `ps` view of the engine's containers, newest first; stopped ones only with `all`.
    pub fn list(&self, all: bool) -> Result<Vec<ContainerSummary>, super::EngineError> {
        self.collect_stale_names();
        let mut rows: Vec<ContainerSummary> = self
            .containers()?
            .iter()
            .map(|c| self.summary(c))
            .filter(|s| all || matches!(s.state.as_str(), "running" | "paused"))
            .collect();
        rows.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(rows)
    }
}

/// How long ago an RFC 3339 time was, as docker's CREATED column ("5 seconds ago").
pub fn ago(time: &str) -> String {
    format!("{} ago", human_duration(age(time)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(45)), "45 seconds");
        assert_eq!(human_duration(s(90)), "About a minute");
        assert_eq!(human_duration(s(600)), "10 minutes");
        assert_eq!(human_duration(s(3700)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
        assert_eq!(human_duration(s(21 * 86400)), "3 weeks");
        assert_eq!(human_duration(s(120 * 86400)), "4 months");
        assert_eq!(human_duration(s(800 * 86400)), "2 years");
    }

    #[test]
    fn ages_of_rfc3339_times() {
        let now = crate::state::rfc3339_now();
        assert!(age(&now) < Duration::from_secs(5));
        assert_eq!(age("not a time"), Duration::ZERO);
        assert!(ago("2000-01-01T00:00:00Z").ends_with("years ago"));
    }
}
