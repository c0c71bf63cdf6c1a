//! One health-probe attempt against one origin: the I/O half of the monitor.
//!
//! Switchyard follows Cloudflare's monitor model: `tcp` (the connection is
//! established), `tls` (the TLS handshake completes), and `http` / `https`
//! (a request is answered with an expected status and, optionally, a body
//! containing an expected substring). The scheduler owns intervals, retries
//! and the up/down state machine; this module only performs a single attempt
//! and reports its round-trip time or why it failed, so it stays easy to test
//! against small in-process servers.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{ExpectedCodes, MonitorType};
use crate::core::trouble::{blame_io, Blame, LocalCause};

/// How much of a response body is searched for `expected_body`; bounds the
/// memory and time one probe can spend on an origin serving a large page.
pub const BODY_LIMIT: usize = 64 * 1024;

const USER_AGENT_VALUE: &str = concat!("switchyard-monitor/", env!("CARGO_PKG_VERSION"));

/// What one attempt does; built by the caller from the monitor's config.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub kind: MonitorType,
    /// Bounds the whole attempt: connect + handshake + request + response.
    pub timeout: Duration,
    /// HTTP method; "HEAD" works since no body is read unless `expected_body` is set.
    pub method: String,
    /// Request target; a missing leading '/' is added.
    pub path: String,
    /// Extra request headers. One named like a default (Host, User-Agent)
    /// replaces it; `Connection` is always "close".
    pub headers: Vec<(String, String)>,
    pub expected_codes: ExpectedCodes,
    /// Case-sensitive substring that must appear in the first 64 KiB of the body.
    pub expected_body: Option<String>,
    /// https/tls: accept any certificate. The handshake is still real and its
    /// signatures are still checked.
    pub allow_insecure: bool,
    /// Send a PROXY protocol v1 header before anything else, for origins that
    /// only accept connections carrying one.
    pub proxy_protocol: bool,
}

impl ProbeSpec {
    /// A spec of `kind` with Cloudflare's defaults: GET /, expecting 2xx.
    pub fn new(kind: MonitorType, timeout: Duration) -> Self {
        Self {
            kind,
            timeout,
            method: "GET".to_string(),
            path: "/".to_string(),
            headers: Vec::new(),
            expected_codes: ExpectedCodes::default(),
            expected_body: None,
            allow_insecure: false,
            proxy_protocol: false,
        }
    }

