//! A test origin: a tiny TCP server that stands in for a real backend behind
//! Switchyard, both in-process (integration tests) and as the `test-origin`
//! binary (testnet.sh).
//!
//! On its data port it greets every connection with its name and then echoes,
//! so a client can tell which origin the load balancer picked and that bytes
//! flow both ways. An optional HTTP port answers health probes with a status
//! and delay that tests can change at run time. With `accept_proxy` it expects
//! a PROXY protocol (v1 or v2) header first and reports the client address it
//! announced.
//!
//! The origin deliberately does not use `switchyard-node`: it plays a
//! third-party server, so it parses PROXY headers with its own small parser,
//! which also cross-checks the node's encoder.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A client that opens a connection and never sends a complete PROXY header
/// or HTTP request would otherwise pin a task until the origin stops.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound on an HTTP request head, so a misbehaving client can't make
/// the origin buffer without limit.
const MAX_HTTP_HEAD: usize = 16 * 1024;

/// Upper bound on the greeting line a client helper will read; origin names
/// are short, so anything longer means we're not talking to a test origin.
const MAX_LINE: u64 = 4096;

/// How a test origin is set up.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Written as the first line of every data connection and in the health body.
    pub name: String,
    /// Data (greeting + echo) listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTP health listener, if any; port 0 picks a free port.
    pub http: Option<SocketAddr>,
    /// Require a PROXY protocol v1/v2 header at the start of each data connection.
    pub accept_proxy: bool,
}

/// State shared between the handle and the connection tasks.
#[derive(Debug)]
struct Shared {
    name: String,
    accept_proxy: bool,
    http_status: AtomicU16,
    /// Nanoseconds, so any `Duration` a test would use round-trips exactly.
    http_delay_nanos: AtomicU64,
    connections: AtomicU64,
    last_proxy_source: Mutex<Option<SocketAddr>>,
}

impl Shared {
    fn http_delay(&self) -> Duration {
        Duration::from_nanos(self.http_delay_nanos.load(Ordering::Relaxed))
    }
}

/// The listener tasks of one start/restart; dropping it without `shutdown`
/// aborts them.
#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            // A task that panicked has already dropped its sockets, which is
            // all stop() promises.
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // After shutdown() the handles are gone; otherwise (the TestOrigin was
        // dropped while running) abort so the sockets close without an await.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Handle to a running (or stopped) test origin. Dropping it stops everything.
#[derive(Debug)]
pub struct TestOrigin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    running: Option<Running>,
}

impl TestOrigin {
    /// Binds the configured listeners and starts serving. Port 0 is allowed;
    /// [`addr`](Self::addr) and [`http_addr`](Self::http_addr) report the
    /// ports actually bound, and [`restart`](Self::restart) reuses them.
    pub async fn start(cfg: OriginConfig) -> io::Result<TestOrigin> {
        let shared = Arc::new(Shared {
            name: cfg.name,
            accept_proxy: cfg.accept_proxy,
            http_status: AtomicU16::new(200),
            http_delay_nanos: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_proxy_source: Mutex::new(None),
        });
        let (data, http) = bind_all(cfg.listen, cfg.http)?;
        let mut origin = TestOrigin {
            shared,
            addr: data.local_addr()?,
            http_addr: match &http {
                Some(l) => Some(l.local_addr()?),
                None => None,
            },
            running: None,
        };
        origin.spawn(data, http);
        Ok(origin)
    }

