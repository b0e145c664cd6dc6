//! The HTML renderer: one self-contained page (inline CSS and SVG, no scripts, nothing
//! fetched), so it can be archived or attached as it is.

use super::{START_HEADER, density_svg, label, latency_svg, mib, ms, start_rows, status_text};
use crate::compare::CompareError;
use crate::compare::report::Report;

/// Page style. Isolation cells are tinted green/red; no series colour is used outside the
/// plots.
const STYLE: &str = "\
body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px;color:#222;max-width:1100px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc}\
.meta{color:#555;margin:0 0 12px}\
.note{background:#fff6d5;border:1px solid #d8c27a;padding:8px 12px;margin:8px 0}\
table{border-collapse:collapse;font-size:13px;margin:8px 0}\
th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}\
td.yes{background:#e4f2e4}td.no{background:#f9e0e0}tr.total td{font-weight:bold}\
figure{margin:8px 0}figure svg{display:block}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML table; cells are (class, already-escaped content). Without rows: a line saying
/// nothing was measured.
fn table_html(header: &[&str], rows: &[Vec<(&str, String)>], row_class: Option<usize>) -> String {
    if rows.is_empty() {
        return "<p class=\"meta\">not measured</p>\n".to_string();
    }
    let mut out = String::from("<table><thead><tr>");
    for cell in header {
        out.push_str(&format!("<th>{}</th>", escape(cell)));
    }
    out.push_str("</tr></thead><tbody>");
    for (index, row) in rows.iter().enumerate() {
        if row_class == Some(index) {
            out.push_str("<tr class=\"total\">");
        } else {
            out.push_str("<tr>");
        }
        for (class, content) in row {
            if class.is_empty() {
                out.push_str(&format!("<td>{content}</td>"));
            } else {
                out.push_str(&format!("<td class=\"{class}\">{content}</td>"));
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
    out
}

fn text(content: impl AsRef<str>) -> (&'static str, String) {
    ("", escape(content.as_ref()))
}

fn number(content: String) -> (&'static str, String) {
    ("num", escape(&content))
}

/// The report as a self-contained HTML page.
pub fn html(report: &Report) -> Result<String, CompareError> {
    let h = &report.header;
    let title = format!("twinbox compare: {} {}", h.image, h.command.join(" "));
    let mut body = format!(
        "<h1>{}</h1>\n<p class=\"meta\">host {} ({} CPUs, {}) · kernel {} · twinbox {} · {} \
         · {} runs per column</p>\n",
        escape(&title),
        escape(&h.host),
        h.cpus,
        crate::compare::verdict::human_bytes(h.memory_bytes),
        escape(&h.kernel),
        escape(&h.twinbox_version),
        escape(&h.date),
        h.runs
    );
    for note in h.kvm.note.iter().chain(&h.notes) {
        body.push_str(&format!("<div class=\"note\">{}</div>\n", escape(note)));
    }

    body.push_str("<h2>Start time (ms)</h2>\n");
    let rows: Vec<Vec<(&str, String)>> = start_rows(report)
        .into_iter()
        .map(|(column, what, stats)| {
            let mut row = vec![text(label(report, &column)), text(what)];
            row.extend(stats.into_iter().map(number));
            row
        })
        .collect();
    body.push_str(&table_html(&START_HEADER, &rows, None));
    if let Some(svg) = latency_svg(report)? {
        body.push_str(&format!("<figure id=\"latency-plot\">{svg}</figure>\n"));
    }

    body.push_str("<h2>Weight and density</h2>\n");
    let rows: Vec<Vec<(&str, String)>> = report
        .weight
        .iter()
        .map(|w| {
            vec![
                text(label(report, &w.column)),
                number(w.sandboxes.to_string()),
                number(mib(w.pss_bytes)),
                number(mib(w.uss_bytes)),
                number(mib(w.disk_shared_bytes)),
                number(mib(w.disk_per_sandbox_bytes)),
            ]
        })
        .collect();
    let header = [
        "column",
        "idle sandboxes",
        "PSS MiB",
        "USS MiB",
        "disk shared MiB",
        "disk per sandbox MiB",
    ];
    body.push_str(&table_html(&header, &rows, None));
    let rows: Vec<Vec<(&str, String)>> = report
        .density
        .iter()
        .flat_map(|series| {
            series.points.iter().map(|p| {
                vec![
                    text(label(report, &series.column)),
                    number(p.sandboxes.to_string()),
                    number(mib(p.pss_per_sandbox_bytes)),
                    number(mib(p.uss_per_sandbox_bytes)),
                    number(
                        p.start_latency
                            .as_ref()
                            .map_or("-".into(), |d| ms(d.p50_ms)),
                    ),
                    number(p.failures.to_string()),
                ]
            })
        })
        .collect();
    let header = [
        "column",
        "sandboxes",
        "PSS MiB each",
        "USS MiB each",
        "p50 start ms",
        "failed",
    ];
    body.push_str(&table_html(&header, &rows, None));
    if let Some(svg) = density_svg(report)? {
        body.push_str(&format!("<figure id=\"density-plot\">{svg}</figure>\n"));
    }

    body.push_str("<h2>Isolation</h2>\n");
    let iso = &report.isolation;
    let columns: Vec<&str> = iso.totals.iter().map(|t| t.column.as_str()).collect();
    let mut header = vec!["check"];
    header.extend(columns.iter().map(|c| label(report, c)));
    let mut rows: Vec<Vec<(&str, String)>> = iso
        .rows
        .iter()
        .map(|row| {
            let mut cells = vec![text(&row.title)];
            cells.extend(columns.iter().map(|column| {
                match row.cells.iter().find(|cell| cell.column == *column) {
                    Some(cell) if cell.isolated => ("yes", escape(&format!("✓ {}", cell.observed))),
                    Some(cell) => ("no", escape(&format!("✗ {}", cell.observed))),
                    None => text("-"),
                }
            }));
            cells
        })
        .collect();
    let mut total = vec![text("isolated")];
    total.extend(
        iso.totals
            .iter()
            .map(|t| text(format!("{} of {}", t.isolated, t.checks))),
    );
    rows.push(total);
    body.push_str(&table_html(&header, &rows, Some(rows.len() - 1)));

    body.push_str("<h2>Columns and peers</h2>\n");
    let rows: Vec<Vec<(&str, String)>> = report
        .columns
        .iter()
        .map(|c| {
            vec![
                text(&c.label),
                text(format!("{:?}", c.kind).to_lowercase()),
                text(c.version.as_deref().unwrap_or("-")),
                text(status_text(&c.status)),
            ]
        })
        .collect();
    body.push_str(&table_html(
        &["column", "kind", "version", "status"],
        &rows,
        None,
    ));

    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        escape(&title)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
