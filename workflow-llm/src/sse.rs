//! A server-sent events parser: bytes in, the `data` of each complete event out.

/// Incremental SSE parser. Feed it bytes as they arrive; it returns each event's data (several
/// `data:` lines joined by `\n`) once the blank line that ends the event has arrived.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Adds bytes; appends the data of every event they complete to `out`.
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            self.line(&line, out);
        }
        self.buf.drain(..start);
    }

    /// The input ended: returns the data of a last event that had no closing blank line.
    pub(crate) fn finish(&mut self, out: &mut Vec<String>) {
        if !self.buf.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            self.line(rest.trim_end_matches('\r'), out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, line: &str, out: &mut Vec<String>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        // `event`, `id` and `retry` carry nothing the chat wire format uses.
    }

    fn dispatch(&mut self, out: &mut Vec<String>) {
        if self.has_data {
            out.push(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &str, piece: usize) -> Vec<String> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        for chunk in input.as_bytes().chunks(piece) {
            parser.push(chunk, &mut out);
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn events_survive_any_split() {
        let input = ": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\r\ndata: first\r\ndata: second\r\n\r\ndata:[DONE]\n\n";
        for piece in 1..input.len() {
            assert_eq!(
                parse_in_pieces(input, piece),
                ["{\"a\":1}", "first\nsecond", "[DONE]"],
                "split every {piece} bytes"
            );
        }
    }

    #[test]
    fn utf8_split_across_chunks_is_kept() {
        assert_eq!(parse_in_pieces("data: héllo wörld\n\n", 1), ["héllo wörld"]);
    }

    #[test]
    fn a_last_event_without_blank_line_is_returned() {
        assert_eq!(parse_in_pieces("data: tail", 4), ["tail"]);
    }
}