    /// The bound data address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound HTTP health address, if the origin has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Stops listening and closes every open connection, so new connects are
    /// refused (port freed). When this returns, all sockets are closed.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Listens again on the same addresses (SO_REUSEADDR) after stop(). Does
    /// nothing if the origin is running. While stopped, its port may be taken as the
    /// ephemeral source port of some other connection on this host (a busy machine does
    /// that); binding is tried again for up to 5 s, until that connection is gone.
    pub async fn restart(&mut self) -> io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (data, http) = loop {
            match bind_all(self.addr, self.http_addr) {
                Ok(bound) => break bound,
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.spawn(data, http);
        Ok(())
    }

    /// Status code for subsequent health responses (write a three-digit code).
    pub fn set_http_status(&self, code: u16) {
        self.shared.http_status.store(code, Ordering::Relaxed);
    }

    /// How long subsequent health requests wait before they're answered.
    pub fn set_http_delay(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.http_delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Data connections accepted so far (across restarts), including ones
    /// later rejected for a bad PROXY header.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The source address announced by the most recent valid PROXY header
    /// that carried one (v1 `UNKNOWN` and v2 `LOCAL` headers don't).
    pub fn last_proxy_source(&self) -> Option<SocketAddr> {
        *self
            .shared
            .last_proxy_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&mut self, data: TcpListener, http: Option<TcpListener>) {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(2);
        let shared = Arc::clone(&self.shared);
        tasks.push(tokio::spawn(accept_loop(
            data,
            stop_rx.clone(),
            move |stream, peer| handle_data(Arc::clone(&shared), stream, peer),
        )));
        if let Some(http) = http {
            let shared = Arc::clone(&self.shared);
            tasks.push(tokio::spawn(accept_loop(
                http,
                stop_rx,
                move |stream, peer| handle_http(Arc::clone(&shared), stream, peer),
            )));
        }
        self.running = Some(Running { stop, tasks });
    }
}

/// Binds both listeners up front so a failure on the second leaves nothing
/// half-running.
fn bind_all(
    data: SocketAddr,
    http: Option<SocketAddr>,
) -> io::Result<(TcpListener, Option<TcpListener>)> {
    let data = bind(data)?;
    let http = http.map(bind).transpose()?;
    Ok((data, http))
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let with_context = |e: io::Error| io::Error::new(e.kind(), format!("bind {addr}: {e}"));
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(with_context)?;
    // restart() must be able to rebind right after stop(), while the
    // connections the origin closed still sit in TIME_WAIT on this port.
    socket.set_reuseaddr(true).map_err(with_context)?;
    socket.bind(addr).map_err(with_context)?;
    socket.listen(1024).map_err(with_context)
}

/// Accepts until told to stop, then closes the listener and waits for every
/// connection task to be torn down, so stop() leaves no socket open.
async fn accept_loop<H, F>(listener: TcpListener, mut stop: watch::Receiver<bool>, handler: H)
where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Only `true` is ever sent, and a dropped sender also means stop.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(handler(stream, peer));
                }
                Err(e) => {
                    // Usually transient (ECONNABORTED, EMFILE); pause so a
                    // persistent error doesn't spin a core.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set doesn't grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn handle_data(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = serve_data(&shared, stream, peer).await {
        tracing::debug!(%peer, error = %e, "data connection ended with an error");
    }
}

async fn serve_data(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    // The greeting is small and tests wait for it; don't let Nagle hold it.
    stream.set_nodelay(true)?;
    let (greeting, early_data) = if shared.accept_proxy {
        let header = tokio::time::timeout(HEADER_TIMEOUT, read_proxy_header(&mut stream))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no PROXY header in time",
                ))
            });
        let (source, early_data) = match header {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "rejecting connection without a valid PROXY header");
                return Ok(());
            }
        };
        if let Some(source) = source {
            *shared
                .last_proxy_source
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(source);
        }
        // Headers without an address (LOCAL/UNKNOWN) mean "use the real peer",
        // per the PROXY protocol spec.
        let client = source.unwrap_or(peer);
        (format!("{} client={client}\n", shared.name), early_data)
    } else {
        (format!("{}\n", shared.name), Vec::new())
    };

    let (mut rd, mut wr) = stream.split();
    wr.write_all(greeting.as_bytes()).await?;
    wr.write_all(&early_data).await?;
    tokio::io::copy(&mut rd, &mut wr).await?;
    // The client's FIN arrived and everything is echoed; pass the FIN on.
    wr.shutdown().await
}

