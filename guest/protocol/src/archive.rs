//! A tar archive carried over a session in [`Stream::Archive`] data frames (file copy,
//! volume changes): [`ArchiveWriter`] sends one, [`ArchiveReader`] receives one.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use crate::REPLY_TIMEOUT;
use crate::connection::Connection;
use crate::frame::{Frame, MAX_DATA, Stream};

/// Writes a byte stream as archive data frames; [`ArchiveWriter::finish`] ends it.
pub struct ArchiveWriter<'a, S> {
    conn: &'a mut Connection<S>,
    buffer: Vec<u8>,
}

impl<'a, S: Read + Write + AsFd> ArchiveWriter<'a, S> {
    /// A writer on `conn`.
    pub fn new(conn: &'a mut Connection<S>) -> Self {
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

impl<S: Read + Write + AsFd> Write for ArchiveWriter<'_, S> {
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
pub struct ArchiveReader<'a, S> {
    conn: &'a mut Connection<S>,
    chunk: Vec<u8>,
    offset: usize,
    done: bool,
}

impl<'a, S: Read + Write + AsFd> ArchiveReader<'a, S> {
    /// A reader on `conn`.
    pub fn new(conn: &'a mut Connection<S>) -> Self {
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

impl<S: Read + Write + AsFd> Read for ArchiveReader<'_, S> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_cross_a_session_in_frames() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let sender = std::thread::spawn(move || {
            let mut conn = Connection::new(std::fs::File::from(std::os::fd::OwnedFd::from(a)));
            let mut writer = ArchiveWriter::new(&mut conn);
            writer.write_all(&vec![5u8; MAX_DATA * 2 + 3]).unwrap();
            writer.finish().unwrap();
        });
        let mut conn = Connection::new(std::fs::File::from(std::os::fd::OwnedFd::from(b)));
        let mut data = Vec::new();
        ArchiveReader::new(&mut conn)
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data.len(), MAX_DATA * 2 + 3);
        sender.join().unwrap();
    }
}
