//! Measures CRC64NVME throughput on one core: the checksum every herd transfer computes.
//!
//! ```text
//! cargo run --release -p herd-fetch --example crc64nvme_speed -- [BUFFER_MIB] [ROUNDS]
//! ```
//!
//! Hashes a BUFFER_MIB MiB in-memory buffer (default 256) ROUNDS times (default 8) with the
//! same hasher the backends use (in 8 MiB updates, as a transfer feeds it), and prints the best
//! and median GiB/s of the rounds. Memory bandwidth, not the disk, is the limit it shows.

use std::time::Instant;

use herd_fetch::Crc64NvmeHasher;

const MIB: usize = 1024 * 1024;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut arguments = std::env::args().skip(1);
    let buffer_mib: usize = arguments.next().map_or(Ok(256), |text| text.parse())?;
    let rounds: usize = arguments.next().map_or(Ok(8), |text| text.parse())?;
    if buffer_mib == 0 || rounds == 0 {
        return Err("usage: crc64nvme_speed [BUFFER_MIB >= 1] [ROUNDS >= 1]".into());
    }
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let buffer: Vec<u8> = (0..buffer_mib * MIB)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut speeds = Vec::with_capacity(rounds);
    let mut last = None;
    for _ in 0..rounds {
        let started = Instant::now();
        let mut hasher = Crc64NvmeHasher::new();
        for chunk in buffer.chunks(8 * MIB) {
            hasher.update(chunk);
        }
        let checksum = hasher.finish();
        let seconds = started.elapsed().as_secs_f64();
        speeds.push(buffer.len() as f64 / seconds / (1024.0 * MIB as f64));
        if last.is_some_and(|previous| previous != checksum) {
            return Err("the checksum changed between rounds".into());
        }
        last = Some(checksum);
    }
    speeds.sort_by(f64::total_cmp);
    let median = speeds[speeds.len() / 2];
    let best = speeds[speeds.len() - 1];
    println!(
        "crc64nvme: {buffer_mib} MiB x {rounds} rounds on one thread: median {median:.1} GiB/s, best {best:.1} GiB/s"
    );
    println!(
        "{{\"crc64nvme_gib_per_s_median\": {median:.2}, \"crc64nvme_gib_per_s_best\": {best:.2}}}"
    );
    Ok(())
}
