//! Line charts as PNG, drawn with plotters and a bundled font (no system fonts needed).

use std::path::Path;
use std::sync::Once;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One line of a chart: points `(x, y)`, optionally with a `[low, high]` interval per point.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub intervals: Vec<(f64, f64)>,
    /// A horizontal reference line instead of points.
    pub horizontal: Option<f64>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
            ..Series::default()
        }
    }

    pub fn with_intervals(mut self, intervals: Vec<(f64, f64)>) -> Series {
        self.intervals = intervals;
        self
    }

    pub fn horizontal(name: impl Into<String>, y: f64) -> Series {
        Series {
            name: name.into(),
            horizontal: Some(y),
            ..Series::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
    /// y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// Names for the x positions 0, 1, 2, ... (a categorical axis); empty: numbers.
    pub x_categories: Vec<String>,
}

/// Twelve colours, each series its own (then markers tell the rest apart).
const COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(57, 59, 121),
    RGBColor(99, 121, 57),
    RGBColor(127, 127, 127),
];

/// Point markers, cycled beside the colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

const MARKERS: [Marker; 5] = [
    Marker::Circle,
    Marker::Square,
    Marker::Triangle,
    Marker::Diamond,
    Marker::Cross,
];

/// Series `i`'s colour and marker: no two of the first 60 series share both. Reference lines
/// (horizontal) are drawn dashed, in black, and take no colour from the data series.
fn look(i: usize) -> (RGBColor, Marker) {
    (
        COLORS[i % COLORS.len()],
        MARKERS[(i + i / COLORS.len()) % MARKERS.len()],
    )
}

/// Runs `$body` with `$shape`, a closure that makes the marker centred at a point (any
/// coordinate the area maps), 4 pixels in radius.
macro_rules! with_marker {
    ($marker:expr, $color:expr, |$shape:ident| $body:expr) => {{
        let (color, fill): (RGBColor, ShapeStyle) = ($color, $color.filled());
        match $marker {
            Marker::Circle => {
                let $shape = |at| EmptyElement::at(at) + Circle::new((0, 0), 4, fill);
                $body
            }
            Marker::Square => {
                let $shape = |at| EmptyElement::at(at) + Rectangle::new([(-4, -4), (4, 4)], fill);
                $body
            }
            Marker::Triangle => {
                let $shape = |at| EmptyElement::at(at) + TriangleMarker::new((0, 0), 5, fill);
                $body
            }
            Marker::Diamond => {
                let $shape = |at| EmptyElement::at(at) + Polygon::new(vec![(0, -5), (5, 0), (0, 5), (-5, 0)], fill);
                $body
            }
            Marker::Cross => {
                let $shape = |at| EmptyElement::at(at) + Cross::new((0, 0), 4, color.stroke_width(2));
                $body
            }
        }
    }};
}

/// The width of the legend beside each chart, in pixels.
const LEGEND_WIDTH: u32 = 170;

