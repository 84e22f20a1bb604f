//! What an access is attributed to, the counters, and the marker protocol.
//! Pure Rust: the FFI layer feeds it the region name, guest-physical
//! address, width, direction and (for marker candidates) the stored value.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Range;

/// QEMU's name for the edu device's BAR0.
pub const EDU_REGION: &str = "edu-mmio";
/// edu's BAR0 is 1 MiB, so (being naturally aligned) the offset inside it is
/// the guest-physical address modulo this.
pub const EDU_BAR_SIZE: u64 = 1 << 20;
/// The marker register: edu's liveness check (it stores the bitwise NOT of
/// what is written; nothing else happens).
pub const MARKER_OFFSET: u64 = 0x04;
/// A marker is a 4-byte store whose upper 16 bits are these ("XC").
pub const MARKER_MAGIC: u32 = 0x5843_0000;
pub const MARKER_MASK: u32 = 0xffff_0000;

/// Reads and writes, counted separately, with their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

impl Counts {
    pub fn add(&mut self, is_store: bool, bytes: u64) {
        if is_store {
            self.writes += 1;
            self.write_bytes += bytes;
        } else {
            self.reads += 1;
            self.read_bytes += bytes;
        }
    }

    /// What happened since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

/// What kind of region an access went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// edu's BAR0 (`edu-mmio`).
    Edu,
    /// virtio-pci modern common configuration (`virtio-pci-common-<dev>`).
    VirtioCommon,
    /// virtio-pci ISR status (`virtio-pci-isr-<dev>`).
    VirtioIsr,
    /// virtio device-specific configuration space (`virtio-pci-device-<dev>`).
    VirtioDevice,
    /// virtio queue notifications, the doorbells (`virtio-pci-notify-<dev>`).
    VirtioNotify,
    /// A virtio shared-memory region seen as I/O (`virtio-shmem-*`,
    /// `vub-shm-*`), e.g. an unmapped part of the card-RAM BAR.
    Shmem,
    /// A `range=` given on the command line (I/O or RAM).
    Range,
    /// Any other I/O region.
    Other,
}

/// Where one access is counted: the key in the JSON `regions` map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution<'a> {
    pub label: Cow<'a, str>,
    pub class: Class,
    /// The `<dev>` part of a virtio region name.
    pub device: Option<&'a str>,
}

const VIRTIO_PREFIXES: [(&str, Class); 4] = [
    ("virtio-pci-common-", Class::VirtioCommon),
    ("virtio-pci-isr-", Class::VirtioIsr),
    ("virtio-pci-device-", Class::VirtioDevice),
    ("virtio-pci-notify-", Class::VirtioNotify),
];

/// Attributes an access. `name` is QEMU's memory-region name (only
/// meaningful for I/O). Ranges win over names; RAM outside every range is
/// not counted (`None`).
pub fn attribute<'a>(
    name: &'a str,
    is_io: bool,
    phys: u64,
    ranges: &'a [Range],
) -> Option<Attribution<'a>> {
    if let Some(r) = ranges.iter().find(|r| r.contains(phys)) {
        return Some(Attribution {
            label: Cow::Owned(format!("range:{}", r.label)),
            class: Class::Range,
            device: None,
        });
    }
    if !is_io {
        return None;
    }
    if name == EDU_REGION {
        return Some(Attribution {
            label: Cow::Borrowed(name),
            class: Class::Edu,
            device: None,
        });
    }
    for (prefix, class) in VIRTIO_PREFIXES {
        if let Some(dev) = name.strip_prefix(prefix) {
            return Some(Attribution {
                label: Cow::Borrowed(name),
                class,
                device: Some(dev),
            });
        }
    }
    if name.starts_with("virtio-shmem") || name.starts_with("vub-shm") {
        return Some(Attribution {
            label: Cow::Borrowed(name),
            class: Class::Shmem,
            device: None,
        });
    }
    // Sub-page regions share an unnamed container that QEMU names
    // "anon<pointer>", different on every run: key them by page instead.
    let label = if name.is_empty() || name.starts_with("anon") {
        format!("other:anon@{:#x}", phys & !0xfff)
    } else {
        format!("other:{name}")
    };
    Some(Attribution {
        label: Cow::Owned(label),
        class: Class::Other,
        device: None,
    })
}

