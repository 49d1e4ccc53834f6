//! Firmware updates on the device: checking an image while it downloads, and deciding at boot
//! whether a new image is confirmed, on trial, or must be rolled back.
//!
//! [`Download`] hashes every chunk as it is written to the inactive OTA partition (SHA-256 for
//! the offer's digest, SHA-512 inside ed25519's streaming verifier for the signature), so the
//! image is never held in RAM and a download resumed with a Range request goes on where it
//! stopped. [`Download::finish`] accepts the image only when its size, digest and signature
//! (against the public key compiled into the firmware) all match.
//!
//! [`on_boot`] is the rollback policy, on top of the OTA data of esp-bootloader-esp-idf: before
//! switching, the firmware writes a [`PendingUpdate`] record and marks the new slot `New`. The
//! new image, finding itself `New`, marks itself `PendingVerify` and is on trial until its
//! first `welcome` from the server (then `Valid`, `booted_ok`). If it restarts while still
//! `PendingVerify`, or the trial deadline passes, it marks itself `Invalid` and boots the
//! previous slot, which finds the record naming a version it is not and reports
//! `rolled_back`. The policy does not depend on the second-stage bootloader's own rollback
//! option, which the stock bootloader may not have.

pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, StreamVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::wire;

/// A new image must reach the server within this long after booting, or it is rolled back.
pub const TRIAL_DEADLINE_SECS: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaError {
    /// No public key was compiled into this firmware: it accepts no updates.
    NoKey,
    /// The image does not fit the OTA partition.
    TooLarge {
        size: u32,
        capacity: u32,
    },
    /// More bytes arrived than the offer announced.
    Overrun,
    /// The download ended early or ran over.
    SizeMismatch {
        expected: u32,
        received: u32,
    },
    DigestMismatch,
    BadSignature,
    /// The offer's hex fields do not decode.
    BadOffer,
}

impl core::fmt::Display for OtaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoKey => f.write_str("this firmware has no update key compiled in"),
            Self::TooLarge { size, capacity } => write!(
                f,
                "the image ({size} bytes) does not fit the OTA partition ({capacity} bytes)"
            ),
            Self::Overrun => f.write_str("the server sent more bytes than the offer's size"),
            Self::SizeMismatch { expected, received } => {
                write!(f, "received {received} of {expected} bytes")
            }
            Self::DigestMismatch => f.write_str("the image's SHA-256 does not match the offer"),
            Self::BadSignature => {
                f.write_str("the image's signature does not verify with this device's key")
            }
            Self::BadOffer => f.write_str("the offer's digest or signature is not valid hex"),
        }
    }
}

/// Parses the public key compiled into the firmware (64 hex digits, as written by
/// `conclave firmware keygen`); `None` for an empty or invalid one.
pub fn public_key(hex_text: &str) -> Option<VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut bytes).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// An image being downloaded and checked.
pub struct Download {
    pub rollout: u64,
    pub version: heapless::String<{ wire::MAX_NAME }>,
    size: u32,
    digest: [u8; 32],
    sha256: Sha256,
    verifier: StreamVerifier,
    received: u32,
}

impl core::fmt::Debug for Download {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Download")
            .field("rollout", &self.rollout)
            .field("version", &self.version)
            .field("size", &self.size)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// Starts checking `offer` against `key`, for a partition of `capacity` bytes.
    pub fn start(
        offer: &wire::OtaOffer,
        key: Option<&VerifyingKey>,
        capacity: u32,
    ) -> Result<Self, OtaError> {
        let key = key.ok_or(OtaError::NoKey)?;
        if offer.size > capacity {
            return Err(OtaError::TooLarge {
                size: offer.size,
                capacity,
            });
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&offer.sha256, &mut digest).map_err(|_| OtaError::BadOffer)?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&offer.signature, &mut signature).map_err(|_| OtaError::BadOffer)?;
        let verifier = key
            .verify_stream(&Signature::from_bytes(&signature))
            .map_err(|_| OtaError::BadSignature)?;
        let version =
            heapless::String::try_from(offer.version.as_str()).map_err(|_| OtaError::BadOffer)?;
        Ok(Self {
            rollout: offer.rollout,
            version,
            size: offer.size,
            digest,
            sha256: Sha256::new(),
            verifier,
            received: 0,
        })
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Bytes checked so far: where a resumed download starts (`Range: bytes=<received>-`).
    pub fn received(&self) -> u32 {
        self.received
    }

