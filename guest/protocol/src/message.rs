//! The control messages (JSON in [`crate::frame::KIND_MESSAGE`] frames). See the crate docs
//! for which side sends which message in which session.

use base64::Engine as _;
use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

use crate::{PROTOCOL_VERSION, ProtocolError};

/// A control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First message of both sides in every session.
    Hello(Hello),
    /// Host: set up the sandbox and create the workload, stopped before its program unless
    /// [`CreateRequest::start`] (main session only). The host may send it right behind its
    /// hello, before the agent's hello arrived.
    Create(Box<CreateRequest>),
    /// Agent: the workload exists (its pid in the guest) and waits for [`Message::Start`]
    /// (or already runs, when created with [`CreateRequest::start`]).
    Created {
        /// Guest pid of the workload's init.
        pid: i32,
    },
    /// Host: run the workload's program.
    Start,
    /// Host: run another process in the workload's namespaces (exec session).
    Exec(Box<ExecRequest>),
    /// Agent: the exec'd process runs (its pid in the guest).
    Started {
        /// Guest pid of the process.
        pid: i32,
    },
    /// Host: send a signal to the session's process (`all`: to every workload process).
    Signal {
        /// Signal number.
        signal: i32,
        /// Every process of the workload, not only the session's.
        all: bool,
    },
    /// Host: the terminal's new size.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Either side: the sender wrote `bytes` more of `stream` to its destination, so the
    /// peer may send that many more (see [`crate::relay::WINDOW`]).
    Credit {
        /// The stream.
        stream: crate::Stream,
        /// Bytes granted.
        bytes: u32,
    },
    /// Agent: the session's process ended.
    Exit(ExitStatus),
    /// Host: a tar archive follows on [`crate::Stream::Archive`]; unpack it into the
    /// directory `path` of the workload's root filesystem.
    CopyIn {
        /// Absolute path in the workload's root filesystem.
        path: String,
    },
    /// Host: send `path` of the workload's root filesystem as a tar archive.
    CopyOut {
        /// Absolute path in the workload's root filesystem.
        path: String,
    },
    /// Agent: the changes the workload made to volume `index` follow on
    /// [`crate::Stream::Archive`], as an OCI layer (whiteouts for deletions).
    VolumeChanges {
        /// Index into [`CreateRequest::volumes`].
        index: u32,
    },
    /// Either side: the request finished.
    Done,
    /// Agent: the request failed.
    Error(AgentError),
    /// Host: stop everything now and power the VM off.
    Shutdown,
}

impl Message {
    /// A short name for logs and "unexpected message" errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Create(_) => "create",
            Message::Created { .. } => "created",
            Message::Start => "start",
            Message::Exec(_) => "exec",
            Message::Started { .. } => "started",
            Message::Signal { .. } => "signal",
            Message::Resize { .. } => "resize",
            Message::Credit { .. } => "credit",
            Message::Exit(_) => "exit",
            Message::CopyIn { .. } => "copy_in",
            Message::CopyOut { .. } => "copy_out",
            Message::VolumeChanges { .. } => "volume_changes",
            Message::Done => "done",
            Message::Error(_) => "error",
            Message::Shutdown => "shutdown",
        }
    }
}

/// Who speaks, and which protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// The sender's name and version, e.g. `twinbox-agent 0.1.0`.
    pub software: String,
}

impl Hello {
    /// Our hello, naming `software`.
    pub fn ours(software: impl Into<String>) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            software: software.into(),
        }
    }

    /// Checks the peer's hello against our version.
    pub fn check(&self) -> Result<(), ProtocolError> {
        if self.protocol == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: self.protocol,
                software: self.software.clone(),
            })
        }
    }
}

