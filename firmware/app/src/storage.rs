//! The flash: the `conclave` data partition (provisioning record in its first sector, the
//! pending-update record in its second) and the OTA slots through esp-bootloader-esp-idf.
//!
//! One owner for the flash ([`STORAGE`]): the console (provisioning), the link (the token
//! after a claim, confirming an update) and the OTA task (writing an image) take turns.
//! Flash operations block the CPU for milliseconds (a sector erase is ~30 ms); they happen at
//! start, when provisioning, and while an update downloads, never per reading.

use conclave_device_core::ota::{PendingUpdate, SlotState};
use conclave_device_core::provision::Record;
use conclave_device_core::store::{self, Kind};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use esp_bootloader_esp_idf::ota::OtaImageState;
use esp_bootloader_esp_idf::ota_updater::OtaUpdater;
use esp_bootloader_esp_idf::partitions::{
    self, AppPartitionSubType, PARTITION_TABLE_MAX_LEN, PartitionType,
};
use esp_storage::FlashStorage;

/// The label of the data partition in `partitions.csv`.
const PARTITION: &str = "conclave";
const SECTOR: u32 = 4096;
const RECORD_AT: u32 = 0;
const PENDING_AT: u32 = SECTOR;

pub static STORAGE: Mutex<CriticalSectionRawMutex, Option<Storage>> = Mutex::new(None);

#[derive(Debug)]
pub enum StorageError {
    /// The partition table has no `conclave` partition (flashed without `partitions.csv`).
    NoPartition,
    Flash,
    Partitions(partitions::Error),
    Record(store::StoreError),
}

impl core::fmt::Display for StorageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoPartition => f.write_str(
                "no 'conclave' partition: flash with --partition-table firmware/partitions.csv",
            ),
            Self::Flash => f.write_str("the flash could not be read or written"),
            Self::Partitions(e) => write!(f, "partition table: {e:?}"),
            Self::Record(e) => write!(f, "{e}"),
        }
    }
}

impl From<partitions::Error> for StorageError {
    fn from(e: partitions::Error) -> Self {
        Self::Partitions(e)
    }
}

pub struct Storage {
    flash: FlashStorage<'static>,
    /// Offset and size of the `conclave` partition.
    data: Option<(u32, u32)>,
    table: [u8; PARTITION_TABLE_MAX_LEN],
    /// The OTA slot being written: its offset and size.
    target: Option<(u32, u32)>,
}

impl Storage {
    pub fn new(flash: FlashStorage<'static>) -> Self {
        let mut storage = Self {
            flash,
            data: None,
            table: [0; PARTITION_TABLE_MAX_LEN],
            target: None,
        };
        let mut table = [0u8; PARTITION_TABLE_MAX_LEN];
        if let Ok(pt) = partitions::read_partition_table(&mut storage.flash, &mut table) {
            // By label: `partition_type()` is not needed (and panics on unknown subtypes).
            storage.data = pt
                .iter()
                .find(|entry| entry.label_as_str() == PARTITION)
                .map(|entry| (entry.offset(), entry.len()));
        }
        storage
    }

    fn read_sector(&mut self, at: u32) -> Result<[u8; 512], StorageError> {
        let (offset, _) = self.data.ok_or(StorageError::NoPartition)?;
        let mut bytes = [0u8; 512];
        self.flash
            .read(offset + at, &mut bytes)
            .map_err(|_| StorageError::Flash)?;
        Ok(bytes)
    }

    fn write_sector(&mut self, at: u32, bytes: &[u8]) -> Result<(), StorageError> {
        let (offset, _) = self.data.ok_or(StorageError::NoPartition)?;
        // `write` erases and rewrites the sectors it touches.
        self.flash
            .write(offset + at, bytes)
            .map_err(|_| StorageError::Flash)
    }

    pub fn record(&mut self) -> Result<Option<Record>, StorageError> {
        let bytes = self.read_sector(RECORD_AT)?;
        store::decode(Kind::Provisioning, &bytes).map_err(StorageError::Record)
    }

    pub fn save_record(&mut self, record: &Record) -> Result<(), StorageError> {
        let mut bytes = [0xFFu8; 512];
        store::encode(Kind::Provisioning, record, &mut bytes).map_err(StorageError::Record)?;
        self.write_sector(RECORD_AT, &bytes)
    }

    pub fn erase_record(&mut self) -> Result<(), StorageError> {
        self.write_sector(RECORD_AT, &[0xFF; 16])
    }

    pub fn pending(&mut self) -> Result<Option<PendingUpdate>, StorageError> {
        let bytes = self.read_sector(PENDING_AT)?;
        store::decode(Kind::PendingUpdate, &bytes).map_err(StorageError::Record)
    }

    pub fn save_pending(&mut self, pending: &PendingUpdate) -> Result<(), StorageError> {
        let mut bytes = [0xFFu8; 128];
        store::encode(Kind::PendingUpdate, pending, &mut bytes).map_err(StorageError::Record)?;
        self.write_sector(PENDING_AT, &bytes)
    }