/// Draws charts side by side (one row) into a PNG file.
pub fn draw(path: &Path, charts: &[Chart], width_each: u32, height: u32) -> anyhow::Result<()> {
    register_font();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let width = width_each * charts.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((1, charts.len().max(1)));
    for (chart, area) in charts.iter().zip(panels) {
        // The legend sits beside the plot, never on its data.
        let (plot, legend) = area.split_horizontally(width_each.saturating_sub(LEGEND_WIDTH));
        draw_one(&plot, chart).map_err(|e| anyhow::anyhow!("plot {}: {e}", chart.title))?;
        draw_legend(&legend, chart).map_err(|e| anyhow::anyhow!("legend of {}: {e}", chart.title))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn draw_one(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    chart: &Chart,
) -> Result<(), Box<dyn std::error::Error>> {
    let xs: Vec<f64> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite())
        .collect();
    let ys: Vec<f64> = chart
        .series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.horizontal)
                .chain(s.intervals.iter().flat_map(|i| [i.0, i.1]))
        })
        .filter(|y| y.is_finite())
        .collect();
    let (mut x0, mut x1) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    if !x0.is_finite() {
        (x0, x1) = (1.0, 10.0);
    }
    if !chart.x_categories.is_empty() {
        (x0, x1) = (-0.5, chart.x_categories.len() as f64 - 0.5);
    } else if chart.log_x {
        x0 = x0.max(1e-9) / 1.3;
        x1 *= 1.3;
    } else if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = chart.y_range.unwrap_or_else(|| {
        let (a, b) = ys
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
        if a.is_finite() {
            let pad = ((b - a) * 0.08).max(0.01);
            (a - pad, b + pad)
        } else {
            (0.0, 1.0)
        }
    });
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&chart.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55);
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            let categories = &chart.x_categories;
            let category = |x: &f64| -> String {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    categories.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            // Large values (FLOPs) as 2e9 rather than 2000000000.
            let compact = |x: &f64| -> String {
                if x.abs() >= 1e5 {
                    format!("{x:.0e}")
                } else if x.abs() >= 10.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            };
            let mut mesh = ctx.configure_mesh();
            if !categories.is_empty() {
                mesh.x_labels(categories.len() * 2 + 1).x_label_formatter(&category);
            } else {
                mesh.x_label_formatter(&compact);
            }
            mesh.x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .label_style(("sans-serif", 12))
                .draw()?;
            let mut data_index = 0;
            for s in &chart.series {
                if let Some(y) = s.horizontal {
                    ctx.draw_series(DashedLineSeries::new(
                        vec![(x0, y), (x1, y)],
                        8,
                        5,
                        BLACK.stroke_width(2),
                    ))?;
                    continue;
                }
                let (color, marker) = look(data_index);
                data_index += 1;
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect();
                for (&(x, _), &(lo, hi)) in s.points.iter().zip(&s.intervals) {
                    if x.is_finite() && lo.is_finite() && hi.is_finite() {
                        ctx.draw_series(std::iter::once(PathElement::new(
                            vec![(x, lo), (x, hi)],
                            color.mix(0.6),
                        )))?;
                    }
                }
                ctx.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
                with_marker!(marker, color, |shape| ctx.draw_series(pts.iter().map(|&p| shape(p)))?);
            }
        }};
    }
    if chart.log_x {
        body!(builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1)?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, y0..y1)?);
    }
    Ok(())
}

/// Each series' line, marker and name, one per row, in the panel beside the plot.
fn draw_legend(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    chart: &Chart,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut data_index = 0;
    for (row, s) in chart.series.iter().enumerate() {
        let y = 44 + 18 * row as i32;
        if s.horizontal.is_some() {
            area.draw(&DashedPathElement::new(
                vec![(4, y), (26, y)],
                5,
                3,
                BLACK.stroke_width(2),
            ))?;
        } else {
            let (color, marker) = look(data_index);
            data_index += 1;
            area.draw(&PathElement::new(vec![(4, y), (26, y)], color.stroke_width(2)))?;
            with_marker!(marker, color, |shape| area.draw(&shape((15, y)))?);
        }
        area.draw(&Text::new(s.name.clone(), (32, y - 7), ("sans-serif", 12)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.png");
        let chart = Chart {
            title: "accuracy".into(),
            x_label: "tokens".into(),
            y_label: "accuracy".into(),
            log_x: true,
            series: vec![
                Series::new("a", vec![(10.0, 0.2), (100.0, 0.5)]).with_intervals(vec![(0.1, 0.3), (0.4, 0.6)]),
                Series::horizontal("greedy", 0.25),
            ],
            y_range: Some((0.0, 1.0)),
            x_categories: Vec::new(),
        };
        draw(&path, &[chart.clone(), chart], 500, 350).expect("draws");
        let bytes = std::fs::read(&path).expect("written");
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5000);
    }

    #[test]
    fn every_series_has_its_own_colour_and_marker() {
        let looks: Vec<(RGBColor, Marker)> = (0..60).map(look).collect();
        for i in 0..looks.len() {
            for j in 0..i {
                assert_ne!(looks[i], looks[j], "series {i} and {j} look alike");
            }
        }
        // The first twelve differ in colour alone.
        let colours: std::collections::HashSet<_> = looks[..12].iter().map(|(c, _)| (c.0, c.1, c.2)).collect();
        assert_eq!(colours.len(), 12);
    }
}
