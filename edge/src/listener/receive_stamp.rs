//! The kernel's receive timestamps on a TCP socket (`SO_TIMESTAMPNS`, read with `recvmsg`).
//!
//! A request that arrives while every core is busy waits in its socket until the connection's
//! task runs; only the kernel saw when it arrived. With timestamps on, each read also returns the
//! receipt time of the latest bytes it took, which the listener hands to the request
//! ([`Arrival`](super::Arrival)) so admission can judge how long the request waited for the node.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};

/// Keeps the kernel's receive timestamping switched on for as long as the returned socket lives.
///
/// The kernel stamps packets only while some socket asks for stamps, and switches that on in
/// deferred work after the first one asks: bytes that arrive in between (the first requests of a
/// fresh node, or bytes already queued when a connection is accepted) carry no stamp. A node that
/// judges arrivals holds this socket from its start.
pub fn keep_on() -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    enable(&socket)?;
    Ok(socket)
}

/// Asks the kernel to stamp what `socket` receives.
pub fn enable(socket: &impl AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads what `fd` holds into `buf` (non-blocking): the bytes read, and the kernel's receipt time
/// of the latest of them in microseconds since the Unix epoch, when it gave one.
pub fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a control message holding a timespec, aligned as a cmsghdr must be.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `buf` (writable, its length given) and `control`.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of well-formed messages;
    // CMSG_FIRSTHDR / CMSG_NXTHDR stay within them, and the payload is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                && (*cmsg).cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// The kernel's timestamping switched on (it does so in deferred work after the first ask):
    /// waits until a probe's bytes come back stamped.
    pub(crate) fn timestamping_on() -> std::net::UdpSocket {
        let keeper = keep_on().unwrap();
        for _ in 0..250 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            enable(&server).unwrap();
            client.write_all(b"?").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let mut buf = [MaybeUninit::uninit(); 8];
            if let Ok((1, Some(_))) = recv(server.as_raw_fd(), &mut buf) {
                return keeper;
            }
        }
        panic!("the kernel never stamped received bytes in 5 s");
    }

    #[test]
    fn a_read_carries_when_its_bytes_arrived() {
        let _on = timestamping_on();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        enable(&server).unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let sent = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut buf = [MaybeUninit::uninit(); 64];
        let (n, stamp) = recv(server.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, 18);
        let arrived = Duration::from_micros(stamp.expect("the kernel stamped the bytes"));
        // Stamped on receipt, not when read 200 ms later.
        assert!(
            arrived.abs_diff(sent) < Duration::from_millis(100),
            "arrived {arrived:?}, sent {sent:?}"
        );
        // Nothing more to read: the non-blocking read says so.
        let e = recv(server.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn without_timestamps_a_read_has_no_stamp() {
        let _on = timestamping_on();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [MaybeUninit::uninit(); 8];
        assert_eq!(recv(server.as_raw_fd(), &mut buf).unwrap(), (1, None));
    }
}
