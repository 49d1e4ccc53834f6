//! Conclave's device firmware for the ESP32-C3 (default) and ESP32-C6: Wi-Fi station, the
//! device protocol over the realtime WebSocket (postcard frames), chip temperature and one ADC
//! input as telemetry, commands (LED, interval, reboot, status), signed OTA updates with
//! rollback, and provisioning over the serial console. docs/firmware.md tells how to build,
//! flash and provision it.
//!
//! Tasks own their peripheral or connection and talk through the channels below. Decisions
//! that can be tested on a host live in `conclave-device-core`.

#![no_std]
#![no_main]

extern crate alloc;

mod clock;
mod link_task;
mod net;
mod ota_task;
mod storage;
mod tasks;

use alloc::string::String;
use conclave_device_core::link::{Identity, Link};
use conclave_device_core::ota::{self, Boot, SlotState, TRIAL_DEADLINE_SECS};
use conclave_device_core::outbox::Reading;
use conclave_device_core::provision::Record;
use conclave_device_core::wire;
use core::cell::Cell;
use embassy_executor::Spawner;
use embassy_net::StackResources;
use embassy_sync::blocking_mutex::Mutex as BlockingMutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_sync::mutex::Mutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_hal::analog::adc::{Adc, AdcCalCurve, AdcConfig, Attenuation};
use esp_hal::clock::CpuClock;
use esp_hal::gpio::{Level, Output, OutputConfig};
use esp_hal::rtc_cntl::{Rtc, RwdtStage};
use esp_hal::timer::timg::TimerGroup;
use esp_hal::tsens::{Config as TsensConfig, TemperatureSensor};
use esp_hal::usb::usb_serial_jtag::UsbSerialJtag;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, ControllerConfig, Interface, WifiController,
    sta::StationConfig,
};
use static_cell::StaticCell;

use crate::link_task::DeviceLink;
use crate::storage::{STORAGE, Storage};

esp_bootloader_esp_idf::esp_app_desc!();

pub const FIRMWARE: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "esp32c6")]
pub const CHIP: &str = "esp32c6";
#[cfg(not(feature = "esp32c6"))]
pub const CHIP: &str = "esp32c3";

type Cs = CriticalSectionRawMutex;

/// A set of readings taken at one moment.
pub struct Sample {
    pub taken_ms: u64,
    pub readings: heapless::Vec<Reading, 2>,
}

/// What the command and OTA tasks tell the link to send.
pub enum Report {
    Command {
        id: u64,
        status: wire::CommandStatus,
        output: Option<String>,
    },
    Ota(wire::OtaStatus),
}

/// sensors → link
pub static READINGS: Channel<Cs, Sample, 4> = Channel::new();
/// link → commands
pub static COMMANDS: Channel<Cs, wire::Command, 4> = Channel::new();
/// commands, OTA → link
pub static REPORTS: Channel<Cs, Report, 8> = Channel::new();
/// link → OTA (one update at a time)
pub static OFFERS: Channel<Cs, wire::OtaOffer, 1> = Channel::new();
/// link, commands → sensors: the telemetry interval in seconds
pub static INTERVAL: Signal<Cs, u32> = Signal::new();
/// The record in use (the link replaces it after a claim).
pub static CONFIG: Mutex<Cs, Option<Record>> = Mutex::new(None);
/// This boot runs a new image on trial (see `conclave_device_core::ota::on_boot`).
static TRIAL: BlockingMutex<Cs, Cell<bool>> = BlockingMutex::new(Cell::new(false));

/// Called by the link after each welcome: a new image on trial has proven itself.
pub fn confirm_update() {
    if !TRIAL.lock(|t| t.replace(false)) {
        return;
    }
    // The confirmation waits for the flash; the link must not.
    if let Ok(mut guard) = STORAGE.try_lock()
        && let Some(storage) = guard.as_mut()
    {
        let confirmed = storage
            .set_slot_state(SlotState::Valid)
            .and_then(|()| storage.clear_pending());
        match confirmed {
            Ok(()) => log::info!("ota: the new image reached the server: confirmed"),
            Err(e) => log::error!("ota: cannot confirm the new image: {e}"),
        }
    } else {
        TRIAL.lock(|t| t.set(true));
    }
}

/// Settings given at build time (`CONCLAVE_WIFI_SSID=… cargo build`), used when the flash has
/// no provisioning record.
fn build_record() -> Option<Record> {
    Record::from_build(
        option_env!("CONCLAVE_WIFI_SSID"),
        option_env!("CONCLAVE_WIFI_PASSWORD"),
        option_env!("CONCLAVE_SERVER_URL"),
        option_env!("CONCLAVE_CLAIM_CODE"),
        option_env!("CONCLAVE_DEVICE_TOKEN"),
    )
}

/// Spawns a task at start. Each task is spawned once, so its pool (of one) always has room;
/// an error here is a programming error, logged rather than fatal.
fn start<S>(
    spawner: Spawner,
    task: Result<embassy_executor::SpawnToken<S>, embassy_executor::SpawnError>,
) {
    match task {
        Ok(token) => spawner.spawn(token),
        Err(e) => log::error!("cannot start a task: {e:?}"),
    }
}