    pub fn clear_pending(&mut self) -> Result<(), StorageError> {
        self.write_sector(PENDING_AT, &[0xFF; 16])
    }

    fn updater<'a>(
        flash: &'a mut FlashStorage<'static>,
        table: &'a mut [u8; PARTITION_TABLE_MAX_LEN],
    ) -> Result<OtaUpdater<'a, 'static>, StorageError> {
        Ok(OtaUpdater::new(flash, table)?)
    }

    /// Makes blank OTA data name the slot that actually booted (esp-bootloader-esp-idf takes
    /// blank OTA data for "factory", which this table does not have).
    pub fn settle_boot_slot(&mut self) -> Result<(), StorageError> {
        let mut table = [0u8; PARTITION_TABLE_MAX_LEN];
        let booted = {
            let pt = partitions::read_partition_table(&mut self.flash, &mut table)?;
            match pt.booted_partition()? {
                Some(entry) => match entry.partition_type() {
                    PartitionType::App(slot) => Some(slot),
                    _ => None,
                },
                None => None,
            }
        };
        let mut ota = Self::updater(&mut self.flash, &mut self.table)?;
        if ota.selected_partition()? == AppPartitionSubType::Factory
            && let Some(slot) = booted
            && slot != AppPartitionSubType::Factory
        {
            ota.ota_data()?.set_current_app_partition(slot)?;
            ota.set_current_ota_state(OtaImageState::Valid)?;
        }
        Ok(())
    }

    pub fn slot_state(&mut self) -> SlotState {
        let Ok(mut ota) = Self::updater(&mut self.flash, &mut self.table) else {
            return SlotState::Undefined;
        };
        match ota.current_ota_state() {
            Ok(OtaImageState::New) => SlotState::New,
            Ok(OtaImageState::PendingVerify) => SlotState::PendingVerify,
            Ok(OtaImageState::Valid) => SlotState::Valid,
            Ok(OtaImageState::Invalid) => SlotState::Invalid,
            Ok(OtaImageState::Aborted) => SlotState::Aborted,
            Ok(OtaImageState::Undefined) | Err(_) => SlotState::Undefined,
        }
    }

    pub fn set_slot_state(&mut self, state: SlotState) -> Result<(), StorageError> {
        let state = match state {
            SlotState::New => OtaImageState::New,
            SlotState::PendingVerify => OtaImageState::PendingVerify,
            SlotState::Valid => OtaImageState::Valid,
            SlotState::Invalid => OtaImageState::Invalid,
            SlotState::Aborted => OtaImageState::Aborted,
            SlotState::Undefined => OtaImageState::Undefined,
        };
        let mut ota = Self::updater(&mut self.flash, &mut self.table)?;
        ota.set_current_ota_state(state)?;
        Ok(())
    }

    /// Prepares the inactive slot for an image; returns its size.
    pub fn begin_image(&mut self) -> Result<u32, StorageError> {
        let slot = {
            let mut ota = Self::updater(&mut self.flash, &mut self.table)?;
            let (_, slot) = ota.next_partition()?;
            slot
        };
        let mut table = [0u8; PARTITION_TABLE_MAX_LEN];
        let pt = partitions::read_partition_table(&mut self.flash, &mut table)?;
        let entry = pt
            .find_partition(PartitionType::App(slot))?
            .ok_or(StorageError::NoPartition)?;
        self.target = Some((entry.offset(), entry.len()));
        Ok(entry.len())
    }

    /// Writes image bytes at `offset` of the inactive slot.
    pub fn write_image(&mut self, offset: u32, bytes: &[u8]) -> Result<(), StorageError> {
        let (start, size) = self.target.ok_or(StorageError::NoPartition)?;
        if offset + bytes.len() as u32 > size {
            return Err(StorageError::Flash);
        }
        self.flash
            .write(start + offset, bytes)
            .map_err(|_| StorageError::Flash)
    }

    /// Boots the written image next, on trial (`New`), after `pending` is recorded.
    pub fn activate_image(&mut self, pending: &PendingUpdate) -> Result<(), StorageError> {
        self.save_pending(pending)?;
        let mut ota = Self::updater(&mut self.flash, &mut self.table)?;
        ota.activate_next_partition()?;
        ota.set_current_ota_state(OtaImageState::New)?;
        self.target = None;
        Ok(())
    }

    /// Marks the running (new) image invalid and boots the other slot, known good.
    pub fn roll_back(&mut self) -> Result<(), StorageError> {
        let mut ota = Self::updater(&mut self.flash, &mut self.table)?;
        ota.set_current_ota_state(OtaImageState::Invalid)?;
        ota.activate_next_partition()?;
        ota.set_current_ota_state(OtaImageState::Valid)?;
        Ok(())
    }
}
