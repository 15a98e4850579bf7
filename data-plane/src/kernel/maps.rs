//! The XDP program's map layouts, mirrored from `data-plane/xdp/rauta_xdp.h` (change both
//! together; the size checks below catch a field added on one side only), and the values
//! user space computes for it: keys and the answers' checksums.

/// `RAUTA_ANSWER_MAX`: the size of an answer's buffer (the smallest MSS).
pub const ANSWER_MAX: usize = 536;
/// The largest answer put in it: one segment at the smallest MSS even with the 12 bytes of
/// timestamp options the reply carries when the client sent them (the MSS counts neither).
pub const ANSWER_SENT_MAX: usize = ANSWER_MAX - 12;
/// `RAUTA_HOST_MAX`, `RAUTA_TARGET_MAX`: longer hosts and targets get no kernel entry.
pub const HOST_MAX: usize = 64;
pub const TARGET_MAX: usize = 128;

pub const METHOD_GET: u32 = 1;
pub const METHOD_HEAD: u32 = 2;

/// `enum rauta_counter`, in index order, with the names the metrics use.
pub const COUNTERS: [&str; 9] = [
    "answered",
    "no_entry",
    "expired",
    "request_shape",
    "tcp_options",
    "too_large",
    "owned_flow",
    "handshake_ack_dropped",
    "errors",
];

/// `struct rauta_answer_key`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnswerKey {
    pub port: u16,
    pub pad: u16,
    pub host: [u8; HOST_MAX],
    pub target: [u8; TARGET_MAX],
}

/// `struct rauta_answer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AnswerValue {
    pub expires_ns: u64,
    pub methods: u32,
    pub len: u16,
    pub head_len: u16,
    pub csum_full: u32,
    pub csum_head: u32,
    pub data: [u8; ANSWER_MAX],
}

const _: () = assert!(std::mem::size_of::<AnswerKey>() == 4 + HOST_MAX + TARGET_MAX);
const _: () = assert!(std::mem::size_of::<AnswerValue>() == 24 + ANSWER_MAX);

// SAFETY: plain `#[repr(C)]` data without padding (checked above) or pointers, as aya requires
// of map keys and values.
unsafe impl aya::Pod for AnswerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AnswerValue {}

impl AnswerKey {
    /// The key of (local port, lower-case host or "" for any host, exact target); `None` when
    /// the host or target is longer than the program's key holds.
    pub fn new(port: u16, host: &str, target: &str) -> Option<AnswerKey> {
        let mut key = AnswerKey {
            port,
            pad: 0,
            host: [0; HOST_MAX],
            target: [0; TARGET_MAX],
        };
        key.host
            .get_mut(..host.len())?
            .copy_from_slice(host.as_bytes());
        key.target
            .get_mut(..target.len())?
            .copy_from_slice(target.as_bytes());
        Some(key)
    }

    pub fn host(&self) -> String {
        until_nul(&self.host)
    }

    pub fn target(&self) -> String {
        until_nul(&self.target)
    }
}

fn until_nul(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl std::fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}{}", self.port, self.host(), self.target())
    }
}

impl AnswerValue {
    /// The map value for a rendered response whose head is its first `head_len` bytes; `None`
    /// when it does not fit one segment.
    pub fn new(response: &[u8], head_len: usize, methods: u32, expires_ns: u64) -> Option<Self> {
        if response.len() > ANSWER_SENT_MAX || head_len > response.len() {
            return None;
        }
        let mut data = [0; ANSWER_MAX];
        data[..response.len()].copy_from_slice(response);
        Some(AnswerValue {
            expires_ns,
            methods,
            len: u16::try_from(response.len()).ok()?,
            head_len: u16::try_from(head_len).ok()?,
            csum_full: ones_complement_sum(response),
            csum_head: ones_complement_sum(&response[..head_len]),
            data,
        })
    }
}

/// The ones'-complement sum of 16-bit words in host byte order (an odd last byte padded with
/// zero), folded to 16 bits: what `bpf_csum_diff` would give for these bytes, so the program
/// adds it to the TCP checksum instead of summing the body itself.
pub fn ones_complement_sum(bytes: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut words = bytes.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_the_internet_checksum() {
        // RFC 1071's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (in network order).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let sum = ones_complement_sum(&bytes) as u16;
        assert_eq!(sum.to_ne_bytes(), [0xdd, 0xf2]);
        // An odd length is padded with a zero byte.
        assert_eq!(
            ones_complement_sum(&[0x01, 0x02, 0x03]),
            ones_complement_sum(&[0x01, 0x02, 0x03, 0x00])
        );
    }

    #[test]
    fn keys_are_zero_padded_and_bounded() {
        let key = AnswerKey::new(80, "example.com", "/x").unwrap();
        assert_eq!(key.host(), "example.com");
        assert_eq!(key.target(), "/x");
        assert!(key.host[11..].iter().all(|b| *b == 0));
        assert!(AnswerKey::new(80, &"a".repeat(HOST_MAX + 1), "/").is_none());
        assert!(AnswerKey::new(80, "", &"/".repeat(TARGET_MAX + 1)).is_none());
        assert!(AnswerValue::new(&[b'x'; ANSWER_SENT_MAX + 1], 0, 1, 0).is_none());
        assert!(AnswerValue::new(&[b'x'; ANSWER_SENT_MAX], 0, 1, 0).is_some());
    }
}
