//! Writing data on stdout: JSON documents, aligned tables, and a few formatting helpers.
//!
//! Nothing here uses `println!`, which panics when stdout is closed: every write returns its
//! `io::Error`, and `main` turns a broken pipe into a quiet exit 0.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// Writes `value` as one pretty-printed JSON document, followed by a newline.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)
        .map_err(io::Error::from)
        .context("cannot write JSON on stdout")?;
    writeln!(stdout).context("cannot write on stdout")?;
    stdout.flush().context("cannot write on stdout")?;
    Ok(())
}

/// Writes `text` on stdout as is.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .context("cannot write on stdout")?;
    stdout.flush().context("cannot write on stdout")?;
    Ok(())
}

/// A table of text cells printed with aligned columns, two spaces apart.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: Vec<&'static str>) -> Self {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    /// Adds a row; it should have as many cells as the header.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as text; the last column is not padded.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self
            .header
            .iter()
            .map(|title| title.chars().count())
            .collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let header: Vec<String> = self
            .header
            .iter()
            .map(|title| (*title).to_owned())
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate().take(columns) {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let padding = widths[index] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', padding));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// Prints the table on stdout.
    pub fn print(&self) -> anyhow::Result<()> {
        print(&self.render())
    }
}

/// A command line as a shell would need it typed: arguments quoted where needed.
pub fn command_line(command: &[String]) -> String {
    command
        .iter()
        .map(|argument| match shlex::try_quote(argument) {
            Ok(quoted) => quoted.into_owned(),
            Err(_) => format!("{argument:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` cut to at most `limit` characters, with `…` when something was cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let kept: String = text.chars().take(limit.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// A short human duration: `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
pub fn duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1_000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    if seconds < 60 {
        return format!("{:.1}s", duration.as_secs_f64());
    }
    if seconds < 3_600 {
        return format!("{}m {:02}s", seconds / 60, seconds % 60);
    }
    format!("{}h {:02}m", seconds / 3_600, (seconds % 3_600) / 60)
}

/// A byte count in binary units: `512 B`, `1.5 KiB`, `2.0 GiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(vec!["ID", "NAME", "STATE"]);
        table.push(vec!["1".into(), "a-long-name".into(), "pending".into()]);
        table.push(vec!["12".into(), "-".into(), "failed".into()]);
        assert_eq!(
            table.render(),
            "ID  NAME         STATE\n1   a-long-name  pending\n12  -            failed\n"
        );
    }

    #[test]
    fn commands_are_quoted_like_a_shell_needs() {
        let command = vec!["sh".to_owned(), "-c".to_owned(), "echo $CPU".to_owned()];
        assert_eq!(command_line(&command), "sh -c 'echo $CPU'");
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
