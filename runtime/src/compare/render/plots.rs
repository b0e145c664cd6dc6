//! SVG plots drawn with plotters: latency distributions per column and density curves.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{label, series_colour};
use crate::compare::CompareError;
use crate::compare::report::Report;
use crate::compare::stats::Distribution;

/// Size of one plot (two panels side by side).
const PLOT_SIZE: (u32, u32) = (1000, 400);

/// One line of a panel: label, colour and points.
struct Series {
    label: String,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

/// One panel: title, axis descriptions, and its lines.
struct Panel {
    title: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    series: Vec<Series>,
}

/// The colour of a column id (by its position among the report's columns).
fn colour_of(report: &Report, column: &str) -> RGBColor {
    let index = report
        .columns
        .iter()
        .position(|c| c.id == column)
        .unwrap_or(0);
    let (r, g, b) = series_colour(index);
    RGBColor(r, g, b)
}

/// Empirical CDF as a step line: (sample, fraction of samples <= it).
fn ecdf(dist: &Distribution) -> Vec<(f64, f64)> {
    let mut sorted = dist.samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .flat_map(|(i, &x)| [(x, i as f64 / n), (x, (i + 1) as f64 / n)])
        .collect()
}

/// A positive log-axis range covering `values` with some room.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.1..10.0;
    }
    (lo / 1.5)..(hi * 1.5)
}

/// Height of the legend strip above the panels.
const LEGEND_HEIGHT: u32 = 34;

/// An axis label: no decimals for whole numbers and from 10 up.
fn tick(value: &f64) -> String {
    if value.abs() >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Draws panels side by side into one SVG document, under one legend strip naming every
/// series (the panels share them); x axes are logarithmic.
fn draw(name: &'static str, panels: &[Panel]) -> Result<String, CompareError> {
    let plot_error = |message: String| CompareError::Plot {
        plot: name,
        message,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(e.to_string()))?;
        let (legend, charts) = root.split_vertically(LEGEND_HEIGHT);
        draw_legend(&legend, panels).map_err(plot_error)?;
        let areas = charts.split_evenly((1, panels.len()));
        for (area, panel) in areas.iter().zip(panels) {
            let points = || panel.series.iter().flat_map(|s| s.points.iter());
            let x_range = log_range(points().map(|p| p.0));
            let y_max = points().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(panel.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(x_range.log_scale(), 0.0..y_max)
                .map_err(|e| plot_error(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc(panel.x_desc)
                .y_desc(panel.y_desc)
                .x_labels(6)
                .y_labels(6)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| plot_error(e.to_string()))?;
            draw_series(&mut chart, panel).map_err(plot_error)?;
        }
        root.present().map_err(|e| plot_error(e.to_string()))?;
    }
    Ok(svg)
}

/// One legend entry per series label (a line sample and the label), left to right.
fn draw_legend(area: &DrawingArea<SVGBackend<'_>, Shift>, panels: &[Panel]) -> Result<(), String> {
    let mut seen: Vec<(&str, RGBColor)> = Vec::new();
    for series in panels.iter().flat_map(|p| &p.series) {
        if !seen.iter().any(|(label, _)| *label == series.label) {
            seen.push((&series.label, series.colour));
        }
    }
    let mut x = 70;
    let y = (LEGEND_HEIGHT / 2) as i32;
    for (label, colour) in seen {
        let style = ShapeStyle {
            color: colour.to_rgba(),
            filled: true,
            stroke_width: 4,
        };
        area.draw(&PathElement::new(vec![(x, y), (x + 28, y)], style))
            .map_err(|e| e.to_string())?;
        area.draw(&Text::new(
            label.to_string(),
            (x + 36, y - 8),
            ("sans-serif", 16).into_font().color(&BLACK),
        ))
        .map_err(|e| e.to_string())?;
        x += 60 + 9 * label.chars().count() as i32;
    }
    Ok(())
}

/// Draws a panel's lines with point markers on `chart`.
fn draw_series<'a, X>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    panel: &Panel,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
{
    for series in &panel.series {
        let colour = series.colour;
        let style = ShapeStyle {
            color: colour.to_rgba(),
            filled: true,
            stroke_width: 3,
        };
        chart
            .draw_series(LineSeries::new(series.points.iter().copied(), style))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                series
                    .points
                    .iter()
                    .map(|&point| Circle::new(point, 3, colour.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Latency distributions: the empirical CDF of time to workload start and of time to exit,
/// one line per column (log time axis). `None` when no column has start times.
pub fn latency_svg(report: &Report) -> Result<Option<String>, CompareError> {
    let panel =
        |title, pick: fn(&crate::compare::report::StartTimes) -> Option<&Distribution>| Panel {
            title,
            x_desc: "milliseconds (log scale)",
            y_desc: "fraction of runs",
            series: report
                .start_time
                .iter()
                .filter_map(|times| {
                    pick(times).map(|dist| Series {
                        label: label(report, &times.column).to_string(),
                        colour: colour_of(report, &times.column),
                        points: ecdf(dist),
                    })
                })
                .collect(),
        };
    let panels = [
        panel("Time to workload start", |t| t.workload_start.as_ref()),
        panel("Time to exit", |t| t.exit.as_ref()),
    ];
    if panels.iter().all(|p| p.series.is_empty()) {
        return Ok(None);
    }
    draw("latency", &panels).map(Some)
}

/// Density: host memory per sandbox and p50 start latency against the number of running
/// sandboxes, one line per column. `None` without density data.
pub fn density_svg(report: &Report) -> Result<Option<String>, CompareError> {
    if report.density.iter().all(|s| s.points.is_empty()) {
        return Ok(None);
    }
    let series = |pick: fn(&crate::compare::report::DensityPoint) -> Option<f64>| {
        report
            .density
            .iter()
            .map(|s| Series {
                label: label(report, &s.column).to_string(),
                colour: colour_of(report, &s.column),
                points: s
                    .points
                    .iter()
                    .filter_map(|p| pick(p).map(|y| (f64::from(p.sandboxes), y)))
                    .collect(),
            })
            .collect()
    };
    let panels = [
        Panel {
            title: "Host memory per sandbox (PSS)",
            x_desc: "sandboxes running (log scale)",
            y_desc: "MiB per sandbox",
            series: series(|p| Some(p.pss_per_sandbox_bytes as f64 / (1024.0 * 1024.0))),
        },
        Panel {
            title: "Start latency (p50)",
            x_desc: "sandboxes running (log scale)",
            y_desc: "milliseconds",
            series: series(|p| p.start_latency.as_ref().map(|d| d.p50_ms)),
        },
    ];
    draw("density", &panels).map(Some)
}
