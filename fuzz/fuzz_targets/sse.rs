//! A provider's stream, cut into reads anywhere: the server-sent-events decoder and the line
//! splitter (NDJSON) give the same events and lines however the bytes were chunked, and never
//! panic. The first bytes of the input choose the read sizes.
#![no_main]

use conclave_core::sse::{LineSplitter, SseDecoder};

fn events(reads: &[&[u8]]) -> Vec<conclave_core::sse::Event> {
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    for read in reads {
        events.extend(decoder.feed(read));
    }
    events.extend(decoder.finish());
    events
}

fn lines(reads: &[&[u8]]) -> Vec<String> {
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    for read in reads {
        splitter.feed(read, |line| lines.push(line.to_owned()));
    }
    lines.extend(splitter.finish());
    lines
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = data.split_at(data.len().min(8));
    let mut reads = Vec::new();
    let mut rest = stream;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (read, after) = rest.split_at(rest.len().min(usize::from(*size % 17) + 1));
        reads.push(read);
        rest = after;
    }
    assert_eq!(events(&[stream]), events(&reads));
    assert_eq!(lines(&[stream]), lines(&reads));
});
