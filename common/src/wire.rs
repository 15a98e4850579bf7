//! The discovery response as the controller sends it: each resource encoded once per snapshot
//! and shared by every stream, so a fleet of proxies costs one encoding of a large route table,
//! not one copy (and one retained encode buffer) per proxy. On the wire it is exactly a gRPC
//! message carrying a `rauta.v1.DeltaDiscoveryResponse` (an embedded message and a
//! length-delimited bytes field are encoded alike), which is what proxies, grpcurl and
//! reflection see.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, string};

/// Resources at most this large are copied into the surrounding chunk; larger ones are sent as
/// their own shared chunk.
const COPY_BELOW: usize = 16 * 1024;

/// `rauta.v1.DeltaDiscoveryResponse` with pre-encoded `rauta.v1.Resource`s. Field numbers
/// follow proto/rauta/v1/discovery.proto.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedDeltaResponse {
    pub system_version_info: String,
    pub type_url: String,
    /// Each an encoded `rauta.v1.Resource`.
    pub resources: Vec<Bytes>,
    pub removed_resources: Vec<String>,
    pub nonce: String,
}

impl EncodedDeltaResponse {
    /// The response as one length-prefixed gRPC message (uncompressed), in chunks to send in
    /// order: large resources are the shared bytes themselves, never copied.
    pub fn grpc_message(&self) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        let mut pending = BytesMut::with_capacity(256);
        if !self.system_version_info.is_empty() {
            string::encode(1, &self.system_version_info, &mut pending);
        }
        if !self.type_url.is_empty() {
            string::encode(2, &self.type_url, &mut pending);
        }
        for resource in &self.resources {
            encode_key(3, WireType::LengthDelimited, &mut pending);
            encode_varint(resource.len() as u64, &mut pending);
            if resource.len() < COPY_BELOW {
                pending.put_slice(resource);
            } else {
                chunks.push(pending.split().freeze());
                chunks.push(resource.clone());
            }
        }
        string::encode_repeated(4, &self.removed_resources, &mut pending);
        if !self.nonce.is_empty() {
            string::encode(5, &self.nonce, &mut pending);
        }
        chunks.push(pending.freeze());
        chunks.retain(|c| !c.is_empty());
        let len: usize = chunks.iter().map(Bytes::len).sum();
        // gRPC framing: compressed flag, then the message length as a big-endian u32. Snapshots
        // are far below 4 GiB; saturating keeps a corrupt size from wrapping silently.
        let mut header = BytesMut::with_capacity(5);
        header.put_u8(0);
        header.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        chunks.insert(0, header.freeze());
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1::resource::Payload;
    use crate::api::v1::{Cluster, DeltaDiscoveryResponse, Resource};
    use prost::Message;

    #[test]
    fn frames_the_public_response() {
        // One small resource (copied) and one large one (shared).
        let resources: Vec<Resource> = [("a", 10), ("b", 40_000)]
            .into_iter()
            .map(|(name, size)| Resource {
                name: name.into(),
                version: format!("v-{name}"),
                payload: Some(Payload::Cluster(Box::new(Cluster {
                    name: name.repeat(size),
                    ..Default::default()
                }))),
            })
            .collect();
        let encoded: Vec<Bytes> = resources.iter().map(|r| r.encode_to_vec().into()).collect();
        let wire = EncodedDeltaResponse {
            system_version_info: "7".into(),
            type_url: "type.googleapis.com/rauta.v1.Cluster".into(),
            resources: encoded.clone(),
            removed_resources: vec!["gone".into()],
            nonce: "3".into(),
        };
        let chunks = wire.grpc_message();
        assert!(
            chunks.iter().any(|c| c.as_ptr() == encoded[1].as_ptr()),
            "the large resource is sent as the shared bytes"
        );
        let message: Vec<u8> = chunks.concat();
        assert_eq!(message[0], 0, "not compressed");
        let len = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
        assert_eq!(len, message.len() - 5);
        let public = DeltaDiscoveryResponse::decode(&message[5..]).unwrap();
        assert_eq!(
            public,
            DeltaDiscoveryResponse {
                system_version_info: "7".into(),
                type_url: "type.googleapis.com/rauta.v1.Cluster".into(),
                resources,
                removed_resources: vec!["gone".into()],
                nonce: "3".into(),
            }
        );
        let empty = EncodedDeltaResponse::default().grpc_message().concat();
        assert_eq!(empty, [0, 0, 0, 0, 0]);
    }
}
