//! The bench report's plot: µs per command against task-file length.

use std::path::Path;

use super::report::BenchReport;
use crate::{Error, Result};

impl BenchReport {
    /// The PNG plot: µs per command against task-file length (log-log),
    /// with the single-access methods as horizontal lines.
    pub fn plot(&self, path: &Path) -> Result<()> {
        plot(self, path).map_err(|e| Error::Step(format!("plot {}: {e}", path.display())))
    }
}

fn plot(report: &BenchReport, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};

    // Text goes through ab_glyph with a bundled font: no system fonts.
    register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the bundled DejaVu Sans font does not load")?;
    let r = &report.references;
    let curve: Vec<(f64, f64)> = report
        .batch
        .iter()
        .map(|b| (f64::from(b.commands), b.per_cmd_us))
        .collect();
    if curve.is_empty() {
        return Err("no task-file measurements to plot".into());
    }
    let executor: Vec<(f64, f64)> = report
        .host_executor
        .iter()
        .map(|e| (f64::from(e.commands), e.ns_per_command / 1e3))
        .collect();
    let levels: Vec<(String, f64, RGBColor)> = [
        (
            "config-space register",
            r.config_space_register_us,
            RGBColor(200, 30, 30),
        ),
        ("ioctl(NOP)", r.ioctl_nop_us, RGBColor(120, 120, 120)),
        (
            "edu register (in-process)",
            r.edu_register_us,
            RGBColor(20, 140, 40),
        ),
        (
            "status field via mmap",
            r.status_field_mmap_us,
            RGBColor(30, 90, 200),
        ),
    ]
    .into_iter()
    .filter_map(|(name, v, c)| Some((format!("{name}: {:.3} µs", v?), v?, c)))
    .collect();
    let all = curve
        .iter()
        .map(|p| p.1)
        .chain(executor.iter().map(|p| p.1))
        .chain(levels.iter().map(|l| l.1))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = (lo / 2.0, hi * 2.0);

    let root = BitMapBackend::new(path, (1100, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "xxcapture: cost per register command vs task-file length (guest, TCG)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((1f64..4096f64).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("commands per task file")
        .y_desc("µs per command")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            // Enough decimals for the tick's own magnitude (0.001, 0.01...).
            let decimals = if *v >= 1.0 {
                0
            } else {
                (-v.log10()).ceil().max(0.0) as usize
            };
            format!("{v:.decimals$}")
        })
        .label_style(("sans-serif", 15))
        .draw()?;

    if let Some(k) = r.config_space_register_us {
        for (factor, shade) in [(10.0, 160u8), (100.0, 200u8)] {
            let c = RGBColor(230, shade, shade);
            chart
                .draw_series(DashedLineSeries::new(
                    [(1.0, k / factor), (4096.0, k / factor)],
                    8,
                    6,
                    c.stroke_width(2),
                ))?
                .label(format!("config-space register / {factor:.0}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
    }
    for (name, v, c) in &levels {
        let c = *c;
        chart
            .draw_series(LineSeries::new(
                [(1.0, *v), (4096.0, *v)],
                c.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if !executor.is_empty() {
        let c = RGBColor(150, 60, 170);
        chart
            .draw_series(LineSeries::new(executor.clone(), c.stroke_width(1)))?
            .label("the card's executor alone (host)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    let c = RGBColor(0, 0, 0);
    chart
        .draw_series(LineSeries::new(curve.clone(), c.stroke_width(3)))?
        .label("task file (EXEC, interrupt completion)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    chart.draw_series(curve.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    if let Some(p) = r.task_file_1_poll_us {
        let c = RGBColor(240, 140, 0);
        chart
            .draw_series([TriangleMarker::new((1.0, p), 8, c.filled())])?
            .label(format!("task file of 1, polled: {p:.1} µs"))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
