//! Item 1: the machine's limit. `true` spawned and waited for directly, from as many threads
//! as a worker has slots; no herd at all.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Spawns `tasks` `true` processes from `threads` threads (each waits for its child before the
/// next); returns the wall time.
pub async fn raw_spawn(tasks: usize, threads: usize) -> anyhow::Result<Duration> {
    tokio::task::spawn_blocking(move || {
        let threads = threads.max(1);
        let begin = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                // Spread the remainder over the first threads.
                let share = tasks / threads + usize::from(thread < tasks % threads);
                std::thread::spawn(move || -> anyhow::Result<()> {
                    for _ in 0..share {
                        let status = Command::new("true")
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .context("cannot run `true`")?;
                        if !status.success() {
                            bail!("`true` exited with {status}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a spawning thread panicked"))??;
        }
        Ok(begin.elapsed())
    })
    .await?
}
