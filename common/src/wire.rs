//! The discovery response as the controller sends it: each resource already encoded once per
//! snapshot and shared by every stream, so a fleet of proxies costs one encoding of a large
//! route table, not one deep copy per proxy. On the wire it is exactly a `DeltaDiscoveryResponse`
//! (an embedded message and a length-delimited bytes field are encoded alike), which is what
//! proxies, grpcurl and reflection see.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, bytes as pbytes, skip_field, string};
use prost::{DecodeError, Message};

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

impl Message for EncodedDeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.system_version_info.is_empty() {
            string::encode(1, &self.system_version_info, buf);
        }
        if !self.type_url.is_empty() {
            string::encode(2, &self.type_url, buf);
        }
        pbytes::encode_repeated(3, &self.resources, buf);
        string::encode_repeated(4, &self.removed_resources, buf);
        if !self.nonce.is_empty() {
            string::encode(5, &self.nonce, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => string::merge(wire_type, &mut self.system_version_info, buf, ctx),
            2 => string::merge(wire_type, &mut self.type_url, buf, ctx),
            3 => pbytes::merge_repeated(wire_type, &mut self.resources, buf, ctx),
            4 => string::merge_repeated(wire_type, &mut self.removed_resources, buf, ctx),
            5 => string::merge(wire_type, &mut self.nonce, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let opt = |tag: u32, s: &String| {
            if s.is_empty() {
                0
            } else {
                string::encoded_len(tag, s)
            }
        };
        opt(1, &self.system_version_info)
            + opt(2, &self.type_url)
            + pbytes::encoded_len_repeated(3, &self.resources)
            + string::encoded_len_repeated(4, &self.removed_resources)
            + opt(5, &self.nonce)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The Discovery service with [`EncodedDeltaResponse`] as its response type (generated from the
/// same proto; see build.rs).
#[allow(clippy::all, missing_docs)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/wire/rauta.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1::resource::Payload;
    use crate::api::v1::{Cluster, DeltaDiscoveryResponse, Resource};

    #[test]
    fn decodes_as_the_public_response() {
        let resources: Vec<Resource> = ["a", "b"]
            .into_iter()
            .map(|name| Resource {
                name: name.into(),
                version: format!("v-{name}"),
                payload: Some(Payload::Cluster(Cluster {
                    name: name.into(),
                    ..Default::default()
                })),
            })
            .collect();
        let wire = EncodedDeltaResponse {
            system_version_info: "7".into(),
            type_url: "type.googleapis.com/rauta.v1.Cluster".into(),
            resources: resources.iter().map(|r| r.encode_to_vec().into()).collect(),
            removed_resources: vec!["gone".into()],
            nonce: "3".into(),
        };
        let bytes = wire.encode_to_vec();
        assert_eq!(bytes.len(), wire.encoded_len());
        let public = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
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
        assert_eq!(
            EncodedDeltaResponse::decode(public.encode_to_vec().as_slice()).unwrap(),
            wire,
            "and back"
        );
        assert_eq!(EncodedDeltaResponse::default().encoded_len(), 0);
    }
}
