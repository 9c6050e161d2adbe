//! PNG plots of a load run: latency over time and throughput over time.
//! Text uses DejaVu Sans from Debian's `fonts-dejavu-core` (installed by
//! `./dev`); without it the plots are drawn without labels.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::load::Report;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(bytes) = std::fs::read(FONT) {
            // Registered once per process for the process's lifetime.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
        }
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Writes `latency.png` and `throughput.png` into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    register_font();
    std::fs::create_dir_all(dir)?;
    let last = report.timeline.last().map_or(1, |s| s.t + 1);
    // Latency: per-second p99 and the run's percentiles as flat lines.
    {
        let path = dir.join("latency.png");
        let root = BitMapBackend::new(&path, (900, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let top = report
            .timeline
            .iter()
            .map(|s| s.p99_ms)
            .fold(report.latency.p99, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "send→delivery latency (p50 {:.1} / p99 {:.1} / p99.9 {:.1} ms)",
                    report.latency.p50, report.latency.p99, report.latency.p999
                ),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0u64..last, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("second of the run")
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                report.timeline.iter().map(|s| (s.t, s.p99_ms)),
                &RED,
            ))
            .map_err(err)?
            .label("p99 per second")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        for (q, v, color) in [
            ("p50", report.latency.p50, BLUE),
            ("p99", report.latency.p99, MAGENTA),
        ] {
            chart
                .draw_series(LineSeries::new([(0, v), (last, v)], color))
                .map_err(err)?
                .label(format!("{q} of the run"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    // Throughput: sent, acknowledged and delivered per second.
    {
        let path = dir.join("throughput.png");
        let root = BitMapBackend::new(&path, (900, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let top = report
            .timeline
            .iter()
            .map(|s| s.sent.max(s.acked).max(s.delivered))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "throughput ({:.0} msg/s acknowledged, {:.0} deliveries/s)",
                    report.acked_per_s, report.deliveries_per_s
                ),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..last, 0f64..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("second of the run")
            .y_desc("per second")
            .draw()
            .map_err(err)?;
        type Pick = fn(&crate::load::Second) -> u64;
        let series: [(&str, Pick, RGBColor); 3] = [
            ("sent", |s| s.sent, BLUE),
            ("acknowledged", |s| s.acked, GREEN),
            ("delivered (to others)", |s| s.delivered, RED),
        ];
        for (name, pick, color) in series {
            chart
                .draw_series(LineSeries::new(
                    report.timeline.iter().map(|s| (s.t, pick(s) as f64)),
                    color,
                ))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(())
}
