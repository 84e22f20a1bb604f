//! The JSON summary written to `out=` (schema in README.md).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::counters::{
    Counts, Region, Snapshot, Tracker, EDU_REGION, MARKER_MAGIC, MARKER_MASK, MARKER_OFFSET,
};

/// Version of the JSON layout; bumped on incompatible changes.
pub const SCHEMA: u32 = 1;

#[derive(Serialize)]
struct MarkerInfo {
    enabled: bool,
    region: &'static str,
    offset: u64,
    width: u32,
    mask: String,
    magic: String,
    counted: bool,
}

#[derive(Serialize)]
struct RangeInfo<'a> {
    label: &'a str,
    start: String,
    size: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    tool: &'static str,
    version: &'static str,
    schema: u32,
    qemu_plugin_api: i32,
    /// false while QEMU runs (written at a marker), true at exit.
    complete: bool,
    target: &'a str,
    vcpus: u32,
    marker: MarkerInfo,
    ranges: Vec<RangeInfo<'a>>,
    totals: Counts,
    regions: &'a BTreeMap<String, Region>,
    snapshots: &'a [Snapshot],
}

/// Facts about the run the tracker does not know.
pub struct RunInfo<'a> {
    pub api_version: i32,
    pub target: &'a str,
    pub vcpus: u32,
    pub complete: bool,
}

/// Renders the summary as pretty JSON.
pub fn render(config: &Config, tracker: &Tracker, run: &RunInfo<'_>) -> String {
    let report = Report {
        tool: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        schema: SCHEMA,
        qemu_plugin_api: run.api_version,
        complete: run.complete,
        target: run.target,
        vcpus: run.vcpus,
        marker: MarkerInfo {
            enabled: config.markers,
            region: EDU_REGION,
            offset: MARKER_OFFSET,
            width: 4,
            mask: format!("{MARKER_MASK:#010x}"),
            magic: format!("{MARKER_MAGIC:#010x}"),
            counted: !config.markers,
        },
        ranges: config
            .ranges
            .iter()
            .map(|r| RangeInfo {
                label: &r.label,
                start: format!("{:#x}", r.start),
                size: r.size,
            })
            .collect(),
        totals: tracker.totals,
        regions: &tracker.regions,
        snapshots: &tracker.snapshots,
    };
    let mut text = serde_json::to_string_pretty(&report)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize: {e}\"}}"));
    text.push('\n');
    text
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.flush()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::attribute;

    #[test]
    fn renders_the_documented_shape() {
        let config = Config::parse(["out=/dev/null"]).unwrap();
        let mut t = Tracker::default();
        let edu = attribute("edu-mmio", true, 0xfea0_0000, &[]).unwrap();
        t.access(&edu, true, true, 4, Some(1), 0);
        t.access(&edu, true, false, 4, None, 0);
        t.access(&edu, true, true, 4, Some(2), 0);
        let text = render(
            &config,
            &t,
            &RunInfo {
                api_version: 7,
                target: "x86_64",
                vcpus: 1,
                complete: true,
            },
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["tool"], "xxcapture-crossings");
        assert_eq!(v["qemu_plugin_api"], 7);
        assert_eq!(v["complete"], true);
        assert_eq!(v["marker"]["magic"], "0x58430000");
        assert_eq!(v["marker"]["offset"], 4);
        assert_eq!(v["regions"]["edu-mmio"]["class"], "edu");
        assert_eq!(v["regions"]["edu-mmio"]["reads"], 1);
        assert_eq!(v["regions"]["edu-mmio"]["read_bytes"], 4);
        assert_eq!(v["snapshots"][1]["seq"], 1);
        assert_eq!(v["snapshots"][1]["tag"], 2);
        assert_eq!(v["snapshots"][1]["regions"]["edu-mmio"]["reads"], 1);
        assert_eq!(v["totals"]["reads"], 1);
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        write_atomically(&p, "one").unwrap();
        write_atomically(&p, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
