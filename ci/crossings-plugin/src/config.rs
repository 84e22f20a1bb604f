//! The plugin's arguments: `-plugin lib.so,out=FILE[,range=LABEL:START+SIZE]...[,markers=off]`.

use std::path::PathBuf;

/// A guest-physical address range counted under its own label, for regions
/// QEMU does not name usefully (sub-page regions such as the MSI-X table come
/// back as unstable `anon...` names) or that are RAM to QEMU (a shared-memory
/// BAR whose pages the backend has mapped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub label: String,
    pub start: u64,
    pub size: u64,
}

impl Range {
    pub fn contains(&self, addr: u64) -> bool {
        addr.wrapping_sub(self.start) < self.size
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the JSON summary goes.
    pub out: PathBuf,
    /// Address ranges, checked in order before the region name.
    pub ranges: Vec<Range>,
    /// Whether edu marker writes take snapshots (and are left out of the
    /// counts). With `markers=off` they are counted like any other write.
    pub markers: bool,
}

/// Parses `0x`-prefixed hex or decimal, with an optional `K`, `M` or `G`
/// (binary) suffix.
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'K' | b'k') => (&t[..t.len() - 1], 10),
        Some(b'M' | b'm') => (&t[..t.len() - 1], 20),
        Some(b'G' | b'g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(&hex.replace('_', ""), 16)
    } else {
        digits.replace('_', "").parse::<u64>()
    }
    .map_err(|e| format!("'{text}' is not a number: {e}"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn parse_range(spec: &str) -> Result<Range, String> {
    let (label, span) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("range={spec}: expected LABEL:START+SIZE"))?;
    if label.is_empty() {
        return Err(format!("range={spec}: empty label"));
    }
    let (start, size) = span
        .split_once('+')
        .ok_or_else(|| format!("range={spec}: expected LABEL:START+SIZE"))?;
    let start = parse_u64(start).map_err(|e| format!("range={spec}: start {e}"))?;
    let size = parse_u64(size).map_err(|e| format!("range={spec}: size {e}"))?;
    if size == 0 || start.checked_add(size - 1).is_none() {
        return Err(format!("range={spec}: empty or wrapping range"));
    }
    Ok(Range {
        label: label.to_string(),
        start,
        size,
    })
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("{key}={value}: expected on or off")),
    }
}

impl Config {
    /// Parses QEMU's plugin arguments (`key=value` each).
    pub fn parse<I, S>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = None;
        let mut ranges = Vec::new();
        let mut markers = true;
        for arg in args {
            let arg = arg.as_ref();
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("argument '{arg}': expected key=value"))?;
            match key {
                "out" if !value.is_empty() => out = Some(PathBuf::from(value)),
                "range" => ranges.push(parse_range(value)?),
                "markers" => markers = parse_bool(key, value)?,
                _ => {
                    return Err(format!(
                        "unknown argument '{arg}' (known: out=FILE, range=LABEL:START+SIZE, markers=on|off)"
                    ))
                }
            }
        }
        let out = out.ok_or("missing out=FILE (where the JSON summary goes)")?;
        Ok(Config {
            out,
            ranges,
            markers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x1000"), Ok(0x1000));
        assert_eq!(parse_u64("4096"), Ok(4096));
        assert_eq!(parse_u64("64M"), Ok(64 << 20));
        assert_eq!(parse_u64("0xfe00_0000"), Ok(0xfe00_0000));
        assert!(parse_u64("zz").is_err());
        assert!(parse_u64("0x").is_err());
        assert!(parse_u64("20000000000G").is_err());
    }

    #[test]
    fn full_config() {
        let c = Config::parse([
            "out=/tmp/x.json",
            "range=card-msix:0xfebf1000+0x1000",
            "range=card-ram:0x800000000+64M",
            "markers=off",
        ])
        .unwrap();
        assert_eq!(c.out, PathBuf::from("/tmp/x.json"));
        assert!(!c.markers);
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.ranges[1].size, 64 << 20);
        assert!(c.ranges[0].contains(0xfebf1000));
        assert!(c.ranges[0].contains(0xfebf1fff));
        assert!(!c.ranges[0].contains(0xfebf2000));
        assert!(!c.ranges[0].contains(0xfebf0fff));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Config::parse(Vec::<String>::new())
            .unwrap_err()
            .contains("out=FILE"));
        assert!(Config::parse(["out=a", "bogus=1"])
            .unwrap_err()
            .contains("unknown argument"));
        assert!(Config::parse(["out=a", "range=x:1-2"]).is_err());
        assert!(Config::parse(["out=a", "range=:0+1"]).is_err());
        assert!(Config::parse(["out=a", "range=x:0+0"]).is_err());
        assert!(Config::parse(["out=a", "range=x:0xffffffffffffffff+2"]).is_err());
        assert!(Config::parse(["out=a", "markers=maybe"]).is_err());
        assert!(Config::parse(["noequals"]).is_err());
    }
}