fn mk_static<T>(cell: &'static StaticCell<T>, value: T) -> &'static mut T {
    cell.init(value)
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 100 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    // A hung executor resets the chip (esp_hal::init turns the watchdogs off).
    let mut rtc = Rtc::new(peripherals.RTC_TIMER);
    rtc.rwdt
        .set_timeout(RwdtStage::Stage0, esp_hal::time::Duration::from_secs(60));
    rtc.rwdt.enable();

    log::info!("conclave firmware {FIRMWARE} on {CHIP}");

    // Flash: records and the update state.
    let mut storage = Storage::new(esp_storage::FlashStorage::new(peripherals.FLASH));
    if let Err(e) = storage.settle_boot_slot() {
        log::warn!("ota: {e}");
    }
    let pending = storage.pending().unwrap_or_else(|e| {
        log::warn!("ota: {e}");
        None
    });
    let boot = ota::on_boot(FIRMWARE, storage.slot_state(), pending);
    match &boot {
        Boot::RollBack(p) => {
            log::error!(
                "ota: {} restarted before reaching the server: rolling back",
                p.version
            );
            if let Err(e) = storage.roll_back() {
                log::error!("ota: cannot roll back: {e}");
            }
            esp_hal::system::software_reset();
        }
        Boot::Trial(p) => {
            log::info!("ota: running {} on trial", p.version);
            if let Err(e) = storage.set_slot_state(SlotState::PendingVerify) {
                log::error!("ota: {e}");
            }
            TRIAL.lock(|t| t.set(true));
        }
        Boot::RolledBack(p) => {
            log::warn!("ota: {} did not come up; back on {FIRMWARE}", p.version);
            let _ = storage.clear_pending();
        }
        Boot::Confirmed(_) => {
            let _ = storage.clear_pending();
        }
        Boot::Normal => {}
    }
    let stored = storage.record().unwrap_or_else(|e| {
        log::warn!("provisioning: {e}");
        None
    });
    *STORAGE.lock().await = Some(storage);

    // The console answers provisioning at any time, provisioned or not.
    let usb = UsbSerialJtag::new(peripherals.USB_DEVICE).into_async();
    start(spawner, tasks::console_task(usb, stored.clone()));

    let record = stored.or_else(build_record);
    let Some(record) = record.filter(|r| r.validate().is_ok()) else {
        log::warn!(
            "not provisioned: run `conclave device provision --port <this device's port> …`"
        );
        loop {
            rtc.rwdt.feed();
            Timer::after(Duration::from_secs(5)).await;
        }
    };
    *CONFIG.lock().await = Some(record.clone());

    // Wi-Fi station and the network stack.
    let auth = if record.wifi_password.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        match record.wifi_password.as_str().try_into() {
            Ok(password) => AuthenticationMethodConfig::Wpa2Personal(password),
            Err(_) => AuthenticationMethodConfig::Open,
        }
    };
    let station = match record.wifi_ssid.as_str().try_into() {
        Ok(ssid) => StationConfig::default()
            .with_ssid(ssid)
            .with_authentication(auth),
        Err(_) => StationConfig::default(),
    };
    let controller = WifiController::new(
        peripherals.WIFI,
        ControllerConfig::default().with_initial_config(WifiConfig::Station(station)),
    );
    let controller = match controller {
        Ok(controller) => controller,
        Err(e) => {
            log::error!("wifi: cannot start ({e:?}); restarting");
            Timer::after(Duration::from_secs(5)).await;
            esp_hal::system::software_reset();
        }
    };
    let rng = esp_hal::rng::Rng::new();
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    static RESOURCES: StaticCell<StackResources<5>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        mk_static(&RESOURCES, StackResources::new()),
        seed,
    );
    start(spawner, net::wifi_task(controller));
    start(spawner, net::net_task(runner));

    // Sensors: chip temperature and GPIO3 (ADC1 channel 3), calibrated to millivolts.
    let tsens = TemperatureSensor::new(peripherals.TSENS, TsensConfig::default());
    let mut adc_config = AdcConfig::new();
    let pin =
        adc_config.enable_pin_with_cal::<_, AdcCalCurve<_>>(peripherals.GPIO3, Attenuation::_11dB);
    let adc = Adc::new(peripherals.ADC1, adc_config).into_async();
    match tsens {
        Ok(tsens) => start(spawner, tasks::sensor_task(tsens, adc, pin)),
        Err(e) => log::error!("sensors: the temperature sensor is unavailable ({e:?})"),
    }

    // Commands: the LED on GPIO8 (active high).
    let led = Output::new(peripherals.GPIO8, Level::Low, OutputConfig::default());
    start(spawner, tasks::command_task(led));

    // The link, with the verdict on an update to report after the first welcome.
    static LINK: StaticCell<DeviceLink> = StaticCell::new();
    let link = mk_static(
        &LINK,
        Link::new(
            Identity {
                firmware: FIRMWARE.into(),
                chip: CHIP.into(),
                capabilities: alloc::vec!["telemetry".into(), "commands".into(), "ota".into()],
            },
            60,
        ),
    );
    if let Some(report) = ota::boot_report(&boot) {
        link.report_after_welcome(report);
    }
    start(spawner, link_task::link_task(stack, link));
    start(spawner, ota_task::ota_task(stack));

    // The trial of a new image: it must reach the server within the deadline.
    let trial_ends = embassy_time::Instant::now() + Duration::from_secs(TRIAL_DEADLINE_SECS);
    loop {
        rtc.rwdt.feed();
        if TRIAL.lock(Cell::get) && embassy_time::Instant::now() > trial_ends {
            log::error!("ota: the new image did not reach the server in time: rolling back");
            if let Some(storage) = STORAGE.lock().await.as_mut()
                && let Err(e) = storage.roll_back()
            {
                log::error!("ota: cannot roll back: {e}");
            }
            esp_hal::system::software_reset();
        }
        Timer::after(Duration::from_secs(5)).await;
    }
}
