//! Framing: every frame is `u32 length (little endian) | u8 kind | body`, where `length`
//! counts the kind byte and the body. Two kinds exist:
//!
//! - [`KIND_MESSAGE`]: the body is one JSON-encoded [`Message`].
//! - [`KIND_DATA`]: the body is `u8 stream | bytes`, raw bytes of one [`Stream`]; an empty
//!   data frame closes that stream (end of file).
//!
//! Frames larger than [`MAX_FRAME`] are refused on both sides, so a confused or hostile peer
//! cannot make the other allocate without bound.

use std::io::{self, Read, Write};

use crate::ProtocolError;
use crate::message::Message;

/// Largest frame (kind byte + body) either side sends or accepts.
pub const MAX_FRAME: usize = 4 << 20;
/// Largest payload of one data frame: readers chunk their input to this.
pub const MAX_DATA: usize = 64 << 10;

/// Frame kind: a JSON message.
pub const KIND_MESSAGE: u8 = 1;
/// Frame kind: stream data.
pub const KIND_DATA: u8 = 2;

/// The byte streams multiplexed over a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Stream {
    /// Host to guest: the process's standard input.
    Stdin = 0,
    /// Guest to host: standard output (with a terminal: the terminal's output).
    Stdout = 1,
    /// Guest to host: standard error (unused with a terminal).
    Stderr = 2,
    /// Either way: a tar archive (file copy, volume changes).
    Archive = 3,
}

impl Stream {
    fn from_byte(byte: u8) -> Result<Self, ProtocolError> {
        Ok(match byte {
            0 => Stream::Stdin,
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            3 => Stream::Archive,
            other => return Err(ProtocolError::UnknownStream(other)),
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A control message.
    Message(Message),
    /// Stream bytes; empty means end of stream.
    Data(Stream, Vec<u8>),
}

/// Encodes `message` as one frame.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, ProtocolError> {
    let body = serde_json::to_vec(message).map_err(ProtocolError::Encode)?;
    frame(KIND_MESSAGE, &[], &body)
}

/// Encodes stream bytes as one frame (`data` must not exceed [`MAX_DATA`]).
pub fn encode_data(stream: Stream, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    frame(KIND_DATA, &[stream as u8], data)
}

fn frame(kind: u8, header: &[u8], body: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let length = 1 + header.len() + body.len();
    if length > MAX_FRAME {
        return Err(ProtocolError::Oversized {
            length,
            max: MAX_FRAME,
        });
    }
    let mut out = Vec::with_capacity(4 + length);
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    Ok(out)
}

/// Writes `message` as one frame.
pub fn write_message(out: &mut impl Write, message: &Message) -> Result<(), ProtocolError> {
    out.write_all(&encode_message(message)?)
        .map_err(ProtocolError::Io)
}

/// Writes `data` as data frames of at most [`MAX_DATA`] bytes each (nothing for empty
/// data: use [`write_eof`] to close a stream).
pub fn write_data(out: &mut impl Write, stream: Stream, data: &[u8]) -> Result<(), ProtocolError> {
    for chunk in data.chunks(MAX_DATA) {
        out.write_all(&encode_data(stream, chunk)?)
            .map_err(ProtocolError::Io)?;
    }
    Ok(())
}

/// Closes `stream` (an empty data frame).
pub fn write_eof(out: &mut impl Write, stream: Stream) -> Result<(), ProtocolError> {
    out.write_all(&encode_data(stream, &[])?)
        .map_err(ProtocolError::Io)
}

/// Decodes frames from bytes that arrive in arbitrary pieces: feed it with [`FrameReader::fill`]
/// (one read, fit for non-blocking descriptors) or [`FrameReader::push`], then take complete
/// frames with [`FrameReader::next_frame`]. It never blocks and never waits for more bytes
/// than one frame announces, so a peer that stops mid-frame cannot hang the other side.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    start: usize,
    eof: bool,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buffer.extend_from_slice(bytes);
    }

    /// Reads once from `input` into the buffer. Returns the number of bytes read; 0 means the
    /// peer closed the connection (remembered: see [`FrameReader::is_eof`]).
    pub fn fill(&mut self, input: &mut impl Read) -> io::Result<usize> {
        self.compact();
        let old = self.buffer.len();
        self.buffer.resize(old + MAX_DATA + 16, 0);
        let result = input.read(&mut self.buffer[old..]);
        let got = *result.as_ref().unwrap_or(&0);
        self.buffer.truncate(old + got);
        if matches!(result, Ok(0)) {
            self.eof = true;
        }
        result
    }

    /// Whether the peer closed the connection.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Bytes received but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buffer.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. At end of file with a
    /// partial frame buffered, the error says the frame was truncated.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        let available = &self.buffer[self.start..];
        if available.len() < 4 {
            return self.need_more(available.len());
        }
        let length =
            u32::from_le_bytes([available[0], available[1], available[2], available[3]]) as usize;
        if length == 0 {
            return Err(ProtocolError::EmptyFrame);
        }
        if length > MAX_FRAME {
            return Err(ProtocolError::Oversized {
                length,
                max: MAX_FRAME,
            });
        }
        if available.len() < 4 + length {
            return self.need_more(available.len());
        }
        let body = &available[5..4 + length];
        let frame = match available[4] {
            KIND_MESSAGE => Frame::Message(
                serde_json::from_slice(body)
                    .map_err(|e| ProtocolError::BadMessage(e.to_string()))?,
            ),
            KIND_DATA => {
                let (&stream, data) = body.split_first().ok_or(ProtocolError::EmptyFrame)?;
                Frame::Data(Stream::from_byte(stream)?, data.to_vec())
            }
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        self.start += 4 + length;
        Ok(Some(frame))
    }

