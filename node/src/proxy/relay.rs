//! The proxy's data path: moves bytes both ways between an accepted client
//! connection and the origin connection chosen for it, until both sides are
//! done, one side fails, or the connection goes idle.
//!
//! On Linux bulk bytes never enter userspace: each direction splices
//! socket -> pipe -> socket. Small bursts (request/reply traffic) are copied
//! instead, which costs less than a splice pair; a read that fills the small
//! buffer switches the direction to splicing until a burst comes in under it
//! again. Both directions and the idle timer are driven
//! from the one task that calls [`relay`], so a proxied connection costs no
//! extra task. A connection holds a pipe only while bytes are in flight: pipes
//! come from a small per-thread pool when a side becomes readable and go back
//! once drained, so an idle connection holds neither a pipe nor a buffer.
//! Elsewhere (and on Linux if a pipe cannot be had) the same loop copies
//! through a pooled userspace buffer that is likewise held only while data
//! moves.

use crate::clock::Activity;
use std::cell::RefCell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::sleep_until;

/// Which way bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToOrigin,
    OriginToClient,
}

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Both directions finished with EOF.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    IdleTimeout,
    /// Reading from or writing to the client failed.
    ClientReset,
    /// Reading from or writing to the origin failed.
    OriginReset,
    /// A local failure unrelated to either peer (runtime shutdown and the like).
    Error,
}

impl EndReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::IdleTimeout => "idle timeout",
            EndReason::ClientReset => "client reset",
            EndReason::OriginReset => "origin reset",
            EndReason::Error => "error",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished relay moved and why it stopped. Byte counts are bytes
/// delivered to the destination socket, so they agree with the sum of the
/// `on_bytes` calls.
#[derive(Debug, Clone, Copy)]
pub struct RelayOutcome {
    pub client_to_origin: u64,
    pub origin_to_client: u64,
    pub end: EndReason,
}

/// Relays until both directions have seen EOF (half-close passed through: when one side
/// sends FIN, shutdown(SHUT_WR) the other side and keep relaying the other direction),
/// an error, or no byte moved in either direction for `idle_timeout`.
/// `on_bytes` is called as bytes move (so live counters update while the connection is open).
///
/// Both sockets are closed when this returns. The returned future is `Send`
/// whenever `on_bytes` is `Send + Sync`.
pub async fn relay(
    client: TcpStream,
    origin: TcpStream,
    idle_timeout: Duration,
    on_bytes: impl Fn(Direction, u64),
) -> RelayOutcome {
    relay_with(Engine::PREFERRED, client, origin, idle_timeout, on_bytes).await
}

/// Sets the capacity asked for (with `F_SETPIPE_SZ`) when relay pipes are
/// created; 0 keeps the kernel default (64 KiB). The default is 1 MiB: on
/// loopback it gave about a fifth more throughput and a quarter less relay
/// CPU per byte than 64 KiB pipes (see the ignored `relay_throughput` test). Pipes
/// already pooled keep their size. Enlarged pipes are capped at a combined
/// 32 MiB per process, because pipe capacity counts against the per-user
/// `fs.pipe-user-pages-soft` budget (64 MiB by default), past which an
/// unprivileged user's new pipes are cut to two pages. If the kernel refuses
/// (over `fs.pipe-max-size` or that budget) the pipe silently keeps the size
/// it got. No effect off Linux.
pub fn set_pipe_size(bytes: usize) {
    #[cfg(target_os = "linux")]
    splicing::PIPE_SIZE.store(bytes, Ordering::Relaxed);
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// How a direction moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    #[cfg(target_os = "linux")]
    Splice,
    // On Linux the copy path is reached per burst when no pipe can be had,
    // not through this variant, which only tests select there.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Copy,
}

impl Engine {
    #[cfg(target_os = "linux")]
    const PREFERRED: Engine = Engine::Splice;
    #[cfg(not(target_os = "linux"))]
    const PREFERRED: Engine = Engine::Copy;
}

async fn relay_with<F: Fn(Direction, u64)>(
    engine: Engine,
    client: TcpStream,
    origin: TcpStream,
    idle_timeout: Duration,
    on_bytes: F,
) -> RelayOutcome {
    let shared = RelayState {
        activity: Activity::new(),
        client_to_origin: AtomicU64::new(0),
        origin_to_client: AtomicU64::new(0),
        eofs: AtomicU8::new(0),
        on_bytes: &on_bytes,
    };
    let client_to_origin = Side {
        src: &client,
        dst: &origin,
        dir: Direction::ClientToOrigin,
        src_reset: EndReason::ClientReset,
        dst_reset: EndReason::OriginReset,
    };
    let origin_to_client = Side {
        src: &origin,
        dst: &client,
        dir: Direction::OriginToClient,
        src_reset: EndReason::OriginReset,
        dst_reset: EndReason::ClientReset,
    };
    // Pinned here and handed down by reference: passing the direction futures
    // by value into another async fn would store them twice in this future.
    let end = drive(
        [
            pin!(pump(engine, client_to_origin, &shared)),
            pin!(pump(engine, origin_to_client, &shared)),
        ],
        &shared.activity,
        idle_timeout,
    )
    .await;
    RelayOutcome {
        client_to_origin: shared.client_to_origin.load(Ordering::Relaxed),
        origin_to_client: shared.origin_to_client.load(Ordering::Relaxed),
        end,
    }
}

