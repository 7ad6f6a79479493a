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

/// hubbub in blues, the peers in other hues.
fn server_color(server: &str) -> RGBColor {
    match server {
        "hubbub-v1" => RGBColor(0, 70, 200),
        "hubbub-classic" => RGBColor(90, 160, 240),
        "node-ws" => RGBColor(40, 150, 60),
        "python-websockets" => RGBColor(230, 140, 0),
        "axum-naive" => RGBColor(150, 60, 170),
        _ => RGBColor(100, 100, 100),
    }
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
    let (mut x_min, mut x_max) = (f64::MAX, 0f64);
    let (mut y_min, mut y_max) = (TARGET_P99_MS, TARGET_P99_MS);
    for &(x, y, _) in all {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    // The steps double, so x is drawn as log2(offered / first step): one unit per step. Latency
    // is drawn as log10(ms), labelled in ms.
    let step = |offered: f64| (offered / x_min).log2();
    let steps = step(x_max).round();

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
            -0.3..steps + 0.3,
            (y_min * 0.6).max(0.5).log10()..(y_max * 1.6).log10(),
        )?;
    let first = x_min;
    chart
        .configure_mesh()
        .x_labels(steps as usize + 1)
        .y_labels(12)
        .x_desc("offered deliveries per second")
        .y_desc("p99 latency (ms)")
        .x_label_formatter(&|x| format!("{:.0}k", first * x.exp2() / 1000.0))
        .y_label_formatter(&|y| format!("{:.0}", 10f64.powf(*y)))
        .draw()?;
    let target = RGBColor(200, 0, 0);
    chart
        .draw_series(LineSeries::new(
            [
                (-0.3, TARGET_P99_MS.log10()),
                (steps + 0.3, TARGET_P99_MS.log10()),
            ],
            target.stroke_width(1),
        ))?
        .label("target: p99 20 ms")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], target));
    for (server, points) in &lines {
        let color = server_color(server);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, y, _)| (step(x), y.log10())),
                color.stroke_width(if server.starts_with("hubbub") { 3 } else { 2 }),
            ))?
            .label(server.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&(x, y, full)| {
            let style = if full {
                color.filled()
            } else {
                color.stroke_width(2)
            };
            Circle::new((step(x), y.log10()), 4, style)
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