/// Whether an access could be a marker, i.e. whether the FFI layer should
/// fetch the stored value.
pub fn is_marker_candidate(class: Class, phys: u64, bytes: u64, is_store: bool) -> bool {
    class == Class::Edu && is_store && bytes == 4 && phys % EDU_BAR_SIZE == MARKER_OFFSET
}

/// The tag (low 16 bits) when `value` is a marker.
pub fn marker_tag(value: u64) -> Option<u16> {
    let v = u32::try_from(value).ok()?;
    (v & MARKER_MASK == MARKER_MAGIC).then_some((v & 0xffff) as u16)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Region {
    pub class: Class,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// The counters at one marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// 0, 1, 2... in the order the markers were seen.
    pub seq: u64,
    /// The low 16 bits of the marker value.
    pub tag: u16,
    /// The vCPU that wrote the marker.
    pub vcpu: u32,
    /// All I/O regions' counters, cumulative since QEMU started.
    pub totals: Counts,
    pub regions: BTreeMap<String, Region>,
}

/// What one access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Counted,
    /// A marker: a snapshot was appended with this `seq`; not counted.
    Snapshot(u64),
}

/// All counters. Callers serialize access to it (one mutex): I/O accesses
/// are rare next to RAM accesses and already cost microseconds in QEMU, and
/// one lock keeps every snapshot consistent across vCPUs.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    pub regions: BTreeMap<String, Region>,
    /// Sum over the I/O regions (ranges over RAM are not included).
    pub totals: Counts,
    pub snapshots: Vec<Snapshot>,
}

impl Tracker {
    /// Counts one access, or takes a snapshot when `marker` carries a tag.
    pub fn access(
        &mut self,
        attr: &Attribution<'_>,
        is_io: bool,
        is_store: bool,
        bytes: u64,
        marker: Option<u16>,
        vcpu: u32,
    ) -> Event {
        if let Some(tag) = marker {
            let seq = self.snapshots.len() as u64;
            self.snapshots.push(Snapshot {
                seq,
                tag,
                vcpu,
                totals: self.totals,
                regions: self.regions.clone(),
            });
            return Event::Snapshot(seq);
        }
        let region = match self.regions.get_mut(attr.label.as_ref()) {
            Some(r) => r,
            None => self
                .regions
                .entry(attr.label.clone().into_owned())
                .or_insert_with(|| Region {
                    class: attr.class,
                    device: attr.device.map(str::to_string),
                    counts: Counts::default(),
                }),
        };
        region.counts.add(is_store, bytes);
        if is_io {
            self.totals.add(is_store, bytes);
        }
        Event::Counted
    }
}

