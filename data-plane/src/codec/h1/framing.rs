//! Where a relayed HTTP/1.1 response body ends (RFC 9112 section 6.3). The fast path passes
//! the body through byte for byte, chunked framing included; it only needs to know where the
//! message stops, to keep the connections for the next one.

/// How the end of a response body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304, or Content-Length 0.
    Empty,
    /// Content-Length: the bytes still to come.
    Length(u64),
    Chunked(ChunkScanner),
    /// Neither length nor chunked: the body ends when the upstream closes.
    UntilClose,
}

/// A body that does not follow its own framing.
#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl Framing {
    /// How many bytes of `data` (the next bytes read) belong to the body, and whether the body
    /// ends with them.
    pub fn consume(&mut self, data: &[u8]) -> Result<(usize, bool), BadChunk> {
        Ok(match self {
            Framing::Empty => (0, true),
            Framing::Length(left) => {
                let take = usize::try_from(*left).map_or(data.len(), |l| l.min(data.len()));
                *left -= take as u64;
                (take, *left == 0)
            }
            Framing::Chunked(scanner) => match scanner.scan(data)? {
                Some(end) => (end, true),
                None => (data.len(), false),
            },
            Framing::UntilClose => (data.len(), false),
        })
    }
}

/// Follows chunked framing (sizes, extensions, data, trailer fields) without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkScanner {
    /// Reading a chunk size's hex digits.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the size: an extension or the line end, until LF.
    SizeLine {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the empty line that ends the message.
    TrailerStart,
    TrailerLine,
    EndLf,
    /// The message ended: nothing more belongs to it.
    Done,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        ChunkScanner::Size {
            value: 0,
            digits: 0,
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

impl ChunkScanner {
    fn after_size(value: u64) -> ChunkScanner {
        if value == 0 {
            ChunkScanner::TrailerStart
        } else {
            ChunkScanner::Data(value)
        }
    }

    /// Advances over `data`; `Some(n)` when the message ends after its first `n` bytes.
    pub fn scan(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut at = 0;
        while at < data.len() {
            let step = self.step(&data[at..])?;
            at += step.consumed;
            if step.done {
                return Ok(Some(at));
            }
        }
        Ok(None)
    }

    /// Whether the scanner is in the trailer section (after the last chunk).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self,
            ChunkScanner::TrailerStart | ChunkScanner::TrailerLine | ChunkScanner::EndLf
        )
    }

    /// Advances over framing bytes up to and over the next run of chunk data, stopping early
    /// where the trailer section starts (so that a decoder can tell trailer bytes apart).
    pub fn step(&mut self, data: &[u8]) -> Result<Step, BadChunk> {
        let stop = |at: usize, data: std::ops::Range<usize>, done: bool| Step {
            consumed: at,
            data,
            done,
        };
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            let was_in_trailers = self.in_trailers();
            *self = match *self {
                ChunkScanner::Size { value, digits } => match hex(b) {
                    // 15 hex digits are 2^60 bytes: more is an attack, not a body.
                    Some(_) if digits >= 15 => return Err(BadChunk),
                    Some(d) => ChunkScanner::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                    },
                    None if digits == 0 => return Err(BadChunk),
                    None if b == b'\n' => Self::after_size(value),
                    None if matches!(b, b';' | b' ' | b'\t' | b'\r') => {
                        ChunkScanner::SizeLine { value }
                    }
                    None => return Err(BadChunk),
                },
                ChunkScanner::SizeLine { value } if b == b'\n' => Self::after_size(value),
                state @ ChunkScanner::SizeLine { .. } => state,
                ChunkScanner::Data(left) => {
                    let take =
                        usize::try_from(left).map_or(data.len() - i, |l| l.min(data.len() - i));
                    let left = left - take as u64;
                    *self = if left == 0 {
                        ChunkScanner::DataCr
                    } else {
                        ChunkScanner::Data(left)
                    };
                    return Ok(stop(i + take, i..i + take, false));
                }
                ChunkScanner::DataCr if b == b'\r' => ChunkScanner::DataLf,
                ChunkScanner::DataCr | ChunkScanner::DataLf if b == b'\n' => Self::default(),
                ChunkScanner::DataCr | ChunkScanner::DataLf => return Err(BadChunk),
                ChunkScanner::TrailerStart if b == b'\r' => ChunkScanner::EndLf,
                ChunkScanner::TrailerStart | ChunkScanner::EndLf if b == b'\n' => {
                    *self = ChunkScanner::Done;
                    return Ok(stop(i + 1, i + 1..i + 1, true));
                }
                ChunkScanner::Done => return Ok(stop(i, i..i, true)),
                ChunkScanner::EndLf => return Err(BadChunk),
                ChunkScanner::TrailerStart => ChunkScanner::TrailerLine,
                ChunkScanner::TrailerLine if b == b'\n' => ChunkScanner::TrailerStart,
                state @ ChunkScanner::TrailerLine => state,
            };
            i += 1;
            if !was_in_trailers && self.in_trailers() {
                return Ok(stop(i, i..i, false));
            }
        }
        Ok(stop(i, i..i, false))
    }
}

