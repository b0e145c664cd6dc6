//! Opening sessions: `AF_VSOCK` sockets (the guest, and hosts whose VMM uses the kernel's
//! vhost-vsock), and the hybrid vsock of twinbox's own VMM (a host Unix socket with a
//! `CONNECT <port>` handshake).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; a non-negative result is a new descriptor.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value to fill in.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = cid;
    address.svm_port = port;
    address
}

/// Connects to `port` of vsock context `cid` (2 is the host).
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<File> {
    let fd = vsock_socket()?;
    let address = vsock_address(cid, port);
    // SAFETY: connect with a valid sockaddr_vm and its size.
    let result = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(fd))
}

/// Listens on vsock `port` of this context.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let address = vsock_address(libc::VMADDR_CID_ANY, port);
    // SAFETY: bind and listen on our socket with a valid sockaddr_vm.
    let result = unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            (&address as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) < 0
        {
            -1
        } else {
            libc::listen(fd.as_raw_fd(), 16)
        }
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Accepts one connection on a listening socket (vsock or Unix).
pub fn accept(listener: &OwnedFd) -> io::Result<File> {
    // SAFETY: accept4 on a listening socket; we do not need the peer address.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Errors of the hybrid vsock handshake.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    /// The VMM's socket cannot be reached.
    #[error("cannot connect to the VM's vsock socket {path}: {source}")]
    Connect {
        /// The socket.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The VMM refused or did not answer the `CONNECT` line.
    #[error("the VM did not accept a connection to vsock port {port}: {reason}")]
    Refused {
        /// The guest port.
        port: u32,
        /// What happened.
        reason: String,
    },
}

/// Opens a connection to guest `port` through the hybrid vsock Unix socket `uds` of
/// twinbox's VMM: sends `CONNECT <port>\n` and expects `OK <host port>\n` within `timeout`.
pub fn hybrid_connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridError> {
    let mut stream = UnixStream::connect(uds).map_err(|source| HybridError::Connect {
        path: uds.display().to_string(),
        source,
    })?;
    let refused = |reason: String| HybridError::Refused { port, reason };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| refused(e.to_string()))?;
    // Read the answer byte by byte: data from the guest may follow the line at once.
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(refused(format!("no answer within {timeout:?}")));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| refused(e.to_string()))?;
        let mut byte = [0u8];
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(refused(
                    "the VMM closed the connection (nothing listens on that port in the guest)"
                        .into(),
                ));
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => return Err(refused("an overlong answer".into())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(refused(e.to_string())),
        }
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| refused(e.to_string()))?;
    let answer = String::from_utf8_lossy(&line);
    if answer.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(refused(format!("it answered {answer:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A fake hybrid-vsock VMM that answers each CONNECT line with `answer`.
    fn fake_vmm(answer: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 1025\n");
            let mut stream = stream;
            stream.write_all(answer.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        (dir, path)
    }

    #[test]
    fn hybrid_handshake_keeps_the_bytes_after_the_ok_line() {
        let (_dir, path) = fake_vmm("OK 1073741824\nguest data");
        let mut stream = hybrid_connect(&path, 1025, Duration::from_secs(5)).unwrap();
        let mut data = [0u8; 10];
        stream.read_exact(&mut data).unwrap();
        assert_eq!(&data, b"guest data");
    }

    #[test]
    fn hybrid_refusals_and_silence_are_errors() {
        let (_dir, path) = fake_vmm("");
        let error = hybrid_connect(&path, 1025, Duration::from_secs(5)).unwrap_err();
        assert!(
            error.to_string().contains("closed the connection"),
            "{error}"
        );
        let (_dir, path) = fake_vmm("NOPE\n");
        let error = hybrid_connect(&path, 1025, Duration::from_secs(5)).unwrap_err();
        assert!(error.to_string().contains("NOPE"), "{error}");
        let missing = hybrid_connect(Path::new("/nonexistent/v.sock"), 1, Duration::from_secs(1));
        assert!(matches!(missing, Err(HybridError::Connect { .. })));
    }
}