/// Reads a PROXY header, returning the announced source and any bytes that
/// arrived after the header (the client may send them in the same segment).
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<(Option<SocketAddr>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        match parse_proxy_header(&buf) {
            Ok(ProxyParse::Done { source, len }) => return Ok((source, buf.split_off(len))),
            Ok(ProxyParse::Incomplete) => {}
            Err(msg) => return Err(io::Error::new(io::ErrorKind::InvalidData, msg)),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the PROXY header",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ProxyParse {
    /// Could still become a valid header; read more.
    Incomplete,
    /// A header of `len` bytes; `source` is `None` for headers that carry no
    /// client address (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC/UNIX families).
    Done {
        source: Option<SocketAddr>,
        len: usize,
    },
}

const V1_PREFIX: &[u8] = b"PROXY ";
/// The spec's limit for a v1 line, CRLF included.
const V1_MAX_LEN: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

/// Parses a PROXY protocol v1 or v2 header at the start of `buf`
/// (haproxy's proxy-protocol.txt), rejecting as early as the bytes allow.
fn parse_proxy_header(buf: &[u8]) -> Result<ProxyParse, String> {
    match buf.first() {
        None => Ok(ProxyParse::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err("not a PROXY protocol header".into()),
    }
}

fn parse_v1(buf: &[u8]) -> Result<ProxyParse, String> {
    let prefix_len = buf.len().min(V1_PREFIX.len());
    if buf[..prefix_len] != V1_PREFIX[..prefix_len] {
        return Err("not a PROXY protocol header".into());
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(format!("v1 header longer than {V1_MAX_LEN} bytes"))
        } else {
            Ok(ProxyParse::Incomplete)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err("v1 header not terminated by CRLF".into());
    }
    let line = std::str::from_utf8(&window[..lf - 1]).map_err(|_| "v1 header is not ASCII")?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.get(1).copied() {
        // The receiver must ignore whatever follows UNKNOWN.
        Some("UNKNOWN") => None,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let [_, _, src, dst, sport, dport] = fields[..] else {
                return Err(format!("v1 {proto} header needs 6 fields: {line:?}"));
            };
            let (src, dst) = if proto == "TCP4" {
                (
                    src.parse::<Ipv4Addr>().map(IpAddr::V4),
                    dst.parse::<Ipv4Addr>().map(IpAddr::V4),
                )
            } else {
                (
                    src.parse::<Ipv6Addr>().map(IpAddr::V6),
                    dst.parse::<Ipv6Addr>().map(IpAddr::V6),
                )
            };
            let (Ok(src), Ok(_dst)) = (src, dst) else {
                return Err(format!("v1 header has a bad {proto} address: {line:?}"));
            };
            let (Some(sport), Some(_dport)) = (parse_v1_port(sport), parse_v1_port(dport)) else {
                return Err(format!("v1 header has a bad port: {line:?}"));
            };
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(format!("v1 header has an unknown protocol: {line:?}")),
    };
    Ok(ProxyParse::Done {
        source,
        len: lf + 1,
    })
}

/// Decimal digits only: `u16::from_str` would also take a leading `+`.
fn parse_v1_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<ProxyParse, String> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] != V2_SIGNATURE[..sig_len] {
        return Err("not a PROXY protocol header".into());
    }
    if buf.len() < V2_FIXED_LEN {
        return Ok(ProxyParse::Incomplete);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    let family = buf[13] >> 4;
    let transport = buf[13] & 0x0f;
    let addr_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version != 2 {
        return Err(format!("v2 header has version {version}"));
    }
    if command > 1 {
        return Err(format!("v2 header has unknown command {command:#x}"));
    }
    if family > 3 || transport > 2 {
        return Err(format!(
            "v2 header has unknown family/transport {:#04x}",
            buf[13]
        ));
    }
    let len = V2_FIXED_LEN + addr_len;
    if buf.len() < len {
        return Ok(ProxyParse::Incomplete);
    }
    let addrs = &buf[V2_FIXED_LEN..len];
    // LOCAL (health checks from the proxy itself) carries no client; the
    // address block, if any, must be ignored.
    let source = match (command, family) {
        (0, _) | (1, 0 | 3) => None,
        (1, 1) => {
            let Some(a) = addrs.get(..12) else {
                return Err(format!(
                    "v2 INET address block is {addr_len} bytes, need 12"
                ));
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        (1, 2) => {
            let Some(a) = addrs.get(..36) else {
                return Err(format!(
                    "v2 INET6 address block is {addr_len} bytes, need 36"
                ));
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        _ => unreachable!("command and family were range-checked above"),
    };
    Ok(ProxyParse::Done { source, len })
}

async fn handle_http(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    if let Err(e) = serve_http(&shared, stream).await {
        tracing::debug!(%peer, error = %e, "health connection ended with an error");
    }
}

/// One request per connection: read the head, wait the configured delay,
/// answer, close. Request bodies are not read; probes don't send them.
async fn serve_http(shared: &Shared, mut stream: TcpStream) -> io::Result<()> {
    let head = tokio::time::timeout(HEADER_TIMEOUT, read_http_head(&mut stream))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head in time",
            ))
        })?;
    let request_line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed request line {request_line:?}"),
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP/1.x request: {request_line:?}"),
        ));
    }

    // Read at request time so a test can change it between probes.
    let delay = shared.http_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = shared.http_status.load(Ordering::Relaxed);
    let body = format!("{} ok\n", shared.name);
    // 1xx, 204 and 304 responses can't carry a body (RFC 9110), and a body
    // there would confuse a strict client.
    let bodiless_status = status < 200 || status == 204 || status == 304;
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nConnection: close\r\n",
        reason_phrase(status)
    );
    if !bodiless_status {
        response.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    response.push_str("\r\n");
    if !bodiless_status && method != "HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn read_http_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "request head is not UTF-8")
            });
        }
        let room = MAX_HTTP_HEAD - buf.len();
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request head larger than {MAX_HTTP_HEAD} bytes"),
            ));
        }
        let want = room.min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        // The reason phrase is optional; the space before it is not.
        _ => "",
    }
}