    /// A plain TCP connect check.
    pub fn tcp(timeout: Duration) -> Self {
        Self::new(MonitorType::Tcp, timeout)
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connect refused")]
    ConnectRefused,
    #[error("timeout")]
    Timeout,
    /// Connect errors other than a refusal (unreachable, reset...).
    #[error("connect: {0}")]
    Connect(String),
    /// This node could not even try: out of descriptors, buffers or ports. Says nothing
    /// about the origin.
    #[error("local: {1}")]
    Local(LocalCause, String),
    #[error("status {0}")]
    Status(u16),
    #[error("body mismatch")]
    BodyMismatch,
    /// Handshake failures, e.g. "invalid peer certificate: UnknownIssuer".
    #[error("tls: {0}")]
    Tls(String),
    /// Malformed response, connection closed early, unusable request settings...
    #[error("http: {0}")]
    Http(String),
}

/// Runs probe attempts. Holds the TLS client configs, built once; cloning is
/// cheap and clones share them.
#[derive(Debug, Clone)]
pub struct Prober {
    // Building a config can only fail if the compiled-in provider is
    // inconsistent. Keeping the error (instead of panicking in `new`) leaves
    // tcp/http probes working and makes tls/https probes report it.
    tls: Result<TlsConfigs, String>,
}

/// What an attempt does once connected, prepared before connecting.
enum Plan {
    Tcp,
    Tls(TlsConnector, ServerName<'static>),
    Http(Request<Empty<Bytes>>),
    Https(TlsConnector, ServerName<'static>, Request<Empty<Bytes>>),
}

#[derive(Debug, Clone)]
struct TlsConfigs {
    verifying: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
}

impl Prober {
    /// Builds the TLS configs (ring provider, webpki-roots trust store, and
    /// an insecure variant); share the result rather than calling this per probe.
    pub fn new() -> Self {
        Self {
            tls: TlsConfigs::build(),
        }
    }

    /// One attempt. `addr` is the resolved target; `host` is the name used
    /// for SNI and the default Host header (the origin's configured host, or
    /// the IP). Returns the time from starting the connect to the end of the
    /// check.
    pub async fn probe(
        &self,
        spec: &ProbeSpec,
        addr: SocketAddr,
        host: &str,
    ) -> Result<Duration, ProbeError> {
        let result = match tokio::time::timeout(spec.timeout, self.attempt(spec, addr, host)).await
        {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout),
        };
        match &result {
            Ok(rtt) => tracing::trace!(%addr, host, kind = ?spec.kind, ?rtt, "probe ok"),
            Err(error) => tracing::trace!(%addr, host, kind = ?spec.kind, %error, "probe failed"),
        }
        result
    }

    async fn attempt(
        &self,
        spec: &ProbeSpec,
        addr: SocketAddr,
        host: &str,
    ) -> Result<Duration, ProbeError> {
        // Everything that can be wrong with the spec is caught before
        // connecting, so a misconfigured monitor never touches the origin.
        let plan = match spec.kind {
            MonitorType::Tcp => Plan::Tcp,
            MonitorType::Tls => Plan::Tls(self.tls_connector(spec)?, server_name(host, addr)?),
            MonitorType::Http => Plan::Http(build_request(spec, addr, host)?),
            MonitorType::Https => Plan::Https(
                self.tls_connector(spec)?,
                server_name(host, addr)?,
                build_request(spec, addr, host)?,
            ),
        };

        let start = Instant::now();
        let mut tcp = connect(addr).await?;
        let connected = start.elapsed();
        if spec.proxy_protocol {
            send_proxy_header(&mut tcp).await?;
        }

        match plan {
            // The PROXY header is only a local write; a tcp check measures
            // the connect.
            Plan::Tcp => Ok(connected),
            Plan::Tls(connector, name) => {
                let mut stream = handshake(&connector, name, tcp).await?;
                let rtt = start.elapsed();
                // Courtesy close_notify so the origin sees a clean close; the
                // check itself has already passed.
                let _ = stream.shutdown().await;
                Ok(rtt)
            }
            Plan::Http(request) => {
                exchange(tcp, request, spec).await?;
                Ok(start.elapsed())
            }
            Plan::Https(connector, name, request) => {
                let stream = handshake(&connector, name, tcp).await?;
                exchange(stream, request, spec).await?;
                Ok(start.elapsed())
            }
        }
    }

    fn tls_connector(&self, spec: &ProbeSpec) -> Result<TlsConnector, ProbeError> {
        let configs = self.tls.as_ref().map_err(|e| ProbeError::Tls(e.clone()))?;
        let config = if spec.allow_insecure {
            &configs.insecure
        } else {
            &configs.verifying
        };
        Ok(TlsConnector::from(Arc::clone(config)))
    }
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsConfigs {
    fn build() -> Result<Self, String> {
        // Pinned to ring explicitly: the process-wide default provider may be
        // unset, or set to something else by another dependency.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots: RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();

        let mut verifying = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("building client config: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let insecure_verifier = Arc::new(AcceptAnyCert {
            algorithms: provider.signature_verification_algorithms,
        });
        let mut insecure = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("building client config: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(insecure_verifier)
            .with_no_client_auth();

        // A resumed session skips certificate verification and most of the
        // handshake, so an expired or replaced certificate could go unnoticed
        // for as long as tickets stay valid. Every probe does a full handshake.
        verifying.resumption = Resumption::disabled();
        insecure.resumption = Resumption::disabled();

        Ok(Self {
            verifying: Arc::new(verifying),
            insecure: Arc::new(insecure),
        })
    }
}

/// Accepts any certificate chain but still checks the handshake signatures,
/// so `allow_insecure` skips trust decisions without degrading into a fake
/// handshake.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| match (blame_io(&e), e.kind()) {
            (Blame::Local(cause), _) => ProbeError::Local(cause, e.to_string()),
            (_, std::io::ErrorKind::ConnectionRefused) => ProbeError::ConnectRefused,
            _ => ProbeError::Connect(e.to_string()),
        })?;
    // Probe requests are tiny; Nagle would only add latency to the RTT.
    stream
        .set_nodelay(true)
        .map_err(|e| ProbeError::Connect(format!("setting TCP_NODELAY: {e}")))?;
    Ok(stream)
}

/// Writes a PROXY protocol v1 header describing this connection.
async fn send_proxy_header(stream: &mut TcpStream) -> Result<(), ProbeError> {
    let local = stream
        .local_addr()
        .map_err(|e| ProbeError::Connect(format!("local address: {e}")))?;
    let peer = stream
        .peer_addr()
        .map_err(|e| ProbeError::Connect(format!("peer address: {e}")))?;
    stream
        .write_all(proxy_v1_header(local, peer).as_bytes())
        .await
        .map_err(|e| ProbeError::Connect(format!("sending PROXY header: {e}")))
}

fn proxy_v1_header(local: SocketAddr, peer: SocketAddr) -> String {
    // A dual-stack socket reports v4 peers as v4-mapped v6; canonical form
    // gives origins the plain TCP4 line they expect.
    let (src, dst) = (local.ip().to_canonical(), peer.ip().to_canonical());
    let (proto, src, dst) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ("TCP4", s.to_string(), d.to_string()),
        (s, d) => ("TCP6", v6_string(s), v6_string(d)),
    };
    format!(
        "PROXY {proto} {src} {dst} {} {}\r\n",
        local.port(),
        peer.port()
    )
}

