//! HTTP/2's wire format (RFC 9113 frames, RFC 7541 HPACK and its Huffman code).

pub mod frame;
pub mod hpack;
mod huffman;

/// Octets from hex digits, spaces ignored (the RFCs' examples).
#[cfg(test)]
fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
