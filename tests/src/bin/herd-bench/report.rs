//! Figures, their targets, the table on stdout and the JSON document.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// What a figure is held against (reported, never asserted).
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The figure should be at least this.
    AtLeast(f64),
    /// The figure should be at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(bound) => value >= bound,
            Target::AtMost(bound) => value <= bound,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The item of the issue ("1" to "8").
    pub item: &'static str,
    /// A stable key for scripts, e.g. `e2e_tasks_per_second`.
    pub key: &'static str,
    /// What it is, for humans.
    pub label: String,
    /// The database engine, when it matters.
    pub engine: Option<&'static str>,
    /// The value, in `unit`.
    pub value: f64,
    /// `tasks/s`, `ms`, `s`, `MiB`, `cores`, `x` (a ratio) or `%`.
    pub unit: &'static str,
    /// The target, if the issue sets one.
    pub target: Option<Target>,
    /// A short remark printed after the status (sizes, the figures a ratio is made of).
    pub note: String,
    /// Everything else measured on the way, for the JSON.
    pub details: Value,
}

impl Figure {
    /// A figure without target, note or details.
    pub fn new(
        item: &'static str,
        key: &'static str,
        label: impl Into<String>,
        engine: Option<&'static str>,
        value: f64,
        unit: &'static str,
    ) -> Figure {
        Figure {
            item,
            key,
            label: label.into(),
            engine,
            value,
            unit,
            target: None,
            note: String::new(),
            details: Value::Null,
        }
    }

    /// With a target.
    pub fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    /// With a note.
    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }

    /// With details for the JSON.
    pub fn details(mut self, details: Value) -> Figure {
        self.details = details;
        self
    }
}

/// A measurement that did not give figures.
#[derive(Debug, Clone)]
pub struct Gap {
    /// The item of the issue.
    pub item: &'static str,
    /// Which measurement.
    pub what: String,
    /// The engine, when it matters.
    pub engine: Option<&'static str>,
    /// A dependency is missing (PostgreSQL, Docker, HyperQueue) rather than a failure.
    pub missing: bool,
    /// Why.
    pub reason: String,
}

/// The machine the figures were taken on.
#[derive(Debug, Clone)]
pub struct Machine {
    cores: usize,
    cpu_model: String,
    memory_gib: f64,
    os: String,
    kernel: String,
    load_average: String,
    date: String,
    profile: &'static str,
}

