//! The process's resident-set high-water mark (Linux: VmHWM, resettable through clear_refs).

/// Returns the host cache's unused memory to the OS ([`tape::host_cache::release`]), then
/// restarts the peak-RSS measurement from the current resident set; false where the OS does not
/// allow it.
pub fn reset_peak() -> bool {
    tape::host_cache::release();
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident bytes since start or the last reset.
pub fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
