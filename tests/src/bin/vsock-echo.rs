//! `vsock-echo`: both ends of a vsock round trip through twinbox's hybrid vsock, for the
//! VMM's real-kernel tests (static, like every twinbox binary, so it runs in L1 and in an
//! L2 initramfs alike).
//!
//! ```text
//! vsock-echo LABEL serve vsock:PORT             echo one AF_VSOCK connection (in the guest)
//! vsock-echo LABEL serve unix:PATH              echo one Unix connection (on the VMM's host,
//!                                               at <vsock socket>_<port>)
//! vsock-echo LABEL send vsock:CID:PORT BYTES SEED
//! vsock-echo LABEL send hybrid:PATH:PORT BYTES SEED
//!                                               send a payload, read its echo; `hybrid`
//!                                               connects to the VMM's socket with
//!                                               `CONNECT PORT`
//! ```
//!
//! The server prints `LABEL.echoed=BYTES:SHA256`, the sender `LABEL.sent=...` and
//! `LABEL.received=...` (see `twinbox_tests::vsock_echo`). Senders retry connecting for up
//! to a minute, so they may start before the other side listens.

use nix::sys::socket::{
    AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr, accept, bind, connect, listen,
    shutdown, socket,
};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twinbox_tests::vsock_echo::{Transfer, payload};

/// How long a sender keeps retrying to connect.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);
const RETRY_DELAY: Duration = Duration::from_millis(20);
/// Copy buffer size.
const CHUNK: usize = 64 << 10;

const USAGE: &str = "usage: vsock-echo LABEL serve vsock:PORT|unix:PATH\n       \
                     vsock-echo LABEL send vsock:CID:PORT|hybrid:PATH:PORT BYTES SEED";

/// Where a server listens.
enum Listen {
    Vsock(u32),
    Unix(String),
}

/// Where a sender connects.
enum Target {
    Vsock { cid: u32, port: u32 },
    Hybrid { path: String, port: u32 },
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a valid {what}"))
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    match text.split_once(':') {
        Some(("vsock", port)) => Ok(Listen::Vsock(number(port, "port")?)),
        Some(("unix", path)) => Ok(Listen::Unix(path.to_string())),
        _ => Err(format!("cannot serve on `{text}`\n{USAGE}")),
    }
}

fn parse_target(text: &str) -> Result<Target, String> {
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    let (address, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("cannot send to `{text}`\n{USAGE}"))?;
    let port = number(port, "port")?;
    match kind {
        "vsock" => Ok(Target::Vsock {
            cid: number(address, "CID")?,
            port,
        }),
        "hybrid" => Ok(Target::Hybrid {
            path: address.to_string(),
            port,
        }),
        _ => Err(format!("cannot send to `{text}`\n{USAGE}")),
    }
}

fn vsock_socket() -> Result<OwnedFd, String> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("cannot create an AF_VSOCK socket (no vsock device?): {e}"))
}

