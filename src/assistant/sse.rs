//! Provider streams: bytes as they arrive, through the SSE or NDJSON decoder
//! ([`conclave_core::sse`]) and the provider's [`Parser`], into [`Delta`]s; with the idle
//! timeout and the answer cap.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};

pub use conclave_core::sse::{Event, LineSplitter, SseDecoder};

use super::{Delta, DeltaStream, ProviderError};

/// Turns a provider's protocol into [`Delta`]s, one read at a time.
pub(crate) trait Parser: Send + 'static {
    fn feed(&mut self, bytes: &[u8], out: &mut VecDeque<Result<Delta, ProviderError>>);
    /// The body ended: deliver what is left, and `Err(Incomplete)` unless the provider said
    /// the answer was complete.
    fn finish(&mut self, out: &mut VecDeque<Result<Delta, ProviderError>>);
}

/// The most a provider may send for one answer. A long chat answer is tens of kilobytes; the
/// cap bounds what a broken or hostile provider can make a node hold (an endless line, an
/// event that never ends), and ends such a stream with a clear error.
pub(crate) const MAX_ANSWER_BYTES: usize = 4 << 20;

struct Driven<P> {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: P,
    ready: VecDeque<Result<Delta, ProviderError>>,
    ended: bool,
    idle: Duration,
    received: usize,
}

/// The deltas of a provider's streamed answer. A read that takes longer than `idle` fails the
/// stream with a timeout; the first error ends it. Dropping it closes the connection.
pub(crate) fn drive<P: Parser>(
    response: reqwest::Response,
    idle: Duration,
    parser: P,
) -> DeltaStream {
    let state = Driven {
        body: Box::pin(response.bytes_stream()),
        parser,
        ready: VecDeque::new(),
        ended: false,
        idle,
        received: 0,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(next) = state.ready.pop_front() {
                    if next.is_err() {
                        state.ready.clear();
                        state.ended = true;
                    }
                    return Some((next, state));
                }
                if state.ended {
                    return None;
                }
                match tokio::time::timeout(state.idle, state.body.next()).await {
                    Err(_) => {
                        state
                            .ready
                            .push_back(Err(ProviderError::Timeout("idle stream")));
                    }
                    Ok(Some(Ok(chunk))) => {
                        state.received = state.received.saturating_add(chunk.len());
                        if state.received > MAX_ANSWER_BYTES {
                            state.ready.push_back(Err(ProviderError::Malformed(format!(
                                "the answer exceeds {} MiB",
                                MAX_ANSWER_BYTES >> 20
                            ))));
                        } else {
                            state.parser.feed(&chunk, &mut state.ready);
                        }
                    }
                    Ok(Some(Err(error))) => {
                        state
                            .ready
                            .push_back(Err(ProviderError::Unreachable(format!(
                                "the stream broke: {error}"
                            ))));
                    }
                    Ok(None) => {
                        state.parser.finish(&mut state.ready);
                        state.ended = true;
                    }
                }
            }
        },
    ))
}
