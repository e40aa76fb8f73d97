//! [`WebSocket`]: a [`roost_proto::Connection`] driven over any tokio byte stream.

use std::{
    fmt,
    io::IoSlice,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Wake, Waker, ready},
    time::Instant,
};

use futures_core::Stream;
use futures_sink::Sink;
use roost_proto::{CloseFrame, CloseStatus, Connection, Event, Message, Negotiated, UsageError};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Error;

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 64 << 10;

/// Most pieces of output one vectored write takes.
const MAX_WRITE_SLICES: usize = 16;

/// A WebSocket over a byte stream `S` (TCP, TLS, an upgraded hyper connection, …).
///
/// It is a [`Stream`] of received [`Message`]s and a [`Sink`] of messages to send, the shape
/// tokio-tungstenite users know; the inherent [`WebSocket::send`] and [`WebSocket::recv`] are
/// the same without importing the futures traits. Pings are answered and close frames echoed
/// while the stream is polled. Splitting with `futures_util::StreamExt::split` gives a reader
/// and a writer for two tasks; automatic replies still go out, sent by whichever half runs.
///
/// The stream ends (`None`) once the close handshake is over or the connection is lost;
/// [`WebSocket::close_status`] then tells who closed it and how.
pub struct WebSocket<S> {
    io: S,
    connection: Connection,
    protocol: Option<String>,
    wakers: Arc<WriteWakers>,
    write_waker: Waker,
    deadline: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
    /// Once the connection is finished, how long what is still queued (a close frame, its
    /// echo) may wait for a peer that does not read: the close timeout, from then.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The reader's waker from its last wait: a close started by the writer half wakes it,
    /// so that it arms the close timer.
    reader: Option<Waker>,
    /// Bytes were written that a buffering transport (TLS, a `BufWriter`) may still hold.
    unflushed: bool,
    /// The transport was shut down (or given up on) after the connection finished.
    shut_down: bool,
    /// A write failed, or the output was given up on: what was queued is gone, so a flush
    /// must not report success.
    failed: bool,
}

impl<S> fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("connection", &self.connection)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Which half of a split WebSocket is polling a write.
#[derive(Clone, Copy)]
enum Side {
    Reader = 0,
    Writer = 1,
}

/// Both halves may wait for the socket to become writable, but a tokio socket keeps only the
/// last waker per direction; this waker wakes every half that asked.
#[derive(Default)]
struct WriteWakers([Mutex<Option<Waker>>; 2]);

impl WriteWakers {
    fn register(&self, side: Side, waker: &Waker) {
        let mut slot = self.0[side as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Wake for WriteWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for slot in &self.0 {
            if let Some(waker) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                waker.wake();
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wraps a stream whose handshake is already done, with the connection to drive.
    ///
    /// `leftover` holds bytes read past the handshake; they are processed first.
    pub fn from_connection(io: S, mut connection: Connection, leftover: &[u8]) -> Self {
        if !leftover.is_empty() {
            connection.receive(leftover, Instant::now());
        }
        let wakers = Arc::new(WriteWakers::default());
        WebSocket {
            io,
            connection,
            protocol: None,
            write_waker: Waker::from(wakers.clone()),
            wakers,
            deadline: None,
            linger: None,
            reader: None,
            unflushed: false,
            shut_down: false,
            failed: false,
        }
    }

    /// Wraps an already-upgraded stream as a server-side WebSocket, without a handshake.
    pub fn server(io: S, config: roost_proto::Config, negotiated: Negotiated) -> Self {
        Self::from_connection(io, Connection::server(config, negotiated), &[])
    }

    /// Wraps an already-upgraded stream as a client-side WebSocket, without a handshake.
    pub fn client(io: S, config: roost_proto::Config, negotiated: Negotiated) -> Self {
        Self::from_connection(
            io,
            Connection::client(config, negotiated, crate::mask_source()),
            &[],
        )
    }

    pub(crate) fn with_protocol(mut self, protocol: Option<String>) -> Self {
        self.protocol = protocol;
        self
    }

    /// The subprotocol the handshake selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The extensions in force (permessage-deflate parameters, no-masking).
    pub fn negotiated(&self) -> &Negotiated {
        self.connection.negotiated()
    }

    /// How the connection ended, once it has.
    pub fn close_status(&self) -> Option<CloseStatus> {
        self.connection.close_status()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Sends a message and flushes it.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.start_send_inner(&message)?;
        std::future::poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Queues a message without flushing; [`WebSocket::flush`] writes everything queued.
    pub fn feed(&mut self, message: &Message) -> Result<(), Error> {
        self.start_send_inner(message)
    }

    /// Queues a text message copied from `text`, without flushing. Unlike [`WebSocket::feed`]
    /// it needs no [`Message`], so nothing is allocated for a payload the frame copies anyway.
    pub fn feed_text(&mut self, text: &str) -> Result<(), Error> {
        let queued = self.connection.send_text(text);
        self.queued(queued)
    }

    /// Queues a binary message copied from `data`, without flushing; see
    /// [`WebSocket::feed_text`].
    pub fn feed_binary(&mut self, data: &[u8]) -> Result<(), Error> {
        let queued = self.connection.send_binary(data);
        self.queued(queued)
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// The next message; `None` once the connection is over.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| self.poll_next_inner(cx)).await
    }

    /// Starts the close handshake and flushes the close frame. Keep reading until `recv`
    /// returns `None` to receive the peer's reply.
    ///
    /// Once a close was sent, by this call or as the echo of the peer's close, closing again
    /// only flushes. A peer that does not take the close frame (its receive window stays
    /// full) is given up on once the close timeout has run out twice (the close deadline,
    /// then the time a finished connection's output may wait): the output is dropped, the
    /// call returns, and the stream ends with [`CloseStatus::clean`] false.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        match self.connection.close(frame, Instant::now()) {
            Ok(()) | Err(UsageError::SendAfterClose) => {}
            Err(error) => return Err(Error::Usage(error)),
        }
        self.wake_reader();
        std::future::poll_fn(|cx| self.poll_close_flush(cx)).await
    }

    /// Writes the output out after a close, within the close deadline and then the linger.
    fn poll_close_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if let Poll::Ready(written) = self.poll_write_out(cx, Side::Writer) {
                return Poll::Ready(written);
            }
            if self.connection.is_finished() {
                return self.poll_linger(cx);
            }
            if !self.poll_deadline(cx) {
                return Poll::Pending;
            }
        }
    }

