//! Container logs in the CRI format that Kubernetes and podman (k8s-file) use: one record per
//! line, `<RFC 3339 time> <stdout|stderr> <F|P> <text>`, where F ends a line and P is a
//! partial line continued by the next record of the stream. Both streams share one file, in
//! the order the monitor read them, and stay apart: `logs` writes stdout records to stdout
//! and stderr records to stderr.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use crate::state::rfc3339_now;

/// Which output of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (and a terminal's output).
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends `data`, as read from `stream`, to `out` as log records: every complete line an F
/// record, a trailing incomplete line a P record.
pub fn encode(out: &mut Vec<u8>, stream: Stream, data: &[u8]) {
    let time = rfc3339_now();
    let mut rest = data;
    while !rest.is_empty() {
        let (line, tag, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (&rest[..end], b'F', &rest[end + 1..]),
            None => (rest, b'P', &[][..]),
        };
        out.extend_from_slice(time.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.name().as_bytes());
        out.push(b' ');
        out.push(tag);
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        rest = next;
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the monitor read it.
    pub time: &'a str,
    /// Which stream.
    pub stream: Stream,
    /// False for a partial line (P) that the next record of the stream continues.
    pub line_end: bool,
    /// The text, without the newline.
    pub text: &'a [u8],
}

/// Parses one log line (without its newline); None for a damaged line.
pub fn decode(line: &[u8]) -> Option<Record<'_>> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let line_end = match fields.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record {
        time,
        stream,
        line_end,
        text: fields.next().unwrap_or_default(),
    })
}

/// How `logs` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrintOptions {
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
}

/// Writes the records of the log at `path` to `stdout`/`stderr`. With `follow`, keeps
/// printing what is appended while `writer_alive()` says the monitor still writes.
pub fn print(
    path: &Path,
    options: PrintOptions,
    follow: bool,
    writer_alive: &dyn Fn() -> bool,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> io::Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && follow && writer_alive() => {
            // The monitor has not created it yet.
            std::thread::sleep(Duration::from_millis(20));
            File::open(path)?
        }
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    if let Some(tail) = options.tail {
        let start = tail_offset(&mut reader, tail)?;
        reader.seek(SeekFrom::Start(start))?;
    }
    let mut printer = Printer {
        options,
        at_line_start: [true, true],
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n > 0 && line.last() == Some(&b'\n') {
            line.pop();
            if let Some(record) = decode(&line) {
                printer.print(&record, stdout, stderr)?;
            }
            continue;
        }
        if n > 0 {
            // A record still being written: read it again once complete.
            let pos = reader.stream_position()? - n as u64;
            reader.seek(SeekFrom::Start(pos))?;
        }
        if !follow {
            break;
        }
        stdout.flush()?;
        stderr.flush()?;
        if !writer_alive() {
            // One last pass for what the monitor wrote before it exited.
            let mut rest = Vec::new();
            while reader.read_until(b'\n', &mut rest)? > 0 {}
            for raw in rest.split(|&b| b == b'\n') {
                if let Some(record) = decode(raw) {
                    printer.print(&record, stdout, stderr)?;
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stdout.flush()?;
    stderr.flush()
}

struct Printer {
    options: PrintOptions,
    at_line_start: [bool; 2],
}

impl Printer {
    fn print(
        &mut self,
        record: &Record<'_>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> io::Result<()> {
        match record.stream {
            Stream::Stdout => self.emit(record, stdout, 0),
            Stream::Stderr => self.emit(record, stderr, 1),
        }
    }

    fn emit(&mut self, record: &Record<'_>, out: &mut dyn Write, slot: usize) -> io::Result<()> {
        if self.options.timestamps && self.at_line_start[slot] {
            out.write_all(record.time.as_bytes())?;
            out.write_all(b" ")?;
        }
        out.write_all(record.text)?;
        if record.line_end {
            out.write_all(b"\n")?;
        }
        self.at_line_start[slot] = record.line_end;
        Ok(())
    }
}

/// The offset of the first record of the last `lines` complete lines (a line being a run of
/// P records ended by an F record of its stream).
fn tail_offset(reader: &mut BufReader<File>, lines: usize) -> io::Result<u64> {
    // Offsets where a line of each stream starts.
    let mut starts: Vec<u64> = Vec::new();
    let mut open: [Option<u64>; 2] = [None, None];
    let mut offset = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if let Some(record) = decode(line.strip_suffix(b"\n").unwrap_or(&line)) {
            let slot = record.stream as usize;
            let start = *open[slot].get_or_insert(offset);
            if record.line_end {
                starts.push(start);
                open[slot] = None;
            }
        }
        offset += n as u64;
    }
    starts.sort_unstable();
    Ok(match starts.len().checked_sub(lines) {
        Some(skip) if lines > 0 => starts[skip],
        Some(_) => offset,
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[(Stream, &[u8])]) -> tempfile::NamedTempFile {
        let mut bytes = Vec::new();
        for (stream, data) in records {
            encode(&mut bytes, *stream, data);
        }
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        file
    }

    fn printed(file: &tempfile::NamedTempFile, options: PrintOptions) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        print(file.path(), options, false, &|| false, &mut out, &mut err).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn lines_and_partial_lines_round_trip_per_stream() {
        let mut bytes = Vec::new();
        encode(&mut bytes, Stream::Stdout, b"one\ntw");
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" stdout F one"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stdout P tw"), "{}", lines[1]);
        let record = decode(lines[1].as_bytes()).unwrap();
        assert_eq!(
            (record.stream, record.line_end, record.text),
            (Stream::Stdout, false, &b"tw"[..])
        );
        assert!(decode(b"garbage").is_none());

        let file = log(&[
            (Stream::Stdout, b"one\ntw"),
            (Stream::Stderr, b"oops\n"),
            (Stream::Stdout, b"o\nthree\n"),
            (Stream::Stderr, b"no newline"),
        ]);
        let (out, err) = printed(&file, PrintOptions::default());
        assert_eq!(out, "one\ntwo\nthree\n");
        assert_eq!(err, "oops\nno newline");
    }

    #[test]
    fn timestamps_and_tail() {
        let file = log(&[
            (Stream::Stdout, b"a\nb\n"),
            (Stream::Stderr, b"e1\n"),
            (Stream::Stdout, b"c"),
            (Stream::Stdout, b"d\n"),
        ]);
        let (out, err) = printed(
            &file,
            PrintOptions {
                tail: Some(2),
                ..Default::default()
            },
        );
        assert_eq!((out.as_str(), err.as_str()), ("cd\n", "e1\n"));
        let (out, _) = printed(
            &file,
            PrintOptions {
                tail: Some(0),
                ..Default::default()
            },
        );
        assert_eq!(out, "");
        let (out, _) = printed(
            &file,
            PrintOptions {
                tail: Some(100),
                timestamps: true,
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with("Z cd"), "{}", lines[2]);
    }
}
