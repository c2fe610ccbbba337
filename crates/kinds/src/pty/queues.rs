//! The bytes waiting in a pty pair: what the slave's reader has not read yet (typed into the
//! master, already through the slave's line discipline: echoed, translated, cut into lines)
//! and what the master's reader has not read yet (written to the slave).
//!
//! Reading a tty consumes, and writing to one sends the bytes through a line discipline again
//! (echoed, `\r` made `\n`, ^C a signal, an erase character erasing). So the bytes are read
//! out and put back with `TIOCSTI`, which hands each byte to the line discipline at once,
//! under a termios made for it (the "keying" termios): canonical, no signals, no echo, no
//! input translation, every special character but the line ends disabled, and each data byte
//! that would still be special preceded by the literal-next character. Lines come back
//! exactly: each complete line with its terminator (an end-of-file line with an EOF), then
//! the line being typed. The master's side is raw: its bytes go back as they are.

use super::ioctl;
use super::{Input, Line};
use std::io::Result;
use std::os::fd::RawFd;

/// The packet-mode notice bits (linux/tty.h; `libc` does not have them).
const PKT_FLUSHREAD: u8 = 1;
const PKT_FLUSHWRITE: u8 = 2;
const PKT_STOP: u8 = 4;
const PKT_START: u8 = 8;
const PKT_NOSTOP: u8 = 16;
const PKT_DOSTOP: u8 = 32;
const PKT_IOCTL: u8 = 64;

/// What one direction of a pty holds at most: the line discipline's buffer, less one.
pub const MAX_QUEUED: usize = 4095;

/// `c_cc` indexes and local flags (`libc` spells them as the glibc termios does; the kernel's
/// termios2 uses the same numbers).
const VEOF: usize = libc::VEOF;
const VEOL: usize = libc::VEOL;
const VEOL2: usize = libc::VEOL2;
const VERASE: usize = libc::VERASE;
const VKILL: usize = libc::VKILL;
const VWERASE: usize = libc::VWERASE;
const VREPRINT: usize = libc::VREPRINT;
const VLNEXT: usize = libc::VLNEXT;
const VSTART: usize = libc::VSTART;
const VSTOP: usize = libc::VSTOP;

/// Whether the slave's reader reads lines (canonical mode, the line discipline doing the
/// editing). With `EXTPROC` the line discipline stores input as it comes.
pub fn reads_lines(t: &libc::termios2) -> bool {
    t.c_lflag & libc::ICANON != 0 && t.c_lflag & libc::EXTPROC == 0
}

/// Reads what the master's reader has not read yet, through the program's own description
/// `m` (made non-blocking meanwhile: the program is parked).
pub fn take_to_master(m: RawFd) -> Result<Vec<u8>> {
    let flags = ioctl::get_fl(m)?;
    ioctl::set_fl(m, flags | libc::O_NONBLOCK)?;
    let got = drain(m);
    let back = ioctl::set_fl(m, flags);
    let got = got?;
    back?;
    Ok(got)
}

