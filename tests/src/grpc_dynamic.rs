//! A grpcurl-like client: discovers services through the server's reflection, builds requests
//! from JSON and prints answers as JSON, with no generated stubs. Tests use it so that what
//! they check is what a person with grpcurl sees.

use std::collections::BTreeMap;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Encodes and decodes messages known only by their descriptors.
#[derive(Clone)]
struct DynamicCodec(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicCodec;
    type Decoder = DynamicCodec;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.clone()
    }
}

impl Encoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for DynamicCodec {
    type Item = DynamicMessage;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Self::Error> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// A connection plus everything reflection told us.
pub struct DynamicClient {
    channel: Channel,
    pool: DescriptorPool,
    services: Vec<String>,
}

async fn reflect(channel: &Channel, request: MessageRequest) -> Result<MessageResponse, String> {
    let mut client = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    answers
        .next()
        .await
        .ok_or("reflection: no answer")?
        .map_err(|e| e.to_string())?
        .message_response
        .ok_or_else(|| "reflection: empty answer".to_owned())
}

impl DynamicClient {
    /// `grpcurl list`, then every file the services need (`describe`).
    pub async fn connect(url: &str) -> Result<DynamicClient, String> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let services = match reflect(&channel, MessageRequest::ListServices(String::new())).await? {
            MessageResponse::ListServicesResponse(r) => {
                r.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => return Err(format!("list services: {other:?}")),
        };
        let mut files: BTreeMap<String, prost_types::FileDescriptorProto> = BTreeMap::new();
        let mut wanted: Vec<MessageRequest> = services
            .iter()
            .map(|s| MessageRequest::FileContainingSymbol(s.clone()))
            .collect();
        while let Some(request) = wanted.pop() {
            let MessageResponse::FileDescriptorResponse(r) = reflect(&channel, request).await?
            else {
                return Err("reflection: expected file descriptors".into());
            };
            for bytes in r.file_descriptor_proto {
                let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                    .map_err(|e| e.to_string())?;
                for dep in &file.dependency {
                    if !files.contains_key(dep) {
                        wanted.push(MessageRequest::FileByFilename(dep.clone()));
                    }
                }
                files.insert(file.name().to_owned(), file);
            }
        }
        let mut pool = DescriptorPool::new();
        pool.add_file_descriptor_protos(files.into_values())
            .map_err(|e| e.to_string())?;
        Ok(DynamicClient {
            channel,
            pool,
            services,
        })
    }

    pub fn services(&self) -> &[String] {
        &self.services
    }

    fn method(&self, full: &str) -> Result<MethodDescriptor, String> {
        let (service, method) = full.split_once('/').ok_or("expected Service/Method")?;
        self.pool
            .get_service_by_name(service)
            .ok_or_else(|| format!("no service {service}"))?
            .methods()
            .find(|m| m.name() == method)
            .ok_or_else(|| format!("no method {full}"))
    }

    fn request(&self, method: &MethodDescriptor, json: &str) -> Result<DynamicMessage, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(method.input(), &mut de).map_err(|e| e.to_string())
    }

    fn to_json(message: &DynamicMessage) -> Result<serde_json::Value, String> {
        serde_json::to_value(message).map_err(|e| e.to_string())
    }

    /// `grpcurl -d JSON ADDR Service/Method` for a unary method.
    pub async fn call(&self, full: &str, json: &str) -> Result<serde_json::Value, String> {
        let method = self.method(full)?;
        let request = self.request(&method, json)?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| e.to_string())?;
        let path =
            http::uri::PathAndQuery::try_from(format!("/{full}")).map_err(|e| e.to_string())?;
        let response = grpc
            .unary(
                tonic::Request::new(request),
                path,
                DynamicCodec(method.output()),
            )
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Self::to_json(response.get_ref())
    }

    /// A server-streaming call: the stream of answers as JSON.
    pub async fn stream(
        &self,
        full: &str,
        json: &str,
    ) -> Result<impl tokio_stream::Stream<Item = Result<serde_json::Value, String>> + use<>, String>
    {
        let method = self.method(full)?;
        if !method.is_server_streaming() {
            return Err(format!("{full} is not server-streaming"));
        }
        let request = self.request(&method, json)?;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| e.to_string())?;
        let path =
            http::uri::PathAndQuery::try_from(format!("/{full}")).map_err(|e| e.to_string())?;
        let response = grpc
            .server_streaming(
                tonic::Request::new(request),
                path,
                DynamicCodec(method.output()),
            )
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(response.into_inner().map(|m| match m {
            Ok(m) => Self::to_json(&m),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        }))
    }
}
