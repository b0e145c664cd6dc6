//! Layer compression: detected from the stream's magic bytes (media types lie more often
//! than magic numbers do), decompressed on a helper thread so that decompression and
//! hashing overlap with writing files.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc;
use std::thread;

use super::digest::{Digest, Hasher};

/// The compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a stream.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

const CHUNK: usize = 1 << 20;

/// A decompressed layer stream produced on a helper thread, which also computes the
/// digest of the uncompressed bytes (the layer's diff-id).
pub struct LayerStream {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    worker: Option<thread::JoinHandle<Digest>>,
    failed: bool,
}

impl LayerStream {
    /// Starts decompressing `blob` (compression detected from its magic bytes).
    pub fn new<R: Read + Send + 'static>(blob: R) -> io::Result<LayerStream> {
        let mut blob = BufReader::with_capacity(CHUNK, blob);
        let compression = Compression::detect(blob.fill_buf()?);
        let mut decoded: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(blob),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(blob)?),
        };
        let (tx, rx) = mpsc::sync_channel(8);
        let worker = thread::Builder::new()
            .name("layer-decompress".into())
            .spawn(move || {
                let mut hasher = Hasher::default();
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    let mut filled = 0;
                    let result = loop {
                        match decoded.read(&mut buf[filled..]) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                filled += n;
                                if filled == buf.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    buf.truncate(filled);
                    hasher.update(&buf);
                    let done = filled == 0 || result.is_err();
                    let send = match result {
                        Ok(()) if filled == 0 => break,
                        Ok(()) => tx.send(Ok(buf)),
                        Err(e) => tx.send(Err(e)),
                    };
                    if send.is_err() || done {
                        break;
                    }
                }
                hasher.finish()
            })?;
        Ok(LayerStream {
            chunks: rx,
            current: Vec::new(),
            pos: 0,
            worker: Some(worker),
            failed: false,
        })
    }

    /// Reads what is left and returns the digest of the whole uncompressed stream.
    pub fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        if self.failed {
            return Err(io::Error::other("layer stream failed"));
        }
        self.worker
            .take()
            .expect("worker joined once")
            .join()
            .map_err(|_| io::Error::other("layer decompression thread panicked"))
    }
}

impl Read for LayerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(io::Error::new(e.kind(), format!("corrupt layer data: {e}")));
                }
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for LayerStream {
    fn drop(&mut self) {
        // Dropping the receiver makes the worker's next send fail, so it exits; join it so
        // no thread outlives the stream.
        let (_tx, rx) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.chunks, rx));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decompresses_gzip_zstd_and_plain_with_diff_id() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = Digest::of_bytes(&data);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        for blob in [gz, zst, data.clone()] {
            let mut stream = LayerStream::new(io::Cursor::new(blob)).unwrap();
            let mut out = Vec::new();
            stream.read_to_end(&mut out).unwrap();
            assert!(out == data);
            assert_eq!(stream.finish().unwrap(), expected);
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 100_000]).unwrap();
        let mut gz = gz.finish().unwrap();
        gz.truncate(gz.len() / 2);
        let mut stream = LayerStream::new(io::Cursor::new(gz)).unwrap();
        let mut out = Vec::new();
        assert!(stream.read_to_end(&mut out).is_err());
    }
}
