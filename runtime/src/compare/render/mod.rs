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
            metric(format!("to {}", phase.phase.label()), &phase.distribution);
        }
    }
    rows
}

/// Header of the start-time rows.
const START_HEADER: [&str; 9] = [
    "column", "time", "runs", "failed", "min", "p50", "p90", "p99", "max",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::report::EMULATED_KVM_NOTE;
    use crate::compare::sample::sample_report;

    fn hex((r, g, b): (u8, u8, u8)) -> String {
        format!("#{r:02X}{g:02X}{b:02X}")
    }

    #[test]
    fn table_has_every_section_aligned_and_the_totals() {
        let report = sample_report();
        let text = table(&report);
        assert!(text.contains(&format!("NOTE: {EMULATED_KVM_NOTE}")));
        for section in ["Start time", "Weight", "Density", "Isolation", "Columns"] {
            assert!(text.contains(section), "{section} missing:\n{text}");
        }
        let totals = &report.isolation.totals[0];
        let total_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("isolated"))
            .unwrap();
        assert!(total_line.contains(&format!("{} of {}", totals.isolated, totals.checks)));
        assert!(text.contains("absent: runsc is not installed"));
        for phase in &report.start_time[1].phases {
            let row = format!("to {}", phase.phase.label());
            let line = text.lines().find(|l| l.contains(&row)).unwrap();
            assert!(line.contains(&ms(phase.distribution.p50_ms)), "{line}");
        }
        // Aligned: every isolation row puts its second cell at the same character column.
        let iso: Vec<&str> = text
            .split("\nIsolation")
            .nth(1)
            .unwrap()
            .lines()
            .skip(3)
            .take_while(|l| !l.is_empty())
            .filter(|l| !l.trim_start().starts_with("isolated"))
            .collect();
        let starts: std::collections::BTreeSet<usize> = iso
            .iter()
            .map(|l| l.chars().position(|c| c == '✓' || c == '✗').unwrap())
            .collect();
        assert_eq!(starts.len(), 1, "{iso:#?}");
    }

    #[test]
    fn table_gives_ratios_to_the_first_measured_column() {
        let report = sample_report();
        let text = table(&report);
        let base = &report.start_time[0];
        let other = &report.start_time[1];
        let expected = format!(
            "{:.2}",
            other.workload_start.as_ref().unwrap().p50_ms
                / base.workload_start.as_ref().unwrap().p50_ms
        );
        let section = text.split("\nRatios to ").nth(1).expect("a ratio section");
        assert!(
            section.starts_with(label(&report, &base.column)),
            "{section}"
        );
        let line = section
            .lines()
            .find(|l| l.trim_start().starts_with(label(&report, &other.column)))
            .unwrap();
        assert!(line.contains(&expected), "{line} lacks {expected}");
    }

    #[test]
    fn html_is_self_contained_with_both_plots_in_series_colours() {
        let report = sample_report();
        let page = html(&report).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("&lt;escaped &amp; checked&gt;"));
        assert!(!page.contains("<script"));
        assert_eq!(page.matches("<svg").count(), 2);
        for (index, column) in report.columns.iter().enumerate().take(3) {
            let colour = hex(series_colour(index));
            assert!(
                page.contains(&colour),
                "{} ({colour}) not plotted",
                column.id
            );
        }
        // The absent peer has no data, so no series.
        assert!(!page.contains(&hex(series_colour(3))));
        assert_eq!(
            page.matches("class=\"yes\"").count() + page.matches("class=\"no\"").count(),
            2 * report.isolation.rows.len()
        );
    }

    #[test]
    fn plots_are_skipped_without_data() {
        let mut report = sample_report();
        report.start_time.clear();
        report.density.clear();
        assert_eq!(latency_svg(&report).unwrap(), None);
        assert_eq!(density_svg(&report).unwrap(), None);
        assert!(!html(&report).unwrap().contains("<svg"));
        assert!(render(&report, Format::Json).unwrap().ends_with("}\n"));
    }
}