    pub fn is_complete(&self) -> bool {
        self.received == self.size
    }

    /// The next bytes of the image, in order.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), OtaError> {
        let len = u32::try_from(chunk.len()).map_err(|_| OtaError::Overrun)?;
        let total = self.received.checked_add(len).ok_or(OtaError::Overrun)?;
        if total > self.size {
            return Err(OtaError::Overrun);
        }
        self.sha256.update(chunk);
        self.verifier.update(chunk);
        self.received = total;
        Ok(())
    }

    /// Accepts the image only if it is whole and both its digest and signature match.
    pub fn finish(self) -> Result<(), OtaError> {
        if self.received != self.size {
            return Err(OtaError::SizeMismatch {
                expected: self.size,
                received: self.received,
            });
        }
        if self.sha256.finalize().as_slice() != self.digest {
            return Err(OtaError::DigestMismatch);
        }
        self.verifier
            .finalize_and_verify()
            .map_err(|_| OtaError::BadSignature)
    }
}

/// The OTA state of the running slot, as esp-bootloader-esp-idf keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    New,
    PendingVerify,
    Valid,
    Invalid,
    Aborted,
    Undefined,
}

/// Written to flash just before switching to a new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpdate {
    pub rollout: u64,
    /// The version switched to.
    pub version: heapless::String<{ wire::MAX_NAME }>,
}

/// What the firmware does about updates when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// No update in progress.
    Normal,
    /// This is the new image, on trial: mark the slot `PendingVerify`; after the first
    /// welcome mark it `Valid`, report `booted_ok` and forget the record; if
    /// [`TRIAL_DEADLINE_SECS`] pass first, roll back.
    Trial(PendingUpdate),
    /// The new image restarted before it was confirmed: mark it `Invalid`, boot the
    /// previous slot.
    RollBack(PendingUpdate),
    /// Confirmed earlier but the report may not have reached the server: report `booted_ok`
    /// again after the welcome and forget the record.
    Confirmed(PendingUpdate),
    /// The previous image runs again: report `rolled_back` and forget the record.
    RolledBack(PendingUpdate),
}

/// The rollback policy (see the module's documentation).
pub fn on_boot(running_version: &str, state: SlotState, pending: Option<PendingUpdate>) -> Boot {
    let Some(pending) = pending else {
        return Boot::Normal;
    };
    if pending.version.as_str() != running_version {
        return Boot::RolledBack(pending);
    }
    match state {
        SlotState::New | SlotState::Undefined => Boot::Trial(pending),
        SlotState::Valid => Boot::Confirmed(pending),
        SlotState::PendingVerify | SlotState::Invalid | SlotState::Aborted => {
            Boot::RollBack(pending)
        }
    }
}