/// State both directions update. Atomics rather than `Cell`s only so that the
/// relay future stays `Send`; nothing here is contended.
struct RelayState<'a, F> {
    activity: Activity,
    client_to_origin: AtomicU64,
    origin_to_client: AtomicU64,
    /// Directions that have seen EOF.
    eofs: AtomicU8,
    on_bytes: &'a F,
}

impl<F: Fn(Direction, u64)> RelayState<'_, F> {
    fn delivered(&self, dir: Direction, n: usize) {
        let n = n as u64;
        let total = match dir {
            Direction::ClientToOrigin => &self.client_to_origin,
            Direction::OriginToClient => &self.origin_to_client,
        };
        total.fetch_add(n, Ordering::Relaxed);
        self.activity.touch();
        (self.on_bytes)(dir, n);
    }
}

/// One direction: bytes flow from `src` to `dst`.
struct Side<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    dir: Direction,
    /// What a failure on `src` / `dst` means for the relay as a whole.
    src_reset: EndReason,
    dst_reset: EndReason,
}

/// How a burst of reading ended.
enum Flow {
    /// The source has nothing more for now; everything read was delivered.
    Drained,
    /// The source sent FIN; everything before it was delivered.
    Eof,
}

/// Polls both directions and the idle timer from one future, so one task
/// serves the whole connection. Finishes when both directions are done, when
/// either fails, or when the timer finds no activity since it was armed.
async fn drive<P>(pumps: [Pin<&mut P>; 2], activity: &Activity, idle_timeout: Duration) -> EndReason
where
    P: Future<Output = Result<(), EndReason>>,
{
    // An unbounded timeout must not overflow Instant arithmetic; 30 years is
    // what tokio itself treats as "never".
    let idle_timeout = idle_timeout.min(Duration::from_secs(86_400 * 365 * 30));
    let mut pumps = pumps.map(Some);
    let mut timer = pin!(sleep_until(activity.last() + idle_timeout));
    let mut first = 0;
    poll_fn(move |cx| {
        // Both directions share the task's coop budget; whichever is polled
        // first can spend all of it, so alternate to keep a bulk transfer one
        // way from starving the other.
        first ^= 1;
        for i in [first, first ^ 1] {
            if let Some(pump) = pumps[i].as_mut() {
                if let Poll::Ready(result) = pump.as_mut().poll(cx) {
                    match result {
                        Ok(()) => pumps[i] = None,
                        Err(end) => return Poll::Ready(end),
                    }
                }
            }
        }
        if pumps.iter().all(Option::is_none) {
            return Poll::Ready(EndReason::Closed);
        }
        // The timer is re-armed only when it fires, not on every byte, so a
        // busy connection costs one timer update per idle period.
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = activity.last() + idle_timeout;
            if deadline <= timer.deadline() {
                return Poll::Ready(EndReason::IdleTimeout);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Runs one direction until EOF (then passes the FIN on) or failure.
async fn pump<F: Fn(Direction, u64)>(
    engine: Engine,
    side: Side<'_>,
    shared: &RelayState<'_, F>,
) -> Result<(), EndReason> {
    // Whether the last burst was big enough that the next one should go straight to
    // splicing; see `SMALL_BURST`.
    #[cfg(target_os = "linux")]
    let mut bulk = false;
    loop {
        // Nothing is held while waiting here: that is what keeps idle
        // connections cheap.
        side.src.readable().await.map_err(|_| EndReason::Error)?;
        let flow = match engine {
            #[cfg(target_os = "linux")]
            Engine::Splice => {
                let small = if bulk {
                    None
                } else {
                    copy_small(&side, shared).await?
                };
                match small {
                    Some(flow) => flow,
                    None => match splicing::PipeLease::acquire() {
                        Ok(mut pipe) => {
                            let (flow, moved) =
                                splicing::splice_burst(&side, shared, &mut pipe).await?;
                            bulk = moved >= SMALL_BURST;
                            flow
                        }
                        Err(err) => {
                            splicing::note_pipe_failure(&err);
                            copy_burst(&side, shared).await?
                        }
                    },
                }
            }
            Engine::Copy => copy_burst(&side, shared).await?,
        };
        if let Flow::Eof = flow {
            // The other direction is done too when it has already taken `shared.eofs`:
            // then both sockets are about to be closed, and close sends this FIN itself.
            if shared.eofs.fetch_add(1, Ordering::Relaxed) == 0 {
                SockRef::from(side.dst)
                    .shutdown(Shutdown::Write)
                    .map_err(|_| side.dst_reset)?;
            }
            return Ok(());
        }
    }
}

/// Buffer size for the copying path; matches what tokio's own copy uses at
/// its best and is only held while bytes are in flight.
const COPY_BUFFER_SIZE: usize = 64 * 1024;
/// Per-thread cap on idle copy buffers kept for reuse.
const MAX_POOLED_BUFFERS: usize = 8;
/// Bursts up to this size are copied rather than spliced. A splice pair costs more
/// kernel time than a read and a write of a few bytes, and request/reply traffic rarely
/// comes in larger pieces; a read that fills this much switches the direction to
/// splicing until a burst comes in under it again.
#[cfg(target_os = "linux")]
const SMALL_BURST: usize = 16 * 1024;

thread_local! {
    static BUFFER_POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer borrowed from the pool; goes back on drop.
struct BufferLease(Box<[u8]>);

impl BufferLease {
    fn acquire() -> Self {
        let pooled = BUFFER_POOL
            .try_with(|pool| pool.borrow_mut().pop())
            .ok()
            .flatten();
        BufferLease(pooled.unwrap_or_else(|| vec![0; COPY_BUFFER_SIZE].into_boxed_slice()))
    }
}

impl Drop for BufferLease {
    fn drop(&mut self) {
        // An empty box does not allocate, so this leaves nothing behind.
        let buf = std::mem::take(&mut self.0);
        // During thread teardown the pool may be gone; the buffer is then
        // simply freed.
        let _ = BUFFER_POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < MAX_POOLED_BUFFERS {
                pool.push(buf);
            }
        });
    }
}

/// Appends to `into` what a just-accepted client has already sent, read without waiting (up
/// to 16 KiB), so it can go out with the origin connection's first write: client-first
/// protocols (HTTP, TLS) then reach the origin in one piece, and the origin is not woken by
/// the new connection and again by its first bytes. Returns how many bytes it took: 0 when
/// nothing has arrived yet (a server-first protocol, or a slow client) or the client already
/// sent FIN; the relay sees that EOF again. `Err` when the client has reset.
pub fn read_initial(client: &TcpStream, into: &mut Vec<u8>) -> Result<usize, EndReason> {
    let mut lease = BufferLease::acquire();
    let buf = &mut lease.0[..INITIAL_READ];
    match recv(client, buf) {
        // Copied out at its size: the pooled buffer must not stay with a connection that may
        // wait seconds for its origin.
        Ok(Read::Data { n, .. }) => {
            into.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        Ok(Read::Eof | Read::WouldBlock) => Ok(0),
        Err(_) => Err(EndReason::ClientReset),
    }
}

/// The most `read_initial` takes; the rest waits for the relay.
const INITIAL_READ: usize = 16 * 1024;

/// What one read got.
enum Read {
    /// `n` bytes; `drained` when the read came back short, which means it emptied the
    /// socket's receive queue.
    Data {
        n: usize,
        drained: bool,
    },
    Eof,
    WouldBlock,
}

/// One read into `buf` (retried when a signal interrupts it). A short read empties the receive queue, so it also clears tokio's
/// read readiness, as a WouldBlock would: the read that would only fail is saved (a
/// syscall per message on request/reply traffic; HAProxy does the same). Clearing goes
/// through `try_io`, whose readiness tick keeps data that lands meanwhile from being
/// missed, and a FIN stays visible (tokio never clears read-closed). The exception is TCP
/// urgent data, where reads stop at the mark: it is not relayed (splicing cannot cross the
/// mark either), and a stream that uses it waits at the mark for the peer's next bytes.
fn recv(stream: &TcpStream, buf: &mut [u8]) -> io::Result<Read> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let len = buf.len();
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        let n = loop {
            // SAFETY: `buf` is writable memory of `len` bytes for the duration of the call
            // and `fd` is the open socket borrowed from `stream`.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, 0) };
            match usize::try_from(n) {
                Ok(n) => break n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        };
        got = n;
        if n > 0 && n < len {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match read {
        Ok(0) => Ok(Read::Eof),
        Ok(n) => Ok(Read::Data { n, drained: false }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(Read::Data {
            n: got,
            drained: true,
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read::WouldBlock),
        Err(e) => Err(e),
    }
}

/// One read from the source into `buf`.
fn read_some(side: &Side<'_>, buf: &mut [u8]) -> Result<Read, EndReason> {
    recv(side.src, buf).map_err(|_| side.src_reset)
}

/// Whether a write that failed with `e` is to be retried once the socket is writable.
fn try_again(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Writes all of `buf` to the destination, waiting for room as needed.
async fn write_all<F: Fn(Direction, u64)>(
    side: &Side<'_>,
    shared: &RelayState<'_, F>,
    buf: &[u8],
) -> Result<(), EndReason> {
    let mut sent = 0;
    while sent < buf.len() {
        side.dst.writable().await.map_err(|_| EndReason::Error)?;
        match side.dst.try_write(&buf[sent..]) {
            Ok(0) => return Err(side.dst_reset),
            Ok(m) => {
                sent += m;
                shared.delivered(side.dir, m);
            }
            Err(e) if try_again(&e) => {}
            Err(_) => return Err(side.dst_reset),
        }
    }
    Ok(())
}

/// Reads and forwards through a userspace buffer until the source would block.
async fn copy_burst<F: Fn(Direction, u64)>(
    side: &Side<'_>,
    shared: &RelayState<'_, F>,
) -> Result<Flow, EndReason> {
    let mut lease = BufferLease::acquire();
    let buf = &mut lease.0[..];
    loop {
        match read_some(side, buf)? {
            Read::WouldBlock => return Ok(Flow::Drained),
            Read::Eof => return Ok(Flow::Eof),
            Read::Data { n, drained } => {
                write_all(side, shared, &buf[..n]).await?;
                if drained {
                    return Ok(Flow::Drained);
                }
            }
        }
    }
}

/// Copies a burst if it is small. `Ok(None)` when a read fills `SMALL_BURST` (what it got
/// delivered): the rest of the burst is the splicer's.
#[cfg(target_os = "linux")]
async fn copy_small<F: Fn(Direction, u64)>(
    side: &Side<'_>,
    shared: &RelayState<'_, F>,
) -> Result<Option<Flow>, EndReason> {
    let mut lease = BufferLease::acquire();
    let buf = &mut lease.0[..SMALL_BURST];
    match read_some(side, buf)? {
        Read::WouldBlock => Ok(Some(Flow::Drained)),
        Read::Eof => Ok(Some(Flow::Eof)),
        Read::Data { n, drained } => {
            write_all(side, shared, &buf[..n]).await?;
            Ok(drained.then_some(Flow::Drained))
        }
    }
}

#[cfg(target_os = "linux")]
mod splicing {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// Per-thread cap on idle pipes kept for reuse. Bounded because every
    /// pooled pipe counts against the per-user pipe budget and holds two fds.
    pub(super) const MAX_POOLED_PIPES: usize = 16;

    thread_local! {
        static PIPE_POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    /// Kernel default pipe capacity; used when the kernel will not tell us.
    const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;
    /// What `set_pipe_size` starts at; measured against 64 KiB, 256 KiB and
    /// 512 KiB with the ignored `relay_throughput` test.
    pub(super) const DEFAULT_PIPE_SIZE: usize = 1 << 20;
    /// Combined capacity of enlarged pipes alive at once; see `set_pipe_size`.
    pub(super) const ENLARGED_BUDGET: usize = 32 << 20;

    pub(super) static PIPE_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_PIPE_SIZE);
    static ENLARGED: AtomicUsize = AtomicUsize::new(0);

    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
        /// What this pipe holds of `ENLARGED`, given back on close.
        enlarged: usize,
    }

    impl Pipe {
        fn new(size: usize) -> io::Result<Pipe> {
            let mut fds: [libc::c_int; 2] = [-1, -1];
            // SAFETY: `fds` is a writable array of two c_ints, which is what
            // pipe2 fills in on success.
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both are freshly opened descriptors
            // owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            let mut pipe = Pipe {
                read,
                write,
                capacity: 0,
                enlarged: 0,
            };
            if size > DEFAULT_PIPE_CAPACITY && reserve_enlarged(size) {
                let asked = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
                // SAFETY: fcntl on a descriptor we own, with an integer argument
                // as F_SETPIPE_SZ expects.
                let got = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, asked) };
                match usize::try_from(got) {
                    Ok(capacity) if capacity > 0 => {
                        pipe.capacity = capacity;
                        pipe.enlarged = size;
                    }
                    // Refusal is fine: the pipe works at whatever size it has.
                    _ => {
                        ENLARGED.fetch_sub(size, Ordering::Relaxed);
                    }
                }
            }
            if pipe.capacity == 0 {
                // SAFETY: fcntl on a descriptor we own; F_GETPIPE_SZ takes no
                // argument.
                let got = unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_GETPIPE_SZ) };
                pipe.capacity = usize::try_from(got)
                    .ok()
                    .filter(|&c| c > 0)
                    .unwrap_or(DEFAULT_PIPE_CAPACITY);
            }
            Ok(pipe)
        }
    }

    impl Drop for Pipe {
        fn drop(&mut self) {
            if self.enlarged > 0 {
                ENLARGED.fetch_sub(self.enlarged, Ordering::Relaxed);
            }
        }
    }

    fn reserve_enlarged(size: usize) -> bool {
        ENLARGED
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(size)
                    .filter(|&total| total <= ENLARGED_BUDGET)
            })
            .is_ok()
    }

    /// A pipe borrowed for one burst. It goes back to the pool on drop only if
    /// it is known to be empty; a pipe that may hold stray bytes would leak
    /// them into another connection, so it is closed instead.
    pub(super) struct PipeLease {
        pipe: Option<Pipe>,
        /// Bytes spliced in and not yet spliced out.
        pending: usize,
        /// Set on any failure, after which `pending` is not trusted.
        poisoned: bool,
    }

    impl PipeLease {
        pub(super) fn acquire() -> io::Result<PipeLease> {
            let pooled = PIPE_POOL
                .try_with(|pool| pool.borrow_mut().pop())
                .ok()
                .flatten();
            let pipe = match pooled {
                Some(pipe) => pipe,
                None => Pipe::new(PIPE_SIZE.load(Ordering::Relaxed))?,
            };
            #[cfg(test)]
            stats::leased(1);
            Ok(PipeLease {
                pipe: Some(pipe),
                pending: 0,
                poisoned: false,
            })
        }

        #[cfg(test)]
        pub(super) fn capacity(&self) -> usize {
            self.pipe.as_ref().map_or(0, |p| p.capacity)
        }

        /// Pretends bytes are stuck in the pipe, as after a failed splice out.
        #[cfg(test)]
        pub(super) fn hold_unsent(&mut self, n: usize) {
            self.pending = n;
        }

        fn pipe(&self) -> io::Result<&Pipe> {
            self.pipe
                .as_ref()
                .ok_or_else(|| io::Error::other("pipe lease already released"))
        }
    }

    impl Drop for PipeLease {
        fn drop(&mut self) {
            #[cfg(test)]
            stats::leased(-1);
            let Some(pipe) = self.pipe.take() else { return };
            if self.poisoned || self.pending != 0 {
                return;
            }
            // During thread teardown the pool may be gone; the pipe is then
            // simply closed.
            let _ = PIPE_POOL.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < MAX_POOLED_PIPES {
                    pool.push(pipe);
                }
            });
        }
    }

    /// Warns once per process: pipe failures (fd exhaustion) tend to come in
    /// floods, and the copy fallback keeps traffic moving meanwhile.
    pub(super) fn note_pipe_failure(err: &io::Error) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %err, "cannot create relay pipe; copying through userspace instead");
        } else {
            tracing::debug!(error = %err, "cannot create relay pipe");
        }
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are open for the duration of the call
        // (borrowed from live sockets/pipes), null offsets are what splice
        // requires for sockets and pipes, and no memory is passed.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Splices socket -> pipe -> socket until the source would block.
    ///
    /// The pipe is filled only when empty. Splicing into a pipe that is full
    /// (by slots, which can happen before it is full by bytes) also fails
    /// with EAGAIN; taken as "socket not readable", that would clear tokio's
    /// readiness while data waits and stall the connection forever.
    pub(super) async fn splice_burst<F: Fn(Direction, u64)>(
        side: &Side<'_>,
        shared: &RelayState<'_, F>,
        lease: &mut PipeLease,
    ) -> Result<(Flow, usize), EndReason> {
        let (pipe_read, pipe_write, capacity) = match lease.pipe() {
            Ok(pipe) => (pipe.read.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity),
            Err(_) => return Err(EndReason::Error),
        };
        let src = side.src.as_raw_fd();
        let dst = side.dst.as_raw_fd();
        let mut moved = 0;
        loop {
            debug_assert_eq!(lease.pending, 0);
            match side
                .src
                .try_io(Interest::READABLE, || splice(src, pipe_write, capacity))
            {
                Ok(0) => return Ok((Flow::Eof, moved)),
                Ok(n) => {
                    lease.pending = n;
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flow::Drained, moved))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    lease.poisoned = true;
                    return Err(side.src_reset);
                }
            }
            while lease.pending > 0 {
                side.dst.writable().await.map_err(|_| EndReason::Error)?;
                match side
                    .dst
                    .try_io(Interest::WRITABLE, || splice(pipe_read, dst, lease.pending))
                {
                    Ok(0) => {
                        lease.poisoned = true;
                        return Err(side.dst_reset);
                    }
                    Ok(m) => {
                        lease.pending -= m.min(lease.pending);
                        shared.delivered(side.dir, m);
                    }
                    Err(e) if try_again(&e) => {}
                    Err(_) => {
                        lease.poisoned = true;
                        return Err(side.dst_reset);
                    }
                }
            }
        }
    }

    #[cfg(test)]
    pub(super) mod stats {
        use std::cell::Cell;

        thread_local! {
            static LEASED: Cell<isize> = const { Cell::new(0) };
        }

        /// Leases are counted per thread, which is exact for the
        /// current-thread runtimes the pool tests use.
        pub(in super::super) fn leased(delta: isize) {
            LEASED.with(|c| c.set(c.get() + delta));
        }

        pub(in super::super) fn outstanding() -> isize {
            LEASED.with(Cell::get)
        }

        pub(in super::super) fn pooled() -> usize {
            super::PIPE_POOL.with(|p| p.borrow().len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use switchyard_gossip::hash::{fnv1a, FNV_OFFSET};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    const ENGINES: &[Engine] = &[
        #[cfg(target_os = "linux")]
        Engine::Splice,
        Engine::Copy,
    ];

    /// A connected loopback pair.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    struct Rig {
        client: TcpStream,
        origin: TcpStream,
        relay: JoinHandle<RelayOutcome>,
        counted: Arc<[AtomicU64; 2]>,
    }

    /// client app <-> [relay] <-> origin app
    async fn rig(engine: Engine, idle: Duration) -> Rig {
        let (client, relay_client) = pair().await;
        let (relay_origin, origin) = pair().await;
        let counted: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let c = counted.clone();
        let relay = tokio::spawn(relay_with(
            engine,
            relay_client,
            relay_origin,
            idle,
            move |dir, n| {
                c[dir as usize].fetch_add(n, Ordering::Relaxed);
            },
        ));
        Rig {
            client,
            origin,
            relay,
            counted,
        }
    }

    async fn outcome(relay: JoinHandle<RelayOutcome>) -> RelayOutcome {
        tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("relay did not finish within 10 s")
            .unwrap()
    }

    /// Deterministic pseudo-random bytes so reordering or corruption shows.
    fn fill(seed: &mut u64, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
    }

    /// Writes `len` pseudo-random bytes, returns their hash.
    async fn send<W: AsyncWriteExt + Unpin>(w: &mut W, len: usize, mut seed: u64) -> u64 {
        let mut buf = vec![0; 256 * 1024];
        let (mut left, mut h) = (len, FNV_OFFSET);
        while left > 0 {
            let n = left.min(buf.len());
            fill(&mut seed, &mut buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            h = fnv1a(h, &buf[..n]);
            left -= n;
        }
        h
    }

    /// Reads to EOF, returns (length, hash).
    async fn recv<R: AsyncReadExt + Unpin>(r: &mut R) -> (usize, u64) {
        let mut buf = vec![0; 256 * 1024];
        let (mut len, mut h) = (0, FNV_OFFSET);
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return (len, h);
            }
            h = fnv1a(h, &buf[..n]);
            len += n;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_both_ways_intact() {
        const LEN: usize = 32 << 20;
        for &engine in ENGINES {
            let rig = rig(engine, Duration::from_secs(60)).await;
            let (mut client_rx, mut client_tx) = rig.client.into_split();
            let (mut origin_rx, mut origin_tx) = rig.origin.into_split();
            let up = tokio::spawn(async move {
                let h = send(&mut client_tx, LEN, 1).await;
                client_tx.shutdown().await.unwrap();
                h
            });
            let down = tokio::spawn(async move {
                let h = send(&mut origin_tx, LEN, 2).await;
                origin_tx.shutdown().await.unwrap();
                h
            });
            let at_origin = tokio::spawn(async move { recv(&mut origin_rx).await });
            let at_client = tokio::spawn(async move { recv(&mut client_rx).await });
            let (up, down) = (up.await.unwrap(), down.await.unwrap());
            assert_eq!(at_origin.await.unwrap(), (LEN, up), "{engine:?}");
            assert_eq!(at_client.await.unwrap(), (LEN, down), "{engine:?}");
            let out = outcome(rig.relay).await;
            assert_eq!(out.end, EndReason::Closed);
            assert_eq!(out.client_to_origin, LEN as u64);
            assert_eq!(out.origin_to_client, LEN as u64);
        }
    }

    #[tokio::test]
    async fn half_close_passes_through() {
        for &engine in ENGINES {
            let mut rig = rig(engine, Duration::from_secs(60)).await;
            rig.client.write_all(b"request").await.unwrap();
            rig.client.shutdown().await.unwrap();

            let mut got = Vec::new();
            rig.origin.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"request", "{engine:?}");

            // The origin has seen EOF but its own direction is still open.
            rig.origin.write_all(b"response").await.unwrap();
            let mut reply = [0; 8];
            rig.client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"response");

            drop(rig.origin);
            let mut rest = Vec::new();
            rig.client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            let out = outcome(rig.relay).await;
            assert_eq!(out.end, EndReason::Closed, "{engine:?}");
            assert_eq!((out.client_to_origin, out.origin_to_client), (7, 8));
        }
    }

    #[tokio::test]
    async fn idle_timeout_ends_relay() {
        for &engine in ENGINES {
            let mut rig = rig(engine, Duration::from_millis(200)).await;
            // Some traffic first, so the timer has to re-arm past it.
            rig.client.write_all(b"ping").await.unwrap();
            let mut got = [0; 4];
            rig.origin.read_exact(&mut got).await.unwrap();
            let out = outcome(rig.relay).await;
            assert_eq!(out.end, EndReason::IdleTimeout, "{engine:?}");
            assert_eq!(out.client_to_origin, 4);
            // The relay closed both sockets.
            let mut rest = Vec::new();
            rig.client.read_to_end(&mut rest).await.unwrap();
            rig.origin.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
    }

    fn reset(stream: TcpStream) {
        // Zero linger makes close send RST instead of FIN.
        SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }

    /// A request/reply exchange after a bulk transfer: the direction that went to splicing
    /// for the bulk part must come back to small messages without stalling or reordering.
    #[tokio::test]
    async fn small_messages_after_bulk_keep_flowing() {
        for &engine in ENGINES {
            let mut rig = rig(engine, Duration::from_secs(60)).await;
            let sent = send(&mut rig.client, 2 << 20, 11).await;
            let mut got = vec![0; 2 << 20];
            rig.origin.read_exact(&mut got).await.unwrap();
            assert_eq!(fnv1a(FNV_OFFSET, &got), sent, "{engine:?}");
            for i in 0..20u8 {
                let msg = [i; 64];
                rig.client.write_all(&msg).await.unwrap();
                let mut req = [0; 64];
                rig.origin.read_exact(&mut req).await.unwrap();
                assert_eq!(req, msg, "{engine:?}");
                rig.origin.write_all(&[i ^ 0xff; 32]).await.unwrap();
                let mut reply = [0; 32];
                rig.client.read_exact(&mut reply).await.unwrap();
                assert_eq!(reply, [i ^ 0xff; 32], "{engine:?}");
            }
            drop(rig.client);
            drop(rig.origin);
            assert_eq!(
                outcome(rig.relay).await.end,
                EndReason::Closed,
                "{engine:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_initial_takes_what_the_client_sent_first() {
        // Nothing sent yet: nothing taken, and the socket is left as it was.
        let (mut client, accepted) = pair().await;
        let mut first = Vec::new();
        assert_eq!(read_initial(&accepted, &mut first).unwrap(), 0);
        assert!(first.is_empty());
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // Wait for the bytes to land, then take them without blocking; they are appended
        // after what the buffer held (a PROXY header, in the proxy).
        accepted.readable().await.unwrap();
        first.extend_from_slice(b"header:");
        assert_eq!(read_initial(&accepted, &mut first).unwrap(), 16);
        assert_eq!(first, b"header:GET / HTTP/1.1\r\n");
        // More than the cap: the rest stays for the relay.
        let big = vec![5u8; INITIAL_READ + 100];
        client.write_all(&big).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut taken = 0;
        while taken < INITIAL_READ {
            assert!(Instant::now() < deadline, "the bytes never arrived");
            accepted.readable().await.unwrap();
            taken += read_initial(&accepted, &mut Vec::new()).unwrap();
        }
        assert_eq!(
            taken, INITIAL_READ,
            "one read never takes more than the cap"
        );
        // A FIN before any byte is not an error: the relay sees the EOF again.
        let (client2, accepted2) = pair().await;
        drop(client2);
        accepted2.readable().await.unwrap();
        assert_eq!(read_initial(&accepted2, &mut Vec::new()).unwrap(), 0);
    }

    #[tokio::test]
    async fn client_reset_is_reported() {
        for &engine in ENGINES {
            let mut rig = rig(engine, Duration::from_secs(60)).await;
            rig.client.write_all(b"hello").await.unwrap();
            let mut got = [0; 5];
            rig.origin.read_exact(&mut got).await.unwrap();
            reset(rig.client);
            let out = outcome(rig.relay).await;
            assert_eq!(out.end, EndReason::ClientReset, "{engine:?}");
        }
    }

    #[tokio::test]
    async fn origin_reset_is_reported() {
        for &engine in ENGINES {
            let mut rig = rig(engine, Duration::from_secs(60)).await;
            rig.origin.write_all(b"hello").await.unwrap();
            let mut got = [0; 5];
            rig.client.read_exact(&mut got).await.unwrap();
            reset(rig.origin);
            let out = outcome(rig.relay).await;
            assert_eq!(out.end, EndReason::OriginReset, "{engine:?}");
        }
    }

    #[tokio::test]
    async fn on_bytes_totals_match_outcome() {
        for &engine in ENGINES {
            let rig = rig(engine, Duration::from_secs(60)).await;
            let counted = rig.counted.clone();
            let (mut client_rx, mut client_tx) = rig.client.into_split();
            let (mut origin_rx, mut origin_tx) = rig.origin.into_split();
            let up = async {
                send(&mut client_tx, 3 << 20, 7).await;
                client_tx.shutdown().await.unwrap();
            };
            let down = async {
                send(&mut origin_tx, (1 << 20) + 17, 8).await;
                origin_tx.shutdown().await.unwrap();
            };
            let (_, _, at_origin, at_client) =
                tokio::join!(up, down, recv(&mut origin_rx), recv(&mut client_rx));
            assert_eq!(at_origin.0, 3 << 20);
            assert_eq!(at_client.0, (1 << 20) + 17);
            let out = outcome(rig.relay).await;
            assert_eq!(out.end, EndReason::Closed);
            assert_eq!(out.client_to_origin, counted[0].load(Ordering::Relaxed));
            assert_eq!(out.origin_to_client, counted[1].load(Ordering::Relaxed));
            assert_eq!(out.client_to_origin, 3 << 20, "{engine:?}");
        }
    }

    #[test]
    fn relay_future_is_send_and_small() {
        fn assert_send<T: Send>(_: &T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = pair().await;
            let fut = relay(a, b, Duration::from_secs(1), |_, _| {});
            assert_send(&fut);
            // This is the per-connection userspace state besides the two
            // sockets themselves; idle connections must stay well under 4 KB.
            let size = std::mem::size_of_val(&fut);
            eprintln!("relay future: {size} bytes");
            assert!(size < 2048, "relay future is {size} bytes");
        });
    }

    #[cfg(target_os = "linux")]
    mod pool {
        use super::super::splicing::{
            stats, PipeLease, DEFAULT_PIPE_SIZE, ENLARGED_BUDGET, MAX_POOLED_PIPES,
        };
        use super::*;

        #[test]
        fn pool_is_bounded() {
            let leases: Vec<_> = (0..MAX_POOLED_PIPES + 8)
                .map(|_| PipeLease::acquire().unwrap())
                .collect();
            assert_eq!(stats::pooled(), 0);
            drop(leases);
            assert_eq!(stats::pooled(), MAX_POOLED_PIPES);
            // Reuse takes from the pool rather than growing it.
            let again: Vec<_> = (0..4).map(|_| PipeLease::acquire().unwrap()).collect();
            assert_eq!(stats::pooled(), MAX_POOLED_PIPES - 4);
            drop(again);
            assert_eq!(stats::pooled(), MAX_POOLED_PIPES);
        }

        #[tokio::test]
        async fn idle_connection_holds_no_pipe() {
            let mut rig = rig(Engine::Splice, Duration::from_secs(60)).await;
            let data = vec![7u8; 4 << 20];
            let (_, got) = tokio::join!(rig.client.write_all(&data), async {
                let mut got = vec![0; data.len()];
                rig.origin.read_exact(&mut got).await.unwrap();
                got
            });
            assert!(got == data);
            // The last bytes are delivered before the pipe goes back, so
            // allow the relay task to get there.
            let deadline = Instant::now() + Duration::from_secs(10);
            while stats::outstanding() != 0 {
                assert!(Instant::now() < deadline, "pipe still leased while idle");
                tokio::task::yield_now().await;
            }
            assert!(stats::pooled() >= 1);
            drop(rig.client);
            drop(rig.origin);
            assert_eq!(outcome(rig.relay).await.end, EndReason::Closed);
        }

        #[tokio::test]
        async fn concurrent_relays_keep_pool_bounded() {
            const CONNS: usize = MAX_POOLED_PIPES * 2;
            let mut rigs = Vec::new();
            for _ in 0..CONNS {
                rigs.push(rig(Engine::Splice, Duration::from_secs(60)).await);
            }
            let mut tasks = Vec::new();
            for mut rig in rigs {
                tasks.push(tokio::spawn(async move {
                    let (_, got) = tokio::join!(
                        async {
                            send(&mut rig.client, 1 << 20, 3).await;
                            rig.client.shutdown().await.unwrap();
                        },
                        recv(&mut rig.origin)
                    );
                    assert_eq!(got.0, 1 << 20);
                    drop(rig.origin);
                    outcome(rig.relay).await
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().end, EndReason::Closed);
            }
            assert_eq!(stats::outstanding(), 0);
            assert!(stats::pooled() <= MAX_POOLED_PIPES);
        }

        #[test]
        fn enlarged_pipes_stay_within_budget() {
            let leases: Vec<_> = (0..ENLARGED_BUDGET / DEFAULT_PIPE_SIZE + 8)
                .map(|_| PipeLease::acquire().unwrap())
                .collect();
            let enlarged = leases
                .iter()
                .filter(|l| l.capacity() >= DEFAULT_PIPE_SIZE)
                .count();
            assert!(enlarged <= ENLARGED_BUDGET / DEFAULT_PIPE_SIZE);
            // The rest still work, at whatever size the kernel gave them.
            assert!(leases.iter().all(|l| l.capacity() > 0));
        }

        #[test]
        fn pipe_with_data_is_not_pooled() {
            let before = stats::pooled();
            let mut lease = PipeLease::acquire().unwrap();
            lease.hold_unsent(1);
            drop(lease);
            assert_eq!(stats::pooled(), before);
        }
    }

    /// What sits between the sender and the receiver in the throughput check.
    #[derive(Debug, Clone, Copy)]
    enum Path {
        Direct,
        Relay { engine: Engine, pipe_size: usize },
        TokioCopy,
    }

    /// Pushes `len` bytes sender -> [path] -> receiver over loopback with
    /// blocking sockets on their own threads; returns Gbit/s and the relay
    /// thread's CPU seconds per GiB.
    fn throughput(path: Path, len: u64) -> (f64, f64) {
        use std::io::{Read, Write};
        let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin_addr = origin.local_addr().unwrap();
        let receiver = std::thread::spawn(move || {
            let (mut s, _) = origin.accept().unwrap();
            let mut buf = vec![0; 256 * 1024];
            let mut got = 0u64;
            loop {
                match s.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got += n as u64,
                }
            }
        });
        let mut relay_thread = None;
        let target = match path {
            Path::Direct => origin_addr,
            Path::Relay { .. } | Path::TokioCopy => {
                let front = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = front.local_addr().unwrap();
                front.set_nonblocking(true).unwrap();
                relay_thread = Some(std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let front = TcpListener::from_std(front).unwrap();
                        let (mut client, _) = front.accept().await.unwrap();
                        let mut origin = TcpStream::connect(origin_addr).await.unwrap();
                        match path {
                            Path::Relay { engine, pipe_size } => {
                                set_pipe_size(pipe_size);
                                let out = relay_with(
                                    engine,
                                    client,
                                    origin,
                                    Duration::from_secs(60),
                                    |_, _| {},
                                )
                                .await;
                                assert_eq!(out.end, EndReason::Closed);
                            }
                            _ => {
                                tokio::io::copy_bidirectional_with_sizes(
                                    &mut client,
                                    &mut origin,
                                    64 * 1024,
                                    64 * 1024,
                                )
                                .await
                                .unwrap();
                            }
                        }
                    });
                    thread_cpu_secs()
                }));
                addr
            }
        };
        // Wall time of a blocking transfer on OS threads, not the runtime's clock.
        #[allow(clippy::disallowed_types)]
        let start = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(target).unwrap();
        let chunk = vec![0x5a; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(receiver.join().unwrap(), len);
        let secs = start.elapsed().as_secs_f64();
        let cpu = relay_thread.map_or(0.0, |t| t.join().unwrap());
        (
            len as f64 * 8.0 / secs / 1e9,
            cpu / (len as f64 / f64::from(1u32 << 30)),
        )
    }

    /// CPU time this thread has used, user plus system.
    fn thread_cpu_secs() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }

    /// `cargo test --release -- --ignored --nocapture relay_throughput`;
    /// `RELAY_BENCH_ROUNDS` sets the rounds (default 3) and `RELAY_BENCH_ONLY`
    /// keeps only paths whose debug name contains it (for profiling one).
    /// 2 GiB per run; sender, relay and receiver each get a thread.
    #[test]
    #[ignore = "throughput measurement; run by hand in release mode"]
    fn relay_throughput() {
        const LEN: u64 = 2 << 30;
        let mut paths = vec![Path::Direct, Path::TokioCopy];
        paths.push(Path::Relay {
            engine: Engine::Copy,
            pipe_size: 0,
        });
        #[cfg(target_os = "linux")]
        for pipe_size in [0, 256 << 10, 512 << 10, 1 << 20] {
            paths.push(Path::Relay {
                engine: Engine::Splice,
                pipe_size,
            });
        }
        let rounds: usize = std::env::var("RELAY_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        if let Ok(only) = std::env::var("RELAY_BENCH_ONLY") {
            paths.retain(|p| format!("{p:?}").contains(&only));
        }
        // Rounds are interleaved so drift in machine load hits every path alike.
        let mut runs = vec![Vec::new(); paths.len()];
        for _ in 0..rounds {
            for (i, &path) in paths.iter().enumerate() {
                runs[i].push(throughput(path, LEN));
            }
        }
        for (path, mut runs) in paths.into_iter().zip(runs) {
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let shown: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.0)).collect();
            let (gbits, cpu) = runs[runs.len() / 2];
            println!(
                "{path:?}: median {gbits:.1} Gbit/s, relay CPU {cpu:.2} s/GiB (sorted runs: {})",
                shown.join(", ")
            );
        }
        #[cfg(target_os = "linux")]
        set_pipe_size(super::splicing::DEFAULT_PIPE_SIZE);
    }
}