/// Connects to `addr` (optionally from local source IP `from`, binding port
/// 0) and returns the first line the origin writes (its name), trimmed;
/// errors after `timeout`.
pub async fn first_line(
    addr: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<String> {
    let exchange = async {
        let stream = connect_from(addr, from).await?;
        read_line(&mut BufReader::new(stream)).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no line from {addr} within {timeout:?}"),
            ))
        })
}

/// Connects to `addr`, first binding the local side to `from` (port 0) if
/// given, so tests can pick which client address the load balancer sees.
pub async fn connect_from(addr: SocketAddr, from: Option<IpAddr>) -> io::Result<TcpStream> {
    if let Some(ip) = from {
        // The kernel would only say "invalid argument".
        if ip.is_ipv4() != addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("source {ip} and destination {addr} are different address families"),
            ));
        }
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Reads one newline-terminated line (at most 4 KiB) and returns it trimmed.
/// Errors if the connection ends before a newline arrives.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<String> {
    let mut line = String::new();
    let n = reader.take(MAX_LINE).read_line(&mut line).await?;
    if !line.ends_with('\n') {
        let msg = if n as u64 == MAX_LINE {
            format!("line longer than {MAX_LINE} bytes")
        } else {
            "connection closed before a full line arrived".to_string()
        };
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
    }
    Ok(line.trim().to_string())
}

