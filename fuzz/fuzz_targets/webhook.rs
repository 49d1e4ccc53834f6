//! Payment webhooks: any headers and body are checked without panicking, and only the body
//! that was signed, within the time window, verifies.
#![no_main]

use conclave_core::webhook::{SIGNATURE_TOLERANCE, sign, verify};

libfuzzer_sys::fuzz_target!(|input: (String, String, String, Vec<u8>, i64, i64)| {
    let (secret, timestamp, signatures, body, signed_at, now) = input;
    let _ = verify(&secret, Some(&timestamp), Some(&signatures), &body, now);
    let _ = verify(&secret, None, Some(&signatures), &body, now);

    let signature = sign(&secret, signed_at, &body);
    let header = format!("v1=00, {signature}");
    let age = i128::from(now) - i128::from(signed_at);
    let fresh = age.abs() <= SIGNATURE_TOLERANCE.as_millis() as i128;
    let checked = verify(
        &secret,
        Some(&signed_at.to_string()),
        Some(&header),
        &body,
        now,
    );
    assert_eq!(checked.is_ok(), fresh, "{checked:?} at an age of {age} ms");
    let mut other = body.clone();
    other.push(b'!');
    assert!(
        verify(
            &secret,
            Some(&signed_at.to_string()),
            Some(&header),
            &other,
            now
        )
        .is_err()
    );
});