/// Everything the agent needs to set up the sandbox and create the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The workload's OCI runtime spec as the guest applies it: `root.path` is ignored (the
    /// agent assembles the root), bind mounts name guest sources ([`volume_dir`],
    /// [`file_path`]).
    pub spec: Spec,
    /// The image disk and the writable layer above it.
    pub rootfs: RootfsSetup,
    /// Disks holding volumes, mounted at [`volume_dir`]`(index)`.
    pub volumes: Vec<VolumeSetup>,
    /// Small files (bind-mount sources such as /etc/hosts), written to
    /// [`file_path`]`(index)`.
    pub files: Vec<FileSetup>,
    /// The host's wall clock (ns since the epoch) when it sent the request; the agent sets
    /// the guest clock from it when they differ by more than a second.
    pub host_time_ns: u64,
    /// Start the workload as soon as it is created, without waiting for
    /// [`Message::Start`] (`run` = create + start: saves a round trip to the host).
    #[serde(default)]
    pub start: bool,
    /// The workload's seccomp profile compiled to BPF by the host (struct sock_filter
    /// records): the agent loads it instead of compiling the profile itself.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes"
    )]
    pub seccomp_program: Option<Vec<u8>>,
    /// Random bytes from the host that the agent mixes into the guest's entropy pool, and
    /// then reseeds the kernel's random generator from, before the workload starts. A VM
    /// restored from a template snapshot starts with the template's generator state, which
    /// every other VM of that template shares.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "base64_bytes"
    )]
    pub entropy: Option<Vec<u8>>,
}

/// Serde for optional bytes as one base64 string (`#[serde(with = "base64_bytes")]`). Serde's
/// default, a JSON array of numbers, is several times larger and an order of magnitude slower
/// to parse, which the guest feels under nested virtualization.
pub mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `bytes` as a base64 string (or null).
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, out: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => out.serialize_some(&STANDARD.encode(bytes)),
            None => out.serialize_none(),
        }
    }

    /// Reads a base64 string (or null).
    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(input)?
            .map(|text| {
                STANDARD
                    .decode(text)
                    .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
            })
            .transpose()
    }
}

/// The workload's root filesystem: a read-only image disk under a writable layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSetup {
    /// The image disk, e.g. `/dev/vda`.
    pub device: String,
    /// Its filesystem type (`erofs` or `ext4`).
    pub fstype: String,
    /// Where writes go.
    pub writable: WritableLayer,
}

/// Where the workload's writes to its root filesystem go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WritableLayer {
    /// Guest memory (lost when the VM stops).
    Tmpfs,
    /// A per-sandbox disk formatted with `fstype`.
    Disk {
        /// The device, e.g. `/dev/vdb`.
        device: String,
        /// Its filesystem type (ext4).
        fstype: String,
    },
}

/// A volume disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSetup {
    /// The device, e.g. `/dev/vdc`.
    pub device: String,
    /// Its filesystem type (ext4).
    pub fstype: String,
    /// Mount it read-only.
    pub read_only: bool,
    /// Send the workload's changes back ([`Message::VolumeChanges`]) when it exits.
    pub sync_back: bool,
}

/// A small file given to the guest by value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSetup {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The content, base64.
    pub content: String,
}

impl FileSetup {
    /// A file holding `bytes`.
    pub fn new(bytes: &[u8], mode: u32, uid: u32, gid: u32) -> Self {
        FileSetup {
            mode,
            uid,
            gid,
            content: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// The content.
    pub fn bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.content)
            .map_err(|e| ProtocolError::BadMessage(format!("file content is not base64: {e}")))
    }
}

/// An extra process in the running workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The OCI process (args, env, cwd, user, capabilities, terminal, ...).
    pub process: Process,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code as a shell reports it (128 + signal when killed by one).
    pub code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// From a `waitpid` status.
    pub fn from_wait_status(status: i32) -> Self {
        if libc_wifsignaled(status) {
            let signal = status & 0x7f;
            ExitStatus {
                code: 128 + signal,
                signal: Some(signal),
            }
        } else {
            ExitStatus {
                code: (status >> 8) & 0xff,
                signal: None,
            }
        }
    }
}

/// `WIFSIGNALED` without a libc dependency: the low 7 bits hold the signal, neither 0
/// (exited) nor 0x7f (stopped).
fn libc_wifsignaled(status: i32) -> bool {
    let low = status & 0x7f;
    low != 0 && low != 0x7f
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The agent's explanation.
    pub message: String,
}

/// Kinds of request failures (they map to exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The program does not exist (exit code 127).
    NotFound,
    /// The program cannot be executed (exit code 126).
    NotExecutable,
    /// The request cannot be carried out as given.
    Invalid,
    /// Carrying it out failed.
    Failed,
}

impl AgentError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }

    /// The conventional exit code: 127 not found, 126 not executable, else 1.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::NotFound => 127,
            ErrorKind::NotExecutable => 126,
            _ => 1,
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Where the agent mounts volume disk `index`.
pub fn volume_dir(index: usize) -> String {
    format!("{}/volumes/{index}", crate::AGENT_RUN_DIR)
}