/// Parses `250ms`, `5s`, `2m`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let invalid =
        || format!("invalid duration {s:?}: expected a whole number of ms, s or m, e.g. 250ms");
    let value: u64 = number.parse().map_err(|_| invalid())?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value.saturating_mul(60))),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Generous bound for anything that should happen promptly; only hit when
    /// something is broken.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    async fn origin(name: &str, http: bool, accept_proxy: bool) -> TestOrigin {
        TestOrigin::start(OriginConfig {
            name: name.to_string(),
            listen: localhost(),
            http: http.then(localhost),
            accept_proxy,
        })
        .await
        .unwrap()
    }

    /// Sends `payload`, half-closes, and returns everything the origin sends
    /// back until it closes. Reads while writing, so a large payload can't
    /// deadlock on full socket buffers.
    async fn exchange(addr: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
        tokio::time::timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await?;
            let (mut rd, mut wr) = stream.split();
            let send = async {
                wr.write_all(payload).await?;
                wr.shutdown().await
            };
            let mut out = Vec::new();
            let recv = rd.read_to_end(&mut out);
            let (sent, received) = tokio::join!(send, recv);
            sent?;
            received?;
            Ok(out)
        })
        .await
        .expect("exchange timed out")
    }

    /// Like a health prober: sends the request without half-closing and
    /// reads until the origin closes.
    async fn http_request(addr: SocketAddr, request: &str) -> String {
        tokio::time::timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        })
        .await
        .expect("HTTP request timed out")
    }

    fn v2_header(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(addrs.len()).unwrap().to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[tokio::test]
    async fn greets_with_name_then_echoes() {
        let o = origin("alpha", false, false).await;
        assert_eq!(o.name(), "alpha");
        let stream = connect_from(o.addr(), None).await.unwrap();
        let mut reader = BufReader::new(stream);
        let name = tokio::time::timeout(DEADLINE, read_line(&mut reader))
            .await
            .unwrap();
        assert_eq!(name.unwrap(), "alpha");

        // Echo is interactive, not only at EOF.
        for msg in ["ping\n", "second message\n"] {
            reader.get_mut().write_all(msg.as_bytes()).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(DEADLINE, reader.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, msg.as_bytes());
        }
    }

    #[tokio::test]
    async fn half_close_finishes_echo_then_closes() {
        let o = origin("beta", false, false).await;
        let payload = vec![b'x'; 256 * 1024];
        let out = exchange(o.addr(), &payload).await.unwrap();
        let (greeting, echoed) = out.split_at(b"beta\n".len());
        assert_eq!(greeting, b"beta\n");
        assert_eq!(echoed.len(), payload.len());
        assert_eq!(echoed, &payload[..]);
    }

    #[tokio::test]
    async fn first_line_from_source_ip() {
        let o = origin("gamma", false, false).await;
        let from = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(first_line(o.addr(), from, DEADLINE).await.unwrap(), "gamma");
    }

    #[tokio::test]
    async fn counts_connections() {
        let o = origin("delta", false, false).await;
        assert_eq!(o.connections(), 0);
        for _ in 0..3 {
            first_line(o.addr(), None, DEADLINE).await.unwrap();
        }
        // Counted on accept, before the greeting, so no waiting needed.
        assert_eq!(o.connections(), 3);
    }

    #[tokio::test]
    async fn stop_refuses_and_restart_serves_on_same_port() {
        let mut o = origin("eps", true, false).await;
        let addr = o.addr();
        let http = o.http_addr().unwrap();

        let open = connect_from(addr, None).await.unwrap();
        let mut open = BufReader::new(open);
        assert_eq!(read_line(&mut open).await.unwrap(), "eps");

        o.stop().await;
        let err = first_line(addr, None, DEADLINE).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        let err = connect_from(http, None).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        // The open connection was closed too: EOF or reset, but no hang.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(DEADLINE, open.read_to_end(&mut rest))
            .await
            .expect("open connection not closed by stop()");
        assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");

        o.stop().await; // idempotent
        o.restart().await.unwrap();
        assert_eq!(o.addr(), addr);
        assert_eq!(first_line(addr, None, DEADLINE).await.unwrap(), "eps");
        let resp = http_request(http, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        o.restart().await.unwrap(); // no-op while running
        assert_eq!(o.connections(), 2);
    }

    #[tokio::test]
    async fn drop_closes_listener() {
        let o = origin("zeta", false, false).await;
        let addr = o.addr();
        drop(o);
        // Abort is asynchronous, so wait for the port to be released.
        let deadline = Instant::now() + DEADLINE;
        loop {
            match connect_from(addr, None).await {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                _ if Instant::now() > deadline => panic!("listener still open after drop"),
                _ => tokio::task::yield_now().await,
            }
        }
    }

    #[tokio::test]
    async fn http_health_status_and_body() {
        let o = origin("eta", true, false).await;
        let http = o.http_addr().unwrap();

        let resp = http_request(http, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(
            resp,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\
             Content-Length: 7\r\n\r\neta ok\n"
        );

        o.set_http_status(503);
        let resp = http_request(http, "GET / HTTP/1.0\r\n\r\n").await;
        assert!(
            resp.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{resp}"
        );
        assert!(resp.ends_with("\r\n\r\neta ok\n"), "{resp}");

        let resp = http_request(http, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
        assert!(resp.contains("Content-Length: 7\r\n"), "{resp}");
        assert!(
            resp.ends_with("\r\n\r\n"),
            "HEAD response has a body: {resp}"
        );

        // Not HTTP/1.x: closed without an answer.
        assert_eq!(http_request(http, "hello there\r\n\r\n").await, "");
        // Health requests don't count as data connections.
        assert_eq!(o.connections(), 0);
    }

    #[tokio::test]
    async fn http_delay_is_applied() {
        let o = origin("theta", true, false).await;
        let http = o.http_addr().unwrap();
        let delay = Duration::from_millis(200);
        o.set_http_delay(delay);
        let t0 = Instant::now();
        let resp = http_request(http, "GET / HTTP/1.1\r\n\r\n").await;
        // Only a lower bound, which the server's sleep guarantees; never an
        // upper bound, which would be flaky on a loaded machine.
        assert!(t0.elapsed() >= delay);
        assert!(resp.ends_with("theta ok\n"), "{resp}");

        o.set_http_delay(Duration::ZERO);
        let resp = http_request(http, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    }

    #[tokio::test]
    async fn proxy_v1_header() {
        let o = origin("iota", false, true).await;
        assert_eq!(o.last_proxy_source(), None);
        let out = exchange(
            o.addr(),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nhello",
        )
        .await
        .unwrap();
        assert_eq!(out, b"iota client=192.0.2.7:40000\nhello");
        assert_eq!(
            o.last_proxy_source(),
            Some("192.0.2.7:40000".parse().unwrap())
        );

        let out = exchange(o.addr(), b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n")
            .await
            .unwrap();
        assert_eq!(out, b"iota client=[2001:db8::1]:1234\n");
        assert_eq!(
            o.last_proxy_source(),
            Some("[2001:db8::1]:1234".parse().unwrap())
        );

        // UNKNOWN: the real peer is reported and the last source is kept.
        let out = exchange(o.addr(), b"PROXY UNKNOWN\r\n").await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("iota client=127.0.0.1:"), "{out}");
        assert_eq!(
            o.last_proxy_source(),
            Some("[2001:db8::1]:1234".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn proxy_v2_header() {
        let o = origin("kappa", false, true).await;

        let mut inet = Vec::new();
        inet.extend_from_slice(&[203, 0, 113, 9]); // src
        inet.extend_from_slice(&[10, 0, 0, 1]); // dst
        inet.extend_from_slice(&51000u16.to_be_bytes());
        inet.extend_from_slice(&8080u16.to_be_bytes());
        // A TLV after the addresses must be skipped, not echoed.
        inet.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]);
        let mut conn = v2_header(0x1, 0x11, &inet);
        conn.extend_from_slice(b"payload");
        let out = exchange(o.addr(), &conn).await.unwrap();
        assert_eq!(out, b"kappa client=203.0.113.9:51000\npayload");
        assert_eq!(
            o.last_proxy_source(),
            Some("203.0.113.9:51000".parse().unwrap())
        );

        let src: Ipv6Addr = "2001:db8::42".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut inet6 = Vec::new();
        inet6.extend_from_slice(&src.octets());
        inet6.extend_from_slice(&dst.octets());
        inet6.extend_from_slice(&61000u16.to_be_bytes());
        inet6.extend_from_slice(&443u16.to_be_bytes());
        let out = exchange(o.addr(), &v2_header(0x1, 0x21, &inet6))
            .await
            .unwrap();
        assert_eq!(out, b"kappa client=[2001:db8::42]:61000\n");
        assert_eq!(
            o.last_proxy_source(),
            Some("[2001:db8::42]:61000".parse().unwrap())
        );

        // LOCAL: no announced client, the real peer is reported.
        let out = exchange(o.addr(), &v2_header(0x0, 0x00, &[]))
            .await
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("kappa client=127.0.0.1:"), "{out}");
        assert_eq!(o.connections(), 3);
    }

    #[tokio::test]
    async fn proxy_header_split_across_writes() {
        let o = origin("lambda", false, true).await;
        let stream = connect_from(o.addr(), None).await.unwrap();
        let mut reader = BufReader::new(stream);
        for part in [
            &b"PROX"[..],
            b"Y TCP4 192.0.2.1 192.0.2.2 1",
            b"0 20\r",
            b"\n",
        ] {
            reader.get_mut().write_all(part).await.unwrap();
            reader.get_mut().flush().await.unwrap();
        }
        let line = tokio::time::timeout(DEADLINE, read_line(&mut reader))
            .await
            .unwrap();
        assert_eq!(line.unwrap(), "lambda client=192.0.2.1:10");
    }

    #[tokio::test]
    async fn connection_without_proxy_header_is_closed() {
        let o = origin("mu", false, true).await;
        let out = exchange(o.addr(), b"GET / HTTP/1.1\r\n\r\n").await;
        // Closed without a greeting; a reset is fine too.
        assert!(out.as_ref().map_or(true, |b| b.is_empty()), "{out:?}");
        let out = exchange(o.addr(), b"PROXY TCP4 1.2.3.4\r\n").await;
        assert!(out.as_ref().map_or(true, |b| b.is_empty()), "{out:?}");
        assert_eq!(o.last_proxy_source(), None);
        assert_eq!(o.connections(), 2);
    }

    #[test]
    fn parser_incremental_and_rejections() {
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nrest";
        let header_len = v1.len() - 4;
        for cut in 0..header_len {
            assert_eq!(
                parse_proxy_header(&v1[..cut]),
                Ok(ProxyParse::Incomplete),
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_proxy_header(v1),
            Ok(ProxyParse::Done {
                source: Some("1.2.3.4:1".parse().unwrap()),
                len: header_len
            })
        );

        let v2 = v2_header(0x1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        for cut in 0..v2.len() {
            assert_eq!(
                parse_proxy_header(&v2[..cut]),
                Ok(ProxyParse::Incomplete),
                "cut {cut}"
            );
        }

        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIX",
        ] {
            assert!(
                parse_proxy_header(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let too_long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(parse_proxy_header(&too_long).is_err());
        // Version 1 in the binary format, unknown command, short INET block.
        let mut wrong_version = v2_header(0x1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(parse_proxy_header(&wrong_version).is_err());
        assert!(parse_proxy_header(&v2_header(0x2, 0x11, &[0; 12])).is_err());
        assert!(parse_proxy_header(&v2_header(0x1, 0x11, &[0; 8])).is_err());
        assert!(parse_proxy_header(&v2_header(0x1, 0x21, &[0; 12])).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("1.5s").is_err());
    }
}
