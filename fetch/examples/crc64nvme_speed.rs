//! Measures CRC64NVME throughput on one core: the checksum every herd transfer computes.
//!
//! ```text
//! cargo run --release -p herd-fetch --example crc64nvme_speed -- [ROUNDS]
//! ```
//!
//! Two figures, each the median (and best) of ROUNDS rounds (default 7), each round hashing
//! 2 GiB with the same hasher the backends use:
//! - *in cache*: a 1 MiB buffer hashed over and over, as a transfer hashes each buffer it has
//!   just received or read (the checksum's own speed);
//! - *from memory*: a 512 MiB buffer hashed in 8 MiB updates, which DRAM bandwidth may bound.
//!
//! Prints a line per figure and a JSON line.

use std::time::Instant;

use herd_fetch::Crc64NvmeHasher;

const MIB: usize = 1024 * 1024;
const GIB: usize = 1024 * MIB;

fn pseudo_random(size: usize) -> Vec<u8> {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// GiB/s of each round: 2 GiB hashed by updates of `update` bytes taken in turn from `buffer`.
fn rounds(buffer: &[u8], update: usize, count: usize) -> Vec<f64> {
    let per_round = 2 * GIB;
    let mut speeds = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut hasher = Crc64NvmeHasher::new();
        let mut hashed = 0;
        while hashed < per_round {
            for chunk in buffer.chunks(update) {
                hasher.update(chunk);
            }
            hashed += buffer.len();
        }
        std::hint::black_box(hasher.finish());
        let seconds = started.elapsed().as_secs_f64();
        speeds.push(hashed as f64 / seconds / GIB as f64);
    }
    speeds.sort_by(f64::total_cmp);
    speeds
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args().nth(1).map_or(Ok(7), |text| text.parse())?;
    if count == 0 {
        return Err("usage: crc64nvme_speed [ROUNDS >= 1]".into());
    }
    let cached = rounds(&pseudo_random(MIB), MIB, count);
    let streamed = rounds(&pseudo_random(512 * MIB), 8 * MIB, count);
    let median = |speeds: &[f64]| speeds[speeds.len() / 2];
    let best = |speeds: &[f64]| speeds[speeds.len() - 1];
    println!(
        "crc64nvme, one thread, in cache (1 MiB buffer):    median {:.1} GiB/s, best {:.1} GiB/s",
        median(&cached),
        best(&cached)
    );
    println!(
        "crc64nvme, one thread, from memory (512 MiB buffer): median {:.1} GiB/s, best {:.1} GiB/s",
        median(&streamed),
        best(&streamed)
    );
    println!(
        "{{\"crc64nvme_in_cache_gib_per_s\": {:.2}, \"crc64nvme_from_memory_gib_per_s\": {:.2}}}",
        median(&cached),
        median(&streamed)
    );
    Ok(())
}