/// Where the agent writes file `index` of [`CreateRequest::files`].
pub fn file_path(index: usize) -> String {
    format!("{}/files/{index}", crate::AGENT_RUN_DIR)
}

/// The guest device name of virtio-blk disk `index` (`/dev/vda`, `/dev/vdb`, ...).
pub fn disk_device(index: usize) -> String {
    // Linux names disks vda..vdz, vdaa..vdzz, ...
    let mut name = String::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        name.insert(0, (b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    format!("/dev/vd{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let text = serde_json::to_string(&Message::Signal {
            signal: 15,
            all: false,
        })
        .unwrap();
        assert_eq!(text, r#"{"type":"signal","signal":15,"all":false}"#);
        let back: Message = serde_json::from_str(r#"{"type":"start"}"#).unwrap();
        assert_eq!(back, Message::Start);
        let error = serde_json::from_str::<Message>(r#"{"type":"teleport"}"#).unwrap_err();
        assert!(error.to_string().contains("teleport"), "{error}");
    }

    #[test]
    fn a_seccomp_program_travels_as_base64() {
        let request = CreateRequest {
            spec: Spec::default(),
            rootfs: RootfsSetup {
                device: disk_device(1),
                fstype: "erofs".into(),
                writable: WritableLayer::Tmpfs,
            },
            volumes: Vec::new(),
            files: Vec::new(),
            host_time_ns: 1,
            start: false,
            seccomp_program: Some(vec![0x20, 0, 0, 0, 4, 0, 0, 0, 0xff]),
            entropy: Some(vec![1, 2, 3]),
        };
        let text = serde_json::to_string(&Message::Create(Box::new(request.clone()))).unwrap();
        assert!(
            text.contains(r#""seccomp_program":"IAAAAAQAAAD/""#),
            "{text}"
        );
        let back: Message = serde_json::from_str(&text).unwrap();
        assert_eq!(back, Message::Create(Box::new(request.clone())));
        let without = CreateRequest {
            seccomp_program: None,
            ..request
        };
        let text = serde_json::to_string(&without).unwrap();
        assert!(!text.contains("seccomp_program"), "{text}");
        assert_eq!(
            serde_json::from_str::<CreateRequest>(&text).unwrap(),
            without
        );
        let bad = text.replacen('{', r#"{"seccomp_program":"!!","#, 1);
        let error = serde_json::from_str::<CreateRequest>(&bad).unwrap_err();
        assert!(error.to_string().contains("not base64"), "{error}");
    }

    #[test]
    fn version_mismatch_names_both_versions_and_the_peer() {
        Hello::ours("x").check().unwrap();
        let old = Hello {
            protocol: PROTOCOL_VERSION + 7,
            software: "twinbox-agent 9.9".into(),
        };
        let text = old.check().unwrap_err().to_string();
        assert!(
            text.contains(&format!("version {}", PROTOCOL_VERSION + 7)),
            "{text}"
        );
        assert!(text.contains("twinbox-agent 9.9"), "{text}");
    }

    #[test]
    fn wait_statuses_follow_the_shell_convention() {
        assert_eq!(
            ExitStatus::from_wait_status(3 << 8),
            ExitStatus {
                code: 3,
                signal: None
            }
        );
        assert_eq!(
            ExitStatus::from_wait_status(9),
            ExitStatus {
                code: 137,
                signal: Some(9)
            }
        );
        // A core dump bit does not change the signal.
        assert_eq!(ExitStatus::from_wait_status(0x80 | 11).code, 139);
    }

    #[test]
    fn disk_names_follow_linux() {
        assert_eq!(disk_device(0), "/dev/vda");
        assert_eq!(disk_device(25), "/dev/vdz");
        assert_eq!(disk_device(26), "/dev/vdaa");
        assert_eq!(disk_device(27), "/dev/vdab");
    }

    #[test]
    fn file_content_round_trips() {
        let file = FileSetup::new(b"127.0.0.1 localhost\n\0", 0o644, 0, 0);
        assert_eq!(file.bytes().unwrap(), b"127.0.0.1 localhost\n\0");
        let bad = FileSetup {
            content: "!!".into(),
            ..file
        };
        assert!(bad.bytes().is_err());
    }
}
