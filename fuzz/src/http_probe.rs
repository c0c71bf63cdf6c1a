//! Target `http_probe`: what an origin answers an `http` monitor, judged as the probe judges
//! it (`probe::http_check`: hyper's HTTP/1.1 client reads the response, then the status is
//! matched against the expected codes and the body searched for the expected text). The
//! origin is a canned stream that serves the input and takes whatever is written to it.
//!
//! The first byte picks the probe's settings and how the response is cut into reads (the
//! body search has to find text split across reads); the rest is the response.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use switchyard_node::config::{ExpectedCodes, MonitorType};
use switchyard_node::monitor::probe::{http_check, ProbeSpec};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;

/// An origin that answers with canned bytes, at most `chunk` of them per read, then closes.
/// Like a real origin it says nothing before the request arrives: hyper's client drops a
/// connection that speaks first.
struct Canned<'a> {
    response: &'a [u8],
    chunk: usize,
    asked: bool,
    waiting: Option<Waker>,
}

impl AsyncRead for Canned<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.asked {
            self.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = self.response.len().min(self.chunk).min(buf.remaining());
        let (now, later) = self.response.split_at(n);
        buf.put_slice(now);
        self.response = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Canned<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.asked = true;
        if let Some(reader) = self.waiting.take() {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The probe's settings picked by `pick`'s low two bits.
fn spec(pick: u8) -> ProbeSpec {
    let mut spec = ProbeSpec::new(MonitorType::Http, Duration::from_secs(2));
    spec.path = "/health".into();
    if pick & 1 != 0 {
        spec.expected_body = Some("ok".into());
    }
    if pick & 2 != 0 {
        spec.method = "HEAD".into();
        spec.expected_codes = ExpectedCodes::parse("200,301-302,4xx").expect("valid codes");
    }
    spec
}

pub fn run(data: &[u8]) {
    static RT: OnceLock<Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    });
    let Some((&pick, response)) = data.split_first() else {
        return;
    };
    let spec = spec(pick);
    let origin = Canned {
        response,
        // 1 to 64 bytes per read.
        chunk: usize::from(pick >> 2) + 1,
        asked: false,
        waiting: None,
    };
    let addr = "192.0.2.10:8080".parse().expect("an address");
    let _ = rt.block_on(http_check(origin, &spec, addr, "origin.example"));
}
