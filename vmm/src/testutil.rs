//! Helpers for the crate's unit tests.

pub use crate::guest_image::elf_image;

/// Writes `bytes` to a fresh temporary file.
pub fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    file.write_all(bytes).expect("write temporary file");
    file.flush().expect("flush temporary file");
    file
}
