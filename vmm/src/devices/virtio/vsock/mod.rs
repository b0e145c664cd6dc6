//! virtio-vsock in Firecracker's "hybrid" style: guest stream sockets are bridged to host
//! Unix sockets.
//!
//! - Host to guest: a host program connects to the device's Unix socket and sends
//!   `CONNECT <port>\n`; when the guest accepts, it receives `OK <host port>\n` and the stream
//!   is connected to the guest's listener on `<port>`.
//! - Guest to host: a guest connection to host port P is connected to the Unix socket
//!   `<uds_path>_<P>`, where a host program listens.
//!
//! Packets are parsed from any descriptor layout (Linux 6.3+ may put header and data in one
//! descriptor), credit-based flow control is honoured both ways, and a misbehaving guest
//! gets its connections reset, never a stuck or crashed VMM.

mod device;
mod event_handler;
mod muxer;
mod packet;

pub use device::{Vsock, VsockError};
pub use packet::{HOST_CID, PacketHeader};
