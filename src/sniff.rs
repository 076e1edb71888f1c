//! The front of a cleartext listener that speaks both HTTP/1.1 and HTTP/2 with prior
//! knowledge (h2c): it reads the first bytes of a connection, with a deadline, to tell them
//! apart, then hands the connection to the matching pingora app.
//!
//! pingora does this itself when `h2c` is on, but waits for the whole 24-byte HTTP/2 preface
//! with no deadline: a connection that sends nothing, or an HTTP/1.1 request shorter than 24
//! bytes, was held open and unanswered until the client gave up. Here the first bytes that
//! differ from the preface decide at once, and the wait is bounded by [`PREFACE_WAIT`];
//! whatever arrived is put back and the connection goes to the HTTP/1.1 app. There a request
//! that cannot be read gets a 400 problem; a connection that sends nothing is closed by
//! pingora's keep-alive timeout (60 s) without an answer; a client that keeps sending a byte
//! at a time is not cut off (pingora's timeout is per read). TLS connections are left to
//! pingora (ALPN decides there).

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a new connection has to show whether it speaks HTTP/2. A client with prior
/// knowledge sends the preface at once.
pub const PREFACE_WAIT: Duration = Duration::from_secs(2);

/// One app with h2c on (it sees connections that sent the preface, and TLS ones), one with it
/// off (everything else).
pub struct Sniff<A> {
    pub h2c: Arc<A>,
    pub h1: Arc<A>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Sniff<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if stream.get_ssl_digest().is_some() || !stream.as_any().is::<TcpStream>() {
            return self.h2c.process_new(stream, shutdown).await;
        }
        let mut tcp: Box<TcpStream> = stream.into_any().downcast().ok()?;
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut n = 0;
        let deadline = tokio::time::sleep(PREFACE_WAIT);
        tokio::pin!(deadline);
        while n < buf.len() {
            tokio::select! {
                r = tcp.read(&mut buf[n..]) => match r {
                    Ok(0) => break,
                    Ok(k) => {
                        n += k;
                        // Not the preface: HTTP/1.1 (a short request is not kept waiting).
                        if !H2_PREFACE.starts_with(&buf[..n]) {
                            break;
                        }
                    }
                    Err(_) => return None,
                },
                _ = &mut deadline => break,
            }
        }
        tcp.rewind(&buf[..n]);
        let stream: Stream = tcp;
        if &buf[..n] == H2_PREFACE {
            self.h2c.process_new(stream, shutdown).await
        } else {
            self.h1.process_new(stream, shutdown).await
        }
    }

    async fn cleanup(&self) {
        self.h2c.cleanup().await;
        self.h1.cleanup().await;
    }
}
