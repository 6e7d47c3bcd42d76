//! gRPC calls with bytes the test chooses: to send what a well-behaved client never would
//! (bytes that do not decode, messages over the size limit) and see the status it gets.

use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Sends and receives message bodies as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn grpc(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX)
}

fn path(method: &str) -> tonic::codegen::http::uri::PathAndQuery {
    method
        .parse()
        .unwrap_or_else(|e| panic!("bad method path {method}: {e}"))
}

/// A unary call of `method` (e.g. `/carpool.v1.Tasks/Submit`) with `body` as the request.
pub async fn unary(channel: Channel, method: &str, body: impl Into<Bytes>) -> Result<Bytes, Status> {
    let mut grpc = grpc(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(tonic::Request::new(body.into()), path(method), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A streaming call of `method` whose request stream is `messages` and then stays open
/// (as a worker's does); returns the response stream.
pub async fn streaming(
    channel: Channel,
    method: &str,
    messages: Vec<Bytes>,
) -> Result<Streaming<Bytes>, Status> {
    let mut grpc = grpc(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let requests = futures::stream::iter(messages).chain(futures::stream::pending());
    grpc.streaming(tonic::Request::new(requests), path(method), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// The responses of `stream` until it ends, and the status it ends with (OK for a clean end).
pub async fn drain(mut stream: Streaming<Bytes>) -> (Vec<Bytes>, Status) {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(crate::WAIT, stream.message()).await {
            Ok(Ok(Some(m))) => got.push(m),
            Ok(Ok(None)) => return (got, Status::ok("")),
            Ok(Err(status)) => return (got, status),
            Err(_) => panic!("the stream neither ended nor answered within {:?}", crate::WAIT),
        }
    }
}
