//! HPACK (RFC 7541). The decoder is complete: clients index and Huffman-code as they like. The
//! encoder writes every field as a literal without indexing and without Huffman coding, which
//! any decoder takes: it keeps no table in step with the client's and spends no CPU on
//! compression (response heads are small next to their bodies).

use std::collections::VecDeque;

use super::huffman::{self, HuffmanError};

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// An entry's size counts its name, its value and 32 octets (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("index {0} is not in the table")]
    Index(usize),
    #[error("table size update to {0} is over the limit")]
    TableSize(usize),
    #[error("table size update after the first field")]
    LateSizeUpdate,
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// The decoding context of one connection: the dynamic table the client's encoder fills.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is the front.
    entries: VecDeque<Entry>,
    size: usize,
    /// The current maximum, as the client's last size update set it.
    max: usize,
    /// The ceiling the proxy announced (SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Decodes one complete header block, handing each field to `emit` in order. After an
    /// error the context is out of step with the client's: the connection must end.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut emit: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut first = true;
        let mut name_buf = std::mem::take(&mut self.name_buf);
        let mut value_buf = std::mem::take(&mut self.value_buf);
        let result = (|| {
            while let Some(&byte) = block.first() {
                if byte & 0x80 != 0 {
                    let index = integer(&mut block, 7)?;
                    let (name, value) = self.get(index)?;
                    emit(name, value);
                } else if byte & 0xe0 == 0x20 {
                    let size = integer(&mut block, 5)?;
                    if !first {
                        return Err(HpackError::LateSizeUpdate);
                    }
                    if size > self.limit {
                        return Err(HpackError::TableSize(size));
                    }
                    self.max = size;
                    self.evict(0);
                    continue;
                } else {
                    let indexing = byte & 0xc0 == 0x40;
                    let index = integer(&mut block, if indexing { 6 } else { 4 })?;
                    let name_raw = if index == 0 {
                        Some(string(&mut block)?)
                    } else {
                        None
                    };
                    let value = literal(string(&mut block)?, &mut value_buf)?;
                    if let Some(name_raw) = name_raw {
                        let name = literal(name_raw, &mut name_buf)?;
                        if indexing {
                            self.insert(name, value, &mut emit);
                        } else {
                            emit(name, value);
                        }
                    } else {
                        // The name is looked up before a new entry can evict it.
                        let (name, _) = self.get(index)?;
                        if indexing {
                            let name: Box<[u8]> = name.into();
                            self.insert(&name, value, &mut emit);
                        } else {
                            emit(name, value);
                        }
                    }
                }
                first = false;
            }
            Ok(())
        })();
        self.name_buf = name_buf;
        self.value_buf = value_buf;
        result
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::Index(0)),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .entries
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::Index(index)),
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8], emit: &mut impl FnMut(&[u8], &[u8])) {
        emit(name, value);
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict(size);
        // An entry larger than the table empties it and is not added (section 4.4).
        if size <= self.max {
            self.entries.push_front((name.into(), value.into()));
            self.size += size;
        }
    }

    /// Evicts the oldest entries until `room` more octets fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// Reads an integer with an N-bit prefix (section 5.1).
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let (&first, rest) = block.split_first().ok_or(HpackError::Truncated)?;
    *block = rest;
    let mask = (1u8 << prefix) - 1;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let (&b, rest) = block.split_first().ok_or(HpackError::Truncated)?;
        *block = rest;
        // Four continuation bytes carry 28 bits: more than any length or index needs.
        if shift > 21 {
            return Err(HpackError::Overflow);
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Reads a string literal (section 5.2): whether it is Huffman-coded, and its octets.
fn string<'a>(block: &mut &'a [u8]) -> Result<(bool, &'a [u8]), HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    Ok((huffman, raw))
}

/// A string literal's value; a Huffman-coded one is decoded into `buf`.
fn literal<'a>(
    (huffman, raw): (bool, &'a [u8]),
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], HpackError> {
    if huffman {
        buf.clear();
        huffman::decode(raw, buf)?;
        Ok(buf)
    } else {
        Ok(raw)
    }
}

