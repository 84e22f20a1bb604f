use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::socket::OwnedSocket;

fn temp_socket(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xxcapd-ctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("ctl")
}

#[test]
fn commands_arm_list_and_clear() {
    let faults = Faults::default();
    let r = handle(&faults, "fault dma-error@3\n");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.faults[0].spec, "dma-error@3");
    let r = handle(&faults, "list");
    assert_eq!((r.ok, r.injected, r.faults.len()), (true, 0, 1));
    assert!(handle(&faults, "clear").ok);
    assert!(handle(&faults, "list").faults.is_empty());
}

#[test]
fn malformed_commands_get_an_error() {
    let faults = Faults::default();
    for (line, why) in [
        ("", "empty command"),
        ("fault", "needs a SPEC"),
        ("fault dma-error", "needs @N"),
        ("fault bogus@1", "unknown kind"),
        ("list all", "takes no argument"),
        ("reboot", "unknown command"),
    ] {
        let r = handle(&faults, line);
        assert!(!r.ok, "{line:?} accepted");
        let e = r.error.expect("error");
        assert!(e.contains(why), "{line:?}: {e}");
    }
    assert!(!faults.is_live());
}

#[test]
fn the_socket_survives_garbage_and_serves_the_client() {
    let path = temp_socket("serve");
    let (owned, listener) = OwnedSocket::bind(&path).expect("bind");
    let faults = Arc::new(Faults::default());
    serve(listener, Arc::clone(&faults)).expect("serve");

    // Not UTF-8, then a line far too long, then a good command.
    let mut raw = UnixStream::connect(&path).expect("connect");
    raw.write_all(b"\xff\xfe\n").expect("write");
    raw.write_all(&vec![b'a'; 3 * MAX_LINE]).expect("write");
    raw.write_all(b"\nlist\n").expect("write");
    raw.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut text = String::new();
    raw.read_to_string(&mut text).expect("read");
    let replies: Vec<Reply> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(replies.len(), 3, "{text}");
    assert!(replies[0].error.as_deref().unwrap_or("").contains("UTF-8"));
    assert!(replies[1].error.as_deref().unwrap_or("").contains("longer"));
    assert!(replies[2].ok);

    let mut client = ControlClient::connect(&path).expect("client");
    client.fault("stuck@2").expect("armed");
    let e = client.fault("stuck@0").expect_err("refused");
    assert!(matches!(e, ControlError::Refused(ref m) if m.contains("counts from 1")));
    let listed = client.list().expect("list");
    assert_eq!(listed.faults[0].spec, "stuck@2");
    client.clear().expect("clear");
    assert!(!faults.is_live());
    owned.remove();
}
