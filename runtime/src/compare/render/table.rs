//! The terminal renderer: aligned plain-text tables.

use super::{START_HEADER, label, mib, ms, start_rows, status_text};
use crate::compare::report::Report;

/// Widest observed text shown in an isolation cell; the JSON and HTML keep the full text.
const MAX_CELL: usize = 40;

/// Lays out `rows` under `header` with columns padded to their widest cell.
fn layout(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(&header[i])
                .chain(rows.iter().filter_map(|row| row.get(i)))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Columns of numbers (and "-" for none) are right-aligned, header included.
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| {
            let mut cells = rows.iter().filter_map(|row| row.get(i)).peekable();
            cells.peek().is_some() && cells.all(|c| c == "-" || c.parse::<f64>().is_ok())
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths.iter().zip(&numeric))
            .map(|(cell, (width, right))| {
                if *right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = line(header);
    out.push_str(&line(&rule));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn strings<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_CELL {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX_CELL - 1).collect();
        format!("{cut}…")
    }
}

/// The report as text tables for a terminal.
pub fn table(report: &Report) -> String {
    let h = &report.header;
    let mut out = format!(
        "twinbox compare: {} {}\nhost {} ({} CPUs, {}), kernel {}, twinbox {}, {}\n",
        h.image,
        h.command.join(" "),
        h.host,
        h.cpus,
        crate::compare::verdict::human_bytes(h.memory_bytes),
        h.kernel,
        h.twinbox_version,
        h.date
    );
    for note in h.kvm.note.iter().chain(&h.notes) {
        out.push_str(&format!("NOTE: {note}\n"));
    }

    let starts = start_rows(report);
    if !starts.is_empty() {
        out.push_str(&format!("\nStart time (ms, {} runs per column)\n", h.runs));
        let rows: Vec<Vec<String>> = starts
            .into_iter()
            .map(|(column, what, stats)| {
                let mut row = vec![label(report, &column).to_string(), what];
                row.extend(stats);
                row
            })
            .collect();
        out.push_str(&layout(&strings(START_HEADER), &rows));
    }

    if !report.weight.is_empty() {
        out.push_str("\nWeight per idle sandbox (MiB)\n");
        let rows: Vec<Vec<String>> = report
            .weight
            .iter()
            .map(|w| {
                vec![
                    label(report, &w.column).to_string(),
                    mib(w.pss_bytes),
                    mib(w.uss_bytes),
                    mib(w.disk_shared_bytes),
                    mib(w.disk_per_sandbox_bytes),
                ]
            })
            .collect();
        let header = strings(["column", "PSS", "USS", "disk shared", "disk per sandbox"]);
        out.push_str(&layout(&header, &rows));
    }

    if !report.density.is_empty() {
        out.push_str("\nDensity (PSS MiB per sandbox / p50 start ms, by sandboxes running)\n");
        let rows: Vec<Vec<String>> = report
            .density
            .iter()
            .flat_map(|series| {
                series.points.iter().map(|point| {
                    vec![
                        label(report, &series.column).to_string(),
                        point.sandboxes.to_string(),
                        mib(point.pss_per_sandbox_bytes),
                        mib(point.uss_per_sandbox_bytes),
                        point
                            .start_latency
                            .as_ref()
                            .map_or("-".to_string(), |d| ms(d.p50_ms)),
                        point.failures.to_string(),
                    ]
                })
            })
            .collect();
        let header = strings(["column", "K", "PSS", "USS", "p50 start", "failed"]);
        out.push_str(&layout(&header, &rows));
    }

    out.push_str(&ratios(report));

    let iso = &report.isolation;
    if !iso.totals.is_empty() {
        out.push_str("\nIsolation (✓ isolated, ✗ not)\n");
        let columns: Vec<&str> = iso.totals.iter().map(|t| t.column.as_str()).collect();
        let mut header = vec!["check".to_string()];
        header.extend(columns.iter().map(|c| label(report, c).to_string()));
        let mut rows: Vec<Vec<String>> = iso
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![row.title.clone()];
                cells.extend(columns.iter().map(|column| {
                    match row.cells.iter().find(|cell| cell.column == *column) {
                        Some(cell) => format!(
                            "{} {}",
                            if cell.isolated { "✓" } else { "✗" },
                            shorten(&cell.observed)
                        ),
                        None => "-".to_string(),
                    }
                }));
                cells
            })
            .collect();
        let mut total = vec!["isolated".to_string()];
        total.extend(
            iso.totals
                .iter()
                .map(|t| format!("{} of {}", t.isolated, t.checks)),
        );
        rows.push(total);
        out.push_str(&layout(&header, &rows));
    }

    let peers: Vec<Vec<String>> = report
        .columns
        .iter()
        .map(|c| {
            vec![
                c.label.clone(),
                format!("{:?}", c.kind).to_lowercase(),
                c.version.clone().unwrap_or_else(|| "-".into()),
                status_text(&c.status),
            ]
        })
        .collect();
    out.push_str("\nColumns\n");
    out.push_str(&layout(
        &strings(["column", "kind", "version", "status"]),
        &peers,
    ));
    out
}

/// Each measured column against the first measured one (twinbox's container mode when it
/// ran): p50 to workload start, p50 to exit, and PSS per idle sandbox, as ratios. Empty with
/// fewer than two measured columns.
fn ratios(report: &Report) -> String {
    let p50 = |column: &str, exit: bool| {
        report
            .start_time
            .iter()
            .find(|s| s.column == column)
            .and_then(|s| {
                if exit {
                    s.exit.as_ref()
                } else {
                    s.workload_start.as_ref()
                }
            })
            .map(|d| d.p50_ms)
    };
    let pss = |column: &str| {
        report
            .weight
            .iter()
            .find(|w| w.column == column)
            .map(|w| w.pss_bytes as f64)
    };
    let measured: Vec<&str> = report
        .start_time
        .iter()
        .map(|s| s.column.as_str())
        .collect();
    let Some((base, others)) = measured.split_first() else {
        return String::new();
    };
    if others.is_empty() {
        return String::new();
    }
    let ratio = |value: Option<f64>, reference: Option<f64>| match (value, reference) {
        (Some(value), Some(reference)) if reference > 0.0 => format!("{:.2}", value / reference),
        _ => "-".to_string(),
    };
    let rows: Vec<Vec<String>> = others
        .iter()
        .map(|column| {
            vec![
                label(report, column).to_string(),
                ratio(p50(column, false), p50(base, false)),
                ratio(p50(column, true), p50(base, true)),
                ratio(pss(column), pss(base)),
            ]
        })
        .collect();
    let mut out = format!(
        "\nRatios to {} (x times; p50 start, p50 exit, PSS per idle sandbox)\n",
        label(report, base)
    );
    out.push_str(&layout(&strings(["column", "start", "exit", "PSS"]), &rows));
    out
}