fn push_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, mut value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    push_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Writes `:status`.
pub fn encode_status(out: &mut Vec<u8>, status: u16) {
    let indexed = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if indexed != 0 {
        out.push(0x80 | indexed);
        return;
    }
    let mut digits = [0u8; 3];
    let mut s = status.min(999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (s % 10) as u8;
        s /= 10;
    }
    push_integer(out, 0, 4, 8);
    push_string(out, &digits);
}

/// Writes a field as a literal without indexing, naming it by the static table when it is
/// there.
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match static_name(name) {
        Some(index) => push_integer(out, 0, 4, index),
        None => {
            out.push(0);
            push_string(out, name);
        }
    }
    push_string(out, value);
}

/// The static table index of a (lower-case) field name commonly in responses and trailers.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"accept-ranges" => 18,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"date" => 33,
        b"etag" => 34,
        b"expires" => 36,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"proxy-authenticate" => 48,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h2::hex;

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        d.decode(block, |n, v| {
            fields.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(fields)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman() {
        let mut d = Decoder::new(4096);
        let first = decode(
            &mut d,
            &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        );
        assert_eq!(
            first.unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.size, 57);
        let second = decode(&mut d, &hex("8286 84be 5808 6e6f 2d63 6163 6865"));
        assert_eq!(
            second.unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        let third = decode(
            &mut d,
            &hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"),
        );
        assert_eq!(
            third.unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn rfc_7541_c6_responses_with_huffman_and_eviction() {
        let mut d = Decoder::new(256);
        let blocks = [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ff c1 c0 bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ];
        let mut last = Vec::new();
        for b in blocks {
            last = decode(&mut d, &hex(b)).unwrap();
        }
        assert_eq!(
            last,
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ])
        );
        assert_eq!(d.size, 215);
        assert_eq!(d.entries.len(), 3);
    }

    #[test]
    fn bad_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, &[0x80]), Err(HpackError::Index(0)));
        assert_eq!(decode(&mut d, &[0xbe]), Err(HpackError::Index(62)));
        assert_eq!(
            decode(&mut d, &[0x04, 0x05, b'a']),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            decode(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(HpackError::Overflow)
        );
        // A size update over the announced limit, and one after a field.
        assert_eq!(
            decode(&mut d, &[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableSize(4097))
        );
        assert_eq!(
            decode(&mut d, &[0x82, 0x20]),
            Err(HpackError::LateSizeUpdate)
        );
        assert!(decode(&mut d, &[0x20, 0x82]).is_ok());
    }

    #[test]
    fn random_blocks_never_panic_and_the_table_stays_bounded() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut d = Decoder::new(256);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut block: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Mostly well-formed starts, so decoding gets past the first byte.
            if let Some(first) = block.first_mut() {
                *first = [0x82, 0x40, 0x00, 0x10, 0x3f, *first][rng.random_range(0..6)];
            }
            let _ = decode(&mut d, &block);
            assert!(d.size <= d.max && d.max <= d.limit);
        }
    }

    #[test]
    fn encoded_fields_decode_back() {
        let mut out = Vec::new();
        for status in [200, 204, 302, 404, 503, 101] {
            encode_status(&mut out, status);
        }
        let long = "x".repeat(300);
        encode_field(&mut out, b"content-type", b"text/plain");
        encode_field(&mut out, b"x-custom", long.as_bytes());
        encode_field(&mut out, b"www-authenticate", b"Basic");
        let mut d = Decoder::new(4096);
        let fields = decode(&mut d, &out).unwrap();
        let statuses: Vec<&str> = fields[..6].iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(statuses, ["200", "204", "302", "404", "503", "101"]);
        assert_eq!(
            fields[6..],
            pairs(&[
                ("content-type", "text/plain"),
                ("x-custom", &long),
                ("www-authenticate", "Basic")
            ])
        );
        assert_eq!(d.size, 0, "nothing indexed");
    }
}
