//! Renderers of a [`Report`]: a terminal table, JSON, and an HTML page with SVG plots.

mod html;
mod plots;
mod table;

pub use html::html;
pub use plots::{density_svg, latency_svg};
pub use table::table;

use super::CompareError;
use super::report::Report;

/// Output formats of `twinbox compare --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text tables for a terminal.
    Table,
    /// The report document (see `docs/compare-report.md`).
    Json,
    /// A self-contained HTML page with SVG plots.
    Html,
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format) -> Result<String, CompareError> {
    match format {
        Format::Table => Ok(table(report)),
        Format::Json => Ok(json(report)),
        Format::Html => html(report),
    }
}

/// The report as pretty JSON, with a final newline.
pub fn json(report: &Report) -> String {
    format!("{}\n", report.to_json())
}

/// Series colours, by column position: the plots draw column `i` in `SERIES_COLOURS[i %
/// len]`. Nothing else on the HTML page uses these colours.
pub const SERIES_COLOURS: [(u8, u8, u8); 6] = [
    (0x1f, 0x77, 0xb4),
    (0xff, 0x7f, 0x0e),
    (0x2c, 0xa0, 0x2c),
    (0xd6, 0x27, 0x28),
    (0x94, 0x67, 0xbd),
    (0x8c, 0x56, 0x4b),
];

/// The series colour of the column at `index`.
pub fn series_colour(index: usize) -> (u8, u8, u8) {
    SERIES_COLOURS[index % SERIES_COLOURS.len()]
}

/// Milliseconds for a table cell: 3 significant digits, at least 1 decimal below 10.
fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Bytes as MiB for a table cell.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// The label of a column id (the id itself if undeclared).
fn label<'r>(report: &'r Report, column: &'r str) -> &'r str {
    report.column(column).map_or(column, |c| c.label.as_str())
}

/// The status text of a column: "ok", "absent: reason", "failed: reason".
fn status_text(status: &super::report::ColumnStatus) -> String {
    use super::report::ColumnStatus;
    match status {
        ColumnStatus::Ok => "ok".to_string(),
        ColumnStatus::Absent { reason } => format!("absent: {reason}"),
        ColumnStatus::Failed { reason } => format!("failed: {reason}"),
    }
}

/// The start-time rows shared by the table and HTML renderers: (column id, what, stats)
/// with stats = (runs, failures, min, p50, p90, p99, max) as display strings.
fn start_rows(report: &Report) -> Vec<(String, String, [String; 7])> {
    let mut rows = Vec::new();
    for times in &report.start_time {
        let failures = times.failures.to_string();
        let mut metric = |what: String, dist: &super::stats::Distribution| {
            rows.push((
                times.column.clone(),
                what,
                [
                    dist.count.to_string(),
                    failures.clone(),
                    ms(dist.min_ms),
                    ms(dist.p50_ms),
                    ms(dist.p90_ms),
                    ms(dist.p99_ms),
                    ms(dist.max_ms),
                ],
            ))
        };
        if let Some(dist) = &times.workload_start {
            metric("to workload start".into(), dist);
        }
        if let Some(dist) = &times.exit {
            metric("to exit".into(), dist);
        }
        for phase in &times.phases {
            metric(
                format!("phase: {}", phase.phase.label()),
                &phase.distribution,
            );
        }
    }
    rows
}

/// Header of the start-time rows.
const START_HEADER: [&str; 9] = [
    "column", "time", "runs", "failed", "min", "p50", "p90", "p99", "max",
];