    fn need_more(&self, buffered: usize) -> Result<Option<Frame>, ProtocolError> {
        if self.eof && buffered > 0 {
            Err(ProtocolError::Truncated { buffered })
        } else {
            Ok(None)
        }
    }
}

/// Reads frames from a blocking reader, one at a time. `Ok(None)` at a clean end of stream.
pub fn read_frame(
    input: &mut impl Read,
    reader: &mut FrameReader,
) -> Result<Option<Frame>, ProtocolError> {
    loop {
        if let Some(frame) = reader.next_frame()? {
            return Ok(Some(frame));
        }
        if reader.is_eof() {
            return Ok(None);
        }
        match reader.fill(input) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ExitStatus, Hello};

    #[test]
    fn frames_round_trip_through_arbitrary_splits() {
        let mut bytes = encode_message(&Message::Hello(Hello::ours("test 1"))).unwrap();
        bytes.extend(encode_data(Stream::Stdout, b"hello").unwrap());
        bytes.extend(encode_data(Stream::Stdin, b"").unwrap());
        bytes.extend(
            encode_message(&Message::Exit(ExitStatus {
                code: 3,
                signal: None,
            }))
            .unwrap(),
        );
        for split in 1..bytes.len() {
            let mut reader = FrameReader::new();
            let mut frames = Vec::new();
            for piece in bytes.chunks(split) {
                reader.push(piece);
                while let Some(frame) = reader.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames.len(), 4, "split {split}");
            assert_eq!(frames[1], Frame::Data(Stream::Stdout, b"hello".to_vec()));
            assert_eq!(frames[2], Frame::Data(Stream::Stdin, Vec::new()));
            assert!(matches!(
                frames[3],
                Frame::Message(Message::Exit(ExitStatus { code: 3, .. }))
            ));
            assert_eq!(reader.pending(), 0);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut reader = FrameReader::new();
        reader.push(&((MAX_FRAME as u32) + 1).to_le_bytes());
        let error = reader.next_frame().unwrap_err();
        assert!(matches!(error, ProtocolError::Oversized { .. }), "{error}");
        assert!(error.to_string().contains("larger than"), "{error}");
        let huge = vec![0u8; MAX_FRAME];
        assert!(matches!(
            encode_data(Stream::Stdout, &huge),
            Err(ProtocolError::Oversized { .. })
        ));
    }

    #[test]
    fn truncated_frames_are_reported_at_end_of_stream() {
        let bytes = encode_data(Stream::Stderr, b"partial data").unwrap();
        let mut input = &bytes[..bytes.len() - 3];
        let mut reader = FrameReader::new();
        let error = read_frame(&mut input, &mut reader).unwrap_err();
        assert!(
            matches!(error, ProtocolError::Truncated { buffered: 15 }),
            "{error}"
        );
        // A clean end between frames is not an error.
        let mut empty: &[u8] = &[];
        assert!(
            read_frame(&mut empty, &mut FrameReader::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        let mut reader = FrameReader::new();
        reader.push(&[3, 0, 0, 0, 9, 1, 2]);
        assert!(matches!(
            reader.next_frame(),
            Err(ProtocolError::UnknownKind(9))
        ));
        let mut reader = FrameReader::new();
        reader.push(&[2, 0, 0, 0, KIND_DATA, 7]);
        assert!(matches!(
            reader.next_frame(),
            Err(ProtocolError::UnknownStream(7))
        ));
        let mut reader = FrameReader::new();
        reader.push(&[0, 0, 0, 0]);
        assert!(matches!(
            reader.next_frame(),
            Err(ProtocolError::EmptyFrame)
        ));
        let mut reader = FrameReader::new();
        reader.push(&[5, 0, 0, 0, KIND_MESSAGE, b'{', b'x', b'}', b'!']);
        assert!(matches!(
            reader.next_frame(),
            Err(ProtocolError::BadMessage(_))
        ));
    }

    #[test]
    fn large_data_is_chunked() {
        let data = vec![7u8; MAX_DATA * 2 + 5];
        let mut out = Vec::new();
        write_data(&mut out, Stream::Archive, &data).unwrap();
        let mut input = out.as_slice();
        let mut reader = FrameReader::new();
        let mut total = Vec::new();
        while let Some(frame) = read_frame(&mut input, &mut reader).unwrap() {
            let Frame::Data(Stream::Archive, bytes) = frame else {
                panic!("unexpected frame")
            };
            assert!(!bytes.is_empty() && bytes.len() <= MAX_DATA);
            total.extend(bytes);
        }
        assert_eq!(total, data);
    }
}
