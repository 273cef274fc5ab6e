//! One bar chart per workload, as SVG: a bar per environment at its median,
//! a whisker from min to max, and the median written above.
//!
//! plotters runs with its SVG backend only. Without its `ttf` feature it
//! cannot rasterize glyphs, but the SVG backend never needs to: it writes
//! `<text>` elements and leaves the glyphs to the viewer, and plotters'
//! built-in fallback font gives the rough text extents its layout needs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::format_value;
use crate::results::{Env, Report, Workload};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 400;
const FONT: &str = "sans-serif";
/// Headroom above the tallest whisker for its value label.
const HEADROOM: f64 = 1.15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("drawing the chart: {0}")]
    Draw(#[from] DrawingAreaErrorKind<io::Error>),
}

/// What one bar shows.
struct Bar {
    env: Env,
    median: f64,
    min: f64,
    max: f64,
}

/// The bars of the environments that have samples, in report order:
/// a skipped environment has no figure to draw, and a zero-height bar
/// would read as a measurement.
fn bars(workload: &Workload) -> Vec<Bar> {
    Env::ALL
        .iter()
        .filter_map(|&env| {
            let r = workload.result(env)?;
            Some(Bar {
                env,
                median: r.median()?,
                min: r.min()?,
                max: r.max()?,
            })
        })
        .collect()
}

fn color(env: Env) -> RGBColor {
    match env {
        Env::Native => RGBColor(0x7f, 0x7f, 0x7f),
        Env::Crun => RGBColor(0x1f, 0x77, 0xb4),
        Env::Husk => RGBColor(0x2c, 0xa0, 0x2c),
        Env::Qemu => RGBColor(0xd6, 0x27, 0x28),
        Env::Firecracker => RGBColor(0xff, 0x7f, 0x0e),
    }
}

fn axis_label(workload: &Workload) -> String {
    let better = if workload.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    format!("{} ({better})", workload.unit)
}

/// The value axis, from zero (or the lowest value, should one be negative)
/// to above the tallest whisker.
fn value_range(bars: &[Bar]) -> std::ops::Range<f64> {
    let lo = bars.iter().map(|b| b.min).fold(0.0, f64::min);
    let hi = bars.iter().map(|b| b.max).fold(0.0, f64::max) * HEADROOM;
    if hi.is_finite() && hi > lo {
        lo..hi
    } else {
        lo..lo + 1.0
    }
}

/// The workload's chart as an SVG document.
pub fn svg(workload: &Workload) -> Result<String, Error> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let bars = bars(workload);
        if bars.is_empty() {
            draw_empty(&root, workload)?;
        } else {
            draw_bars(&root, workload, &bars)?;
        }
        root.present()?;
    }
    Ok(out)
}

fn draw_empty(root: &DrawingArea<SVGBackend, Shift>, workload: &Workload) -> Result<(), Error> {
    let root = root.titled(&workload.title, (FONT, 22))?;
    let style = (FONT, 16)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    let (w, h) = root.dim_in_pixel();
    root.draw_text(
        "no environment produced figures",
        &style,
        (w as i32 / 2, h as i32 / 2),
    )?;
    Ok(())
}

fn draw_bars(
    root: &DrawingArea<SVGBackend, Shift>,
    workload: &Workload,
    bars: &[Bar],
) -> Result<(), Error> {
    // plotters maps a one-value axis to the wrong place, so a lone bar gets
    // a slot of its own between two empty ones.
    let (slots, first) = if bars.len() == 1 {
        (3, 1)
    } else {
        (bars.len(), 0)
    };
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => i
            .checked_sub(first)
            .and_then(|i| bars.get(i))
            .map_or_else(String::new, |b| b.env.name().to_string()),
        _ => String::new(),
    };
    let y_label = |v: &f64| tick(*v);

    let mut chart = ChartBuilder::on(root)
        .caption(&workload.title, (FONT, 22))
        .margin(16)
        .x_label_area_size(32)
        .y_label_area_size(72)
        .build_cartesian_2d((0..slots - 1).into_segmented(), value_range(bars))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Only the bold grid lines: the fine ones clutter a bar chart.
        .light_line_style(TRANSPARENT)
        .x_labels(slots)
        .x_label_formatter(&label_of)
        .y_label_formatter(&y_label)
        .y_desc(axis_label(workload))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 14))
        .draw()?;

    let slot = |i: usize| i + first;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(slot(i)), 0.0),
                (SegmentValue::Exact(slot(i) + 1), b.median),
            ],
            color(b.env).filled(),
        );
        bar.set_margin(0, 0, 18, 18);
        bar
    }))?;
    for (i, b) in bars.iter().enumerate() {
        draw_whisker(&mut chart, SegmentValue::CenterOf(slot(i)), b)?;
    }
    Ok(())
}

/// Ticks are round numbers: "20", not the table's "20.0".
fn tick(v: f64) -> String {
    let s = format_value(v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

type Chart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<SegmentedCoord<RangedCoordusize>, RangedCoordf64>>;

/// The min–max line with its caps, and the median above its top.
fn draw_whisker(chart: &mut Chart, x: SegmentValue<usize>, bar: &Bar) -> Result<(), Error> {
    let ink = BLACK.stroke_width(1);
    let cap =
        |y: f64| EmptyElement::at((x.clone(), y)) + PathElement::new(vec![(-6, 0), (6, 0)], ink);
    chart.draw_series([PathElement::new(
        vec![(x.clone(), bar.min), (x.clone(), bar.max)],
        ink,
    )])?;
    chart.draw_series([cap(bar.min), cap(bar.max)])?;
    let label = (FONT, 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series([
        EmptyElement::at((x, bar.max)) + Text::new(format_value(bar.median), (0, -4), label)
    ])?;
    Ok(())
}

/// Writes `dir/charts/<id>.svg` for each workload, the paths the Markdown
/// report links to, and returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let charts = dir.join("charts");
    fs::create_dir_all(&charts)?;
    report
        .workloads
        .iter()
        .map(|w| {
            let path = charts.join(file_name(&w.id)?);
            let svg = svg(w).map_err(io::Error::other)?;
            fs::write(&path, svg)?;
            Ok(path)
        })
        .collect()
}

/// The id becomes a file name, so it must not climb out of charts/.
fn file_name(id: &str) -> io::Result<String> {
    let safe = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if safe {
        Ok(format!("{id}.svg"))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("workload id {id:?} is not a plain file name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(tick(20.0), "20");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(0.1 + 0.2), "0.3");
        assert_eq!(tick(140.0), "140");
    }

    #[test]
    fn ids_must_be_plain_file_names() {
        assert_eq!(file_name("seq_write").unwrap(), "seq_write.svg");
        for bad in ["", "../x", "a/b", "a.b"] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
    }
}