/// What one [`ChunkScanner::step`] went over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes consumed, framing and data.
    pub consumed: usize,
    /// The chunk data among them (empty when there was none).
    pub data: std::ops::Range<usize>,
    /// The message ended with the consumed bytes.
    pub done: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] =
        b"4;ext=1\r\nWiki\r\n10\r\n0123456789abcdef\r\n0\r\nx-checksum: 1\r\n\r\nNEXT";

    #[test]
    fn a_chunked_body_ends_after_its_trailers() {
        let end = MESSAGE.len() - 4;
        assert_eq!(ChunkScanner::default().scan(MESSAGE).unwrap(), Some(end));
        // The same, a byte at a time (as slow reads deliver it).
        let mut scanner = ChunkScanner::default();
        let first_end = MESSAGE
            .iter()
            .position(|b| scanner.scan(&[*b]).unwrap().is_some());
        assert_eq!(first_end, Some(end - 1));
        assert_eq!(
            scanner.scan(b"NEXT").unwrap(),
            Some(0),
            "nothing more belongs to it"
        );
    }

    #[test]
    fn a_chunked_body_without_trailers_ends_at_the_empty_line() {
        assert_eq!(ChunkScanner::default().scan(b"0\r\n\r\n").unwrap(), Some(5));
        let mut split = ChunkScanner::default();
        assert_eq!(split.scan(b"3\r\nab").unwrap(), None);
        assert_eq!(split.scan(b"c\r\n0\r").unwrap(), None);
        assert_eq!(split.scan(b"\n\r\nGET").unwrap(), Some(3));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"1000000000000000\r\n",
            b"0\r\n\rX",
        ] {
            assert!(ChunkScanner::default().scan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn any_split_of_a_message_ends_in_the_same_place() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            // A random valid message: chunks of random sizes (hex in either case, some with
            // extensions), maybe trailers, then the start of the next message.
            let mut message = Vec::new();
            let mut payload = Vec::new();
            for _ in 0..rng.random_range(0..5) {
                let size = rng.random_range(1..300usize);
                let size_text = if rng.random_bool(0.5) {
                    format!("{size:x}")
                } else {
                    format!("{size:X}")
                };
                message.extend(size_text.as_bytes());
                if rng.random_bool(0.3) {
                    message.extend(b";name=\"va;l\"");
                }
                message.extend(b"\r\n");
                let data: Vec<u8> = (0..size).map(|_| rng.random::<u8>()).collect();
                message.extend(&data);
                payload.extend(data);
                message.extend(b"\r\n");
            }
            message.extend(b"0\r\n");
            let mut trailers = Vec::new();
            if rng.random_bool(0.5) {
                trailers.extend(b"x-a: 1\r\nx-b: 2\r\n");
            }
            trailers.extend(b"\r\n");
            message.extend(&trailers);
            let end = message.len();
            message.extend(b"HTTP/1.1 200 OK\r\n");
            // Fed in random pieces, the scanner ends exactly at the message's end.
            let mut scanner = ChunkScanner::default();
            let mut at = 0;
            let found = loop {
                let piece = rng.random_range(1..64).min(message.len() - at);
                if let Some(n) = scanner.scan(&message[at..at + piece]).unwrap() {
                    break at + n;
                }
                at += piece;
                assert!(at < message.len(), "no end found");
            };
            assert_eq!(found, end);
            // Stepped through in random pieces, the data and the trailer section come out.
            let mut scanner = ChunkScanner::default();
            let (mut data, mut trailer_bytes) = (Vec::new(), Vec::new());
            let mut at = 0;
            loop {
                let piece = rng.random_range(1..64).min(message.len() - at);
                let in_trailers = scanner.in_trailers();
                let step = scanner.step(&message[at..at + piece]).unwrap();
                let consumed = &message[at..at + step.consumed];
                data.extend(&message[at..][step.data.clone()]);
                if in_trailers {
                    trailer_bytes.extend(consumed);
                }
                at += step.consumed;
                if step.done {
                    break;
                }
            }
            assert_eq!((at, data, trailer_bytes), (end, payload, trailers));
        }
    }

    #[test]
    fn lengths_count_down() {
        let mut f = Framing::Length(5);
        assert_eq!(f.consume(b"abc").unwrap(), (3, false));
        assert_eq!(f.consume(b"deNEXT").unwrap(), (2, true));
        assert_eq!(Framing::Empty.consume(b"x").unwrap(), (0, true));
        assert_eq!(Framing::UntilClose.consume(b"xy").unwrap(), (2, false));
    }
}
