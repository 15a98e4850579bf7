//! HPACK's Huffman code (RFC 7541 section 5.2, Appendix B), decoding only: the proxy sends
//! its strings raw, which the RFC allows, and spends no CPU on compressing them.
//!
//! The code is canonical: codes of one length are consecutive and ordered by symbol, and each
//! length starts where the previous left off, shifted. So the code lengths alone define it,
//! and decoding compares the next bits against the first code of each length.

use std::sync::OnceLock;

/// Code length in bits of each symbol, 0..=255 and EOS (256), from RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const MIN_LEN: usize = 5;
const MAX_LEN: usize = 30;
const EOS: u16 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("Huffman string contains EOS")]
    Eos,
    #[error("Huffman string has invalid padding")]
    Padding,
}

/// Per code length: the first code, how many codes, and where their symbols start in
/// `symbols` (all symbols ordered by code).
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut c = Canonical {
            first: [0; MAX_LEN + 1],
            count: [0; MAX_LEN + 1],
            offset: [0; MAX_LEN + 1],
            symbols: [0; 257],
        };
        for &len in &LENGTHS {
            c.count[usize::from(len)] += 1;
        }
        let mut code = 0u32;
        let mut offset = 0u16;
        for len in MIN_LEN..=MAX_LEN {
            c.first[len] = code;
            c.offset[len] = offset;
            code = (code + c.count[len]) << 1;
            offset += c.count[len] as u16;
        }
        let mut next = c.offset;
        for (symbol, &len) in LENGTHS.iter().enumerate() {
            let slot = &mut next[usize::from(len)];
            c.symbols[usize::from(*slot)] = symbol as u16;
            *slot += 1;
        }
        c
    })
}

/// Appends the decoded form of `input` to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let table = canonical();
    out.reserve(input.len() * 8 / 5);
    // Bits not consumed yet, right-aligned in `acc`.
    let mut acc: u64 = 0;
    let mut bits = 0usize;
    let mut bytes = input.iter();
    loop {
        while bits <= 56 {
            match bytes.next() {
                Some(&b) => {
                    acc = (acc << 8) | u64::from(b);
                    bits += 8;
                }
                None => break,
            }
        }
        if bits < MIN_LEN {
            break;
        }
        let mut matched = None;
        for len in MIN_LEN..=MAX_LEN.min(bits) {
            let code = ((acc >> (bits - len)) & ((1u64 << len) - 1)) as u32;
            let index = code.wrapping_sub(table.first[len]);
            if index < table.count[len] {
                matched = Some((
                    len,
                    table.symbols[usize::from(table.offset[len]) + index as usize],
                ));
                break;
            }
        }
        match matched {
            Some((_, EOS)) => return Err(HuffmanError::Eos),
            Some((len, symbol)) => {
                out.push(symbol as u8);
                bits -= len;
            }
            // The code is complete (every 30 bits start with a code), so this is the end of
            // the input: padding, checked below.
            None => break,
        }
    }
    // Padding: fewer than 8 bits, all ones (the start of EOS).
    let mask = (1u64 << bits) - 1;
    if bits > 7 || acc & mask != mask {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn encode(input: &[u8], out: &mut Vec<u8>) {
    let table = canonical();
    // The code of each symbol, from its position among symbols ordered by code.
    let mut codes = [0u32; 257];
    for len in MIN_LEN..=MAX_LEN {
        for i in 0..table.count[len] {
            let symbol = table.symbols[usize::from(table.offset[len]) + i as usize];
            codes[usize::from(symbol)] = table.first[len] + i;
        }
    }
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in input {
        let len = u32::from(LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(codes[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::h2::hex;

    #[test]
    fn rfc_7541_examples_decode() {
        // Appendix C.4 and C.6.
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
            (
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 \
                 3160 65c0 03ed 4ee5 b106 3d50 07",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ];
        for (encoded, text) in cases {
            let mut out = Vec::new();
            decode(&hex(encoded), &mut out).unwrap();
            assert_eq!(out, text.as_bytes());
            let mut again = Vec::new();
            encode(text.as_bytes(), &mut again);
            assert_eq!(again, hex(encoded), "{text}");
        }
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for window in [1usize, 2, 3, 7, 64, 512] {
            for chunk in all.chunks(window) {
                let mut encoded = Vec::new();
                encode(chunk, &mut encoded);
                let mut out = Vec::new();
                decode(&encoded, &mut out).unwrap();
                assert_eq!(out, chunk);
            }
        }
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        // "0" is 00000 (5 bits); padded with zeros instead of ones.
        assert_eq!(decode(&[0x00], &mut Vec::new()), Err(HuffmanError::Padding));
        // Eight or more bits of padding.
        assert_eq!(
            decode(&[0x07, 0xff], &mut Vec::new()),
            Err(HuffmanError::Padding)
        );
        // EOS itself: 30 ones.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(HuffmanError::Eos)
        );
        assert_eq!(decode(&[], &mut Vec::new()), Ok(()));
    }
}
