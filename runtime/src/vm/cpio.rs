//! A writer for the "newc" cpio format that Linux unpacks as an initramfs.
//!
//! Only what an initramfs needs: directories, regular files (from bytes or copied from a host
//! file), symlinks and character devices. Parent directories are created on demand, so callers
//! just name absolute paths. Archives may be concatenated: the kernel unpacks them in order.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

const MODE_DIR: u32 = 0o040_000;
const MODE_FILE: u32 = 0o100_000;
const MODE_SYMLINK: u32 = 0o120_000;
const MODE_CHAR: u32 = 0o020_000;
const TRAILER: &str = "TRAILER!!!";

/// Errors from building a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// An archive path that is not absolute, or that climbs out of the root with `..`.
    #[error("cpio path {0:?} must be absolute and must not contain '..' or be '/'")]
    BadPath(String),
    /// A host file could not be read.
    #[error("cannot read {path} for the cpio archive: {source}")]
    ReadHostFile {
        /// The host file.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A file is larger than the 4 GiB that newc headers can describe.
    #[error("{0} is larger than 4 GiB, the limit of the cpio newc format")]
    TooLarge(String),
    /// Writing the archive failed.
    #[error("cannot write the cpio archive: {0}")]
    Write(#[from] io::Error),
}

/// Streams a newc cpio archive into `W`. Call [`CpioWriter::finish`] to write the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
    directories: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive. `/` itself is implicit (the kernel's rootfs).
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_inode: 1,
            directories: BTreeSet::new(),
        }
    }

    /// Adds a directory (and its missing parents) with the given permission bits.
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        if self.directories.insert(name.clone()) {
            self.entry(&name, MODE_DIR | perm, 0, &[])?;
        }
        Ok(())
    }

    /// Adds a regular file holding `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        self.entry(&name, MODE_FILE | perm, 0, data)
    }

    /// Adds a regular file with the content and permission bits of a host file (following
    /// symlinks), streamed rather than loaded into memory.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<(), CpioError> {
        use std::os::unix::fs::PermissionsExt;
        let read_error = |source| CpioError::ReadHostFile {
            path: host.display().to_string(),
            source,
        };
        let mut file = File::open(host).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        let size = u32::try_from(meta.len())
            .map_err(|_| CpioError::TooLarge(host.display().to_string()))?;
        let name = archive_name(path)?;
        self.parents(&name)?;
        self.header(
            &name,
            MODE_FILE | (meta.permissions().mode() & 0o7777),
            size,
            0,
        )?;
        let copied = io::copy(&mut file, &mut self.out).map_err(read_error)?;
        if copied != u64::from(size) {
            return Err(read_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file changed size while it was archived",
            )));
        }
        self.written += copied;
        self.pad()
    }

    /// Adds a symlink at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        self.entry(&name, MODE_SYMLINK | 0o777, 0, target.as_bytes())
    }

    /// Adds a character device node (e.g. `/dev/console`, 5:1).
    pub fn char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        let rdev = (major << 16) | minor;
        self.entry(&name, MODE_CHAR | perm, rdev, &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.entry(TRAILER, 0, 0, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, name: &str) -> Result<(), CpioError> {
        let mut end = 0;
        while let Some(slash) = name[end..].find('/') {
            end += slash;
            let parent = &name[..end];
            if self.directories.insert(parent.to_string()) {
                self.entry(parent, MODE_DIR | 0o755, 0, &[])?;
            }
            end += 1;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.to_string()))?;
        self.header(name, mode, size, rdev)?;
        self.out.write_all(data)?;
        self.written += u64::from(size);
        self.pad()
    }

    fn header(&mut self, name: &str, mode: u32, size: u32, rdev: u32) -> Result<(), CpioError> {
        let inode = if name == TRAILER { 0 } else { self.next_inode };
        self.next_inode += 1;
        let nlink = if mode & MODE_DIR != 0 { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize (with NUL), check.
        let header = format!(
            "070701{inode:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            0,
            0,
            0,
            rdev >> 16,
            rdev & 0xffff,
            name.len() + 1,
            0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += (header.len() + name.len() + 1) as u64;
        self.pad()
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let padding = (4 - self.written % 4) % 4;
        self.out.write_all(&[0; 3][..padding as usize])?;
        self.written += padding;
        Ok(())
    }
}

/// The in-archive name of an absolute path: without the leading `/`.
fn archive_name(path: &str) -> Result<String, CpioError> {
    let name = path.trim_end_matches('/');
    let relative = name
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty() && !rest.split('/').any(|c| c == ".." || c.is_empty()))
        .ok_or_else(|| CpioError::BadPath(path.to_string()))?;
    Ok(relative.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn extract(archive: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(archive).unwrap();
        assert!(child.wait().unwrap().success());
        dir
    }

    #[test]
    fn gnu_cpio_reads_back_files_dirs_and_symlinks() {
        let host = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(host.path(), b"host contents\n").unwrap();
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.file("/etc/hello", 0o640, b"hi").unwrap();
        cpio.host_file("/deep/er/copy", host.path()).unwrap();
        cpio.symlink("/bin/sh", "busybox").unwrap();
        cpio.dir("/empty", 0o700).unwrap();
        let archive = cpio.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);

        let dir = extract(&archive);
        use std::os::unix::fs::PermissionsExt;
        let root = dir.path();
        assert_eq!(std::fs::read(root.join("etc/hello")).unwrap(), b"hi");
        let mode = std::fs::metadata(root.join("etc/hello"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(
            std::fs::read(root.join("deep/er/copy")).unwrap(),
            b"host contents\n"
        );
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(root.join("empty").is_dir());
    }

    #[test]
    fn character_devices_carry_their_numbers() {
        let mut cpio = CpioWriter::new(Vec::new());
        cpio.char_device("/dev/console", 0o600, 5, 1).unwrap();
        let archive = cpio.finish().unwrap();
        let listing = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child.stdin.take().unwrap().write_all(&archive)?;
                child.wait_with_output()
            })
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        let console = text.lines().find(|l| l.ends_with("dev/console")).unwrap();
        assert!(console.starts_with("crw-------"), "{console}");
        assert!(console.contains("5,"), "{console}");
    }

    #[test]
    fn rejects_relative_and_escaping_paths() {
        let mut cpio = CpioWriter::new(Vec::new());
        for bad in ["relative", "/", "/a/../b", "//x"] {
            assert!(
                matches!(cpio.file(bad, 0o644, b""), Err(CpioError::BadPath(_))),
                "{bad}"
            );
        }
    }
}
