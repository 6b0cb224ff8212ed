//! Process metrics under the names every Prometheus client library uses (`process_*`, no
//! prefix), so stock dashboards and alerts work: read from `/proc/self` at each scrape. Where
//! `/proc` is missing (not Linux) the family is absent rather than wrong.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc/[pid]/stat` counts CPU time and start time in clock ticks of USER_HZ, which Linux
/// fixes at 100 for user space on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process's figures.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: f64,
    resident_bytes: Option<i64>,
    virtual_bytes: i64,
    start_time_seconds: f64,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(reading) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(reading.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                reading.resident_bytes.map(|n| n as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(reading.virtual_bytes as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                Some(reading.start_time_seconds),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                reading.open_fds.map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                reading.max_fds.map(|n| n as f64),
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

fn read() -> Option<Reading> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| boot_time(&text))?;
    let mut reading = from_stat(&stat, boot_time)?;
    reading.resident_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| resident_bytes(&text));
    reading.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as i64);
    reading.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| max_open_files(&text));
    Some(reading)
}

/// Parses `/proc/self/stat`. Fields are counted after the command name, which is in
/// parentheses and may itself hold spaces or parentheses.
fn from_stat(stat: &str, boot_time: f64) -> Option<Reading> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3 of the man page, so field N is at index N - 3.
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start, vsize) = (field(14)?, field(15)?, field(22)?, field(23)?);
    Some(Reading {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: None,
        virtual_bytes: vsize as i64,
        start_time_seconds: boot_time + start / TICKS_PER_SECOND,
        open_fds: None,
        max_fds: None,
    })
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, in kB (the `rss` of `stat` would need the page size).
fn resident_bytes(status: &str) -> Option<i64> {
    let kib: i64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits` (absent when "unlimited").
fn max_open_files(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (sw (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 \
                    8 0 12345 104857600 2560 18446744073709551615";
        let reading = from_stat(stat, 1_700_000_000.0).unwrap();
        assert_eq!(reading.cpu_seconds, 4.0);
        assert_eq!(reading.start_time_seconds, 1_700_000_123.45);
        assert_eq!(reading.virtual_bytes, 104_857_600);
        assert!(from_stat("4242 (truncated", 0.0).is_none());
    }

    #[test]
    fn status_limits_and_boot_time() {
        assert_eq!(
            resident_bytes("Name:\tswitchyard\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"),
            Some(12345 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files("Max open files            unlimited            unlimited  files\n"),
            None
        );
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000.0)
        );
    }

    #[test]
    fn this_process_is_read() {
        let reading = read().unwrap();
        assert!(reading.resident_bytes.unwrap() > 0);
        assert!(reading.open_fds.unwrap() > 0);
        assert!(reading.start_time_seconds > 1_600_000_000.0);
    }
}
