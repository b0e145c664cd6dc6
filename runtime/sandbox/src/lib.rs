//! Container setup that both isolation modes share.
//!
//! The host's container backend and the guest agent inside the microVM start workloads with
//! this code: it turns an OCI runtime spec into namespaces, mounts, cgroups, credentials,
//! capabilities and a seccomp filter. It has no CLI assumptions.
//!
//! - [`launch`]: creating a container's init ([`launch::spawn_init`]) and exec'ing into a
//!   running container ([`launch::spawn_exec`]).
//! - [`rootfs`], [`namespaces`], [`process`], [`seccomp`], [`cgroups`], [`hooks`]: the pieces,
//!   each usable alone.
//! - [`syscall`]: the seam all privileged operations go through.

pub mod cgroups;
pub mod hooks;
pub mod launch;
pub mod namespaces;
pub mod path;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod sync;
pub mod syscall;

/// Opens `path` read-only and close-on-exec (namespace files, for setns).
pub(crate) fn open_fd(path: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    std::fs::File::open(path).map(std::os::fd::OwnedFd::from)
}

/// An anonymous in-memory file (close-on-exec).
pub(crate) fn memfd(name: &str) -> std::io::Result<std::fs::File> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create with a valid NUL-terminated name; a non-negative result is ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor owned by nobody else.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
