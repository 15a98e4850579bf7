//! HTTP/2 frame layout (RFC 9113 section 4 and 6): the 9-octet header, and writers for the
//! frames the server sends.

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADER_LEN: usize = 9;
/// The frame size every peer accepts; the proxy announces no larger one.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// Windows start here until SETTINGS or WINDOW_UPDATE say otherwise.
pub const DEFAULT_WINDOW: i64 = 65_535;
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

pub mod setting {
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (RFC 9113 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    EnhanceYourCalm = 0xb,
}

impl Reason {
    /// The RFC's name for the code.
    pub fn name(self) -> &'static str {
        match self {
            Reason::NoError => "NO_ERROR",
            Reason::ProtocolError => "PROTOCOL_ERROR",
            Reason::InternalError => "INTERNAL_ERROR",
            Reason::FlowControlError => "FLOW_CONTROL_ERROR",
            Reason::StreamClosed => "STREAM_CLOSED",
            Reason::FrameSizeError => "FRAME_SIZE_ERROR",
            Reason::RefusedStream => "REFUSED_STREAM",
            Reason::Cancel => "CANCEL",
            Reason::CompressionError => "COMPRESSION_ERROR",
            Reason::EnhanceYourCalm => "ENHANCE_YOUR_CALM",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // The reserved bit is ignored on receipt.
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

pub fn push_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

pub fn push_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    push_header(out, settings.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn push_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    push_header(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub fn push_rst_stream(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    push_header(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub fn push_goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    push_header(out, 8, kind::GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

/// The payload of a frame that may be padded, without its padding; None when the padding is
/// longer than the frame (a PROTOCOL_ERROR).
pub fn unpadded<'a>(head: &FrameHeader, payload: &'a [u8]) -> Option<&'a [u8]> {
    if !head.has(flag::PADDED) {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_ignores_the_reserved_bit() {
        let mut out = Vec::new();
        push_header(&mut out, 0x01_02_03, kind::HEADERS, 0x25, 7);
        out[5] |= 0x80;
        let head = FrameHeader::parse(out[..9].try_into().unwrap());
        assert_eq!(
            head,
            FrameHeader {
                len: 0x01_02_03,
                kind: kind::HEADERS,
                flags: 0x25,
                stream: 7
            }
        );
        assert!(head.has(flag::END_HEADERS) && head.has(flag::PRIORITY));
    }

    #[test]
    fn padding_is_removed_or_rejected() {
        let padded = FrameHeader {
            len: 5,
            kind: kind::DATA,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(unpadded(&padded, &[2, b'a', b'b', 0, 0]), Some(&b"ab"[..]));
        assert_eq!(unpadded(&padded, &[5, b'a', 0, 0, 0]), None);
        assert_eq!(unpadded(&padded, &[]), None);
    }
}
