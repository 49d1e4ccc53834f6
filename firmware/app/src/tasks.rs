//! The device's own tasks: sensors (chip temperature and one ADC input), commands (LED,
//! interval, reboot, status), and the serial console for provisioning. Each owns its
//! peripheral and talks to the link through the channels in `main.rs`.

use alloc::format;
use alloc::string::String;
use conclave_device_core::provision::{Action, Console};
use conclave_device_core::wire;
use embassy_futures::select::{Either, select};
use embassy_time::{Duration, Timer};
use embedded_io_async::{Read as _, Write as _};
use esp_hal::Async;
use esp_hal::analog::adc::{Adc, AdcCalCurve, AdcPin};
use esp_hal::gpio::Output;
use esp_hal::peripherals::{ADC1, GPIO3};
use esp_hal::tsens::TemperatureSensor;
use esp_hal::usb::usb_serial_jtag::UsbSerialJtag;

use crate::storage::STORAGE;
use crate::{CHIP, COMMANDS, FIRMWARE, INTERVAL, READINGS, REPORTS, Report, Sample};

/// The ADC input: GPIO3 (ADC1 channel 3 on both chips, no strapping or JTAG duty).
pub type AnalogPin = AdcPin<GPIO3<'static>, ADC1<'static>, AdcCalCurve<ADC1<'static>>>;

/// Readings every interval (the server's `welcome` sets it; the `interval` command changes
/// it until the next welcome).
#[embassy_executor::task]
pub async fn sensor_task(
    tsens: TemperatureSensor<'static>,
    mut adc: Adc<'static, ADC1<'static>, Async>,
    mut pin: AnalogPin,
) {
    let mut interval = 60u32;
    loop {
        let temperature = tsens.get_temperature().to_celsius();
        let millivolts = adc.read_oneshot(&mut pin).await;
        let mut readings = heapless::Vec::new();
        let _ = readings.push(("chip_temperature", temperature));
        let _ = readings.push(("adc_mv", f32::from(millivolts)));
        READINGS
            .send(Sample {
                taken_ms: crate::clock::uptime_ms(),
                readings,
            })
            .await;
        match select(
            Timer::after(Duration::from_secs(u64::from(interval))),
            INTERVAL.wait(),
        )
        .await
        {
            Either::First(()) => {}
            Either::Second(secs) => interval = secs.clamp(1, 86_400),
        }
    }
}

/// Runs commands: `led on|off|toggle`, `interval <seconds>`, `reboot`, `status`, `ping`.
#[embassy_executor::task]
pub async fn command_task(mut led: Output<'static>) {
    loop {
        let command = COMMANDS.receive().await;
        let arg = command.args.first().map(String::as_str);
        let mut reboot = false;
        let (status, output): (wire::CommandStatus, String) = match command.name.as_str() {
            "led" => match arg {
                Some("on") => {
                    led.set_high();
                    (wire::CommandStatus::Succeeded, "led on".into())
                }
                Some("off") => {
                    led.set_low();
                    (wire::CommandStatus::Succeeded, "led off".into())
                }
                Some("toggle") => {
                    led.toggle();
                    let state = if led.is_set_high() { "on" } else { "off" };
                    (wire::CommandStatus::Succeeded, format!("led {state}"))
                }
                _ => (
                    wire::CommandStatus::Failed,
                    "usage: led on|off|toggle".into(),
                ),
            },
            "interval" => match arg.and_then(|a| a.parse::<u32>().ok()) {
                Some(secs) if (1..=86_400).contains(&secs) => {
                    INTERVAL.signal(secs);
                    (
                        wire::CommandStatus::Succeeded,
                        format!("telemetry every {secs} s"),
                    )
                }
                _ => (
                    wire::CommandStatus::Failed,
                    "usage: interval <seconds, 1 to 86400>".into(),
                ),
            },
            "reboot" => {
                reboot = true;
                (wire::CommandStatus::Succeeded, "rebooting".into())
            }
            "status" => (
                wire::CommandStatus::Succeeded,
                format!(
                    "firmware {FIRMWARE} on {CHIP} · up {} s · heap free {} B",
                    crate::clock::uptime_ms() / 1_000,
                    esp_alloc::HEAP.free()
                ),
            ),
            "ping" => (wire::CommandStatus::Succeeded, "pong".into()),
            _ => (wire::CommandStatus::Unknown, String::new()),
        };
        REPORTS
            .send(Report::Command {
                id: command.id,
                status,
                output: (!output.is_empty()).then_some(output),
            })
            .await;
        if reboot {
            // Time for the link to send the result first.
            Timer::after(Duration::from_secs(2)).await;
            esp_hal::system::software_reset();
        }
    }
}

/// The serial console (the chip's built-in USB): the provisioning line protocol.
#[embassy_executor::task]
pub async fn console_task(
    usb: UsbSerialJtag<'static, Async>,
    stored: Option<conclave_device_core::provision::Record>,
) {
    let (mut rx, mut tx) = usb.split();
    let mut console = Console::new(stored, CHIP, FIRMWARE);
    let mut buffer = [0u8; 64];
    loop {
        // The USB-serial reader cannot fail (its error type is `Infallible`).
        let Ok(n) = rx.read(&mut buffer).await;
        for byte in &buffer[..n] {
            let Some(output) = console.feed(*byte) else {
                continue;
            };
            for line in &output.lines {
                let _ = tx.write_all(line.as_bytes()).await;
                let _ = tx.write_all(b"\r\n").await;
            }
            let answer: Option<String> = match output.action {
                None => None,
                Some(Action::Save(record)) => {
                    let saved = match STORAGE.lock().await.as_mut() {
                        Some(storage) => storage.save_record(&record).map_err(|e| format!("{e}")),
                        None => Err("no flash".into()),
                    };
                    Some(match saved {
                        Ok(()) => {
                            console.saved();
                            "@conclave OK saved".into()
                        }
                        Err(why) => format!("@conclave ERR cannot save: {why}"),
                    })
                }
                Some(Action::Erase) => {
                    let erased = match STORAGE.lock().await.as_mut() {
                        Some(storage) => storage.erase_record().is_ok(),
                        None => false,
                    };
                    Some(if erased {
                        "@conclave OK erased".into()
                    } else {
                        "@conclave ERR cannot erase".into()
                    })
                }
                Some(Action::Reboot) => {
                    let _ = tx.flush().await;
                    Timer::after(Duration::from_millis(200)).await;
                    esp_hal::system::software_reset();
                }
            };
            if let Some(answer) = answer {
                let _ = tx.write_all(answer.as_bytes()).await;
                let _ = tx.write_all(b"\r\n").await;
            }
            let _ = tx.flush().await;
        }
    }
}