fn drain(fd: RawFd) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    // A read with nothing buffered first runs the work that moves bytes still in flight into
    // the line discipline, so reading until nothing comes takes those too.
    while let Some(n) = ioctl::read_some(fd, &mut buf)? {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// Reads what the slave's reader has not read yet, through `s` (a non-blocking description
/// of our own), whose termios is `t`. In canonical mode each complete line is read alone
/// (its end is where a read stops), then the line discipline is made non-canonical for a
/// moment to read the line being typed; `t` is set again by [`put`].
pub fn take_to_slave(s: RawFd, t: &libc::termios2) -> Result<Input> {
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    if reads_lines(t) {
        while let Some(n) = ioctl::read_some(s, &mut buf)? {
            let bytes = buf[..n].to_vec();
            // A line read without its end character was ended by EOF (which is not returned;
            // an EOF alone at the start of a line reads as zero bytes).
            let eof = !bytes.last().is_some_and(|&b| ends_line(t, b));
            lines.push(Line { bytes, eof });
        }
        let mut raw = *t;
        raw.c_lflag &= !libc::ICANON;
        ioctl::set_termios(s, &raw)?;
    }
    let pending = drain(s)?;
    Ok(Input { lines, pending })
}

fn ends_line(t: &libc::termios2, b: u8) -> bool {
    let cc = |i: usize| t.c_cc[i];
    b == b'\n'
        || (cc(VEOL) != 0 && b == cc(VEOL))
        || (t.c_lflag & libc::IEXTEN != 0 && cc(VEOL2) != 0 && b == cc(VEOL2))
}

/// The termios under which the slave's input is keyed back (see the module's comment). Flow
/// control (`IXON` with its characters) stays as in `t`: a change of it would be reported to
/// a master in packet mode.
fn keying(t: &libc::termios2) -> libc::termios2 {
    let mut k = *t;
    if t.c_lflag & libc::EXTPROC != 0 {
        // Stored as it comes, as at the checkpoint.
        return k;
    }
    k.c_iflag &= !(libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IUCLC
        | libc::IXANY
        | libc::PARMRK
        | libc::IMAXBEL);
    k.c_lflag = libc::ICANON | libc::IEXTEN;
    for i in [VERASE, VKILL, VWERASE, VREPRINT] {
        k.c_cc[i] = 0;
    }
    if !reads_lines(t) {
        k.c_cc[VEOL] = 0;
        k.c_cc[VEOL2] = 0;
    }
    // EOF and literal-next: two characters no other special one uses.
    let taken = |c: u8, k: &libc::termios2| {
        c == 0 || c == b'\n' || [VEOL, VEOL2, VSTART, VSTOP].iter().any(|&i| k.c_cc[i] == c)
    };
    let mut free = (1u8..=255).filter(|&c| !taken(c, &k));
    let (eof, lnext) = (free.next().unwrap_or(4), free.next().unwrap_or(0x16));
    k.c_cc[VEOF] = eof;
    k.c_cc[VLNEXT] = lnext;
    k
}

/// The bytes to key under `k` so that the slave's line discipline holds `input` again.
fn keystrokes(k: &libc::termios2, t: &libc::termios2, input: &Input) -> Vec<u8> {
    let mut out = Vec::new();
    if t.c_lflag & libc::EXTPROC != 0 {
        for l in &input.lines {
            out.extend_from_slice(&l.bytes);
        }
        out.extend_from_slice(&input.pending);
        return out;
    }
    let cc = |i: usize| k.c_cc[i];
    let flow = k.c_iflag & libc::IXON != 0;
    let special = |b: u8| {
        b == b'\n'
            || b == cc(VEOF)
            || b == cc(VLNEXT)
            || (b != 0 && (b == cc(VEOL) || b == cc(VEOL2)))
            || (flow && b != 0 && (b == cc(VSTART) || b == cc(VSTOP)))
    };
    let key = |b: u8, out: &mut Vec<u8>| {
        if special(b) {
            out.push(cc(VLNEXT));
        }
        out.push(b);
    };
    for l in &input.lines {
        match (l.eof, l.bytes.split_last()) {
            (false, Some((&end, body))) => {
                body.iter().for_each(|&b| key(b, &mut out));
                out.push(end);
            }
            _ => {
                l.bytes.iter().for_each(|&b| key(b, &mut out));
                out.push(cc(VEOF));
            }
        }
    }
    input.pending.iter().for_each(|&b| key(b, &mut out));
    out
}

/// Puts the pair's termios, packet-mode notice and queued bytes in place: the queues must be
/// empty and packet mode off (a new pair, or one just read by [`take_to_master`] and
/// [`take_to_slave`]). `m` is the master, `s` a slave description. Returns the packet-mode
/// notice bits that could not be raised again.
pub fn put(
    m: RawFd,
    s: RawFd,
    t: &libc::termios2,
    packet: Option<u8>,
    to_master: &[u8],
    to_slave: &Input,
) -> Result<u8> {
    let typed = !to_slave.lines.is_empty() || !to_slave.pending.is_empty();
    let k = if typed { keying(t) } else { *t };
    ioctl::set_termios(s, &k)?;
    let mut lost = 0;
    if let Some(status) = packet {
        // Turning packet mode on clears the notice; the events that raise each bit are made
        // again while both queues are still empty (a flush then loses nothing).
        ioctl::set_int(m, libc::TIOCPKT, 1)?;
        lost = raise(s, &k, status)?;
    }
    for b in keystrokes(&k, t, to_slave) {
        ioctl::sti(s, b)?;
    }
    for &b in to_master {
        ioctl::sti(m, b)?;
    }
    if typed {
        ioctl::set_termios(s, t)?;
    }
    Ok(lost)
}

/// Raises the packet-mode notice bits of `status` again, through the events that raise them;
/// returns those that cannot be (a `TIOCPKT_STOP` would need the output stopped).
fn raise(s: RawFd, k: &libc::termios2, status: u8) -> Result<u8> {
    let bit = |b: u8| status & b != 0;
    let mut lost = 0u8;
    if bit(PKT_FLUSHREAD) {
        ioctl::arg(s, libc::TCFLSH, libc::TCIFLUSH as libc::c_ulong)?;
    }
    if bit(PKT_FLUSHWRITE) {
        ioctl::arg(s, libc::TCFLSH, libc::TCOFLUSH as libc::c_ulong)?;
    }
    if bit(PKT_START) {
        ioctl::arg(s, libc::TCXONC, libc::TCOOFF as libc::c_ulong)?;
        ioctl::arg(s, libc::TCXONC, libc::TCOON as libc::c_ulong)?;
    }
    let flow = k.c_iflag & libc::IXON != 0 && k.c_cc[VSTOP] == 0o23 && k.c_cc[VSTART] == 0o21;
    let (dostop, nostop) = (bit(PKT_DOSTOP), bit(PKT_NOSTOP));
    if dostop || nostop {
        // A change of flow control and back leaves the bit of the flow in force.
        let mut other = *k;
        other.c_iflag ^= libc::IXON;
        ioctl::set_termios(s, &other)?;
        ioctl::set_termios(s, k)?;
        if (dostop && !flow) || (nostop && flow) {
            lost |= PKT_DOSTOP | PKT_NOSTOP;
        }
    }
    if bit(PKT_IOCTL) {
        if k.c_lflag & libc::EXTPROC != 0 {
            ioctl::set_termios(s, k)?;
        } else {
            lost |= PKT_IOCTL;
        }
    }
    if bit(PKT_STOP) {
        lost |= PKT_STOP;
    }
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical() -> libc::termios2 {
        // SAFETY: plain data.
        let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
        t.c_iflag = libc::ICRNL | libc::IXON;
        t.c_lflag = libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN;
        t.c_cc[VEOF] = 4;
        t.c_cc[VSTART] = 0o21;
        t.c_cc[VSTOP] = 0o23;
        t.c_cc[VERASE] = 0x7f;
        t.c_cc[VLNEXT] = 0x16;
        t
    }

    #[test]
    fn lines_are_keyed_with_their_ends_and_special_bytes_escaped() {
        let t = canonical();
        let k = keying(&t);
        assert_eq!(k.c_lflag, libc::ICANON | libc::IEXTEN);
        assert_eq!(k.c_cc[VERASE], 0);
        let (eof, lnext) = (k.c_cc[VEOF], k.c_cc[VLNEXT]);
        assert!(eof != 0 && lnext != 0 && eof != lnext);
        let input = Input {
            lines: vec![
                Line {
                    bytes: b"a\x13b\n".to_vec(),
                    eof: false,
                },
                Line {
                    bytes: b"tail".to_vec(),
                    eof: true,
                },
            ],
            pending: vec![b'p', eof, 0x7f],
        };
        let keys = keystrokes(&k, &t, &input);
        let mut want = vec![
            b'a', lnext, 0x13, b'b', b'\n', b't', b'a', b'i', b'l', eof, b'p', lnext, eof, 0x7f,
        ];
        assert_eq!(keys, want);
        // Non-canonical: no line ends, '\n' is data.
        let mut raw = t;
        raw.c_lflag &= !libc::ICANON;
        let k = keying(&raw);
        let keys = keystrokes(
            &k,
            &raw,
            &Input {
                lines: vec![],
                pending: b"x\ny".to_vec(),
            },
        );
        want = vec![b'x', k.c_cc[VLNEXT], b'\n', b'y'];
        assert_eq!(keys, want);
    }
}

/// A real pair, read and put back, then read by its two readers (needs CAP_SYS_ADMIN).
#[cfg(test)]
mod live {
    use super::super::{ioctl, root};
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn pair() -> (OwnedFd, OwnedFd) {
        // SAFETY: open with a literal path.
        let m = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        assert!(m >= 0);
        // SAFETY: just opened.
        let m = unsafe { OwnedFd::from_raw_fd(m) };
        ioctl::set_int(m.as_raw_fd(), libc::TIOCSPTLCK, 0).unwrap();
        let s = ioctl::open_peer(m.as_raw_fd(), libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK).unwrap();
        (m, s)
    }

    fn write(fd: RawFd, b: &[u8]) {
        // SAFETY: writing from a slice.
        assert_eq!(unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) }, b.len() as isize);
    }

    fn settle() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    fn read_nb(fd: RawFd) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        ioctl::read_some(fd, &mut buf).unwrap().map(|n| buf[..n].to_vec())
    }

    #[test]
    fn canonical_lines_eof_and_a_partial_line_come_back() {
        if !root() {
            return;
        }
        let (m, s) = pair();
        let (mf, sf) = (m.as_raw_fd(), s.as_raw_fd());
        let mut t = ioctl::get_termios(sf).unwrap();
        t.c_lflag |= libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN;
        t.c_iflag |= libc::ICRNL | libc::IXON;
        ioctl::set_termios(sf, &t).unwrap();
        write(mf, b"one\r\x16\x03two\x04\x04typ\x16\x13ed");
        write(sf, b"out\n");
        settle();
        let to_master = take_to_master(mf).unwrap();
        let to_slave = take_to_slave(sf, &t).unwrap();
        assert_eq!(
            to_slave,
            Input {
                lines: vec![
                    Line {
                        bytes: b"one\n".to_vec(),
                        eof: false
                    },
                    Line {
                        bytes: b"\x03two".to_vec(),
                        eof: true
                    },
                    Line {
                        bytes: vec![],
                        eof: true
                    },
                ],
                pending: b"typ\x13ed".to_vec(),
            }
        );
        assert!(to_master.windows(5).any(|w| w == b"out\r\n"), "{to_master:?}");
        put(mf, sf, &t, None, &to_master, &to_slave).unwrap();
        assert_eq!(ioctl::get_termios(sf).unwrap().c_lflag, t.c_lflag);
        assert_eq!(take_to_master(mf).unwrap(), to_master);
        assert_eq!(read_nb(sf).unwrap(), b"one\n");
        assert_eq!(read_nb(sf).unwrap(), b"\x03two");
        assert_eq!(read_nb(sf).unwrap(), b"");
        assert_eq!(read_nb(sf), None, "the typed line is not complete");
        write(mf, b"\r");
        settle();
        assert_eq!(read_nb(sf).unwrap(), b"typ\x13ed\n");
    }

    #[test]
    fn raw_bytes_and_packet_notice_come_back() {
        if !root() {
            return;
        }
        let (m, s) = pair();
        let (mf, sf) = (m.as_raw_fd(), s.as_raw_fd());
        let mut t = ioctl::get_termios(sf).unwrap();
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        t.c_iflag &= !(libc::ICRNL | libc::IXON);
        ioctl::set_termios(sf, &t).unwrap();
        ioctl::set_int(mf, libc::TIOCPKT, 1).unwrap();
        let all: Vec<u8> = (0..=255u8).collect();
        write(mf, &all);
        // Nothing written before the flush: whether a flush clears bytes the pty is still
        // handing over to the master's side depends on timing.
        ioctl::arg(sf, libc::TCFLSH, libc::TCOFLUSH as libc::c_ulong).unwrap();
        write(sf, b"after");
        settle();
        // Not consumed: the notice comes first, alone.
        let to_master = take_to_master(mf).unwrap();
        assert_eq!(to_master, [&[PKT_FLUSHWRITE][..], &[0], b"after"].concat());
        // Again, as the capture does.
        ioctl::arg(sf, libc::TCFLSH, libc::TCOFLUSH as libc::c_ulong).unwrap();
        write(sf, b"after");
        settle();
        assert_eq!(super::super::take_status(mf).unwrap(), PKT_FLUSHWRITE);
        ioctl::set_int(mf, libc::TIOCPKT, 0).unwrap();
        let to_master = take_to_master(mf).unwrap();
        assert_eq!(to_master, b"after");
        let to_slave = take_to_slave(sf, &t).unwrap();
        assert_eq!(to_slave.pending, all);
        let lost = put(mf, sf, &t, Some(PKT_FLUSHWRITE), &to_master, &to_slave).unwrap();
        assert_eq!(lost, 0);
        assert_eq!(read_nb(mf).unwrap(), [PKT_FLUSHWRITE]);
        assert_eq!(read_nb(mf).unwrap(), b"\0after");
        assert_eq!(read_nb(sf).unwrap(), all);
        assert_eq!(ioctl::get_int(mf, libc::TIOCGPKT).unwrap(), 1);
    }
}
