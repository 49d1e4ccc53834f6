//! Records kept in flash: a small framed format so that erased flash, a torn write or a record
//! of another kind is recognised and never misread.
//!
//! `"CNCL" | kind (1) | format version (1) | payload length (u16 LE) | postcard payload |
//! CRC-32 (ISO-HDLC, LE) of everything before it`.

use serde::{Serialize, de::DeserializeOwned};

const MAGIC: &[u8; 4] = b"CNCL";
const FORMAT: u8 = 1;
const HEADER: usize = 8;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Provisioning = 1,
    PendingUpdate = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The buffer cannot hold the record.
    TooLarge,
    /// Bytes that are not a valid record of this kind (torn write, other data, corruption).
    Corrupt,
}

impl core::fmt::Display for StoreError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "the record does not fit its flash area",
            Self::Corrupt => "the record in flash is damaged",
        })
    }
}

/// Writes `value` as a record into `out`; returns the bytes used.
pub fn encode<T: Serialize>(kind: Kind, value: &T, out: &mut [u8]) -> Result<usize, StoreError> {
    if out.len() < HEADER + 4 {
        return Err(StoreError::TooLarge);
    }
    let payload_len = {
        let (_, rest) = out.split_at_mut(HEADER);
        let room = rest.len() - 4;
        postcard::to_slice(value, &mut rest[..room])
            .map_err(|_| StoreError::TooLarge)?
            .len()
    };
    out[..4].copy_from_slice(MAGIC);
    out[4] = kind as u8;
    out[5] = FORMAT;
    let len = u16::try_from(payload_len).map_err(|_| StoreError::TooLarge)?;
    out[6..8].copy_from_slice(&len.to_le_bytes());
    let end = HEADER + payload_len;
    let crc = CRC.checksum(&out[..end]);
    out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(end + 4)
}

/// Reads a record of `kind` from `bytes`: `Ok(None)` for erased flash (no record yet).
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<Option<T>, StoreError> {
    if bytes.len() >= 4 && bytes[..4].iter().all(|b| *b == 0xFF) {
        return Ok(None);
    }
    if bytes.len() < HEADER + 4 || &bytes[..4] != MAGIC || bytes[4] != kind as u8 {
        return Err(StoreError::Corrupt);
    }
    if bytes[5] != FORMAT {
        return Err(StoreError::Corrupt);
    }
    let len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let end = HEADER + len;
    if bytes.len() < end + 4 {
        return Err(StoreError::Corrupt);
    }
    let stored = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
    if CRC.checksum(&bytes[..end]) != stored {
        return Err(StoreError::Corrupt);
    }
    postcard::from_bytes(&bytes[HEADER..end])
        .map(Some)
        .map_err(|_| StoreError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::PendingUpdate;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let value = PendingUpdate {
            rollout: 12,
            version: heapless::String::try_from("2.0.1").unwrap(),
        };
        let mut sector = [0xFFu8; 256];
        assert_eq!(
            decode::<PendingUpdate>(Kind::PendingUpdate, &sector),
            Ok(None)
        );
        let used = encode(Kind::PendingUpdate, &value, &mut sector).unwrap();
        assert_eq!(
            decode(Kind::PendingUpdate, &sector),
            Ok(Some(value.clone()))
        );
        assert_eq!(
            decode::<PendingUpdate>(Kind::Provisioning, &sector),
            Err(StoreError::Corrupt),
            "another kind"
        );
        for i in 0..used {
            let mut damaged = sector;
            damaged[i] ^= 0x10;
            assert!(
                decode::<PendingUpdate>(Kind::PendingUpdate, &damaged).is_err(),
                "a flipped bit at {i} is noticed"
            );
        }
        let mut torn = sector;
        torn[used - 3..used].fill(0xFF);
        assert_eq!(
            decode::<PendingUpdate>(Kind::PendingUpdate, &torn),
            Err(StoreError::Corrupt)
        );
        assert_eq!(
            encode(Kind::PendingUpdate, &value, &mut [0u8; 10]),
            Err(StoreError::TooLarge)
        );
    }
}
