//! Wall-clock time, learnt from the server's `welcome` (the chips have no battery-backed
//! clock): Unix time = uptime + offset.

use core::cell::Cell;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;

static OFFSET_MS: Mutex<CriticalSectionRawMutex, Cell<Option<i64>>> = Mutex::new(Cell::new(None));

pub fn uptime_ms() -> u64 {
    embassy_time::Instant::now().as_millis()
}

/// The server's time was `unix_ms` at uptime `at_uptime_ms`.
pub fn set(unix_ms: u64, at_uptime_ms: u64) {
    if unix_ms > 0 {
        OFFSET_MS.lock(|offset| offset.set(Some(unix_ms as i64 - at_uptime_ms as i64)));
    }
}

pub fn unix_ms() -> Option<u64> {
    let offset = OFFSET_MS.lock(Cell::get)?;
    u64::try_from(offset + uptime_ms() as i64).ok()
}