    /// Waits out the linger of a finished connection whose output does not leave; then gives
    /// the output up. `Ready` once given up.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let close_timeout = self.connection.config().limits().close_timeout;
        let linger = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(close_timeout)));
        ready!(linger.as_mut().poll(cx));
        self.connection.transport_failed();
        self.unflushed = false;
        self.shut_down = true;
        self.failed = true;
        self.wake_both();
        Poll::Ready(Ok(()))
    }

    /// Wakes whichever half waits: a timer polled by one half keeps only that half's waker.
    fn wake_both(&mut self) {
        self.write_waker.wake_by_ref();
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }

    /// Wakes the reader half once our close is on its way: it must watch the close deadline
    /// even if the peer never sends another byte.
    fn wake_reader(&mut self) {
        if !self.connection.can_send()
            && let Some(reader) = self.reader.take()
        {
            reader.wake();
        }
    }

    /// Writes queued output. `Ready(Ok)` once all of it is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, side: Side) -> Poll<Result<(), Error>> {
        self.poll_write_while(cx, side, |connection| connection.pending_output_len() > 0)
    }

    /// Writes queued output for as long as `more` holds, then flushes the transport.
    ///
    /// A transport that fails is a lost connection: its output is dropped (it would fail
    /// again on every later poll) and the stream then ends.
    fn poll_write_while(
        &mut self,
        cx: &mut Context<'_>,
        side: Side,
        more: fn(&Connection) -> bool,
    ) -> Poll<Result<(), Error>> {
        let written = ready!(self.poll_write_while_inner(cx, side, more));
        if let Err(error) = written {
            self.unflushed = false;
            self.failed = true;
            self.connection.transport_failed();
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write_while_inner(
        &mut self,
        cx: &mut Context<'_>,
        side: Side,
        more: fn(&Connection) -> bool,
    ) -> Poll<Result<(), Error>> {
        while more(&self.connection) {
            self.wakers.register(side, cx.waker());
            let mut proxy = Context::from_waker(&self.write_waker);
            let written = if self.io.is_write_vectored() {
                // Frame headers and payloads sent without a copy, in one system call.
                let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
                let mut n = 0;
                for (slot, chunk) in slices
                    .iter_mut()
                    .zip(self.connection.pending_output_chunks())
                {
                    *slot = IoSlice::new(chunk);
                    n += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(&mut proxy, &slices[..n]))?
            } else {
                ready!(
                    Pin::new(&mut self.io).poll_write(&mut proxy, self.connection.pending_output())
                )?
            };
            if written == 0 {
                return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())));
            }
            self.connection.consume_output(written);
            self.unflushed = true;
        }
        // What a buffering transport took must reach the socket too, or an automatic reply
        // could wait in it until the application's next send.
        if self.unflushed {
            self.wakers.register(side, cx.waker());
            let mut proxy = Context::from_waker(&self.write_waker);
            ready!(Pin::new(&mut self.io).poll_flush(&mut proxy))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_next_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        loop {
            // Automatic replies (pongs, close echo) go out as soon as possible; a full socket
            // does not stop reading.
            if let Poll::Ready(Err(error)) = self.poll_write_out(cx, Side::Reader) {
                return Poll::Ready(Some(Err(error)));
            }
            match self.connection.next_event() {
                Some(Event::Message(message)) => return Poll::Ready(Some(Ok(message))),
                Some(Event::Failed(error)) => {
                    return Poll::Ready(Some(Err(Error::Protocol(error))));
                }
                Some(_) => continue,
                None => {}
            }
            if self.connection.is_finished() {
                return self.poll_finish(cx).map(|result| result.err().map(Err));
            }
            if self.poll_deadline(cx) {
                continue;
            }
            // Straight into the connection's input buffer: complete messages are slices of it.
            let input = self.connection.input_buffer();
            input.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, input) {
                Poll::Ready(Ok(0)) => self.connection.receive_eof(),
                Poll::Ready(Ok(_)) => self.connection.receive_input(Instant::now()),
                // The close handshake is over and the peer dropped the connection instead of
                // closing it cleanly, as many TLS servers do (no close_notify): an end, not
                // an error.
                Poll::Ready(Err(error))
                    if !self.connection.can_receive()
                        && matches!(
                            error.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                        ) =>
                {
                    self.connection.receive_eof();
                }
                Poll::Ready(Err(error)) => {
                    self.connection.receive_eof();
                    return Poll::Ready(Some(Err(Error::Io(error))));
                }
                Poll::Pending => {
                    if !self
                        .reader
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        self.reader = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Flushes what is left and shuts the transport down, once; a peer that does not read
    /// gets the close timeout for it, then the output is given up.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.shut_down {
            return Poll::Ready(Ok(()));
        }
        // A peer that already vanished makes the flush or the shutdown fail; the connection
        // is over either way.
        if self.poll_write_out(cx, Side::Reader).is_pending() {
            return self.poll_linger(cx);
        }
        // Through the waker both halves share: the writer half may wait on the socket too.
        self.wakers.register(Side::Reader, cx.waker());
        let mut proxy = Context::from_waker(&self.write_waker);
        if Pin::new(&mut self.io)
            .poll_shutdown(&mut proxy)
            .is_pending()
        {
            return self.poll_linger(cx);
        }
        self.shut_down = true;
        Poll::Ready(Ok(()))
    }

    /// Arms the close timer; returns true if it fired (and then wakes the other half).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.connection.next_deadline() else {
            self.deadline = None;
            return false;
        };
        let sleep = match &mut self.deadline {
            Some((at, sleep)) if *at == deadline => sleep,
            slot => {
                let sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
                &mut slot.insert((deadline, sleep)).1
            }
        };
        if sleep.as_mut().poll(cx).is_ready() {
            // The timer's clock is tokio's, which a test may pause and advance: the deadline
            // has come, whatever the system clock says.
            self.connection.on_deadline(deadline.max(Instant::now()));
            self.wake_both();
            return true;
        }
        false
    }

    fn poll_ready_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if !self.connection.can_send() || self.failed {
            return Poll::Ready(Err(Error::ConnectionClosed));
        }
        // Back-pressure: wait until the queued output drains below the limit.
        self.poll_write_while(cx, Side::Writer, Connection::is_write_blocked)
    }

    fn start_send_inner(&mut self, message: &Message) -> Result<(), Error> {
        let queued = self.connection.send(message, Instant::now());
        self.wake_reader();
        self.queued(queued)
    }

    /// What a send the core refused means to the caller: a closed connection, or a misuse.
    fn queued(&self, result: Result<(), UsageError>) -> Result<(), Error> {
        result.map_err(|error| {
            if self.connection.can_send() {
                Error::Usage(error)
            } else {
                Error::ConnectionClosed
            }
        })
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Output dropped after a failure (possibly by the other half) was never written.
        if self.failed {
            return Poll::Ready(Err(Error::ConnectionClosed));
        }
        self.poll_write_out(cx, Side::Writer)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_inner(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        self.get_mut().start_send_inner(&message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_flush_inner(cx)
    }

    /// Sends a close frame (1000) if none was sent yet and flushes it, giving up on a peer
    /// that does not read as [`WebSocket::close`] does. The peer's reply is read by the
    /// stream side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.connection.can_send() {
            let frame = CloseFrame::new(roost_proto::CloseCode::NORMAL, "");
            this.connection.close(Some(frame), Instant::now())?;
            this.wake_reader();
        }
        this.poll_close_flush(cx)
    }
}
