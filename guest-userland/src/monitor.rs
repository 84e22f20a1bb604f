//! Cards coming and going: the kernel's uevents for the `xxcapture` class.
//!
//! The driver registers one class device `xxcaptureN` per card when it
//! probes it and deletes it when the card is removed (hot-unplugged, unbound,
//! or the module unloaded); the kernel announces each on the
//! `NETLINK_KOBJECT_UEVENT` socket's kernel group. [`Monitor`] listens
//! there directly, so it needs no udev daemon (the test guest has none):
//! each message is `ACTION@DEVPATH` followed by `KEY=VALUE` strings, all
//! NUL-terminated, and only the kernel (port 0) may send to that group.
//!
//! Open the monitor first, then list what is present ([`crate::cards`]): a
//! card that arrives in between is then both listed and announced, never
//! missed.

use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use crate::enumerate::SYSFS_CLASS;
use crate::error::{Error, Result};

/// The kernel's multicast group of `NETLINK_KOBJECT_UEVENT` (udevd
/// rebroadcasts on group 2, in its own format, which is not read here).
const KERNEL_GROUP: u32 = 1;
/// A uevent is at most 2048 bytes of environment plus its header line.
const MESSAGE_MAX: usize = 8192;
/// The socket's receive buffer: room for bursts (a module load announces
/// every device of the module).
const RECEIVE_BUFFER: usize = 1 << 20;

/// A card as a uevent names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardPath {
    /// N of `xxcaptureN`.
    pub index: u32,
    /// `/dev/xxcaptureN`.
    pub dev_path: PathBuf,
    /// `/sys/class/xxcapture/xxcaptureN` (gone once the card is removed).
    pub sysfs_path: PathBuf,
}

/// A change in the cards present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CardChange {
    /// A card was probed: its node can be opened.
    Added(CardPath),
    /// A card was removed: open files of it get `ENODEV` (see the driver's
    /// README), and its index may be given to the next card.
    Removed(CardPath),
    /// The socket's buffer overflowed and uevents were lost: list the
    /// cards again ([`crate::cards`]) to know what is present.
    Lost,
}

/// Reports cards as they are added and removed.
#[derive(Debug)]
pub struct Monitor {
    socket: OwnedFd,
    buf: Vec<u8>,
}

impl Monitor {
    /// Opens a uevent socket on the kernel's group. Anyone may listen.
    pub fn new() -> Result<Monitor> {
        let err = |call| move |source| Error::Monitor { call, source };
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(err("socket"))?;
        // Best effort: the default is enough but for bursts, and a
        // shortfall shows as CardChange::Lost.
        let _ = setsockopt(&socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
        bind(socket.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP)).map_err(err("bind"))?;
        Ok(Monitor {
            socket,
            buf: vec![0; MESSAGE_MAX],
        })
    }

