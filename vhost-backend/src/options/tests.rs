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
    let args = qemu_args(Path::new("/tmp/a,b.sock"), 31, 1 << 30);
    assert_eq!(args[3], "-chardev socket,id=xxcap0,path=/tmp/a,,b.sock");
    assert_eq!(
        args[4],
        "-device vhost-user-test-device-pci,id=card0,chardev=xxcap0,virtio-id=31,num_vqs=3,vq_size=256,config_size=96"
    );
}