/// The counts of `label` between two snapshots (zero where absent).
pub fn region_delta(earlier: &Snapshot, later: &Snapshot, label: &str) -> Counts {
    let get = |s: &Snapshot| s.regions.get(label).map(|r| r.counts).unwrap_or_default();
    get(later).since(&get(earlier))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(name: &str, phys: u64) -> Attribution<'_> {
        attribute(name, true, phys, &[]).unwrap()
    }

    #[test]
    fn names_are_attributed() {
        let a = io("edu-mmio", 0xfea0_0000);
        assert_eq!((a.label.as_ref(), a.class), ("edu-mmio", Class::Edu));
        for (name, class) in [
            (
                "virtio-pci-common-vhost-user-test-device",
                Class::VirtioCommon,
            ),
            ("virtio-pci-isr-vhost-user-test-device", Class::VirtioIsr),
            (
                "virtio-pci-device-vhost-user-test-device",
                Class::VirtioDevice,
            ),
            (
                "virtio-pci-notify-vhost-user-test-device",
                Class::VirtioNotify,
            ),
        ] {
            let a = io(name, 0);
            assert_eq!(a.class, class, "{name}");
            assert_eq!(a.label, name);
            assert_eq!(a.device, Some("vhost-user-test-device"));
        }
        assert_eq!(io("virtio-shmem-0", 0).class, Class::Shmem);
        let a = io("hpet", 0xfed0_0000);
        assert_eq!((a.label.as_ref(), a.class), ("other:hpet", Class::Other));
        let a = io("anon7f3a9c001234", 0xfebd_1804);
        assert_eq!(a.label, "other:anon@0xfebd1000");
    }

    #[test]
    fn ranges_win_and_cover_ram() {
        let ranges = [Range {
            label: "card-ram".into(),
            start: 0x8_0000_0000,
            size: 0x100_0000,
        }];
        let a = attribute("RAM", false, 0x8_0000_0010, &ranges).unwrap();
        assert_eq!(
            (a.label.as_ref(), a.class),
            ("range:card-ram", Class::Range)
        );
        let a = attribute("anon1", true, 0x8_00ff_ffff, &ranges).unwrap();
        assert_eq!(a.class, Class::Range);
        assert!(attribute("RAM", false, 0x8_0100_0000, &ranges).is_none());
        assert!(attribute("RAM", false, 0x1000, &[]).is_none());
    }

    #[test]
    fn marker_protocol() {
        let bar = 0xfea0_0000;
        assert!(is_marker_candidate(Class::Edu, bar + 4, 4, true));
        assert!(!is_marker_candidate(Class::Edu, bar + 4, 4, false));
        assert!(!is_marker_candidate(Class::Edu, bar + 4, 2, true));
        assert!(!is_marker_candidate(Class::Edu, bar + 8, 4, true));
        assert!(!is_marker_candidate(Class::Other, bar + 4, 4, true));
        assert_eq!(marker_tag(0x5843_0001), Some(1));
        assert_eq!(marker_tag(0x5843_ffff), Some(0xffff));
        assert_eq!(marker_tag(0x5844_0001), None);
        assert_eq!(marker_tag(0x1_5843_0001), None);
    }

    #[test]
    fn phase_between_markers_counts_exactly() {
        let mut t = Tracker::default();
        let edu = io("edu-mmio", 0xfea0_0000);
        let notify = io("virtio-pci-notify-x", 0xfe00_3000);
        // Before the phase.
        for _ in 0..7 {
            t.access(&edu, true, false, 4, None, 0);
        }
        assert_eq!(
            t.access(&edu, true, true, 4, Some(1), 0),
            Event::Snapshot(0)
        );
        for _ in 0..1000 {
            t.access(&edu, true, false, 4, None, 0);
        }
        t.access(&notify, true, true, 2, None, 1);
        assert_eq!(
            t.access(&edu, true, true, 4, Some(2), 0),
            Event::Snapshot(1)
        );
        t.access(&edu, true, false, 4, None, 0);

        let (a, b) = (&t.snapshots[0], &t.snapshots[1]);
        assert_eq!((a.tag, b.tag, b.seq), (1, 2, 1));
        let d = region_delta(a, b, "edu-mmio");
        assert_eq!(
            d,
            Counts {
                reads: 1000,
                writes: 0,
                read_bytes: 4000,
                write_bytes: 0
            }
        );
        let n = region_delta(a, b, "virtio-pci-notify-x");
        assert_eq!((n.writes, n.write_bytes), (1, 2));
        assert_eq!(b.totals.since(&a.totals).reads, 1000);
        assert_eq!(t.regions["edu-mmio"].counts.reads, 1008);
        assert_eq!(
            t.regions["edu-mmio"].counts.writes, 0,
            "markers are not counted"
        );
        assert_eq!(t.totals.writes, 1);
    }

    #[test]
    fn ram_ranges_stay_out_of_io_totals() {
        let ranges = [Range {
            label: "r".into(),
            start: 0,
            size: 0x1000,
        }];
        let mut t = Tracker::default();
        let a = attribute("RAM", false, 0x10, &ranges).unwrap();
        t.access(&a, false, true, 8, None, 0);
        assert_eq!(t.regions["range:r"].counts.write_bytes, 8);
        assert_eq!(t.totals, Counts::default());
    }
}