/// The report [`Boot`] asks for once the server has answered `hello`.
pub fn boot_report(boot: &Boot) -> Option<wire::OtaStatus> {
    let (pending, state, detail) = match boot {
        Boot::Trial(p) | Boot::Confirmed(p) => (p, wire::OtaState::BootedOk, None),
        Boot::RolledBack(p) => (
            p,
            wire::OtaState::RolledBack,
            Some("the new image did not reach the server in time; the previous one runs again"),
        ),
        Boot::Normal | Boot::RollBack(_) => return None,
    };
    Some(wire::OtaStatus {
        rollout: pending.rollout,
        version: alloc::string::String::from(pending.version.as_str()),
        state,
        received: 0,
        detail: detail.map(alloc::string::String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString as _;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn offer(image: &[u8], key: &SigningKey) -> wire::OtaOffer {
        let digest = Sha256::digest(image);
        wire::OtaOffer {
            rollout: 4,
            version: "1.1.0".into(),
            url: "https://h/api/v1/firmware/4/image".into(),
            size: image.len() as u32,
            sha256: hex::encode(digest),
            signature: hex::encode(key.sign(image).to_bytes()),
        }
    }

    fn image() -> std::vec::Vec<u8> {
        (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn an_image_signed_by_the_compiled_in_key_is_accepted_chunk_by_chunk() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = public_key(&hex::encode(key.verifying_key().as_bytes())).unwrap();
        let image = image();
        let mut download = Download::start(&offer(&image, &key), Some(&public), 1 << 20).unwrap();
        for chunk in image.chunks(4_096) {
            download.update(chunk).unwrap();
        }
        assert!(download.is_complete());
        assert_eq!(download.finish(), Ok(()));
    }

    #[test]
    fn wrong_key_wrong_bytes_short_or_long_images_are_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let public = key.verifying_key();
        let image = image();
        let good = offer(&image, &key);

        let mut d = Download::start(&good, Some(&other), 1 << 20).unwrap();
        d.update(&image).unwrap();
        assert_eq!(d.finish(), Err(OtaError::BadSignature));

        let mut tampered = image.clone();
        tampered[50_000] ^= 1;
        let mut d = Download::start(&good, Some(&public), 1 << 20).unwrap();
        d.update(&tampered).unwrap();
        assert_eq!(d.finish(), Err(OtaError::DigestMismatch));

        // A matching digest does not help a forged signature.
        let mut forged = offer(&tampered, &SigningKey::from_bytes(&[9; 32]));
        forged.rollout = 4;
        let mut d = Download::start(&forged, Some(&public), 1 << 20).unwrap();
        d.update(&tampered).unwrap();
        assert_eq!(d.finish(), Err(OtaError::BadSignature));

        let mut d = Download::start(&good, Some(&public), 1 << 20).unwrap();
        d.update(&image[..10]).unwrap();
        assert_eq!(
            d.finish(),
            Err(OtaError::SizeMismatch {
                expected: 100_000,
                received: 10
            })
        );
        let mut d = Download::start(&good, Some(&public), 1 << 20).unwrap();
        d.update(&image).unwrap();
        assert_eq!(d.update(&[0]), Err(OtaError::Overrun));

        assert_eq!(
            Download::start(&good, Some(&public), 1_000).err(),
            Some(OtaError::TooLarge {
                size: 100_000,
                capacity: 1_000
            })
        );
        assert_eq!(
            Download::start(&good, None, 1 << 20).err(),
            Some(OtaError::NoKey)
        );
        let mut bad = good.clone();
        bad.sha256 = "zz".repeat(32);
        assert_eq!(
            Download::start(&bad, Some(&public), 1 << 20).err(),
            Some(OtaError::BadOffer)
        );
        assert!(public_key("not hex").is_none());
        assert!(public_key("").is_none());
    }

    fn pending(version: &str) -> Option<PendingUpdate> {
        Some(PendingUpdate {
            rollout: 4,
            version: heapless::String::try_from(version).unwrap(),
        })
    }

    #[test]
    fn the_boot_guard_confirms_tries_or_rolls_back() {
        assert_eq!(on_boot("1.0.0", SlotState::Valid, None), Boot::Normal);
        // First boot of the new image: on trial.
        let trial = on_boot("1.1.0", SlotState::New, pending("1.1.0"));
        assert!(matches!(trial, Boot::Trial(_)));
        assert_eq!(
            boot_report(&trial).map(|s| s.state),
            Some(wire::OtaState::BootedOk)
        );
        // It restarted during its trial (crash, watchdog, power): back to the old one.
        let again = on_boot("1.1.0", SlotState::PendingVerify, pending("1.1.0"));
        assert!(matches!(again, Boot::RollBack(_)));
        assert_eq!(boot_report(&again), None);
        // The old image runs again and says so.
        let old = on_boot("1.0.0", SlotState::Valid, pending("1.1.0"));
        let report = boot_report(&old).unwrap();
        assert_eq!(
            (report.rollout, report.version.as_str(), report.state),
            (4, "1.1.0", wire::OtaState::RolledBack)
        );
        assert!(report.detail.unwrap().contains("previous"));
        // Confirmed, but the record was still there: report again.
        assert!(matches!(
            on_boot("1.1.0", SlotState::Valid, pending("1.1.0")),
            Boot::Confirmed(_)
        ));
        assert_eq!("1.1.0".to_string(), trial_version(&trial));
    }

    fn trial_version(boot: &Boot) -> std::string::String {
        match boot {
            Boot::Trial(p) => p.version.as_str().into(),
            _ => std::string::String::new(),
        }
    }
}
