//! `inspect` of a container: a docker-like JSON object built from the container's state, its
//! saved runtime config and its exit record.

use serde_json::{Value, json};

use super::{Engine, EngineError, annotations, display_name};
use crate::lifecycle::Container;
use crate::state::Status;

impl Engine {
    /// The `inspect` document of container `query`.
    pub fn inspect(&self, query: &str) -> Result<Value, EngineError> {
        let container = self.load(query)?;
        let spec = self.run_root.load_config(container.id())?;
        Ok(document(self, &container, &spec))
    }
}

fn document(engine: &Engine, container: &Container, spec: &oci_spec::runtime::Spec) -> Value {
    let record = container.record();
    let status = container.status();
    let summary = engine.summary(container);
    let exit = engine.exit_record(container.id());
    let annotation = |key: &str| record.annotations.get(key).cloned();
    let process = spec.process().clone().unwrap_or_default();
    let linux = spec.linux().clone().unwrap_or_default();
    let resources = linux.resources().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let etc = engine.etc_dir(container.id());
    let mounts: Vec<Value> = spec
        .mounts()
        .iter()
        .flatten()
        // The user's mounts, not the standard /dev, /proc, ... ones or the /etc files.
        .filter(|m| match m.typ().as_deref() {
            Some("bind") => !m.source().as_ref().is_some_and(|s| s.starts_with(&etc)),
            Some("tmpfs") => !m.destination().starts_with("/dev"),
            _ => false,
        })
        .map(|m| {
            let options = m.options().clone().unwrap_or_default();
            json!({
                "Type": m.typ(),
                "Source": m.source(),
                "Destination": m.destination(),
                "RW": !options.iter().any(|o| o == "ro"),
                "Options": options,
            })
        })
        .collect();
    let network = if linux
        .namespaces()
        .iter()
        .flatten()
        .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
    {
        "none"
    } else {
        "host"
    };
    json!({
        "Id": container.id(),
        "Name": display_name(container),
        "Created": record.created,
        "Path": args.first(),
        "Args": args.get(1..).unwrap_or_default(),
        "State": {
            "Status": summary.state,
            "Running": status == Status::Running,
            "Paused": status == Status::Paused,
            "OOMKilled": exit.as_ref().is_some_and(|e| e.oom_killed),
            "Pid": summary.pid,
            "ExitCode": exit.as_ref().map(|e| e.exit_code),
            "FinishedAt": exit.as_ref().map(|e| e.finished_at.clone()),
            "Human": summary.status,
        },
        "Image": annotation(annotations::IMAGE_ID),
        "ImageName": annotation(annotations::IMAGE),
        "Isolation": record.backend.to_string(),
        "Bundle": record.bundle,
        "Rootfs": record.rootfs,
        "LogPath": annotation(annotations::LOG_PATH),
        "Config": {
            "Hostname": spec.hostname(),
            "User": format!("{}:{}", process.user().uid(), process.user().gid()),
            "Env": process.env(),
            "Cmd": args,
            "WorkingDir": process.cwd(),
            "Tty": process.terminal().unwrap_or(false),
            "OpenStdin": annotation(annotations::INTERACTIVE).is_some(),
            "StopSignal": annotation(annotations::STOP_SIGNAL),
            "StopTimeout": annotation(annotations::STOP_TIMEOUT).and_then(|t| t.parse::<u64>().ok()),
            "Annotations": record.annotations,
        },
        "HostConfig": {
            "AutoRemove": annotation(annotations::AUTO_REMOVE).is_some(),
            "NetworkMode": network,
            "ReadonlyRootfs": spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
            "Memory": resources.memory().as_ref().and_then(|m| m.limit()),
            "CpuQuota": resources.cpu().as_ref().and_then(|c| c.quota()),
            "CpuPeriod": resources.cpu().as_ref().and_then(|c| c.period()),
            "PidsLimit": resources.pids().as_ref().map(|p| p.limit()),
            "CapBounding": process.capabilities().as_ref().and_then(|c| c.bounding().clone()),
            "NoNewPrivileges": process.no_new_privileges().unwrap_or(false),
            "Seccomp": if linux.seccomp().is_some() { "confined" } else { "unconfined" },
            "Volumes": annotation(annotations::VOLUMES),
        },
        "Mounts": mounts,
    })
}