/// TCP6 lines need both addresses as v6.
fn v6_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_string(),
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// SNI name for `host`: a DNS name, or an IP address (which rustls does not
/// send as SNI but still checks against the certificate).
fn server_name(host: &str, addr: SocketAddr) -> Result<ServerName<'static>, ProbeError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Ok(ServerName::from(addr.ip()));
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(bare.to_string())
        .map_err(|_| ProbeError::Tls(format!("invalid server name {host:?}")))
}

async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, ProbeError> {
    connector.connect(name, tcp).await.map_err(|e| {
        // tokio-rustls wraps rustls errors (certificate problems, alerts) in
        // io::Error; unwrapping them keeps messages like
        // "invalid peer certificate: UnknownIssuer".
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => ProbeError::Tls(tls.to_string()),
            None => ProbeError::Tls(format!("handshake: {e}")),
        }
    })
}

fn build_request(
    spec: &ProbeSpec,
    addr: SocketAddr,
    host: &str,
) -> Result<Request<Empty<Bytes>>, ProbeError> {
    let method = Method::from_bytes(spec.method.trim().as_bytes())
        .map_err(|_| ProbeError::Http(format!("invalid method {:?}", spec.method)))?;
    let path = spec.path.trim();
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut request = Request::builder()
        .method(method)
        .uri(path.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http(format!("invalid path {:?}: {e}", spec.path)))?;

    let headers = request.headers_mut();
    let host_value = HeaderValue::from_str(&default_host(spec.kind, addr, host))
        .map_err(|_| ProbeError::Http(format!("invalid host {host:?}")))?;
    headers.insert(HOST, host_value);
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));

    let mut overridden: Vec<HeaderName> = Vec::new();
    for (name, value) in &spec.headers {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ProbeError::Http(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| ProbeError::Http(format!("invalid value for header {name}")))?;
        // The first configured value replaces our default; later ones with the
        // same name are kept as repeats.
        if !overridden.contains(&name) {
            headers.remove(&name);
            overridden.push(name.clone());
        }
        headers.append(name, value);
    }
    // One request per connection: ask the origin to release it right away.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(request)
}

/// Host header value: `host`, plus the port when it is not the scheme's default.
fn default_host(kind: MonitorType, addr: SocketAddr, host: &str) -> String {
    let name = if host.is_empty() {
        addr.ip().to_string()
    } else {
        host.to_string()
    };
    let name = if name.contains(':') && !name.starts_with('[') {
        format!("[{name}]")
    } else {
        name
    };
    let default_port = match kind {
        MonitorType::Http => Some(80),
        MonitorType::Https => Some(443),
        MonitorType::Tcp | MonitorType::Tls => None,
    };
    if default_port == Some(addr.port()) {
        name
    } else {
        format!("{name}:{}", addr.port())
    }
}

/// The HTTP half of an `http` or `https` attempt over a stream already connected (and, for
/// `https`, past its handshake): the request `spec` makes for `addr` and `host`, sent over
/// `io`, and the response judged as [`Prober::probe`] judges it. The probe itself builds its
/// request before connecting, so that a bad spec never touches the origin; this is the same
/// two steps in one call, for the fuzz targets (`fuzz/`), which hand it canned responses.
#[doc(hidden)]
pub async fn http_check<T>(
    io: T,
    spec: &ProbeSpec,
    addr: SocketAddr,
    host: &str,
) -> Result<(), ProbeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    exchange(io, build_request(spec, addr, host)?, spec).await
}

/// Sends `request` over `io` and checks the response against `spec`.
async fn exchange<T>(
    io: T,
    request: Request<Empty<Bytes>>,
    spec: &ProbeSpec,
) -> Result<(), ProbeError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http_error)?;
    let check = async {
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status().as_u16();
        if !spec.expected_codes.matches(status) {
            return Err(ProbeError::Status(status));
        }
        match spec.expected_body.as_deref() {
            Some(needle) => {
                if body_contains(response.into_body(), needle.as_bytes()).await? {
                    Ok(())
                } else {
                    Err(ProbeError::BodyMismatch)
                }
            }
            None => Ok(()),
        }
    };
    // The connection is driven in this future rather than a spawned task, so
    // an attempt that times out leaves nothing running behind it.
    tokio::pin!(conn);
    tokio::pin!(check);
    tokio::select! {
        biased;
        result = &mut check => result,
        driven = &mut conn => match driven {
            // Usually `check` then fails with the same cause; report the
            // connection's error, which is the more direct one.
            Err(e) => Err(http_error(e)),
            Ok(()) => check.await,
        },
    }
}

