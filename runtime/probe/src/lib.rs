//! The twinbox compare probe.
//!
//! `twinbox-probe` is a small static binary that `twinbox compare` injects into every sandbox
//! it measures (bind-mounted or copied in; it is never part of the image). It has two modes:
//!
//! - `start-marker`: prints one [`StartMarker`] line the moment the workload starts, then
//!   optionally execs the real workload. The host turns it into "time to workload start".
//! - `isolation`: runs every isolation check and prints one JSON [`Observations`] document of
//!   raw facts. The probe judges nothing: the host compares the observations with what it
//!   knows (its own kernel, boot id, configured limits) and decides what counts as isolated.
//!
//! - `guest-init`: PID 1 of a peer VMM's guest (QEMU microvm), see [`guest_init`].
//!
//! The library half holds the document types (shared with the host, so both sides use one
//! schema) and the collectors, which the host also runs on itself to learn its own facts.
//! Every check is harmless: syscalls are tried with arguments that cannot change the system
//! (or are undone at once), files are opened without being written, and the network check
//! sends no packet.

pub mod caps;
pub mod checks;
pub mod errno;
pub mod guest_init;
pub mod marker;
pub mod observations;

pub use marker::StartMarker;
pub use observations::Observations;
