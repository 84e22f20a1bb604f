//! `--card 'key=value,...'`: one card's options, turned into the `xxcapd`
//! arguments that serve it. The keys are xxcapd's own card options without
//! the leading dashes (`card-ram` for `--card-ram-size`); values are
//! checked by xxcapd's own command-line parser before anything starts.

use std::path::{Path, PathBuf};

use clap::Parser;

/// Key, xxcapd option, whether it takes a value.
const KEYS: &[(&str, &str, bool)] = &[
    ("card-ram", "--card-ram-size", true),
    ("size", "--size", true),
    ("fps", "--fps", true),
    ("format", "--format", true),
    ("serial", "--serial", true),
    ("revision", "--revision", true),
    ("source-file", "--source-file", true),
    ("source-format", "--source-format", true),
    ("source-size", "--source-size", true),
    ("source-pixel-format", "--source-pixel-format", true),
    ("no-event-idx", "--no-event-idx", false),
    (
        "reset-card-ram-on-reconnect",
        "--reset-card-ram-on-reconnect",
        false,
    ),
];

/// The keys `--card` accepts, for help and error texts.
pub fn keys() -> String {
    KEYS.iter()
        .map(|(k, _, value)| match value {
            true => format!("{k}=V"),
            false => k.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses one `--card` value into xxcapd arguments. Relative
/// `source-file` paths are taken from `cwd`. `extra` (the `--xxcapd-arg`s,
/// given to every card) is checked along with them.
pub fn parse(spec: &str, cwd: &Path, extra: &[String]) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        let Some(&(_, option, takes_value)) = KEYS.iter().find(|(k, _, _)| *k == key) else {
            return Err(format!(
                "--card {spec:?}: unknown key {key:?} (known: {})",
                keys()
            ));
        };
        args.push(option.to_string());
        match (takes_value, value) {
            (true, Some(v)) if key == "source-file" => {
                let path = cwd.join(v);
                if !path.is_file() {
                    return Err(format!("--card {spec:?}: no file {}", path.display()));
                }
                args.push(path.display().to_string());
            }
            (true, Some(v)) => args.push(v.to_string()),
            (true, None) => return Err(format!("--card {spec:?}: {key} needs a value ({key}=V)")),
            (false, None) | (false, Some("true" | "yes" | "1")) => {}
            (false, Some(_)) => return Err(format!("--card {spec:?}: {key} takes no value")),
        }
    }
    check(&args, extra).map_err(|e| format!("--card {spec:?}: {e}"))?;
    Ok(args)
}

/// Runs xxcapd's own parser over the arguments (a socket path stands in
/// for the one the harness gives), so bad values fail before QEMU starts.
fn check(args: &[String], extra: &[String]) -> Result<(), String> {
    let socket = PathBuf::from("/nonexistent/xxvm-check.sock");
    let argv = ["xxcapd".to_string(), "--socket-path".into()]
        .into_iter()
        .chain([socket.display().to_string()])
        .chain(args.iter().cloned())
        .chain(extra.iter().cloned());
    xxcapd::options::Cli::try_parse_from(argv)
        .map(|_| ())
        .map_err(|e| e.to_string().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_xxcapd_options() {
        let args = parse("card-ram=256M, size=1280x720,fps=60", Path::new("/"), &[]).expect("ok");
        assert_eq!(
            args,
            [
                "--card-ram-size",
                "256M",
                "--size",
                "1280x720",
                "--fps",
                "60"
            ]
        );
        let args = parse("no-event-idx,serial=A1", Path::new("/"), &[]).expect("ok");
        assert_eq!(args, ["--no-event-idx", "--serial", "A1"]);
        assert_eq!(parse("", Path::new("/"), &[]).expect("ok").len(), 0);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = parse("ram=1G", Path::new("/"), &[]).expect_err("unknown");
        assert!(e.contains("unknown key \"ram\""), "{e}");
        assert!(e.contains("card-ram=V"), "{e}");
        let e = parse("size=7x7", Path::new("/"), &[]).expect_err("bad size");
        assert!(e.contains("size"), "{e}");
        let e = parse("fps", Path::new("/"), &[]).expect_err("no value");
        assert!(e.contains("needs a value"), "{e}");
        let e = parse("source-file=/nonexistent.y4m", Path::new("/"), &[]).expect_err("no file");
        assert!(e.contains("no file"), "{e}");
        let e = parse("", Path::new("/"), &["--bogus".into()]).expect_err("extra");
        assert!(e.contains("--bogus"), "{e}");
    }
}