/// Reads at most [`BODY_LIMIT`] bytes of `body`, stopping as soon as `needle`
/// has been seen within them.
async fn body_contains<B>(mut body: B, needle: &[u8]) -> Result<bool, ProbeError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: StdError,
{
    if needle.is_empty() {
        return Ok(true);
    }
    let mut seen: Vec<u8> = Vec::new();
    while seen.len() < BODY_LIMIT {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| ProbeError::Http(error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let take = data.len().min(BODY_LIMIT - seen.len());
        // Only the new bytes plus a needle-sized overlap need searching, which
        // keeps many tiny chunks from making this quadratic.
        let from = seen.len().saturating_sub(needle.len() - 1);
        seen.extend_from_slice(&data[..take]);
        if contains(&seen[from..], needle) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn http_error(error: hyper::Error) -> ProbeError {
    ProbeError::Http(error_chain(&error))
}

/// hyper's Display omits the cause (e.g. which I/O error closed the
/// connection), so the source chain is appended.
fn error_chain(error: &dyn StdError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::Frame;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::ServerConfig;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_rustls::TlsAcceptor;

    /// Upper bound for anything a test waits on; never reached when passing.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn spec(kind: MonitorType) -> ProbeSpec {
        ProbeSpec::new(kind, DEADLINE)
    }

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    #[derive(Clone)]
    enum Reply {
        /// Written in order, flushing after each.
        Chunks(Vec<Vec<u8>>),
        /// Keep the connection open, reading until the client goes away.
        Hang,
        /// Close without answering.
        Close,
    }

    #[derive(Clone)]
    struct ServerOpts {
        tls: Option<Arc<ServerConfig>>,
        proxy: bool,
        http: bool,
        reply: Reply,
    }

    impl ServerOpts {
        fn http(reply: Reply) -> Self {
            Self {
                tls: None,
                proxy: false,
                http: true,
                reply,
            }
        }
    }

    /// What a test server observed on one connection.
    #[derive(Debug)]
    struct Seen {
        peer: SocketAddr,
        proxy_line: Option<String>,
        sni: Option<String>,
        request_line: String,
        headers: Vec<(String, String)>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        }
    }

    struct Server {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Seen>,
    }

    impl Server {
        async fn start(opts: ServerOpts) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, seen) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    tokio::spawn(handle(stream, peer, opts.clone(), tx.clone()));
                }
            });
            Self { addr, seen }
        }

        async fn next(&mut self) -> Seen {
            tokio::time::timeout(DEADLINE, self.seen.recv())
                .await
                .expect("server saw no connection before the deadline")
                .expect("server stopped")
        }
    }

    async fn handle(
        mut tcp: TcpStream,
        peer: SocketAddr,
        opts: ServerOpts,
        tx: mpsc::UnboundedSender<Seen>,
    ) {
        let mut seen = Seen {
            peer,
            proxy_line: None,
            sni: None,
            request_line: String::new(),
            headers: Vec::new(),
        };
        if opts.proxy {
            // Byte by byte so none of a following TLS handshake is consumed.
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                match tcp.read_u8().await {
                    Ok(b) => line.push(b),
                    Err(_) => break,
                }
            }
            seen.proxy_line = Some(String::from_utf8_lossy(&line).into_owned());
        }
        let mut io: Box<dyn Io> = match &opts.tls {
            Some(config) => match TlsAcceptor::from(Arc::clone(config)).accept(tcp).await {
                Ok(stream) => {
                    seen.sni = stream.get_ref().1.server_name().map(str::to_owned);
                    Box::new(stream)
                }
                // The client rejected our certificate; nothing to observe.
                Err(_) => return,
            },
            None => Box::new(tcp),
        };
        if opts.http {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let mut lines = head.split("\r\n");
            seen.request_line = lines.next().unwrap_or_default().to_string();
            seen.headers = lines
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
        }
        let _ = tx.send(seen);
        match opts.reply {
            Reply::Chunks(chunks) => {
                for chunk in chunks {
                    if io.write_all(&chunk).await.is_err() || io.flush().await.is_err() {
                        return;
                    }
                }
                let _ = io.shutdown().await;
            }
            Reply::Hang => {
                let mut sink = Vec::new();
                let _ = io.read_to_end(&mut sink).await;
            }
            Reply::Close => {}
        }
    }

    fn response(status: u16, body: &str) -> Reply {
        Reply::Chunks(vec![format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()])
    }

    fn tls_server_config() -> Arc<ServerConfig> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
                .unwrap();
        Arc::new(config)
    }

    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    // ---- pure helpers ----

    #[test]
    fn proxy_header_lines() {
        let v4 = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            proxy_v1_header(v4("10.0.0.1:40000"), v4("192.0.2.7:443")),
            "PROXY TCP4 10.0.0.1 192.0.2.7 40000 443\r\n"
        );
        assert_eq!(
            proxy_v1_header(v4("[2001:db8::1]:40000"), v4("[2001:db8::2]:80")),
            "PROXY TCP6 2001:db8::1 2001:db8::2 40000 80\r\n"
        );
        assert_eq!(
            proxy_v1_header(v4("[::ffff:10.0.0.1]:1"), v4("[::ffff:192.0.2.7]:2")),
            "PROXY TCP4 10.0.0.1 192.0.2.7 1 2\r\n"
        );
        assert_eq!(
            proxy_v1_header(v4("[::ffff:10.0.0.1]:1"), v4("[2001:db8::2]:2")),
            "PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 1 2\r\n"
        );
    }

    #[test]
    fn default_host_values() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let cases = [
            (
                MonitorType::Http,
                "192.0.2.1:80",
                "example.com",
                "example.com",
            ),
            (
                MonitorType::Http,
                "192.0.2.1:8080",
                "example.com",
                "example.com:8080",
            ),
            (
                MonitorType::Https,
                "192.0.2.1:443",
                "example.com",
                "example.com",
            ),
            (
                MonitorType::Https,
                "192.0.2.1:80",
                "example.com",
                "example.com:80",
            ),
            (MonitorType::Http, "192.0.2.1:80", "", "192.0.2.1"),
            (
                MonitorType::Http,
                "[2001:db8::1]:8080",
                "2001:db8::1",
                "[2001:db8::1]:8080",
            ),
            (MonitorType::Https, "[2001:db8::1]:443", "", "[2001:db8::1]"),
            (
                MonitorType::Http,
                "[2001:db8::1]:80",
                "[2001:db8::1]",
                "[2001:db8::1]",
            ),
        ];
        for (kind, a, host, want) in cases {
            assert_eq!(
                default_host(kind, addr(a), host),
                want,
                "{kind:?} {a} {host:?}"
            );
        }
    }

    #[test]
    fn server_names() {
        let addr: SocketAddr = "192.0.2.9:443".parse().unwrap();
        let name = |h: &str| server_name(h, addr).unwrap().to_str().into_owned();
        assert_eq!(name("example.com"), "example.com");
        assert!(matches!(
            server_name("192.0.2.1", addr).unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[2001:db8::1]", addr).unwrap(),
            ServerName::IpAddress(_)
        ));
        assert_eq!(name(""), "192.0.2.9");
        assert!(matches!(
            server_name("bad name!", addr),
            Err(ProbeError::Tls(_))
        ));
    }

    /// A body yielding the given frames, to exercise frame boundaries exactly.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn frames(parts: &[&[u8]]) -> Frames {
        Frames(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect())
    }

    #[tokio::test]
    async fn body_search_spans_frames_and_stops_at_limit() {
        let found = |parts: &[&[u8]], needle: &str| {
            let body = frames(parts);
            let needle = needle.to_string();
            async move { body_contains(body, needle.as_bytes()).await.unwrap() }
        };
        assert!(found(&[b"hello swi", b"tch", b"yard ok"], "switchyard").await);
        assert!(found(&[b"s", b"w", b"i", b"t", b"c", b"h"], "switch").await);
        assert!(!found(&[b"hello", b" world"], "Hello").await);
        assert!(found(&[], "").await);

        let filler = vec![b'a'; BODY_LIMIT - 3];
        // Needle entirely inside the first 64 KiB: found.
        assert!(found(&[&filler[..BODY_LIMIT - 6], b"NEEDLE"], "NEEDLE").await);
        // Needle straddling the limit: the part past 64 KiB is not read.
        assert!(!found(&[&filler, b"NEEDLE"], "NEEDLE").await);
        assert!(!found(&[&filler, b"abc", b"NEEDLE"], "NEEDLE").await);
    }

    // ---- tcp ----

    #[tokio::test]
    async fn tcp_connects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rtt = Prober::new()
            .probe(&ProbeSpec::tcp(DEADLINE), addr, "127.0.0.1")
            .await;
        assert!(rtt.is_ok(), "{rtt:?}");
    }

    #[tokio::test]
    async fn tcp_refused() {
        let addr = closed_port().await;
        let result = Prober::new()
            .probe(&ProbeSpec::tcp(DEADLINE), addr, "127.0.0.1")
            .await;
        assert_eq!(result, Err(ProbeError::ConnectRefused));
    }

    #[tokio::test]
    async fn tcp_with_proxy_header() {
        let mut server = Server::start(ServerOpts {
            tls: None,
            proxy: true,
            http: false,
            reply: Reply::Close,
        })
        .await;
        let mut spec = ProbeSpec::tcp(DEADLINE);
        spec.proxy_protocol = true;
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert!(result.is_ok(), "{result:?}");
        let seen = server.next().await;
        assert_eq!(
            seen.proxy_line.as_deref(),
            Some(&*format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                seen.peer.port(),
                server.addr.port()
            ))
        );
    }

    // ---- http ----

    #[tokio::test]
    async fn http_times_out_when_origin_never_answers() {
        let server = Server::start(ServerOpts::http(Reply::Hang)).await;
        let mut spec = spec(MonitorType::Http);
        spec.timeout = Duration::from_millis(300);
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert_eq!(result, Err(ProbeError::Timeout));
    }

    #[tokio::test]
    async fn http_ok_with_body_match() {
        let mut server =
            Server::start(ServerOpts::http(response(200, "hello switchyard ok"))).await;
        let mut spec = spec(MonitorType::Http);
        spec.expected_body = Some("switchyard".into());
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert!(result.is_ok(), "{result:?}");

        let seen = server.next().await;
        assert_eq!(seen.request_line, "GET / HTTP/1.1");
        assert_eq!(
            seen.header("host"),
            [format!("127.0.0.1:{}", server.addr.port())]
        );
        assert_eq!(
            seen.header("user-agent"),
            [concat!("switchyard-monitor/", env!("CARGO_PKG_VERSION"))]
        );
        assert_eq!(seen.header("connection"), ["close"]);
        assert!(seen.proxy_line.is_none());
    }

    #[tokio::test]
    async fn http_body_mismatch() {
        let server = Server::start(ServerOpts::http(response(200, "hello world"))).await;
        let mut spec = spec(MonitorType::Http);
        spec.expected_body = Some("Hello".into());
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert_eq!(result, Err(ProbeError::BodyMismatch));
    }

    #[tokio::test]
    async fn http_unexpected_status() {
        let server = Server::start(ServerOpts::http(response(503, "down"))).await;
        let result = Prober::new()
            .probe(&spec(MonitorType::Http), server.addr, "127.0.0.1")
            .await;
        assert_eq!(result, Err(ProbeError::Status(503)));
    }

    #[tokio::test]
    async fn http_custom_expected_codes() {
        let prober = Prober::new();
        let mut spec = spec(MonitorType::Http);
        spec.expected_codes = ExpectedCodes::parse("200,301").unwrap();
        for (status, want) in [
            (301, Ok(())),
            (200, Ok(())),
            (302, Err(ProbeError::Status(302))),
            (204, Err(ProbeError::Status(204))),
        ] {
            let server = Server::start(ServerOpts::http(response(status, ""))).await;
            let result = prober.probe(&spec, server.addr, "127.0.0.1").await;
            assert_eq!(result.map(|_| ()), want, "status {status}");
        }
    }

    #[tokio::test]
    async fn http_method_path_and_headers_reach_origin() {
        let mut server = Server::start(ServerOpts::http(response(200, ""))).await;
        let mut spec = spec(MonitorType::Http);
        spec.method = "OPTIONS".into();
        spec.path = "health/check?full=1".into();
        spec.headers = vec![
            ("X-Probe".into(), "abc".into()),
            ("X-Multi".into(), "one".into()),
            ("x-multi".into(), "two".into()),
            ("User-Agent".into(), "custom-agent".into()),
        ];
        let result = Prober::new()
            .probe(&spec, server.addr, "origin.example")
            .await;
        assert!(result.is_ok(), "{result:?}");

        let seen = server.next().await;
        assert_eq!(seen.request_line, "OPTIONS /health/check?full=1 HTTP/1.1");
        assert_eq!(seen.header("x-probe"), ["abc"]);
        assert_eq!(seen.header("x-multi"), ["one", "two"]);
        assert_eq!(seen.header("user-agent"), ["custom-agent"]);
        assert_eq!(
            seen.header("host"),
            [format!("origin.example:{}", server.addr.port())]
        );
    }

    #[tokio::test]
    async fn http_host_header_override() {
        let mut server = Server::start(ServerOpts::http(response(200, ""))).await;
        let mut spec = spec(MonitorType::Http);
        spec.headers = vec![("host".into(), "vhost.example".into())];
        let result = Prober::new()
            .probe(&spec, server.addr, "origin.example")
            .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(server.next().await.header("host"), ["vhost.example"]);
    }

    #[tokio::test]
    async fn http_head_reads_no_body() {
        // A HEAD answer announces a length but carries no body; the socket
        // stays open, so waiting for those bytes would run into the deadline.
        let mut server = Server::start(ServerOpts::http(Reply::Chunks(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
        ])))
        .await;
        let mut spec = spec(MonitorType::Http);
        spec.method = "HEAD".into();
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(server.next().await.request_line, "HEAD / HTTP/1.1");
    }

    #[tokio::test]
    async fn http_body_is_not_read_unless_required() {
        // Announces more than it sends and then holds the connection open.
        let server = Server::start(ServerOpts::http(Reply::Chunks(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial".to_vec(),
        ])))
        .await;
        let result = Prober::new()
            .probe(&spec(MonitorType::Http), server.addr, "127.0.0.1")
            .await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn http_large_body_only_first_64k_searched() {
        let mut big = "x".repeat(BODY_LIMIT + 10);
        big.push_str("LATE");
        let early = format!("EARLY{}", "y".repeat(1 << 20));
        for (body, needle, want) in [
            (big, "LATE", Err(ProbeError::BodyMismatch)),
            (early, "EARLY", Ok(())),
        ] {
            let server = Server::start(ServerOpts::http(response(200, &body))).await;
            let mut spec = spec(MonitorType::Http);
            spec.expected_body = Some(needle.into());
            let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
            assert_eq!(result.map(|_| ()), want, "needle {needle}");
        }
    }

    #[tokio::test]
    async fn http_chunked_body_match() {
        let server = Server::start(ServerOpts::http(Reply::Chunks(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            b"6\r\nstatus\r\n".to_vec(),
            b"4\r\n: up\r\n".to_vec(),
            b"0\r\n\r\n".to_vec(),
        ])))
        .await;
        let mut spec = spec(MonitorType::Http);
        spec.expected_body = Some("status: up".into());
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn http_closed_without_answer() {
        let server = Server::start(ServerOpts::http(Reply::Close)).await;
        let result = Prober::new()
            .probe(&spec(MonitorType::Http), server.addr, "127.0.0.1")
            .await;
        assert!(matches!(result, Err(ProbeError::Http(_))), "{result:?}");
    }

    #[tokio::test]
    async fn http_truncated_body() {
        let server = Server::start(ServerOpts::http(Reply::Chunks(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nshort".to_vec(),
        ])))
        .await;
        let mut spec = spec(MonitorType::Http);
        spec.expected_body = Some("never there".into());
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert!(matches!(result, Err(ProbeError::Http(_))), "{result:?}");
    }

    #[tokio::test]
    async fn http_malformed_response() {
        let server = Server::start(ServerOpts::http(Reply::Chunks(vec![
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
        ])))
        .await;
        let result = Prober::new()
            .probe(&spec(MonitorType::Http), server.addr, "127.0.0.1")
            .await;
        assert!(matches!(result, Err(ProbeError::Http(_))), "{result:?}");
    }

    #[tokio::test]
    async fn http_refused() {
        let addr = closed_port().await;
        let result = Prober::new()
            .probe(&spec(MonitorType::Http), addr, "127.0.0.1")
            .await;
        assert_eq!(result, Err(ProbeError::ConnectRefused));
    }

    #[tokio::test]
    async fn invalid_spec_fails_before_connecting() {
        // A closed port: had a connect been tried, the error would be ConnectRefused.
        let addr = closed_port().await;
        let prober = Prober::new();
        let mut bad_method = spec(MonitorType::Http);
        bad_method.method = "GE T".into();
        let mut bad_header = spec(MonitorType::Http);
        bad_header.headers = vec![("X-Bad".into(), "line\nbreak".into())];
        let mut bad_path = spec(MonitorType::Http);
        bad_path.path = "/with space".into();
        for spec in [bad_method, bad_header, bad_path] {
            let result = prober.probe(&spec, addr, "127.0.0.1").await;
            assert!(matches!(result, Err(ProbeError::Http(_))), "{result:?}");
        }
        let result = prober
            .probe(&spec(MonitorType::Tls), addr, "bad name!")
            .await;
        assert!(matches!(result, Err(ProbeError::Tls(_))), "{result:?}");
    }

    #[tokio::test]
    async fn http_with_proxy_header() {
        let mut server = Server::start(ServerOpts {
            proxy: true,
            ..ServerOpts::http(response(200, "ok"))
        })
        .await;
        let mut spec = spec(MonitorType::Http);
        spec.proxy_protocol = true;
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert!(result.is_ok(), "{result:?}");
        let seen = server.next().await;
        assert_eq!(
            seen.proxy_line.as_deref(),
            Some(&*format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                seen.peer.port(),
                server.addr.port()
            ))
        );
        assert_eq!(seen.request_line, "GET / HTTP/1.1");
    }

    // ---- tls / https ----

    fn tls_opts(http: bool, reply: Reply) -> ServerOpts {
        ServerOpts {
            tls: Some(tls_server_config()),
            proxy: false,
            http,
            reply,
        }
    }

    #[tokio::test]
    async fn https_self_signed_rejected_unless_insecure() {
        let mut server = Server::start(tls_opts(true, response(200, "secure hello"))).await;
        let prober = Prober::new();
        let mut spec = spec(MonitorType::Https);
        spec.expected_body = Some("secure".into());

        let result = prober.probe(&spec, server.addr, "localhost").await;
        match &result {
            Err(ProbeError::Tls(msg)) => assert!(msg.contains("UnknownIssuer"), "{msg}"),
            other => panic!("expected a certificate error, got {other:?}"),
        }

        spec.allow_insecure = true;
        let result = prober.probe(&spec, server.addr, "localhost").await;
        assert!(result.is_ok(), "{result:?}");
        let seen = server.next().await;
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        assert_eq!(
            seen.header("host"),
            [format!("localhost:{}", server.addr.port())]
        );
    }

    #[tokio::test]
    async fn https_status_checked_after_handshake() {
        let server = Server::start(tls_opts(true, response(500, ""))).await;
        let mut spec = spec(MonitorType::Https);
        spec.allow_insecure = true;
        let result = Prober::new().probe(&spec, server.addr, "localhost").await;
        assert_eq!(result, Err(ProbeError::Status(500)));
    }

    #[tokio::test]
    async fn tls_self_signed_rejected_unless_insecure() {
        let mut server = Server::start(tls_opts(false, Reply::Hang)).await;
        let prober = Prober::new();
        let mut spec = spec(MonitorType::Tls);

        let result = prober.probe(&spec, server.addr, "localhost").await;
        match &result {
            Err(ProbeError::Tls(msg)) => assert!(msg.contains("UnknownIssuer"), "{msg}"),
            other => panic!("expected a certificate error, got {other:?}"),
        }

        spec.allow_insecure = true;
        let result = prober.probe(&spec, server.addr, "localhost").await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(server.next().await.sni.as_deref(), Some("localhost"));
    }

    #[tokio::test]
    async fn tls_to_ip_sends_no_sni() {
        let mut server = Server::start(tls_opts(false, Reply::Hang)).await;
        let mut spec = spec(MonitorType::Tls);
        spec.allow_insecure = true;
        let result = Prober::new().probe(&spec, server.addr, "127.0.0.1").await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(server.next().await.sni, None);
    }

    #[tokio::test]
    async fn tls_against_plain_server_fails() {
        // Answers before reading anything, as a banner-first protocol would.
        let server = Server::start(ServerOpts {
            http: false,
            ..ServerOpts::http(response(400, "not tls"))
        })
        .await;
        let mut spec = spec(MonitorType::Tls);
        spec.allow_insecure = true;
        let result = Prober::new().probe(&spec, server.addr, "localhost").await;
        assert!(matches!(result, Err(ProbeError::Tls(_))), "{result:?}");
    }

    #[tokio::test]
    async fn tls_with_proxy_header_before_handshake() {
        let mut server = Server::start(ServerOpts {
            proxy: true,
            ..tls_opts(true, response(200, ""))
        })
        .await;
        let mut spec = spec(MonitorType::Https);
        spec.allow_insecure = true;
        spec.proxy_protocol = true;
        let result = Prober::new().probe(&spec, server.addr, "localhost").await;
        assert!(result.is_ok(), "{result:?}");
        let seen = server.next().await;
        assert!(
            seen.proxy_line
                .as_deref()
                .is_some_and(|l| l.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ")),
            "{seen:?}"
        );
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
    }

    #[test]
    fn probe_future_is_send_and_prober_is_cheap_to_share() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync_clone::<Prober>();
        let prober = Prober::new();
        let spec = ProbeSpec::tcp(DEADLINE);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let fut = prober.probe(&spec, addr, "127.0.0.1");
        assert_send(&fut);
    }

    #[tokio::test]
    async fn http_check_judges_a_response_as_the_probe_does() {
        let addr: SocketAddr = "192.0.2.10:8080".parse().unwrap();
        // The origin answers once it has the request's head, as a real one does.
        let check = |response: &'static [u8], spec: ProbeSpec| async move {
            let (probe_end, mut origin) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    match origin.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = origin.write_all(response).await;
                let _ = origin.shutdown().await;
            });
            http_check(probe_end, &spec, addr, "origin.example").await
        };
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nall is ok";
        assert_eq!(check(ok, spec(MonitorType::Http)).await, Ok(()));
        let mut wants_body = spec(MonitorType::Http);
        wants_body.expected_body = Some("is ok".into());
        assert_eq!(check(ok, wants_body.clone()).await, Ok(()));
        wants_body.expected_body = Some("healthy".into());
        assert_eq!(check(ok, wants_body).await, Err(ProbeError::BodyMismatch));
        let unavailable = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check(unavailable, spec(MonitorType::Http)).await,
            Err(ProbeError::Status(503))
        );
        assert!(matches!(
            check(b"SSH-2.0-OpenSSH\r\n", spec(MonitorType::Http)).await,
            Err(ProbeError::Http(_))
        ));
    }
}
