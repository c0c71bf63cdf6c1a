//! The UDP path on Linux: a thread of its own that takes queries in batches with
//! `recvmmsg(2)` and sends the answers of a batch with one `sendmmsg(2)`, so that a busy
//! server makes two system calls per batch instead of two per query, and goes through no
//! reactor. Buffers are allocated once, when the thread starts.
//!
//! The thread blocks in `recvmmsg` for at most [`WAKE`], so that it sees `stop` soon after
//! the node asks it to end.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{wire, DnsState};

/// Most queries taken by one `recvmmsg`.
const BATCH: usize = 32;
/// Receive buffer per query: a query larger than this is truncated by the kernel, and
/// dropped as malformed (real queries are a few dozen bytes; EDNS does not make a query
/// larger, only the answers it may take).
const QUERY_MAX: usize = 4096;
/// How long a receive waits before the thread looks at `stop` again.
const WAKE: Duration = Duration::from_millis(200);

/// Answers UDP queries on `sock` until `stop` is set. Runs on the calling thread.
pub fn serve(sock: std::net::UdpSocket, state: Arc<DnsState>, stop: Arc<AtomicBool>) {
    if let Err(e) = sock
        .set_nonblocking(false)
        .and_then(|()| sock.set_read_timeout(Some(WAKE)))
    {
        tracing::error!("DNS UDP: cannot make the socket blocking with a timeout: {e}");
        return;
    }
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; QUERY_MAX]; BATCH].into_boxed_slice();
    // SAFETY: sockaddr_storage is plain data, valid all zero.
    let mut addrs: Box<[libc::sockaddr_storage]> = (0..BATCH)
        .map(|_| unsafe { zeroed::<libc::sockaddr_storage>() })
        .collect();
    let mut iovs: Box<[libc::iovec]> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: QUERY_MAX,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; every pointer is set below before use.
    let mut hdrs: Box<[libc::mmsghdr]> = (0..BATCH)
        .map(|_| unsafe { zeroed::<libc::mmsghdr>() })
        .collect();
    let mut outs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(wire::MAX_UDP))
        .collect();
    let mut out_iovs: Box<[libc::iovec]> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect();
    // SAFETY: as above.
    let mut out_hdrs: Box<[libc::mmsghdr]> = (0..BATCH)
        .map(|_| unsafe { zeroed::<libc::mmsghdr>() })
        .collect();

    while !stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by this function, of the sizes
        // given; the kernel writes at most that much.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => {}
                _ => {
                    tracing::debug!("DNS UDP receive: {e}");
                    // A persistent error (the socket is gone): do not spin on it. This is the
                    // DNS thread's own sleep, not a runtime worker's.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            continue;
        }
        let mut ready = 0;
        for i in 0..n as usize {
            let len = hdrs[i].msg_len as usize;
            let from = sockaddr(&addrs[i], hdrs[i].msg_hdr.msg_namelen);
            let Some(from) = from else { continue };
            if hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                state.metrics.malformed.inc();
                tracing::debug!(%from, "DNS query over {QUERY_MAX} bytes dropped");
                continue;
            }
            let out = &mut outs[ready];
            if !state.answer(&bufs[i][..len.min(QUERY_MAX)], from.ip(), false, out) {
                continue;
            }
            out_iovs[ready] = libc::iovec {
                iov_base: out.as_mut_ptr().cast(),
                iov_len: out.len(),
            };
            let h = &mut out_hdrs[ready].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = hdrs[i].msg_hdr.msg_namelen;
            h.msg_iov = &mut out_iovs[ready];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            ready += 1;
        }
        send_all(fd, &mut out_hdrs[..ready]);
    }
}

/// Sends every message of `hdrs`, going on past one the kernel refuses (a client whose
/// address cannot be reached must not hold up the others' answers).
fn send_all(fd: libc::c_int, hdrs: &mut [libc::mmsghdr]) {
    let mut sent = 0;
    while sent < hdrs.len() {
        let rest = &mut hdrs[sent..];
        // SAFETY: the headers point at live answer buffers and addresses owned by `serve`.
        let n = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first message failed: skip it.
            tracing::debug!("DNS UDP send: {e}");
            sent += 1;
        } else {
            sent += n.max(1) as usize;
        }
    }
}

/// The address the kernel wrote into `storage`, if it is an IP one.
fn sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which fits in it.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
