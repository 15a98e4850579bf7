//! Relaying bytes both ways between two streams (the TCP and TLS Terminate relays), in place
//! of tokio's `copy_bidirectional`: each direction reads into a per-thread scratch buffer of
//! 64 KiB and writes what it read straight on. What the other side does not take at once is
//! kept in a buffer of the connection's own until written, then freed. So an idle connection
//! holds no buffer, and a busy one moves up to 64 KiB per read and per write: tokio's copy
//! keeps 8 KiB per direction for the connection's life, idle or not, and needs twice the reads
//! and writes of nginx's and HAProxy's 16 KiB for bulk transfers (four times this one's).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes per read.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    /// Where every relayed connection of the worker thread reads: borrowed only between a
    /// read and the writes that follow it, within one poll.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Copies `a` to `b` and `b` to `a` until both have ended (each end shut down for writing
/// once the other reached end of file), or until either fails. Returns the bytes copied from
/// `a` to `b` and from `b` to `a`.
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        let a_done = a_to_b.poll(cx, &mut *a, &mut *b)?.is_ready();
        let b_done = b_to_a.poll(cx, &mut *b, &mut *a)?.is_ready();
        match a_done && b_done {
            true => Poll::Ready(Ok((a_to_b.copied, b_to_a.copied))),
            false => Poll::Pending,
        }
    })
    .await
}

/// One direction of the copy.
#[derive(Default)]
struct Direction {
    /// Read and not yet written, from `written` on (empty: nothing waits).
    pending: Vec<u8>,
    written: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader reached end of file.
    eof: bool,
    /// The writer has been shut down.
    done: bool,
    copied: u64,
}

impl Direction {
    /// Ready once the reader has ended and the writer is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.written < self.pending.len() {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.pending[self.written..]))?;
                self.advance(n)?;
                self.written += n;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read =
                SCRATCH.with_borrow_mut(|scratch| self.read_and_write(cx, reader, writer, scratch));
            match read {
                Poll::Ready(result) => result?,
                // Nothing to read: what was written goes out before the wait.
                Poll::Pending if self.unflushed => {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.unflushed = false;
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads once into `scratch` and writes it on; what the writer does not take now is kept
    /// in `pending`. Pending only when the reader is.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        scratch: &mut [u8],
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut buf = ReadBuf::new(scratch);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n == 0 {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        let mut from = 0;
        while from < n {
            match Pin::new(&mut *writer).poll_write(cx, &scratch[from..n]) {
                Poll::Ready(written) => {
                    let written = written?;
                    self.advance(written)?;
                    from += written;
                }
                Poll::Pending => {
                    // The writer will wake the task; the loop in `poll` waits for it.
                    self.pending = scratch[from..n].to_vec();
                    self.written = 0;
                    break;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, written: usize) -> io::Result<()> {
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.copied += written as u64;
        self.unflushed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_until_both_end() {
        // Small pipes: most writes are partial or wait, so the pending path is taken.
        let (mut client, mut proxy_a) = tokio::io::duplex(1000);
        let (mut proxy_b, mut server) = tokio::io::duplex(777);
        let relay = tokio::spawn(async move { bidirectional(&mut proxy_a, &mut proxy_b).await });
        let up: Vec<u8> = (0..300_000_u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000_u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut server);
            let write = async {
                w.write_all(&down2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let read = r.read_to_end(&mut got);
            let ((), read) = tokio::join!(write, read);
            read.unwrap();
            assert_eq!(got, up2);
        });
        let (mut r, mut w) = tokio::io::split(&mut client);
        let write = async {
            w.write_all(&up).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let ((), read) = tokio::join!(write, r.read_to_end(&mut got));
        read.unwrap();
        assert_eq!(got, down);
        server_side.await.unwrap();
        let copied = relay.await.unwrap().unwrap();
        assert_eq!(copied, (300_000, 200_000));
    }
}
