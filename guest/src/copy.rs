//! Archives over a session: [`ArchiveWriter`] and [`ArchiveReader`] carry a tar stream in
//! [`Stream::Archive`] data frames, and `copy_in`/`copy_out` unpack and pack files in the
//! workload's root filesystem.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use twinbox_protocol::{AgentError, ErrorKind, Frame, MAX_DATA, REPLY_TIMEOUT, Stream};

use crate::session::{Conn, failed};

/// Writes a byte stream as archive data frames; [`ArchiveWriter::finish`] ends it.
pub struct ArchiveWriter<'a> {
    conn: &'a mut Conn,
    buffer: Vec<u8>,
}

impl<'a> ArchiveWriter<'a> {
    /// A writer on `conn`.
    pub fn new(conn: &'a mut Conn) -> Self {
        ArchiveWriter {
            conn,
            buffer: Vec::with_capacity(MAX_DATA),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            self.conn
                .send_data(Stream::Archive, &self.buffer)
                .map_err(io::Error::other)?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Sends what is buffered and the end of the archive.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.conn
            .send_eof(Stream::Archive)
            .map_err(io::Error::other)
    }
}

impl Write for ArchiveWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = MAX_DATA - self.buffer.len();
        let taken = room.min(bytes.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == MAX_DATA {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads the archive data frames of a session until the end of the archive.
pub struct ArchiveReader<'a> {
    conn: &'a mut Conn,
    chunk: Vec<u8>,
    offset: usize,
    done: bool,
}

impl<'a> ArchiveReader<'a> {
    /// A reader on `conn`.
    pub fn new(conn: &'a mut Conn) -> Self {
        ArchiveReader {
            conn,
            chunk: Vec::new(),
            offset: 0,
            done: false,
        }
    }

    /// Reads and drops whatever is left of the archive.
    pub fn discard(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink()).map(|_| ())
    }
}

impl Read for ArchiveReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self
                .conn
                .recv(Some(REPLY_TIMEOUT))
                .map_err(io::Error::other)?
            {
                Frame::Data(Stream::Archive, bytes) if bytes.is_empty() => self.done = true,
                Frame::Data(Stream::Archive, bytes) => {
                    self.chunk = bytes;
                    self.offset = 0;
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("expected archive data, got {other:?}"),
                    ));
                }
            }
        }
        let taken = out.len().min(self.chunk.len() - self.offset);
        out[..taken].copy_from_slice(&self.chunk[self.offset..self.offset + taken]);
        self.offset += taken;
        Ok(taken)
    }
}

/// Checks that `path` is absolute and normal (no `..`).
fn checked(path: &str) -> Result<PathBuf, AgentError> {
    let path = Path::new(path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(AgentError::new(
            ErrorKind::Invalid,
            format!("{path:?} must be an absolute path without '..'"),
        ));
    }
    Ok(path.to_path_buf())
}

/// Enters the mount namespace of the workload's init, whose root becomes ours: paths (and
/// symlinks in them) then resolve inside the workload's root filesystem and cannot leave
/// it. Only for a process that serves one request and exits.
pub fn enter_workload_root(pid: i32) -> Result<(), AgentError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(failed("opening the workload's mount namespace"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(failed("entering the workload's mount namespace"))
}

/// Unpacks the archive that follows into the directory `path` (created if missing).
pub fn copy_in(archive: impl Read, path: &str) -> Result<(), AgentError> {
    let target = checked(path)?;
    std::fs::create_dir_all(&target).map_err(failed(&format!("creating {}", target.display())))?;
    let mut archive = tar::Archive::new(archive);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive
        .unpack(&target)
        .map_err(failed(&format!("unpacking into {}", target.display())))
}

/// Packs `path` (a file, or a directory with its contents) as a tar archive whose entries
/// start with its base name.
pub fn copy_out(out: impl Write, path: &str) -> Result<(), AgentError> {
    let source = checked(path)?;
    let meta =
        std::fs::symlink_metadata(&source).map_err(failed(&format!("{}", source.display())))?;
    let name = source
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let packed = if meta.is_dir() {
        builder.append_dir_all(&name, &source)
    } else {
        builder.append_path_with_name(&source, &name)
    };
    packed
        .and_then(|()| builder.into_inner().and_then(|mut out| out.flush()))
        .map_err(failed(&format!("packing {}", source.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(source.join("sub")).unwrap();
        std::fs::write(source.join("sub/file"), "content").unwrap();
        std::os::unix::fs::symlink("sub/file", source.join("link")).unwrap();
        let mut archive = Vec::new();
        copy_out(&mut archive, source.to_str().unwrap()).unwrap();
        let target = dir.path().join("dst");
        copy_in(archive.as_slice(), target.to_str().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("src/sub/file")).unwrap(),
            "content"
        );
        assert_eq!(
            std::fs::read_link(target.join("src/link")).unwrap(),
            Path::new("sub/file")
        );

        let mut single = Vec::new();
        copy_out(&mut single, source.join("sub/file").to_str().unwrap()).unwrap();
        copy_in(single.as_slice(), target.to_str().unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("file")).unwrap(),
            "content"
        );
    }

    #[test]
    fn relative_and_climbing_paths_are_refused() {
        for bad in ["relative", "/a/../../etc"] {
            let error = copy_out(Vec::new(), bad).unwrap_err();
            assert_eq!(error.kind, ErrorKind::Invalid, "{bad}");
            assert!(copy_in(io::empty(), bad).is_err());
        }
    }

    #[test]
    fn archives_cross_a_session_in_frames() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let mut conn = twinbox_protocol::Connection::new(std::fs::File::from(
                std::os::fd::OwnedFd::from(a),
            ));
            let mut writer = ArchiveWriter::new(&mut conn);
            writer.write_all(&vec![5u8; MAX_DATA * 2 + 3]).unwrap();
            writer.finish().unwrap();
        });
        let mut conn =
            twinbox_protocol::Connection::new(std::fs::File::from(std::os::fd::OwnedFd::from(b)));
        let mut data = Vec::new();
        ArchiveReader::new(&mut conn)
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data.len(), MAX_DATA * 2 + 3);
        sender.join().unwrap();
    }
}
