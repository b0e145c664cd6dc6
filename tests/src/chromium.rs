//! Headless Chromium screenshots of HTML pages, and PNG decoding to check them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium binary (Debian's `chromium` package).
pub const CHROMIUM: &str = "chromium";

/// Longest a screenshot may take before Chromium is killed.
const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(90);

/// Renders `page` in headless Chromium (a fresh profile, no network use) into `png`, with a
/// window of `width` x `height` CSS pixels.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) -> std::io::Result<()> {
    let profile = tempfile::Builder::new()
        .prefix("chromium-profile-")
        .tempdir()?;
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run {CHROMIUM}: {e} (apt-get install chromium)"),
            )
        })?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > SCREENSHOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!(
                "{CHROMIUM} did not finish the screenshot within {SCREENSHOT_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() || !png.is_file() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        return Err(std::io::Error::other(format!(
            "{CHROMIUM} failed ({status}) to write {}: {stderr}",
            png.display()
        )));
    }
    Ok(())
}

/// An RGB image.
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB pixels.
    pub pixels: Vec<[u8; 3]>,
}

impl Image {
    /// Decodes an 8-bit RGB or RGBA PNG.
    pub fn from_png(path: &Path) -> std::io::Result<Self> {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
        let mut reader = decoder.read_info().map_err(std::io::Error::other)?;
        let mut buffer = vec![0; reader.output_buffer_size()];
        let info = reader
            .next_frame(&mut buffer)
            .map_err(std::io::Error::other)?;
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => {
                return Err(std::io::Error::other(format!(
                    "{}: unexpected PNG colour type {other:?}",
                    path.display()
                )));
            }
        };
        let pixels = buffer[..info.buffer_size()]
            .chunks_exact(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Ok(Image {
            width: info.width,
            height: info.height,
            pixels,
        })
    }

    /// For each row (y) holding pixels within `tolerance` of `colour` per channel: (y, how
    /// many such pixels it has).
    pub fn rows_with(&self, colour: (u8, u8, u8), tolerance: u8) -> Vec<(u32, u32)> {
        let close = |a: u8, b: u8| a.abs_diff(b) <= tolerance;
        (0..self.height)
            .filter_map(|y| {
                let row = &self.pixels[(y * self.width) as usize..((y + 1) * self.width) as usize];
                let count = row
                    .iter()
                    .filter(|p| {
                        close(p[0], colour.0) && close(p[1], colour.1) && close(p[2], colour.2)
                    })
                    .count() as u32;
                (count > 0).then_some((y, count))
            })
            .collect()
    }

    /// How many distinct colours the image has (1 for a blank page).
    pub fn distinct_colours(&self) -> usize {
        let mut seen: std::collections::HashSet<[u8; 3]> = std::collections::HashSet::new();
        for pixel in &self.pixels {
            seen.insert(*pixel);
        }
        seen.len()
    }
}

/// A vertical band of rows holding some colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    /// First row.
    pub first: u32,
    /// Last row.
    pub last: u32,
    /// Matching pixels in the band.
    pub pixels: u32,
}

/// Groups [`Image::rows_with`] rows into bands of rows at most `gap` apart.
pub fn bands(rows: &[(u32, u32)], gap: u32) -> Vec<Band> {
    let mut bands: Vec<Band> = Vec::new();
    for &(row, count) in rows {
        match bands.last_mut() {
            Some(band) if row <= band.last + gap => {
                band.last = row;
                band.pixels += count;
            }
            _ => bands.push(Band {
                first: row,
                last: row,
                pixels: count,
            }),
        }
    }
    bands
}
