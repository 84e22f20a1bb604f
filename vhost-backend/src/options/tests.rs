use super::*;

#[test]
fn sizes_parse_with_suffixes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("64K"), Ok(64 << 10));
    assert_eq!(parse_size("64m"), Ok(64 << 20));
    assert_eq!(parse_size("4G"), Ok(4 << 30));
    assert_eq!(parse_size("16MiB"), Ok(16 << 20));
    assert_eq!(parse_size(" 1g "), Ok(1 << 30));
    assert!(matches!(parse_size(""), Err(SizeError::Empty(_))));
    assert!(matches!(parse_size("M"), Err(SizeError::Malformed(_))));
    assert!(matches!(parse_size("12X"), Err(SizeError::Malformed(_))));
    assert!(matches!(parse_size("-1M"), Err(SizeError::Malformed(_))));
    assert!(matches!(parse_size("1.5G"), Err(SizeError::Malformed(_))));
    assert!(matches!(
        parse_size("99999999999999999999"),
        Err(SizeError::Overflow(_))
    ));
    assert!(matches!(
        parse_size("17179869184G"),
        Err(SizeError::Overflow(_))
    ));
}

#[test]
fn frame_sizes_and_formats_parse() {
    assert_eq!(parse_frame_size("1920x1080"), Ok((1920, 1080)));
    assert_eq!(parse_frame_size("640X480"), Ok((640, 480)));
    assert!(parse_frame_size("641x480").is_err());
    assert!(parse_frame_size("1920").is_err());
    assert!(parse_frame_size("x").is_err());
    assert!(parse_frame_size("7680x4320").is_err());
    assert_eq!(parse_pixel_format("nv12"), Ok(PixelFormat::Nv12));
    assert!(parse_pixel_format("mjpeg").is_err());
}

#[test]
fn qemu_sizes_use_the_largest_unit() {
    assert_eq!(qemu_size(1 << 30), "1G");
    assert_eq!(qemu_size(1536 << 20), "1536M");
    assert_eq!(qemu_size(12345), "12345");
}

#[test]
fn qemu_args_escape_commas_and_match_the_abi() {
    let args = qemu_args(Path::new("/tmp/a,b.sock"), None, 31, Some(1 << 30));
    assert_eq!(args[3], "-chardev socket,id=xxcap0,path=/tmp/a,,b.sock");
    assert_eq!(
        args[4],
        "-device vhost-user-test-device-pci,id=card0,chardev=xxcap0,virtio-id=31,num_vqs=3,vq_size=256,config_size=96"
    );
}

#[test]
fn qemu_args_take_an_id_and_leave_memory_out_unless_asked() {
    let args = qemu_args(Path::new("/run/c1.sock"), Some("card1"), 30, None);
    assert_eq!(
        args,
        [
            "-chardev socket,id=chr-card1,path=/run/c1.sock",
            "-device vhost-user-test-device-pci,id=card1,chardev=chr-card1,virtio-id=30,num_vqs=3,vq_size=256,config_size=96",
        ]
    );
    let with_memory = qemu_args(
        Path::new("/run/c1.sock"),
        Some("card1"),
        30,
        Some(512 << 20),
    );
    assert_eq!(with_memory.len(), 5);
    assert_eq!(with_memory[2], "-m 512M");
    assert_eq!(&with_memory[3..], &args[..]);
}

#[test]
fn only_virtio_ids_qemu_names_are_accepted() {
    let named: Vec<u32> = (0..64).filter(|&id| qemu_names_virtio_id(id)).collect();
    let expected: Vec<u32> = (1..=13).chain(16..=41).chain([45]).collect();
    assert_eq!(named, expected);
    assert!(qemu_names_virtio_id(VIRTIO_ID));
    for bad in ["0", "14", "15", "42", "44", "46", "63", "x"] {
        assert!(parse_virtio_id(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_virtio_id("30"), Ok(30));
}

#[test]
fn qemu_ids_are_checked() {
    for good in ["card1", "a", "Cam_2.left-x"] {
        assert_eq!(parse_qemu_id(good).as_deref(), Ok(good));
    }
    for bad in ["", "1card", "card 1", "card,1", "-x", &"a".repeat(65)] {
        assert!(parse_qemu_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn socket_paths_must_fit_sun_path() {
    let fits = format!("/{}", "a".repeat(SUN_PATH_MAX - 1));
    assert!(check_socket_path(Path::new(&fits)).is_ok());
    let long = format!("/{}", "a".repeat(SUN_PATH_MAX));
    let err = check_socket_path(Path::new(&long)).expect_err("too long");
    assert!(err.contains("108") || err.contains("107"), "{err}");
    assert!(check_socket_path(Path::new("")).is_err());
}

#[test]
fn capabilities_are_json_with_a_schema_type() {
    let caps = capabilities_json();
    assert!(caps.contains("\"type\": \"input\""), "{caps}");
    assert!(caps.contains("\"features\": []"), "{caps}");
}