/// Accepts one connection on `endpoint`.
fn accept_one(endpoint: &Listen) -> Result<File, String> {
    match endpoint {
        Listen::Vsock(port) => {
            let listener = vsock_socket()?;
            bind(
                listener.as_raw_fd(),
                &VsockAddr::new(libc::VMADDR_CID_ANY, *port),
            )
            .map_err(|e| format!("cannot bind vsock port {port}: {e}"))?;
            listen(&listener, Backlog::new(1).expect("1 is a valid backlog"))
                .map_err(|e| format!("cannot listen on vsock port {port}: {e}"))?;
            let fd = accept(listener.as_raw_fd())
                .map_err(|e| format!("accepting on vsock port {port}: {e}"))?;
            // SAFETY: accept returned a new descriptor that nothing else owns.
            Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        Listen::Unix(path) => {
            let listener =
                UnixListener::bind(path).map_err(|e| format!("cannot listen on {path}: {e}"))?;
            let accepted = listener.accept();
            let _ = std::fs::remove_file(path);
            let (stream, _) = accepted.map_err(|e| format!("accepting on {path}: {e}"))?;
            Ok(File::from(OwnedFd::from(stream)))
        }
    }
}

/// One connection attempt; `Err` is worth retrying until the deadline.
fn try_connect(target: &Target) -> Result<File, String> {
    match target {
        Target::Vsock { cid, port } => {
            let fd = vsock_socket()?;
            connect(fd.as_raw_fd(), &VsockAddr::new(*cid, *port))
                .map_err(|e| format!("cannot connect to vsock {cid}:{port}: {e}"))?;
            Ok(File::from(fd))
        }
        Target::Hybrid { path, port } => {
            let mut stream =
                UnixStream::connect(path).map_err(|e| format!("cannot connect to {path}: {e}"))?;
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .map_err(|e| format!("sending CONNECT to {path}: {e}"))?;
            // Byte by byte: nothing after the newline belongs to the handshake.
            let mut line = Vec::new();
            let mut byte = [0u8];
            while line.last() != Some(&b'\n') && line.len() < 64 {
                match stream.read(&mut byte) {
                    Ok(1) => line.push(byte[0]),
                    _ => break,
                }
            }
            let line = String::from_utf8_lossy(&line);
            if !line.starts_with("OK ") || !line.ends_with('\n') {
                return Err(format!(
                    "{path} answered CONNECT {port} with {line:?} (is the guest listening?)"
                ));
            }
            Ok(File::from(OwnedFd::from(stream)))
        }
    }
}

fn connect_with_retries(target: &Target) -> Result<File, String> {
    let start = Instant::now();
    loop {
        match try_connect(target) {
            Ok(file) => return Ok(file),
            Err(error) if start.elapsed() >= CONNECT_DEADLINE => {
                return Err(format!("gave up after {CONNECT_DEADLINE:?}: {error}"));
            }
            Err(_) => std::thread::sleep(RETRY_DELAY),
        }
    }
}

/// Reads `stream` to its end, passing each chunk to `each`; returns the transfer read.
fn read_all(
    stream: &mut File,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Transfer, String> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = stream
            .read(&mut buffer)
            .map_err(|e| format!("reading after {total} bytes: {e}"))?;
        if n == 0 {
            return Ok(Transfer::finish(total, hasher));
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
        each(&buffer[..n])?;
    }
}

fn close_write(stream: &File) -> Result<(), String> {
    shutdown(stream.as_raw_fd(), Shutdown::Write).map_err(|e| format!("shutdown(SHUT_WR): {e}"))
}

fn serve(label: &str, listen: &Listen) -> Result<(), String> {
    let mut stream = accept_one(listen)?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("cannot clone the connection: {e}"))?;
    let echoed = read_all(&mut stream, |chunk| {
        writer.write_all(chunk).map_err(|e| format!("echoing: {e}"))
    })?;
    close_write(&stream)?;
    println!("{label}.echoed={echoed}");
    Ok(())
}

fn send(label: &str, target: &Target, bytes: usize, seed: u64) -> Result<(), String> {
    let data = payload(seed, bytes);
    let sent = Transfer::of(&data);
    let mut stream = connect_with_retries(target)?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("cannot clone the connection: {e}"))?;
    // Write on a thread of its own: the echo comes back while the payload is still going
    // out, and neither side may block the other.
    let writing = std::thread::spawn(move || {
        writer
            .write_all(&data)
            .map_err(|e| format!("sending: {e}"))
            .and_then(|()| close_write(&writer))
    });
    let received = read_all(&mut stream, |_| Ok(()));
    let written = writing
        .join()
        .unwrap_or_else(|_| Err("the sending thread panicked".into()));
    println!("{label}.sent={sent}");
    written?;
    println!("{label}.received={}", received?);
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [label, mode, listen] if mode == "serve" => serve(label, &parse_listen(listen)?),
        [label, mode, target, bytes, seed] if mode == "send" => send(
            label,
            &parse_target(target)?,
            number(bytes, "byte count")?,
            number(seed, "seed")?,
        ),
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("vsock-echo: {error}");
            ExitCode::FAILURE
        }
    }
}
