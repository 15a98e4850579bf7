//! Response compression: a body wrapper that encodes the frames of another body as they come
//! (gzip, brotli or zstd, by the `compression-codecs` encoders of async-compression, driven
//! synchronously: no task, no extra copy through a reader). Output is sent when the encoder
//! has a block ready, and flushed whenever the inner body has nothing more for now, so a
//! slowly streamed answer is not held back until the encoder's buffers fill.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use compression_codecs::core::Level;
use compression_codecs::core::util::{PartialBuffer, WriteBuffer};
use compression_codecs::{BrotliEncoder, EncodeV2, GzipEncoder, ZstdEncoder};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

/// Scratch output per encoder call.
const CHUNK: usize = 16 * 1024;
/// Brotli's window: 256 KiB.
const BROTLI_WINDOW_LOG: i32 = 18;
/// zstd's window (1 MiB) and, two less, its hash and chain tables (256 Ki entries each).
const ZSTD_LOG: u32 = 20;

/// A content coding the proxy can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// The token in Accept-Encoding and Content-Encoding.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// A new encoder at `level` (None: the fast level a proxy wants, as nginx's gzip 1).
    fn encoder(self, level: Option<i32>) -> Box<dyn EncodeV2 + Send> {
        let level = Level::Precise(level.unwrap_or(1));
        match self {
            Encoding::Gzip => Box::new(GzipEncoder::new(level.into())),
            // Windows and tables bounded whatever the level: an encoder per response in
            // flight, and a response of unknown size would get zstd's largest (level 22:
            // about 770 MB of tables) or brotli's 16 MB window.
            Encoding::Brotli => Box::new(BrotliEncoder::new(
                compression_codecs::brotli::params::EncoderParams::default()
                    .quality(level)
                    .window_size(BROTLI_WINDOW_LOG),
            )),
            Encoding::Zstd => {
                use compression_codecs::zstd::params::CParameter;
                let level = match level {
                    Level::Precise(l) => l,
                    _ => 1,
                };
                Box::new(ZstdEncoder::new_with_params(
                    level,
                    &[
                        CParameter::window_log(ZSTD_LOG),
                        CParameter::hash_log(ZSTD_LOG - 2),
                        CParameter::chain_log(ZSTD_LOG - 2),
                    ],
                ))
            }
        }
    }
}

/// A body whose data is encoded on the way through.
pub struct CompressedBody<B> {
    inner: B,
    encoder: Box<dyn EncodeV2 + Send>,
    scratch: Box<[u8]>,
    /// Input given to the encoder since its last flush.
    unflushed: bool,
    /// The inner body's trailers, sent after the encoded stream's end.
    trailers: Option<HeaderMap>,
    state: State,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Streaming,
    /// The encoded stream is complete; only trailers may follow.
    Finished,
    Done,
}

impl<B> std::fmt::Debug for CompressedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressedBody")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<B> CompressedBody<B> {
    pub fn new(inner: B, encoding: Encoding, level: Option<i32>) -> Self {
        CompressedBody {
            inner,
            encoder: encoding.encoder(level),
            scratch: vec![0; CHUNK].into_boxed_slice(),
            unflushed: false,
            trailers: None,
            state: State::Streaming,
        }
    }

    /// Encodes `input` whole, appending what the encoder produces to `out`.
    fn encode(&mut self, input: &[u8], out: &mut BytesMut) -> io::Result<()> {
        let mut input = PartialBuffer::new(input);
        while !input.unwritten().is_empty() {
            let mut output = WriteBuffer::new_initialized(&mut self.scratch);
            self.encoder.encode(&mut input, &mut output)?;
            out.extend_from_slice(output.written());
        }
        self.unflushed = true;
        Ok(())
    }

    /// Flushes (`end`: finishes) the encoder into `out`.
    fn drain(&mut self, out: &mut BytesMut, end: bool) -> io::Result<()> {
        loop {
            let mut output = WriteBuffer::new_initialized(&mut self.scratch);
            let done = if end {
                self.encoder.finish(&mut output)?
            } else {
                self.encoder.flush(&mut output)?
            };
            out.extend_from_slice(output.written());
            if done {
                self.unflushed = false;
                return Ok(());
            }
        }
    }
}

impl<B> Body for CompressedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<io::Error>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let mut out = BytesMut::new();
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Finished => {
                    this.state = State::Done;
                    return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                State::Streaming => {}
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.encode(&data, &mut out)?,
                    Err(frame) => {
                        // Trailers end the data: finish the stream, send them after it.
                        this.trailers = frame.into_trailers().ok();
                        this.drain(&mut out, true)?;
                        this.state = State::Finished;
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.drain(&mut out, true)?;
                    this.state = State::Finished;
                }
                Poll::Pending => {
                    // Nothing more for now: what was given so far goes out.
                    if out.is_empty() && this.unflushed {
                        this.drain(&mut out, false)?;
                    }
                    if out.is_empty() {
                        return Poll::Pending;
                    }
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compression_codecs::{BrotliDecoder, Decode, GzipDecoder, ZstdDecoder};
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// Decodes a whole stream.
    fn decode(mut decoder: impl Decode, data: &[u8]) -> Vec<u8> {
        let mut input = PartialBuffer::new(data);
        let mut decoded = Vec::new();
        let mut scratch = vec![0u8; CHUNK];
        loop {
            let mut output = PartialBuffer::new(&mut scratch[..]);
            let end = decoder.decode(&mut input, &mut output).unwrap();
            decoded.extend_from_slice(output.written());
            if end {
                return decoded;
            }
            assert!(
                !input.unwritten().is_empty() || output.written_len() > 0,
                "stream ended early"
            );
        }
    }

    /// A body of the given chunks, one frame each.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&str]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from(p.to_string())).collect())
    }

    #[tokio::test]
    async fn every_encoding_round_trips() {
        let text = "{\"hello\": \"world\"} ".repeat(2000);
        let parts: Vec<&str> = text
            .as_bytes()
            .chunks(777)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let levels = [
            (Encoding::Gzip, None),
            (Encoding::Brotli, None),
            (Encoding::Zstd, None),
            // The highest levels, with the bounded windows.
            (Encoding::Gzip, Some(9)),
            (Encoding::Brotli, Some(11)),
            (Encoding::Zstd, Some(22)),
        ];
        for (encoding, level) in levels {
            let body = CompressedBody::new(chunks(&parts), encoding, level);
            let encoded = body.collect().await.unwrap().to_bytes();
            assert!(
                encoded.len() < text.len() / 10,
                "{encoding:?}: {}",
                encoded.len()
            );
            let decoded = match encoding {
                Encoding::Gzip => decode(GzipDecoder::new(), &encoded),
                Encoding::Brotli => decode(BrotliDecoder::new(), &encoded),
                Encoding::Zstd => decode(ZstdDecoder::new(), &encoded),
            };
            assert_eq!(decoded, text.as_bytes(), "{encoding:?}");
        }
    }
}
