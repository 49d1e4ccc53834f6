//! Incremental decoding of server-sent events (the assistant's providers: OpenAI, Anthropic)
//! and of newline-delimited JSON (Ollama), fed bytes as they arrive.
//!
//! Hand-written because the SSE crates on crates.io either own the HTTP request (and so our
//! timeouts and cancellation) or allocate a task per stream; what we need is ~80 lines that
//! follow the WHATWG rules: lines end in LF, CRLF or CR (also when the CR and the LF arrive in
//! different reads), `:` lines are comments (keep-alives), `data:` lines of one event are joined
//! with `\n`, a blank line ends the event, and a multi-byte character split across reads is
//! put back together.

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field; empty when the event has none ("message").
    pub name: String,
    pub data: String,
}

/// Splits bytes into lines, whatever the line ending and however the bytes were chunked.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    /// The last read ended in CR: an LF opening the next read belongs to it.
    after_cr: bool,
}

impl LineSplitter {
    /// Feeds a chunk; calls `line` for every complete line (without its ending).
    pub fn feed(&mut self, mut chunk: &[u8], mut line: impl FnMut(&str)) {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(end) = chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.partial.extend_from_slice(&chunk[..end]);
            line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
            let crlf = chunk[end] == b'\r' && chunk.get(end + 1) == Some(&b'\n');
            if chunk[end] == b'\r' && end + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[end + if crlf { 2 } else { 1 }..];
        }
        self.partial.extend_from_slice(chunk);
    }

    /// The unterminated rest at the end of the stream, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let rest = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        Some(rest)
    }
}

/// Server-sent events out of a byte stream.
#[derive(Debug, Default)]
pub struct SseDecoder {
    lines: LineSplitter,
    current: Event,
    has_data: bool,
}

impl SseDecoder {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let Self {
            lines,
            current,
            has_data,
        } = self;
        lines.feed(chunk, |line| {
            if line.is_empty() {
                if *has_data {
                    events.push(std::mem::take(current));
                }
                *current = Event::default();
                *has_data = false;
                return;
            }
            if line.starts_with(':') {
                return; // a comment: keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    if *has_data {
                        current.data.push('\n');
                    }
                    current.data.push_str(value);
                    *has_data = true;
                }
                "event" => current.name = value.to_owned(),
                _ => {} // id, retry and unknown fields mean nothing to a completion
            }
        });
        events
    }

    /// At the end of the stream: an event whose blank line never came is still delivered if it
    /// has data (some servers close right after the last `data:` line); the caller's parser
    /// decides whether it is complete.
    pub fn finish(&mut self) -> Option<Event> {
        if let Some(rest) = self.lines.finish() {
            let mut events = self.feed(rest.as_bytes());
            events.extend(self.feed(b"\n\n"));
            return events.pop();
        }
        if self.has_data {
            self.has_data = false;
            return Some(std::mem::take(&mut self.current));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Vec<Event> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in input.chunks(piece) {
            events.extend(decoder.feed(chunk));
        }
        events.extend(decoder.finish());
        events
    }

    #[test]
    fn every_line_ending_and_every_split_gives_the_same_events() {
        let text = "event: delta\ndata: {\"a\":\"é\"}\n\n: keep-alive\n\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        let expected = vec![
            Event {
                name: "delta".into(),
                data: "{\"a\":\"é\"}".into(),
            },
            Event {
                name: String::new(),
                data: "one\ntwo".into(),
            },
            Event {
                name: String::new(),
                data: "[DONE]".into(),
            },
        ];
        for ending in ["\n", "\r\n", "\r"] {
            let input = text.replace('\n', ending);
            for piece in 1..=input.len() {
                assert_eq!(
                    decode_in_pieces(input.as_bytes(), piece),
                    expected,
                    "ending {ending:?}, pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_still_delivered() {
        let events = decode_in_pieces(b"data: first\n\ndata: last", 4);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data, "last");
        let events = decode_in_pieces(b"data: first\n\ndata: last\n", 3);
        assert_eq!(events[1].data, "last");
    }

    #[test]
    fn fields_without_a_space_and_unknown_fields() {
        let events = decode_in_pieces(b"data:x\nid: 7\nretry: 10\nfoo\n\n", 100);
        assert_eq!(
            events,
            vec![Event {
                name: String::new(),
                data: "x".into()
            }]
        );
    }

    #[test]
    fn lines_of_json_split_anywhere() {
        let input = "{\"a\":1}\r\n{\"b\":\"ü\"}\n{\"c\":3}";
        for piece in 1..=input.len() {
            let mut splitter = LineSplitter::default();
            let mut lines = Vec::new();
            for chunk in input.as_bytes().chunks(piece) {
                splitter.feed(chunk, |l| lines.push(l.to_owned()));
            }
            lines.extend(splitter.finish());
            assert_eq!(
                lines,
                ["{\"a\":1}", "{\"b\":\"ü\"}", "{\"c\":3}"],
                "{piece}"
            );
        }
    }
}
