use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xxcapd-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn creates_and_removes_its_socket() {
    let dir = temp_dir("sock-own");
    let path = dir.join("s");
    let (owned, _listener) = OwnedSocket::bind(&path).expect("bind");
    assert!(fs::symlink_metadata(&path)
        .expect("exists")
        .file_type()
        .is_socket());
    owned.remove();
    assert!(!path.exists());
    owned.remove();
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn refuses_a_regular_file_and_leaves_it_alone() {
    let dir = temp_dir("sock-file");
    let path = dir.join("s");
    fs::write(&path, b"keep me").expect("write");
    let err = OwnedSocket::bind(&path).expect_err("must refuse");
    assert!(matches!(err, SocketError::NotASocket(_)));
    assert_eq!(fs::read(&path).expect("still there"), b"keep me");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn replaces_a_stale_socket() {
    let dir = temp_dir("sock-stale");
    let path = dir.join("s");
    drop(UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());
    let (owned, _listener) = OwnedSocket::bind(&path).expect("bind");
    drop(owned);
    assert!(!path.exists());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn does_not_remove_a_file_that_replaced_our_socket() {
    let dir = temp_dir("sock-swap");
    let path = dir.join("s");
    let (owned, _listener) = OwnedSocket::bind(&path).expect("bind");
    fs::remove_file(&path).expect("rm");
    fs::write(&path, b"other").expect("write");
    drop(owned);
    assert_eq!(fs::read(&path).expect("kept"), b"other");
    let _ = fs::remove_dir_all(&dir);
}
