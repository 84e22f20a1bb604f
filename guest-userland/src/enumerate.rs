//! The cards present, as the driver lists them in sysfs: one folder
//! `/sys/class/xxcapture/xxcaptureN` per card, with its identity as
//! attributes. Listing needs no open, so it works while another process
//! holds a card.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the driver's class lists its cards.
pub const SYSFS_CLASS: &str = "/sys/class/xxcapture";

/// One card in sysfs: its node and its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardEntry {
    /// N of `xxcaptureN`.
    pub index: u32,
    /// `/dev/xxcaptureN`.
    pub dev_path: PathBuf,
    /// The card's sysfs folder.
    pub sysfs_path: PathBuf,
    pub model: u32,
    pub revision: u32,
    pub abi_version: u32,
    pub capabilities: u32,
    pub max_commands: u32,
    pub card_ram_size: u64,
    pub serial: String,
    pub name: String,
}

/// The cards present, by index. No driver loaded (no class folder): none.
pub fn cards() -> Result<Vec<CardEntry>> {
    cards_in(Path::new(SYSFS_CLASS))
}

/// The cards listed under `class` (a sysfs class folder, or a copy of one
/// for tests). A card removed while it is being read is left out.
pub fn cards_in(class: &Path) -> Result<Vec<CardEntry>> {
    let dir = match std::fs::read_dir(class) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Sysfs {
                path: class.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|source| Error::Sysfs {
            path: class.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = name
            .strip_prefix("xxcapture")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        match read_entry(&entry.path(), index) {
            Ok(card) => out.push(card),
            // Gone between the listing and the read: hot-unplugged.
            Err(Error::Sysfs { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|c| c.index);
    Ok(out)
}

fn read_entry(dir: &Path, index: u32) -> Result<CardEntry> {
    let text = |attr: &str| -> Result<String> {
        let path = dir.join(attr);
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end_matches('\n').to_string())
            .map_err(|source| Error::Sysfs { path, source })
    };
    let number = |attr: &str| -> Result<u64> {
        let s = text(attr)?;
        let parsed = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed.map_err(|_| Error::Sysfs {
            path: dir.join(attr),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{s:?}")),
        })
    };
    let narrow = |attr: &str| -> Result<u32> {
        let v = number(attr)?;
        u32::try_from(v).map_err(|_| Error::Sysfs {
            path: dir.join(attr),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{v}")),
        })
    };
    Ok(CardEntry {
        index,
        dev_path: PathBuf::from(format!("/dev/xxcapture{index}")),
        sysfs_path: dir.to_path_buf(),
        model: narrow("model")?,
        revision: narrow("revision")?,
        abi_version: narrow("abi_version")?,
        capabilities: narrow("capabilities")?,
        max_commands: narrow("max_commands")?,
        card_ram_size: number("card_ram_size")?,
        serial: text("serial")?,
        name: text("name")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_card(class: &Path, node: &str, serial: &str) {
        let dir = class.join(node);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (attr, value) in [
            ("model", "0x0000d0b1"),
            ("revision", "1"),
            ("abi_version", "0x00010000"),
            ("capabilities", "0x0000003f"),
            ("card_ram_size", "16777216"),
            ("max_commands", "4096"),
            ("serial", serial),
            ("name", "Double X"),
        ] {
            std::fs::write(dir.join(attr), format!("{value}\n")).expect("write");
        }
    }

    #[test]
    fn lists_cards_by_index_with_their_identity() {
        let class = std::env::temp_dir().join(format!("xxcap-enum-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&class);
        fake_card(&class, "xxcapture10", "B");
        fake_card(&class, "xxcapture2", "A");
        std::fs::create_dir_all(class.join("other")).expect("mkdir");
        let cards = cards_in(&class).expect("list");
        assert_eq!(cards.len(), 2);
        assert_eq!((cards[0].index, cards[1].index), (2, 10));
        assert_eq!(cards[0].serial, "A");
        assert_eq!(cards[0].dev_path, PathBuf::from("/dev/xxcapture2"));
        assert_eq!(cards[0].model, 0xd0b1);
        assert_eq!(cards[0].capabilities, 0x3f);
        assert_eq!(cards[0].card_ram_size, 16 << 20);
        assert_eq!(cards[1].name, "Double X");
        let _ = std::fs::remove_dir_all(&class);
    }

    #[test]
    fn no_class_folder_means_no_cards() {
        let missing = Path::new("/nonexistent/xxcapture-class");
        assert_eq!(cards_in(missing).expect("list"), Vec::new());
    }

    #[test]
    fn malformed_attributes_are_errors() {
        let class = std::env::temp_dir().join(format!("xxcap-enum-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&class);
        fake_card(&class, "xxcapture0", "A");
        std::fs::write(class.join("xxcapture0/revision"), "x\n").expect("write");
        assert!(matches!(cards_in(&class), Err(Error::Sysfs { .. })));
        let _ = std::fs::remove_dir_all(&class);
    }
}
