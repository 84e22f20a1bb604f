//! Frames from a file: headerless raw frames or a YUV4MPEG2 (Y4M) stream.
//!
//! Frame N of the source is frame `N % frame_count` of the file, so the file
//! loops and any frame can be rendered at any time, like the test pattern.
//! Each frame is read from the file when it is rendered (one seek and one
//! read; the page cache does the caching), so memory stays at one frame
//! whatever the file's size. The first [`STAMP_SIZE`] bytes of every frame
//! are overwritten by the card's stamp.
//!
//! [`STAMP_SIZE`]: xxcapture_abi::frame::STAMP_SIZE

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use xxcapture_abi::frame::{self, PixelFormat, Stamp};

use super::{check_buffer, frame_size, VideoError, VideoSource};

/// Longest Y4M FRAME header line, parameters included (as the y4m crate).
const MAX_FRAME_HEADER: usize = 1024;
/// Most Y4M frames indexed (8 bytes each); later frames are not played.
pub const MAX_Y4M_FRAMES: usize = 1 << 20;
/// Largest Y4M frame the header parser may size a buffer for: 8-bit 4:4:4
/// at the card's largest size (larger streams cannot play on the card).
const MAX_Y4M_FRAME_BYTES: usize = 3840 * 2160 * 3;

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Headerless frames of this format and size, back to back: frame k at
    /// byte `k * frame_size`. An incomplete last frame is ignored.
    Raw {
        format: PixelFormat,
        width: u32,
        height: u32,
    },
    /// A Y4M stream. 8-bit 4:2:0 (`C420`, `C420jpeg`, `C420paldv`,
    /// `C420mpeg2`, or no `C` tag) plays as NV12 (U and V interleaved),
    /// 8-bit 4:2:2 (`C422`) as YUYV; other colourspaces are refused. The
    /// frame size must be one the card accepts. An incomplete last frame is
    /// ignored.
    Y4m,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chroma {
    C420,
    C422,
}

#[derive(Debug)]
enum Layout {
    Raw,
    Y4m {
        chroma: Chroma,
        /// Byte offset of each frame's data (after its FRAME header).
        offsets: Vec<u64>,
        /// One frame of planar data.
        scratch: Vec<u8>,
    },
}

