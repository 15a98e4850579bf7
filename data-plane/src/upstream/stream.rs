//! An upstream connection the HTTP/1.1 fast path speaks on directly: plain TCP, or TLS to a
//! backend with a BackendTLSPolicy.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[derive(Debug)]
pub enum RawStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl RawStream {
    /// Whether a kept-alive connection can carry another request: the upstream has neither
    /// closed it nor sent anything unasked. Never waits.
    pub fn is_reusable(&mut self) -> bool {
        match self {
            // This read usually costs nothing extra: it is the one that would otherwise find no
            // response yet right after the request is written.
            RawStream::Plain(tcp) => matches!(
                tcp.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
            // TLS records that carry no data (a session ticket) are consumed here; data, a
            // close_notify or an error mean the connection is done.
            RawStream::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                matches!(
                    Pin::new(tls.as_mut()).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }
}

impl AsyncRead for RawStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_flush(cx),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RawStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            RawStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
