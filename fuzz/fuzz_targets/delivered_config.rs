//! The config a data plane receives in Kubernetes mode: the two delivered objects
//! (`portcullis_core::delivery`) decoded from arbitrary bytes, and what decodes compiled as a
//! data plane compiles it.
//!
//! Input: two bytes (little endian) giving the config object's length, then the config object,
//! then the endpoints object.
//!
//! Invariants: no panic, in decoding or in compiling; a pair that decodes encodes again (unless
//! too large) to a pair that decodes to the same config; compile accounts for every listener.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::compile::compile;
use portcullis_core::delivery::{DeliveryError, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((length, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*length)).min(rest.len());
    let (config, endpoints) = rest.split_at(split);
    let Ok(desired) = decode(config, endpoints) else {
        return;
    };
    match encode(&desired) {
        Ok(again) => {
            let decoded = decode(&again.config, &again.endpoints).expect("our own encoding decodes");
            assert_eq!(decoded, desired, "a round trip changed the config");
        }
        Err(DeliveryError::TooLarge { .. }) => {}
        Err(e) => panic!("encoding a decoded config failed: {e}"),
    }
    let snapshot = compile(desired.clone(), None, 1);
    for (compiled, port) in snapshot.ports.iter().zip(&desired.ports) {
        assert_eq!(compiled.port, port.port);
    }
});