/// Frames read from a file, looping (see the module documentation).
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    file: File,
    format: PixelFormat,
    width: u32,
    height: u32,
    frame_size: usize,
    frame_count: u64,
    layout: Layout,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> VideoError + '_ {
    move |source| VideoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileSource {
    /// Opens `path` as `kind`.
    pub fn open(path: impl AsRef<Path>, kind: FileKind) -> Result<Self, VideoError> {
        match kind {
            FileKind::Raw {
                format,
                width,
                height,
            } => Self::open_raw(path, format, width, height),
            FileKind::Y4m => Self::open_y4m(path),
        }
    }

    /// Opens a file of headerless frames.
    pub fn open_raw(
        path: impl AsRef<Path>,
        format: PixelFormat,
        width: u32,
        height: u32,
    ) -> Result<Self, VideoError> {
        let path = path.as_ref();
        let frame_size = frame_size(format, width, height)?;
        let file = File::open(path).map_err(io_error(path))?;
        let file_len = file.metadata().map_err(io_error(path))?.len();
        // frame_size is at most 25 MB: the cast and division are exact.
        let frame_count = file_len / frame_size as u64;
        if frame_count == 0 {
            return Err(VideoError::NoFrames {
                path: path.to_path_buf(),
                file_len,
                frame_size,
            });
        }
        Ok(FileSource {
            path: path.to_path_buf(),
            file,
            format,
            width,
            height,
            frame_size,
            frame_count,
            layout: Layout::Raw,
        })
    }

    /// Opens a Y4M file and indexes its frames (reading only their headers).
    pub fn open_y4m(path: impl AsRef<Path>) -> Result<Self, VideoError> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(io_error(path))?;
        let file_len = file.metadata().map_err(io_error(path))?.len();
        let limits = y4m::Limits {
            bytes: MAX_Y4M_FRAME_BYTES,
        };
        // The decoder reads the stream header byte by byte, so the file is
        // left positioned at the first FRAME header.
        let (w, h, colorspace) = match y4m::Decoder::new_with_limits(&mut file, limits) {
            Ok(dec) => (dec.get_width(), dec.get_height(), dec.get_colorspace()),
            Err(e) => return Err(y4m_error(path, e)),
        };
        let header_end = file.stream_position().map_err(io_error(path))?;
        let (format, chroma) = match colorspace {
            y4m::Colorspace::C420
            | y4m::Colorspace::C420jpeg
            | y4m::Colorspace::C420paldv
            | y4m::Colorspace::C420mpeg2 => (PixelFormat::Nv12, Chroma::C420),
            y4m::Colorspace::C422 => (PixelFormat::Yuyv, Chroma::C422),
            other => {
                return Err(VideoError::UnsupportedColorspace {
                    path: path.to_path_buf(),
                    colorspace: format!("{other:?}"),
                })
            }
        };
        let width = u32::try_from(w).unwrap_or(u32::MAX);
        let height = u32::try_from(h).unwrap_or(u32::MAX);
        // NV12 and YUYV frames hold exactly as many bytes as the planar
        // 4:2:0 and 4:2:2 frames they are converted from.
        let frame_size = frame_size(format, width, height)?;
        let offsets = index_y4m(&mut file, path, header_end, file_len, frame_size)?;
        Ok(FileSource {
            path: path.to_path_buf(),
            file,
            format,
            width,
            height,
            frame_size,
            frame_count: offsets.len() as u64,
            layout: Layout::Y4m {
                chroma,
                offsets,
                scratch: vec![0; frame_size],
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Complete frames in the file; frame N plays file frame `N % frame_count`.
    pub fn frame_count(&self) -> u64 {
        self.frame_count
    }
}

fn read_at(file: &mut File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<(), VideoError> {
    file.seek(SeekFrom::Start(offset)).map_err(io_error(path))?;
    file.read_exact(buf).map_err(io_error(path))
}

fn y4m_error(path: &Path, e: y4m::Error) -> VideoError {
    let reason = match e {
        y4m::Error::IoError(source) => {
            return VideoError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
        y4m::Error::UnknownColorspace => {
            return VideoError::UnsupportedColorspace {
                path: path.to_path_buf(),
                colorspace: "(unknown C tag)".into(),
            }
        }
        y4m::Error::EOF => "the file ends inside the stream header".into(),
        y4m::Error::ParseError(p) => format!("bad stream header ({p})"),
        y4m::Error::OutOfMemory => "frames larger than the card's largest".into(),
        y4m::Error::BadInput => "bad stream header".into(),
    };
    VideoError::Y4m {
        path: path.to_path_buf(),
        reason,
    }
}

/// Byte offsets of the data of every complete frame, reading only the FRAME
/// header lines.
fn index_y4m(
    file: &mut File,
    path: &Path,
    header_end: u64,
    file_len: u64,
    data_len: usize,
) -> Result<Vec<u64>, VideoError> {
    let mut offsets = Vec::new();
    let mut pos = header_end;
    let mut buf = [0u8; MAX_FRAME_HEADER];
    while pos < file_len && offsets.len() < MAX_Y4M_FRAMES {
        let avail = usize::try_from(file_len - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        file.seek(SeekFrom::Start(pos)).map_err(io_error(path))?;
        file.read_exact(&mut buf[..avail]).map_err(io_error(path))?;
        let bad = |reason: &str| VideoError::BadFrame {
            path: path.to_path_buf(),
            index: offsets.len() as u64,
            offset: pos,
            reason: reason.into(),
        };
        let Some(nl) = buf[..avail].iter().position(|&b| b == b'\n') else {
            if avail < buf.len() {
                break; // the file ends inside the last frame's header
            }
            return Err(bad("FRAME header longer than 1024 bytes"));
        };
        let line = &buf[..nl];
        if line != b"FRAME" && !line.starts_with(b"FRAME ") {
            return Err(bad("expected a FRAME header"));
        }
        let data = pos + nl as u64 + 1;
        let end = data.saturating_add(data_len as u64);
        if end > file_len {
            break; // the file ends inside the last frame's data
        }
        offsets.push(data);
        pos = end;
    }
    if offsets.is_empty() {
        return Err(VideoError::NoFrames {
            path: path.to_path_buf(),
            file_len,
            frame_size: data_len,
        });
    }
    Ok(offsets)
}

/// Planar 4:2:0 (Y, U, V) to NV12 (Y, interleaved UV). `src` and `out` are
/// one frame, `luma` = width * height.
fn i420_to_nv12(src: &[u8], out: &mut [u8], luma: usize) {
    let c = luma / 4;
    out[..luma].copy_from_slice(&src[..luma]);
    let (u, v) = (&src[luma..luma + c], &src[luma + c..luma + 2 * c]);
    for ((o, &u), &v) in out[luma..].chunks_exact_mut(2).zip(u).zip(v) {
        o[0] = u;
        o[1] = v;
    }
}

/// Planar 4:2:2 (Y, U, V) to YUYV. Rows pair up because the width is even.
fn i422_to_yuyv(src: &[u8], out: &mut [u8], luma: usize) {
    let c = luma / 2;
    let (y, u, v) = (
        &src[..luma],
        &src[luma..luma + c],
        &src[luma + c..luma + 2 * c],
    );
    for (((o, y), &u), &v) in out.chunks_exact_mut(4).zip(y.chunks_exact(2)).zip(u).zip(v) {
        o.copy_from_slice(&[y[0], u, y[1], v]);
    }
}

impl VideoSource for FileSource {
    fn format(&self) -> (PixelFormat, u32, u32) {
        (self.format, self.width, self.height)
    }

    fn frame_size(&self) -> usize {
        self.frame_size
    }

    fn render(&mut self, frame_number: u64, out: &mut [u8]) -> Result<Stamp, VideoError> {
        check_buffer(self.frame_size, out)?;
        let k = frame_number % self.frame_count;
        let luma = self.width as usize * self.height as usize;
        match &mut self.layout {
            Layout::Raw => {
                // k < frame_count <= file length / frame_size: no overflow.
                let offset = k * self.frame_size as u64;
                read_at(&mut self.file, &self.path, offset, out)?;
            }
            Layout::Y4m {
                chroma,
                offsets,
                scratch,
            } => {
                // k < frame_count == offsets.len().
                let offset = offsets[k as usize];
                read_at(&mut self.file, &self.path, offset, scratch)?;
                match chroma {
                    Chroma::C420 => i420_to_nv12(scratch, out, luma),
                    Chroma::C422 => i422_to_yuyv(scratch, out, luma),
                }
            }
        }
        Ok(frame::stamp(
            out,
            frame_number,
            self.format,
            self.width,
            self.height,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use xxcapture_abi::frame::{verify, FrameError, STAMP_SIZE};

    const W: usize = 320;
    const H: usize = 240;

    /// Planar 4:2:0 frame k: Y a gradient offset by k, U and V constants.
    fn i420(k: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..W * H)
            .map(|i| (i % 251) as u8 ^ k.wrapping_mul(40))
            .collect();
        f.extend(std::iter::repeat_n(100 + k, W * H / 4));
        f.extend(std::iter::repeat_n(200 - k, W * H / 4));
        f
    }

    fn i422(k: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..W * H).map(|i| (i % 241) as u8 ^ k).collect();
        f.extend((0..W * H / 2).map(|i| (i % 7) as u8 + 10 * k));
        f.extend((0..W * H / 2).map(|i| (i % 5) as u8 + 50 + k));
        f
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        let mut f = File::create(&path).expect("create");
        f.write_all(bytes).expect("write");
        path
    }

    fn y4m(header: &str, frames: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = header.as_bytes().to_vec();
        for (fh, data) in frames {
            out.extend_from_slice(fh.as_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn render(src: &mut FileSource, n: u64) -> Vec<u8> {
        let mut out = vec![0u8; src.frame_size()];
        let s = src.render(n, &mut out).expect("render");
        let (f, w, h) = src.format();
        assert_eq!(verify(&out, f, w, h), Ok(s));
        assert_eq!(s.frame_number, n);
        out
    }

    #[test]
    fn y4m_420_plays_as_nv12_and_loops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let frames = [i420(0), i420(1), i420(2)];
        let bytes = y4m(
            "YUV4MPEG2 W320 H240 F30:1 Ip A1:1 C420jpeg XYSCSS=420JPEG\n",
            &[
                ("FRAME\n", frames[0].clone()),
                ("FRAME Ixyz XFOO=1\n", frames[1].clone()),
                ("FRAME\n", frames[2].clone()),
            ],
        );
        let path = write(&dir, "clip.y4m", &bytes);
        let mut src = FileSource::open(&path, FileKind::Y4m).expect("open");
        assert_eq!(src.format(), (PixelFormat::Nv12, 320, 240));
        assert_eq!(src.frame_count(), 3);
        assert_eq!(src.path(), path.as_path());
        for n in [0u64, 1, 2, 3, 4, 5, 7, 3_000_000_001] {
            let out = render(&mut src, n);
            let k = (n % 3) as usize;
            let src_frame = &frames[k];
            assert_eq!(
                out[STAMP_SIZE..W * H],
                src_frame[STAMP_SIZE..W * H],
                "frame {n}"
            );
            for (i, uv) in out[W * H..].chunks_exact(2).enumerate() {
                assert_eq!(uv, [100 + k as u8, 200 - k as u8], "frame {n} pair {i}");
            }
        }
        // Out of order and repeated: still frame N % 3.
        assert_eq!(
            render(&mut src, 2)[STAMP_SIZE..],
            render(&mut src, 5)[STAMP_SIZE..]
        );
    }

    #[test]
    fn y4m_422_plays_as_yuyv() {
        let dir = tempfile::tempdir().expect("tempdir");
        let frames = [i422(0), i422(1)];
        let bytes = y4m(
            "YUV4MPEG2 W320 H240 F25:1 C422\n",
            &[
                ("FRAME\n", frames[0].clone()),
                ("FRAME\n", frames[1].clone()),
            ],
        );
        let path = write(&dir, "clip.y4m", &bytes);
        let mut src = FileSource::open_y4m(&path).expect("open");
        assert_eq!(src.format(), (PixelFormat::Yuyv, 320, 240));
        for n in 0..4u64 {
            let out = render(&mut src, n);
            let f = &frames[(n % 2) as usize];
            let (y, u, v) = (&f[..W * H], &f[W * H..W * H * 3 / 2], &f[W * H * 3 / 2..]);
            // Skip the pixels under the stamp (32 bytes = 16 pixels).
            for p in 8..W * H / 2 {
                let o = &out[p * 4..p * 4 + 4];
                assert_eq!(
                    o,
                    [y[2 * p], u[p], y[2 * p + 1], v[p]],
                    "frame {n} pair {p}"
                );
            }
        }
    }

    #[test]
    fn y4m_without_colourspace_is_420() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            &dir,
            "a.y4m",
            &y4m("YUV4MPEG2 W320 H240\n", &[("FRAME\n", i420(4))]),
        );
        let mut src = FileSource::open_y4m(&path).expect("open");
        assert_eq!(src.format(), (PixelFormat::Nv12, 320, 240));
        render(&mut src, 9);
    }

    #[test]
    fn incomplete_last_y4m_frame_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = y4m(
            "YUV4MPEG2 W320 H240 C420\n",
            &[("FRAME\n", i420(0)), ("FRAME\n", i420(1))],
        );
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend_from_slice(&i420(2)[..1000]);
        let path = write(&dir, "a.y4m", &bytes);
        assert_eq!(FileSource::open_y4m(&path).expect("open").frame_count(), 2);
        bytes.truncate(bytes.len() - 1003); // ends inside "FRAME"
        let path = write(&dir, "b.y4m", &bytes);
        assert_eq!(FileSource::open_y4m(&path).expect("open").frame_count(), 2);
    }

    #[test]
    fn bad_y4m_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = |header: &str| y4m(header, &[("FRAME\n", i420(0))]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not-y4m", b"RIFF....WAVEfmt \n".to_vec()),
            ("bad-int", one("YUV4MPEG2 W320 Habc C420\n")),
            ("no-size", one("YUV4MPEG2 C420\n")),
            ("empty", Vec::new()),
            ("no-newline", b"YUV4MPEG2 W320 H240".to_vec()),
            ("huge", one("YUV4MPEG2 W38400 H21600 C420\n")),
        ];
        for (name, bytes) in cases {
            let path = write(&dir, name, &bytes);
            let err = FileSource::open_y4m(&path).expect_err(name);
            assert!(matches!(err, VideoError::Y4m { .. }), "{name}: {err}");
        }
        for (name, header) in [
            ("c444", "YUV4MPEG2 W320 H240 C444\n"),
            ("mono", "YUV4MPEG2 W320 H240 Cmono\n"),
            ("p10", "YUV4MPEG2 W320 H240 C420p10\n"),
            ("c411", "YUV4MPEG2 W320 H240 C411\n"),
        ] {
            let path = write(&dir, name, &one(header));
            let err = FileSource::open_y4m(&path).expect_err(name);
            assert!(
                matches!(err, VideoError::UnsupportedColorspace { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains("colourspace"), "{err}");
        }
        // Sizes the card does not take.
        for header in ["YUV4MPEG2 W160 H120 C420\n", "YUV4MPEG2 W322 H241 C420\n"] {
            let path = write(&dir, "small", header.as_bytes());
            let err = FileSource::open_y4m(&path).expect_err(header);
            assert!(matches!(err, VideoError::BadSize { .. }), "{header}: {err}");
        }
        // A header and no frame.
        let path = write(&dir, "noframe", b"YUV4MPEG2 W320 H240 C420\n");
        assert!(matches!(
            FileSource::open_y4m(&path),
            Err(VideoError::NoFrames { .. })
        ));
        // A broken second FRAME header.
        let bytes = y4m(
            "YUV4MPEG2 W320 H240 C420\n",
            &[("FRAME\n", i420(0)), ("FRAMEX\n", i420(1))],
        );
        let path = write(&dir, "badframe", &bytes);
        let err = FileSource::open_y4m(&path).expect_err("bad frame");
        assert!(
            matches!(err, VideoError::BadFrame { index: 1, .. }),
            "{err}"
        );
        // A FRAME header without end.
        let mut bytes = y4m("YUV4MPEG2 W320 H240 C420\n", &[("FRAME\n", i420(0))]);
        bytes.extend(std::iter::repeat_n(b'F', 200_000));
        let path = write(&dir, "longframe", &bytes);
        let err = FileSource::open_y4m(&path).expect_err("long frame header");
        assert!(
            matches!(err, VideoError::BadFrame { index: 1, .. }),
            "{err}"
        );
        // No such file.
        let err = FileSource::open_y4m(dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, VideoError::Io { .. }), "{err}");
    }

    #[test]
    fn raw_files_loop_per_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        for fmt in PixelFormat::ALL {
            let fs = fmt.frame_size(320, 240).expect("size");
            let frames: Vec<Vec<u8>> = (0..3u8)
                .map(|k| {
                    (0..fs)
                        .map(|i| (i % 253) as u8 ^ k.wrapping_mul(77))
                        .collect()
                })
                .collect();
            let mut bytes = frames.concat();
            bytes.extend_from_slice(&frames[0][..fs / 2]); // ignored tail
            let path = write(&dir, fmt.name(), &bytes);
            let kind = FileKind::Raw {
                format: fmt,
                width: 320,
                height: 240,
            };
            let mut src = FileSource::open(&path, kind).expect("open");
            assert_eq!(src.frame_count(), 3);
            assert_eq!(src.format(), (fmt, 320, 240));
            for n in [0u64, 1, 2, 3, 4, 8, 1 << 40] {
                let out = render(&mut src, n);
                assert_eq!(out[STAMP_SIZE..], frames[(n % 3) as usize][STAMP_SIZE..]);
            }
        }
    }

    #[test]
    fn raw_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(&dir, "short", &[0u8; 1000]);
        let err = FileSource::open_raw(&path, PixelFormat::Yuyv, 320, 240).expect_err("short");
        assert!(matches!(
            err,
            VideoError::NoFrames {
                file_len: 1000,
                frame_size: 153_600,
                ..
            }
        ));
        assert!(matches!(
            FileSource::open_raw(&path, PixelFormat::Yuyv, 320, 24),
            Err(VideoError::BadSize { .. })
        ));
        assert!(matches!(
            FileSource::open_raw(dir.path().join("missing"), PixelFormat::Yuyv, 320, 240),
            Err(VideoError::Io { .. })
        ));
        let path = write(&dir, "ok", &vec![0u8; 153_600]);
        let mut src = FileSource::open_raw(&path, PixelFormat::Yuyv, 320, 240).expect("open");
        let mut small = vec![0u8; 10];
        assert!(matches!(
            src.render(0, &mut small),
            Err(VideoError::BufferSize { .. })
        ));
        // The file shrinks under a running source: an I/O error, no panic.
        File::create(&path).expect("truncate");
        let mut out = vec![0u8; 153_600];
        assert!(matches!(
            src.render(0, &mut out),
            Err(VideoError::Io { .. })
        ));
    }

    #[test]
    fn stamp_errors_convert() {
        let e: VideoError = FrameError::BadSize {
            width: 1,
            height: 1,
        }
        .into();
        assert!(e.to_string().contains("1x1"));
    }
}
