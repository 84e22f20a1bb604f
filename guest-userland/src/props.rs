//! Writable properties of a card (the I/O Registry's `setProperties` of the
//! Double X design): settings an administrator changes without opening the
//! card, as attributes in the card's sysfs folder
//! `/sys/class/xxcapture/xxcaptureN/`.
//!
//! | property | range | what it is |
//! |---|---|---|
//! | `timeout_ms` | 1..=3_600_000, or 0 | the driver's time limit of one request on this card; 0 returns to the module parameter `timeout_ms` |
//! | `event_queue_depth` | 16..=65_536, or 0 | device events each later open of this card queues; 0 returns to the module parameter |
//! | `int_coalesce_count` | 0..=65_535 | the card's INT_COALESCE_COUNT: records delivered after this many (0 and 1: each) |
//! | `int_coalesce_usec` | 0..=1_000_000 | the card's INT_COALESCE_USEC: or once the oldest waited this long (0: no limit) |
//!
//! The driver refuses a value outside the range with `EINVAL` (nothing
//! changes), a write while a controlling open holds the card with `EBUSY`
//! (a property write is a controlling access, as a task file is), and a
//! writer without root with `EACCES` (the attributes are mode 0644). The
//! two interrupt settings are registers of the card: reading them asks the
//! card, and a task file of the controlling open (such as
//! [`Card::enable_interrupts`](crate::Card::enable_interrupts)) or a device
//! reset changes them too.

use std::path::{Path, PathBuf};

use crate::enumerate::SYSFS_CLASS;
use crate::error::{Error, Result};

/// Property names, as the driver's sysfs attributes.
pub mod name {
    pub const TIMEOUT_MS: &str = "timeout_ms";
    pub const EVENT_QUEUE_DEPTH: &str = "event_queue_depth";
    pub const INT_COALESCE_COUNT: &str = "int_coalesce_count";
    pub const INT_COALESCE_USEC: &str = "int_coalesce_usec";
}

/// The writable properties of one card, by its sysfs folder. Needs no open
/// of the card (and works while another process holds it; writing then
/// fails `EBUSY`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Properties {
    dir: PathBuf,
}

impl Properties {
    /// The properties of `/dev/xxcaptureN`.
    pub fn for_index(index: u32) -> Properties {
        Properties::in_dir(Path::new(SYSFS_CLASS).join(format!("xxcapture{index}")))
    }

    /// The properties in the sysfs folder `dir` (or a copy of one, for
    /// tests).
    pub fn in_dir(dir: impl Into<PathBuf>) -> Properties {
        Properties { dir: dir.into() }
    }

    /// The card's sysfs folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The request time limit in effect on this card, in milliseconds.
    pub fn timeout_ms(&self) -> Result<u32> {
        self.get(name::TIMEOUT_MS)
    }

    /// Sets this card's request time limit (1..=3_600_000 ms; 0 follows the
    /// module parameter again).
    pub fn set_timeout_ms(&self, ms: u32) -> Result<()> {
        self.set(name::TIMEOUT_MS, ms)
    }

    /// Device events an open of this card made now would queue.
    pub fn event_queue_depth(&self) -> Result<u32> {
        self.get(name::EVENT_QUEUE_DEPTH)
    }

    /// Sets the depth of the opens made from now on (16..=65_536; 0 follows
    /// the module parameter again). Opens already made keep theirs.
    pub fn set_event_queue_depth(&self, depth: u32) -> Result<()> {
        self.set(name::EVENT_QUEUE_DEPTH, depth)
    }

    /// The card's INT_COALESCE_COUNT (asks the card).
    pub fn int_coalesce_count(&self) -> Result<u32> {
        self.get(name::INT_COALESCE_COUNT)
    }

    /// Sets INT_COALESCE_COUNT (0..=65_535).
    pub fn set_int_coalesce_count(&self, count: u32) -> Result<()> {
        self.set(name::INT_COALESCE_COUNT, count)
    }

    /// The card's INT_COALESCE_USEC (asks the card).
    pub fn int_coalesce_usec(&self) -> Result<u32> {
        self.get(name::INT_COALESCE_USEC)
    }

    /// Sets INT_COALESCE_USEC (0..=1_000_000).
    pub fn set_int_coalesce_usec(&self, usec: u32) -> Result<()> {
        self.set(name::INT_COALESCE_USEC, usec)
    }

    /// Reads property `name` as a number.
    pub fn get(&self, name: &str) -> Result<u32> {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Sysfs {
            path: path.clone(),
            source,
        })?;
        parse_u32(text.trim()).ok_or_else(|| Error::Sysfs {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
        })
    }

    /// Writes `value` to property `name`.
    pub fn set(&self, name: &str, value: u32) -> Result<()> {
        self.set_raw(name, &value.to_string())
    }

    /// Writes `text` as is to property `name` (what the driver makes of
    /// malformed input is part of its contract, and tested).
    pub fn set_raw(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Property {
            path,
            value: text.to_string(),
            source,
        })
    }
}

/// Decimal, or hexadecimal with `0x`, as the driver prints and parses.
fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty folder of this test process.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xxcap-props-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn reads_and_writes_each_property_by_name() {
        let dir = scratch("rw");
        let props = Properties::in_dir(&dir);
        for (name, value) in [
            (name::TIMEOUT_MS, "5000\n"),
            (name::EVENT_QUEUE_DEPTH, "4096\n"),
            (name::INT_COALESCE_COUNT, "1\n"),
            (name::INT_COALESCE_USEC, "0\n"),
        ] {
            std::fs::write(dir.join(name), value).expect("write");
        }
        assert_eq!(props.timeout_ms().expect("timeout"), 5000);
        assert_eq!(props.event_queue_depth().expect("depth"), 4096);
        assert_eq!(props.int_coalesce_count().expect("count"), 1);
        assert_eq!(props.int_coalesce_usec().expect("usec"), 0);

        props.set_timeout_ms(250).expect("set timeout");
        props.set_event_queue_depth(16).expect("set depth");
        props.set_int_coalesce_count(8).expect("set count");
        props.set_int_coalesce_usec(200_000).expect("set usec");
        assert_eq!(props.timeout_ms().expect("timeout"), 250);
        assert_eq!(props.event_queue_depth().expect("depth"), 16);
        assert_eq!(props.int_coalesce_count().expect("count"), 8);
        assert_eq!(props.int_coalesce_usec().expect("usec"), 200_000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_attribute_or_garbage_is_an_error_with_its_path() {
        let dir = scratch("bad");
        let props = Properties::in_dir(&dir);
        match props.timeout_ms() {
            Err(Error::Sysfs { path, .. }) => assert_eq!(path, dir.join("timeout_ms")),
            other => panic!("expected a sysfs error, got {other:?}"),
        }
        std::fs::write(dir.join("int_coalesce_count"), "many\n").expect("write");
        assert!(matches!(
            props.int_coalesce_count(),
            Err(Error::Sysfs { .. })
        ));
        assert_eq!(parse_u32("0x10"), Some(16));
        assert_eq!(parse_u32("4294967296"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_index_names_the_class_folder() {
        assert_eq!(
            Properties::for_index(3).dir(),
            Path::new("/sys/class/xxcapture/xxcapture3")
        );
    }
}
