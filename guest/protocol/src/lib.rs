#![doc = include_str!("../../../docs/protocol.md")]

pub mod archive;
mod connection;
pub mod frame;
pub mod message;
pub mod relay;
pub mod transport;

use std::time::Duration;

pub use archive::{ArchiveReader, ArchiveWriter};
pub use connection::{Connection, wait_readable};
pub use frame::{Frame, FrameReader, MAX_DATA, MAX_FRAME, Stream};
pub use message::{
    AgentError, CreateRequest, ErrorKind, ExecRequest, ExitStatus, FileSetup, Hello, Message,
    RootfsSetup, VolumeSetup, WritableLayer, base64_bytes, disk_device, file_path, volume_dir,
};
pub use relay::{Event, Relay};

/// The protocol version both sides announce in [`Hello`]; they must be equal.
pub const PROTOCOL_VERSION: u32 = 3;

/// The host port the agent connects to for the main session.
pub const HOST_PORT: u32 = 1024;

/// The guest port the agent listens on for request sessions (exec, copy, signal).
pub const AGENT_PORT: u32 = 1025;

/// The vsock context id of the host.
pub const HOST_CID: u32 = 2;

/// The agent's own directory in the guest (volume mount points, files, the workload's root).
pub const AGENT_RUN_DIR: &str = "/run/twinbox";

/// How long either side waits for a reply to a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the protocol layer. Each says what went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Reading or writing the connection failed.
    #[error("the connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A frame announces more bytes than allowed.
    #[error("a frame of {length} bytes is larger than the protocol allows ({max} bytes)")]
    Oversized {
        /// The announced length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// A frame without a kind byte (or a data frame without a stream byte).
    #[error("an empty frame (no kind or stream byte)")]
    EmptyFrame,
    /// A frame kind this side does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A data stream this side does not know.
    #[error("unknown data stream {0}")]
    UnknownStream(u8),
    /// The connection ended in the middle of a frame.
    #[error("the connection ended in the middle of a frame ({buffered} bytes of it arrived)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
    /// A message that does not parse (unknown type or fields).
    #[error("a malformed message: {0}")]
    BadMessage(String),
    /// A message that cannot be encoded (a bug).
    #[error("cannot encode a message: {0}")]
    Encode(#[source] serde_json::Error),
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: the peer ({software}) speaks version {theirs}, this side \
         speaks version {ours}"
    )]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
        /// The peer's software string.
        software: String,
    },
    /// A valid message that does not fit the session's state.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What was expected.
        expected: String,
        /// What arrived.
        got: String,
    },
}