impl Machine {
    /// Reads what /proc and /etc say.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(
                || "unknown".to_owned(),
                |(_, model)| model.trim().to_owned(),
            );
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("MemTotal:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("PRETTY_NAME="))
                    .map(|name| name.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let read_trimmed = |path: &str| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .unwrap_or_default()
        };
        let load_average = read_trimmed("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |count| count.get()),
            cpu_model,
            memory_gib,
            os,
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            load_average,
            date: utc_now(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        format!(
            "{} cores ({}), {:.0} GiB, {}, Linux {}, {} build, load average {} at start, {}",
            self.cores,
            self.cpu_model,
            self.memory_gib,
            self.os,
            self.kernel,
            self.profile,
            self.load_average,
            self.date
        )
    }

    fn json(&self) -> Value {
        json!({
            "cores": self.cores,
            "cpu_model": self.cpu_model,
            "memory_gib": (self.memory_gib * 10.0).round() / 10.0,
            "os": self.os,
            "kernel": self.kernel,
            "load_average_at_start": self.load_average,
            "date": self.date,
            "build_profile": self.profile,
        })
    }
}

/// Everything measured in one run.
pub struct Report {
    machine: Machine,
    settings: Value,
    figures: Vec<Figure>,
    gaps: Vec<Gap>,
}

impl Report {
    /// An empty report.
    pub fn new(machine: Machine, settings: Value) -> Report {
        Report {
            machine,
            settings,
            figures: Vec::new(),
            gaps: Vec::new(),
        }
    }

    /// Adds a figure and prints it on stderr at once (the table comes at the end).
    pub fn add(&mut self, figure: Figure) {
        eprintln!(
            "herd-bench:   {} {}{}",
            figure.label,
            format_value(figure.value, figure.unit),
            figure
                .engine
                .map(|engine| format!(" ({engine})"))
                .unwrap_or_default()
        );
        self.figures.push(figure);
    }

    /// Records a measurement that gave no figure.
    pub fn gap(&mut self, gap: Gap) {
        eprintln!(
            "herd-bench:   {} {}: {}",
            gap.what,
            if gap.missing { "skipped" } else { "FAILED" },
            gap.reason
        );
        self.gaps.push(gap);
    }

    /// The figure with this key and engine, if measured.
    pub fn find(&self, key: &str, engine: Option<&str>) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|figure| figure.key == key && figure.engine == engine)
    }

    /// The measurements that gave no figure.
    pub fn gaps(&self) -> &[Gap] {
        &self.gaps
    }

    /// The table, one row per figure or gap, in item order.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, [String; 7])> = Vec::new();
        for figure in &self.figures {
            let (target, status) = match figure.target {
                Some(target) => (
                    format_target(target, figure.unit),
                    if target.met(figure.value) {
                        "ok"
                    } else {
                        "MISSED"
                    }
                    .to_owned(),
                ),
                None => (String::new(), String::new()),
            };
            rows.push((
                figure.item,
                [
                    figure.item.to_owned(),
                    figure.label.clone(),
                    figure.engine.unwrap_or("").to_owned(),
                    format_value(figure.value, figure.unit),
                    target,
                    status,
                    figure.note.clone(),
                ],
            ));
        }
        for gap in &self.gaps {
            rows.push((
                gap.item,
                [
                    gap.item.to_owned(),
                    gap.what.clone(),
                    gap.engine.unwrap_or("").to_owned(),
                    "-".to_owned(),
                    String::new(),
                    if gap.missing { "skipped" } else { "FAILED" }.to_owned(),
                    gap.reason.clone(),
                ],
            ));
        }
        // Stable: figures keep their order within an item.
        rows.sort_by_key(|(item, _)| *item);
        let header = [
            "#".to_owned(),
            "measurement".to_owned(),
            "db".to_owned(),
            "value".to_owned(),
            "target".to_owned(),
            "status".to_owned(),
            "note".to_owned(),
        ];
        let mut widths = header.clone().map(|text| text.chars().count());
        for (_, row) in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let _ = writeln!(text, "Machine: {}", self.machine.describe());
        let line = |text: &mut String, cells: &[String; 7]| {
            let mut out = String::new();
            for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
                let pad = width - cell.chars().count();
                if index == 3 {
                    // Values right-aligned.
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else if index == 6 {
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
                if index < 6 {
                    out.push_str("  ");
                }
            }
            let _ = writeln!(text, "{}", out.trim_end());
        };
        line(&mut text, &header);
        let rule = widths.map(|width| "-".repeat(width));
        line(&mut text, &rule);
        for (_, row) in &rows {
            line(&mut text, row);
        }
        text
    }

    /// The JSON document.
    pub fn json(&self, elapsed: Duration) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|figure| {
                json!({
                    "item": figure.item,
                    "key": figure.key,
                    "label": figure.label,
                    "engine": figure.engine,
                    "value": figure.value,
                    "unit": figure.unit,
                    "target": figure.target.map(|target| match target {
                        Target::AtLeast(bound) => json!({"at_least": bound}),
                        Target::AtMost(bound) => json!({"at_most": bound}),
                    }),
                    "met": figure.target.map(|target| target.met(figure.value)),
                    "note": figure.note,
                    "details": figure.details,
                })
            })
            .collect();
        let gaps: Vec<Value> = self
            .gaps
            .iter()
            .map(|gap| {
                json!({
                    "item": gap.item,
                    "what": gap.what,
                    "engine": gap.engine,
                    "status": if gap.missing { "skipped" } else { "failed" },
                    "reason": gap.reason,
                })
            })
            .collect();
        json!({
            "machine": self.machine.json(),
            "settings": self.settings,
            "seconds": elapsed.as_secs_f64(),
            "figures": figures,
            "not_measured": gaps,
        })
    }
}

/// A value with its unit, rounded for reading.
pub fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "tasks/s" => format!("{} tasks/s", thousands(value.round() as u64)),
        "ms" => format!("{value:.2} ms"),
        "s" => format!("{value:.3} s"),
        "MiB" => format!("{value:.0} MiB"),
        "cores" => format!("{value:.3} cores"),
        "x" => format!("{value:.2}x"),
        "%" => format!("{value:.0}%"),
        other => format!("{value:.3} {other}"),
    }
}

fn format_target(target: Target, unit: &str) -> String {
    match target {
        Target::AtLeast(bound) => format!(">= {}", format_value(bound, unit)),
        Target::AtMost(bound) => format!("<= {}", format_value(bound, unit)),
    }
}

/// 12345 → `12,345`.
pub fn thousands(number: u64) -> String {
    let digits = number.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// The `fraction` percentile of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Milliseconds, as a float.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let time = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_numbers_read_well() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(format_value(20_000.4, "tasks/s"), "20,000 tasks/s");
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