    /// The next change, waiting at most `timeout` (`None`: for ever);
    /// `Ok(None)` when none came in time. Uevents of other devices are
    /// skipped.
    pub fn next_change(&mut self, timeout: Option<Duration>) -> Result<Option<CardChange>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let wait = match deadline {
                None => PollTimeout::NONE,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
                    PollTimeout::from(ms)
                }
            };
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, wait) {
                Ok(0) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(source) => {
                    return Err(Error::Monitor {
                        call: "poll",
                        source,
                    })
                }
            }
            match recvfrom::<NetlinkAddr>(self.socket.as_raw_fd(), &mut self.buf) {
                Ok((len, from)) => {
                    // Only the kernel's messages: port 0.
                    if from.map(|a| a.pid()) != Some(0) {
                        continue;
                    }
                    if let Some(change) = self.buf.get(..len).and_then(parse_uevent) {
                        return Ok(Some(change));
                    }
                }
                Err(Errno::ENOBUFS) => return Ok(Some(CardChange::Lost)),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(source) => {
                    return Err(Error::Monitor {
                        call: "recvfrom",
                        source,
                    })
                }
            }
        }
    }

    /// Calls `callback` with each change until it returns
    /// `ControlFlow::Break`, or until no change came for `idle` (`None`:
    /// waits for ever). Returns whether the callback stopped it.
    pub fn watch(
        &mut self,
        idle: Option<Duration>,
        mut callback: impl FnMut(&CardChange) -> ControlFlow<()>,
    ) -> Result<bool> {
        while let Some(change) = self.next_change(idle)? {
            if callback(&change).is_break() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl AsFd for Monitor {
    /// The socket, for an application's own poll loop: readable when a
    /// uevent (of any device) is waiting; then call
    /// [`Monitor::next_change`] with a zero timeout.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Blocks for each change; an error ends nothing (the next call waits
/// again).
impl Iterator for Monitor {
    type Item = Result<CardChange>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_change(None).transpose()
    }
}

/// The card change a kernel uevent message announces, if it is one:
/// `ACTION@DEVPATH`, then `KEY=VALUE` strings, NUL-separated, with
/// `SUBSYSTEM=xxcapture`, `ACTION` `add` or `remove` and `DEVNAME`
/// `xxcaptureN`.
pub fn parse_uevent(message: &[u8]) -> Option<CardChange> {
    let mut fields = message.split(|&b| b == 0);
    // The header (ACTION@DEVPATH) says again what the fields say; udevd's
    // own messages start "libudev" and carry no such header.
    let header = fields.next()?;
    if !header.contains(&b'@') {
        return None;
    }
    let (mut action, mut subsystem, mut devname, mut devpath) = (None, None, None, None);
    for field in fields {
        let Some(eq) = field.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&field[..eq], &field[eq + 1..]);
        let slot = match key {
            b"ACTION" => &mut action,
            b"SUBSYSTEM" => &mut subsystem,
            b"DEVNAME" => &mut devname,
            b"DEVPATH" => &mut devpath,
            _ => continue,
        };
        *slot = Some(std::str::from_utf8(value).ok()?);
    }
    if subsystem? != "xxcapture" || devpath.is_none() {
        return None;
    }
    // The node's name, relative to /dev (devtmpfs names it so).
    let name = devname?;
    let index: u32 = name.strip_prefix("xxcapture")?.parse().ok()?;
    // Only canonical numbers: "xxcapture01" names no card.
    if format!("xxcapture{index}") != name {
        return None;
    }
    let card = CardPath {
        index,
        dev_path: PathBuf::from(format!("/dev/{name}")),
        sysfs_path: PathBuf::from(SYSFS_CLASS).join(name),
    };
    match action? {
        "add" => Some(CardChange::Added(card)),
        "remove" => Some(CardChange::Removed(card)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(fields: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fields {
            out.extend_from_slice(f.as_bytes());
            out.push(0);
        }
        out
    }

    const DEVPATH: &str = "/devices/pci0000:00/0000:00:03.0/virtio0/xxcapture/xxcapture2";

    fn card(fields: &[&str]) -> Option<CardChange> {
        let header = format!(
            "{}@{DEVPATH}",
            fields
                .iter()
                .find_map(|f| f.strip_prefix("ACTION="))
                .unwrap_or("add")
        );
        let mut all = vec![header.as_str()];
        all.extend_from_slice(fields);
        parse_uevent(&message(&all))
    }

    #[test]
    fn add_and_remove_of_a_card_are_reported() {
        let dev = format!("DEVPATH={DEVPATH}");
        let expected = CardPath {
            index: 2,
            dev_path: "/dev/xxcapture2".into(),
            sysfs_path: "/sys/class/xxcapture/xxcapture2".into(),
        };
        for (action, want) in [
            ("add", CardChange::Added(expected.clone())),
            ("remove", CardChange::Removed(expected.clone())),
        ] {
            let action = format!("ACTION={action}");
            let got = card(&[
                &action,
                &dev,
                "SUBSYSTEM=xxcapture",
                "MAJOR=240",
                "MINOR=2",
                "DEVNAME=xxcapture2",
                "SEQNUM=1234",
            ]);
            assert_eq!(got, Some(want));
        }
    }

    #[test]
    fn other_devices_and_actions_are_not_cards() {
        let dev = format!("DEVPATH={DEVPATH}");
        for fields in [
            // Another subsystem (the card's V4L2 node, the virtio device).
            &[
                "ACTION=add",
                dev.as_str(),
                "SUBSYSTEM=video4linux",
                "DEVNAME=video0",
            ][..],
            &["ACTION=add", dev.as_str(), "SUBSYSTEM=virtio"][..],
            // Actions that do not add or remove a card.
            &[
                "ACTION=change",
                dev.as_str(),
                "SUBSYSTEM=xxcapture",
                "DEVNAME=xxcapture2",
            ][..],
            &[
                "ACTION=bind",
                dev.as_str(),
                "SUBSYSTEM=xxcapture",
                "DEVNAME=xxcapture2",
            ][..],
            // Malformed or odd names.
            &[
                "ACTION=add",
                dev.as_str(),
                "SUBSYSTEM=xxcapture",
                "DEVNAME=xxcapture",
            ][..],
            &[
                "ACTION=add",
                dev.as_str(),
                "SUBSYSTEM=xxcapture",
                "DEVNAME=xxcapture01",
            ][..],
            &[
                "ACTION=add",
                dev.as_str(),
                "SUBSYSTEM=xxcapture",
                "DEVNAME=xxcapture1/../x",
            ][..],
            &[
                "ACTION=add",
                dev.as_str(),
                "SUBSYSTEM=xxcapture",
                "DEVNAME=../xxcapture1",
            ][..],
            // A field missing.
            &["ACTION=add", "SUBSYSTEM=xxcapture", "DEVNAME=xxcapture2"][..],
            &["ACTION=add", dev.as_str(), "DEVNAME=xxcapture2"][..],
            &[dev.as_str(), "SUBSYSTEM=xxcapture", "DEVNAME=xxcapture2"][..],
        ] {
            assert_eq!(card(fields), None, "{fields:?}");
        }
    }

    #[test]
    fn udevd_messages_and_garbage_are_ignored() {
        // udevd's rebroadcast: a binary header, no ACTION@DEVPATH line.
        let mut udevd = b"libudev\0\xfe\xed\xca\xfe".to_vec();
        udevd.extend(message(&[
            "ACTION=add",
            "SUBSYSTEM=xxcapture",
            "DEVNAME=xxcapture0",
        ]));
        assert_eq!(parse_uevent(&udevd), None);
        assert_eq!(parse_uevent(b""), None);
        assert_eq!(parse_uevent(b"add@/x"), None);
        assert_eq!(
            parse_uevent(b"add@/x\0SUBSYSTEM=xxcapture\0DEVNAME=\xff\0"),
            None
        );
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse_uevent(&bytes);
        }
    }
}
