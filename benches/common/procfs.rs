//! What a benchmark reads of a process in `/proc`: peak memory and CPU time per thread.

use std::collections::BTreeMap;

/// `VmHWM` of a process (`self` or a PID), in KiB.
pub fn peak_rss(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Kibibytes as whole mebibytes.
pub fn mib(kib: u64) -> u64 {
    kib / 1024
}

/// CPU seconds (user + system) per thread name of a process, summed over its threads.
pub fn cpu_by_thread(pid: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
        let ticks: u64 = fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        // Clock ticks are 100 per second on Linux (USER_HZ).
        *out.entry(name).or_insert(0.0) += ticks as f64 / 100.0;
    }
    out
}

pub fn cpu_report(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, secs: f64) -> String {
    let mut used: Vec<(f64, &str)> = after
        .iter()
        .map(|(name, t)| ((t - before.get(name).copied().unwrap_or(0.0)) / secs, name.as_str()))
        .filter(|(cores, _)| *cores >= 0.01)
        .collect();
    used.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = used.iter().map(|u| u.0).sum();
    let parts: Vec<String> = used.iter().map(|(c, n)| format!("{n} {c:.2}")).collect();
    format!("{total:.2} ({})", parts.join(", "))
}
