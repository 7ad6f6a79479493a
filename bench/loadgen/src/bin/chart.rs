//! hubbub-bench-chart: draws the fan-out benchmark as an SVG, p99 latency against offered
//! deliveries per second, one line per server, from the `runs.jsonl` that `bench/run` writes.
//! A filled point means every delivery arrived; a hollow one means some did not.
//!
//!     hubbub-bench-chart docs/bench/runs.jsonl docs/bench/fanout.svg

use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// The p99 the issue sets as the target, in ms.
const TARGET_P99_MS: f64 = 20.0;

#[derive(Default)]
struct Point {
    p99: Vec<f64>,
    delivered: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: hubbub-bench-chart RUNS.jsonl OUT.svg".into());
    };
    // server → offered deliveries/s → runs
    let mut series: BTreeMap<String, BTreeMap<u64, Point>> = BTreeMap::new();
    for line in std::fs::read_to_string(input)?.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["scenario"] != "fanout" {
            continue;
        }
        let run = &v["run"];
        let (Some(server), Some(offered), Some(p99)) = (
            v["server"].as_str(),
            run["offered_deliveries_per_sec"].as_f64(),
            run["latency_ms"]["p99"].as_f64(),
        ) else {
            continue;
        };
        let expected = run["expected"].as_f64().unwrap_or(0.0).max(1.0);
        let received = run["received"].as_f64().unwrap_or(0.0);
        let point = series
            .entry(server.to_owned())
            .or_default()
            .entry(offered.round() as u64)
            .or_default();
        point.p99.push(p99);
        point.delivered.push(received / expected);
    }
    if series.is_empty() {
        return Err(format!("{input}: no fan-out runs").into());
    }
    let lines: Vec<(String, Vec<(f64, f64, bool)>)> = series
        .into_iter()
        .map(|(server, points)| {
            let pts = points
                .into_iter()
                .map(|(offered, mut p)| {
                    let full = median(&mut p.delivered) >= 0.9999;
                    (offered as f64, median(&mut p.p99).max(0.1), full)
                })
                .collect();
            (server, pts)
        })
        .collect();
    let all = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::MAX, 0f64, TARGET_P99_MS);
    for &(x, y, _) in all {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }

    let root = SVGBackend::new(output, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "hubbub fan-out: p99 latency vs offered load (1,000 clients)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x_min * 0.8..x_max * 1.25).log_scale(),
            (0.5..y_max * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries per second")
        .y_desc("p99 latency (ms)")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(x_min * 0.8, TARGET_P99_MS), (x_max * 1.25, TARGET_P99_MS)],
            BLACK.mix(0.4).stroke_width(1),
        ))?
        .label("target: p99 20 ms")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    for (i, (server, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, y, _)| (x, y)),
                color.stroke_width(2),
            ))?
            .label(server.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&(x, y, full)| {
            let style = if full {
                color.filled()
            } else {
                color.stroke_width(2)
            };
            Circle::new((x, y), 4, style)
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    println!("wrote {output}");
    Ok(())
}
