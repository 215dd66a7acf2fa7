//! The `hostwatch collectors` table.
//!
//! Builds each enabled collector once against the host, exactly as the agent
//! would, to say whether it can run here; needs what the collectors need.

use std::fmt::Write;

use hostwatch_collectors::{ALL, CollectorsConfig, Context, HostPaths};

pub fn table(config: &CollectorsConfig, paths: &HostPaths) -> String {
    let context = Context::new(paths.clone(), config.clone());
    let rows: Vec<[String; 5]> = ALL
        .iter()
        .map(|spec| {
            let plan = spec.plan(config);
            let status = if !plan.enabled {
                "-".to_owned()
            } else {
                match (spec.build)(&context) {
                    Ok(_) => "yes".to_owned(),
                    Err(unavailable) => format!("no: {unavailable}"),
                }
            };
            let enabled = if plan.enabled { "yes" } else { "no" };
            [
                spec.name.to_owned(),
                enabled.to_owned(),
                humantime::format_duration(plan.interval).to_string(),
                status,
                spec.needs.to_owned(),
            ]
        })
        .collect();
    let header = ["COLLECTOR", "ENABLED", "INTERVAL", "CAN RUN", "NEEDS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let last = row.len() - 1;
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            let _ = if i == last {
                writeln!(out, "{cell}")
            } else {
                write!(out, "{cell:width$}  ")
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_collector_with_its_status() {
        let mut config = CollectorsConfig::default();
        config.memory.enabled = false;
        let table = table(&config, &HostPaths::new("/nonexistent/proc", "/nonexistent/sys"));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), ALL.len() + 1);
        assert!(lines[0].starts_with("COLLECTOR  ENABLED  INTERVAL  CAN RUN"));
        let cpu = lines.iter().find(|l| l.starts_with("cpu ")).expect("cpu row");
        assert!(
            cpu.contains("no: no kernel statistics: /nonexistent/proc/stat"),
            "{cpu}"
        );
        let memory = lines.iter().find(|l| l.starts_with("memory ")).expect("memory row");
        assert!(memory.contains(" no ") && memory.contains(" - "), "{memory}");
        // The agent's own metrics do not depend on --path.procfs.
        let process = lines.iter().find(|l| l.starts_with("process ")).expect("process row");
        assert!(process.contains(" yes "), "{process}");
    }
}
