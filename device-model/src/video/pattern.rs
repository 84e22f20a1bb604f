//! The built-in test pattern.
//!
//! Picture, top to bottom (every edge at an even pixel, so that the
//! subsampled chroma of YUYV and NV12 is exact):
//!
//! - rows 0..2: colour bars (the stamp covers the first 32 bytes of row 0);
//! - a black band holding the low 32 bits of the frame number, most
//!   significant first: one block per bit, `width / 32` pixels wide, white
//!   for 1 and dark grey for 0, with a 2-pixel black gap on the left of each;
//! - SMPTE-like 75% colour bars (white, yellow, cyan, green, magenta, red,
//!   blue) down to 2/3 of the height, with a 100% white box that moves right
//!   by `max(2, width / 240)` pixels per frame (rounded down to even) until
//!   it reaches the right edge, then starts again at the left;
//! - the reverse-bar castellations (blue, black, magenta, black, cyan,
//!   black, white) down to 3/4 of the height;
//! - -I, 100% white, +Q, black, the PLUGE (-4%, 0%, +4%) and black.
//!
//! Rendering copies precomputed rows (one per row kind and plane), the bits
//! row (rebuilt each frame from precomputed white/grey runs) and the box's
//! runs, then stamps: no per-pixel work per frame.

use xxcapture_abi::frame::{self, PixelFormat, Stamp};

use super::colour::{Colour, PlaneKind};
use super::{check_buffer, frame_size, VideoError, VideoSource};

/// Bits of the frame number drawn in the band.
const BITS: usize = 32;
/// First row of the band (rows 0..2 are bars, row 0 holds the stamp).
const BAND_Y: usize = 2;
/// Black margin around the bits, in pixels.
const MARGIN: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowKind {
    Bars = 0,
    Castellations = 1,
    Bottom = 2,
    Black = 3,
    Bits = 4,
}

/// Precomputed rows of the solid colours used for patches.
#[derive(Clone, Copy, Debug)]
enum Solid {
    White = 0,
    Grey = 1,
}

#[derive(Clone, Debug)]
struct Plane {
    kind: PlaneKind,
    /// Byte offset of the plane in the frame.
    offset: usize,
    /// Bytes per row.
    stride: usize,
    /// Encoded rows, indexed by `RowKind` (Bits excluded).
    templates: [Vec<u8>; 4],
    /// Encoded full-width rows of the solid colours, indexed by `Solid`.
    solids: [Vec<u8>; 2],
    /// This frame's bits row (rebuilt per frame).
    bits: Vec<u8>,
}

/// A run of luma rows `y0..y1` of one kind (both even).
#[derive(Clone, Copy, Debug)]
struct Segment {
    y0: usize,
    y1: usize,
    kind: RowKind,
}

/// The built-in test pattern (see the module documentation).
#[derive(Clone, Debug)]
pub struct TestPattern {
    format: PixelFormat,
    width: u32,
    height: u32,
    frame_size: usize,
    planes: Vec<Plane>,
    segments: Vec<Segment>,
    block_w: usize,
    box_size: usize,
    box_y: usize,
    step: usize,
}

fn even(v: usize) -> usize {
    v & !1
}

fn bar_colours() -> [Colour; 7] {
    let l = 0.75;
    [
        Colour::rgb(l, l, l),
        Colour::rgb(l, l, 0.0),
        Colour::rgb(0.0, l, l),
        Colour::rgb(0.0, l, 0.0),
        Colour::rgb(l, 0.0, l),
        Colour::rgb(l, 0.0, 0.0),
        Colour::rgb(0.0, 0.0, l),
    ]
}

fn white() -> Colour {
    Colour::grey(1.0)
}

fn black() -> Colour {
    Colour::grey(0.0)
}

/// Pixels of one row of `kind`, `w` wide.
fn row_pixels(kind: RowKind, w: usize) -> Vec<Colour> {
    let l = 0.75;
    let black = black();
    // Segments as (end in 84ths of the width, colour): 84 = 7 bars * 12.
    let segments: Vec<(usize, Colour)> = match kind {
        RowKind::Bars => bar_colours()
            .into_iter()
            .enumerate()
            .map(|(i, c)| ((i + 1) * 12, c))
            .collect(),
        RowKind::Castellations => [
            Colour::rgb(0.0, 0.0, l),
            black,
            Colour::rgb(l, 0.0, l),
            black,
            Colour::rgb(0.0, l, l),
            black,
            Colour::rgb(l, l, l),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, c)| ((i + 1) * 12, c))
        .collect(),
        RowKind::Bottom => vec![
            (15, Colour::rgb(0.0, 0.244, 0.416)), // -I
            (30, white()),
            (45, Colour::rgb(0.255, 0.0, 0.420)), // +Q
            (60, black),
            (64, Colour::grey(-0.04)),
            (68, black),
            (72, Colour::grey(0.04)),
            (84, black),
        ],
        RowKind::Black | RowKind::Bits => vec![(84, black)],
    };
    let mut out = Vec::with_capacity(w);
    for (end, colour) in segments {
        let x1 = if end == 84 { w } else { even(w * end / 84) };
        out.resize(x1.max(out.len()), colour);
    }
    out
}

impl TestPattern {
    pub fn new(format: PixelFormat, width: u32, height: u32) -> Result<Self, VideoError> {
        let frame_size = frame_size(format, width, height)?;
        // Valid sizes are at most 3840x2160: these conversions cannot fail
        // on any target with pointers of 32 bits or more.
        let (w, h) = (width as usize, height as usize);

        let kinds: &[PlaneKind] = match format {
            PixelFormat::Yuyv => &[PlaneKind::Yuyv],
            PixelFormat::Rgb24 => &[PlaneKind::Rgb],
            PixelFormat::Nv12 => &[PlaneKind::Luma, PlaneKind::ChromaUv],
        };
        let encode = |kind: PlaneKind, pixels: &[Colour]| {
            let mut row = vec![0u8; w * kind.bytes_per_pixel()];
            kind.encode_row(pixels, &mut row);
            row
        };
        let mut planes = Vec::with_capacity(kinds.len());
        let mut offset = 0;
        for &kind in kinds {
            let stride = w * kind.bytes_per_pixel();
            let templates = [
                RowKind::Bars,
                RowKind::Castellations,
                RowKind::Bottom,
                RowKind::Black,
            ]
            .map(|k| encode(kind, &row_pixels(k, w)));
            let solids = [white(), Colour::grey(0.25)].map(|c| encode(kind, &vec![c; w]));
            planes.push(Plane {
                kind,
                offset,
                stride,
                bits: templates[RowKind::Black as usize].clone(),
                templates,
                solids,
            });
            offset += stride * h / kind.vertical_subsampling();
        }
        debug_assert_eq!(offset, frame_size);

        let bits_h = even(h / 30).max(4);
        let bits_y0 = BAND_Y + MARGIN;
        let bits_y1 = bits_y0 + bits_h;
        let band_end = bits_y1 + MARGIN;
        let castellations = even(h * 2 / 3);
        let bottom = even(h * 3 / 4);
        let segments = [
            (0, BAND_Y, RowKind::Bars),
            (BAND_Y, bits_y0, RowKind::Black),
            (bits_y0, bits_y1, RowKind::Bits),
            (bits_y1, band_end, RowKind::Black),
            (band_end, castellations, RowKind::Bars),
            (castellations, bottom, RowKind::Castellations),
            (bottom, h, RowKind::Bottom),
        ]
        .into_iter()
        .map(|(y0, y1, kind)| Segment { y0, y1, kind })
        .collect();

        let box_size = even((h / 6).min(w / 4));
        let box_y = even((h / 3).saturating_sub(box_size / 2)).max(band_end);
        Ok(TestPattern {
            format,
            width,
            height,
            frame_size,
            planes,
            segments,
            block_w: even(w / BITS),
            box_size,
            box_y,
            step: even(w / 240).max(2),
        })
    }

    /// The moving box in frame `frame_number`: `(x, y, width, height)` in
    /// pixels. It moves right by a fixed even step per frame and wraps to
    /// x = 0 after its last position that fits.
    pub fn box_rect(&self, frame_number: u64) -> (u32, u32, u32, u32) {
        let (x, y, s) = self.box_at(frame_number);
        // All below the frame width/height, which fit u32.
        (x as u32, y as u32, s as u32, s as u32)
    }

    fn box_at(&self, frame_number: u64) -> (usize, usize, usize) {
        // Positions 0, step, 2*step, ... up to the right edge, then back to 0.
        let positions = (self.width as usize - self.box_size) / self.step + 1;
        let x = (frame_number % positions as u64) as usize * self.step;
        (x, self.box_y, self.box_size)
    }

    fn build_bits_row(&mut self, frame_number: u64) {
        let bw = self.block_w;
        for plane in &mut self.planes {
            let bpp = plane.kind.bytes_per_pixel();
            plane
                .bits
                .copy_from_slice(&plane.templates[RowKind::Black as usize]);
            for j in 0..BITS {
                let bit = (frame_number >> (BITS - 1 - j)) & 1;
                let solid = if bit == 1 { Solid::White } else { Solid::Grey };
                let (a, b) = ((j * bw + MARGIN) * bpp, (j + 1) * bw * bpp);
                plane.bits[a..b].copy_from_slice(&plane.solids[solid as usize][a..b]);
            }
        }
    }
}

impl VideoSource for TestPattern {
    fn format(&self) -> (PixelFormat, u32, u32) {
        (self.format, self.width, self.height)
    }

    fn frame_size(&self) -> usize {
        self.frame_size
    }

    fn render(&mut self, frame_number: u64, out: &mut [u8]) -> Result<Stamp, VideoError> {
        check_buffer(self.frame_size, out)?;
        self.build_bits_row(frame_number);
        let (bx, by, bs) = self.box_at(frame_number);
        for plane in &self.planes {
            let vs = plane.kind.vertical_subsampling();
            let bpp = plane.kind.bytes_per_pixel();
            let rows = self.height as usize / vs;
            let data = &mut out[plane.offset..plane.offset + plane.stride * rows];
            for seg in &self.segments {
                let src = match seg.kind {
                    RowKind::Bits => &plane.bits,
                    k => &plane.templates[k as usize],
                };
                let region = &mut data[seg.y0 / vs * plane.stride..seg.y1 / vs * plane.stride];
                for row in region.chunks_exact_mut(plane.stride) {
                    row.copy_from_slice(src);
                }
            }
            let (a, b) = (bx * bpp, (bx + bs) * bpp);
            let run = &plane.solids[Solid::White as usize][a..b];
            for r in by / vs..(by + bs) / vs {
                let row = r * plane.stride;
                data[row + a..row + b].copy_from_slice(run);
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
    use proptest::prelude::*;
    use xxcapture_abi::frame::{verify, STAMP_SIZE};

    const SIZES: [(u32, u32); 3] = [(320, 240), (1920, 1080), (3840, 2160)];

    fn render(p: &mut TestPattern, n: u64) -> Vec<u8> {
        let mut out = vec![0u8; p.frame_size()];
        p.render(n, &mut out).expect("render");
        out
    }

    /// (Y, Cb, Cr) or (R, G, B) of pixel (x, y), x even for subsampled formats.
    fn pixel(fmt: PixelFormat, w: usize, h: usize, frame: &[u8], x: usize, y: usize) -> [u8; 3] {
        match fmt {
            PixelFormat::Yuyv => {
                let p = (y * w + even(x)) * 2;
                [frame[p + (x & 1) * 2], frame[p + 1], frame[p + 3]]
            }
            PixelFormat::Nv12 => {
                let uv = w * h + (y / 2) * w + even(x);
                [frame[y * w + x], frame[uv], frame[uv + 1]]
            }
            PixelFormat::Rgb24 => {
                let p = (y * w + x) * 3;
                [frame[p], frame[p + 1], frame[p + 2]]
            }
        }
    }

    fn expect(fmt: PixelFormat, c: Colour) -> [u8; 3] {
        match fmt {
            PixelFormat::Rgb24 => c.rgb,
            _ => [c.y, c.cb, c.cr],
        }
    }

    #[test]
    fn every_format_and_size_renders_and_verifies() {
        for fmt in PixelFormat::ALL {
            for (w, h) in SIZES {
                let mut p = TestPattern::new(fmt, w, h).expect("pattern");
                assert_eq!(p.format(), (fmt, w, h));
                assert_eq!(Some(p.frame_size()), fmt.frame_size(w, h));
                for n in [0, 1, 12345, u64::MAX] {
                    let mut out = vec![0u8; p.frame_size()];
                    let s = p.render(n, &mut out).expect("render");
                    assert_eq!(verify(&out, fmt, w, h), Ok(s), "{fmt} {w}x{h} frame {n}");
                    assert_eq!(s.frame_number, n);
                }
            }
        }
    }

    #[test]
    fn frames_are_a_pure_function_of_the_number() {
        for fmt in PixelFormat::ALL {
            let mut a = TestPattern::new(fmt, 640, 480).expect("pattern");
            let mut b = TestPattern::new(fmt, 640, 480).expect("pattern");
            let f7 = render(&mut a, 7);
            let _ = render(&mut a, 8);
            assert_eq!(render(&mut b, 7), f7, "same number, same bytes");
            assert_eq!(render(&mut a, 7), f7, "history does not matter");
            let f8 = render(&mut b, 8);
            assert_ne!(
                f7[STAMP_SIZE..],
                f8[STAMP_SIZE..],
                "the picture itself changes"
            );
        }
    }

    #[test]
    fn the_box_moves_and_wraps() {
        for fmt in PixelFormat::ALL {
            let (w, h) = (1920usize, 1080usize);
            let mut p = TestPattern::new(fmt, w as u32, h as u32).expect("pattern");
            let (x0, y0, s, _) = p.box_rect(0);
            let (x1, y1, ..) = p.box_rect(1);
            assert_eq!((x0, y1), (0, y0));
            assert_eq!(x1, 8, "1920 wide: 8 pixels per frame");
            let positions = u64::from((1920 - s) / 8 + 1);
            assert_eq!(p.box_rect(positions - 1).0 + s, 1920 - (1920 - s) % 8);
            assert_eq!(p.box_rect(positions).0, 0, "wraps");
            for n in [0u64, 1, 2, 100, 1_000_003] {
                let (x, y, s, _) = p.box_rect(n);
                assert!(x.is_multiple_of(2) && x + s <= 1920);
                let f = render(&mut p, n);
                let (x, y, s) = (x as usize, y as usize, s as usize);
                let white = expect(fmt, white());
                for (px, py) in [(x, y), (x + s - 2, y + s - 1), (x + s / 2, y + s / 2)] {
                    assert_eq!(pixel(fmt, w, h, &f, px, py), white, "frame {n} ({px},{py})");
                }
                // Just outside the box: bars, not white.
                let beside = if x >= 2 { x - 2 } else { x + s };
                assert_ne!(pixel(fmt, w, h, &f, beside, y + 1), white);
            }
            // Frames 0 and 1 differ only in the stamp, the bits band and the
            // box rows.
            let (f0, f1) = (render(&mut p, 0), render(&mut p, 1));
            let row_bytes = match fmt {
                PixelFormat::Yuyv => w * 2,
                PixelFormat::Rgb24 => w * 3,
                PixelFormat::Nv12 => w,
            };
            for (i, (a, b)) in f0.iter().zip(&f1).enumerate() {
                if a != b && i >= STAMP_SIZE {
                    let row = if i < row_bytes * h {
                        i / row_bytes
                    } else {
                        (i - row_bytes * h) / w * 2
                    };
                    let in_band = row < BAND_Y + MARGIN * 2 + 36;
                    let in_box = (y0 as usize..(y0 + s) as usize).contains(&row);
                    assert!(in_band || in_box, "{fmt}: byte {i} (row {row}) changed");
                }
            }
        }
    }

    #[test]
    fn the_frame_number_is_drawn_as_bits() {
        for fmt in PixelFormat::ALL {
            let (w, h) = (320usize, 240usize);
            let mut p = TestPattern::new(fmt, w as u32, h as u32).expect("pattern");
            for n in [0u64, 1, 0xdead_beef, 0x1_0000_0005] {
                let f = render(&mut p, n);
                let bw = p.block_w;
                let mut decoded = 0u64;
                for j in 0..BITS {
                    let c = pixel(fmt, w, h, &f, j * bw + bw / 2, BAND_Y + MARGIN + 2);
                    // Y, or R for RGB24: white is 235/255, the grey 71/64.
                    decoded = decoded << 1 | u64::from(c[0] > 150);
                }
                assert_eq!(decoded, n & 0xffff_ffff, "{fmt} frame {n:#x}");
            }
        }
    }

    #[test]
    fn bars_have_bt601_colours_and_exact_chroma() {
        for fmt in PixelFormat::ALL {
            for (w, h) in SIZES {
                let (w, h) = (w as usize, h as usize);
                let mut p = TestPattern::new(fmt, w as u32, h as u32).expect("pattern");
                let f = render(&mut p, 0);
                let y = even(h * 2 / 3) - 2; // last bar rows, below the box
                for (i, c) in bar_colours().into_iter().enumerate() {
                    let x = even(w * (2 * i + 1) / 14);
                    assert_eq!(
                        pixel(fmt, w, h, &f, x, y),
                        expect(fmt, c),
                        "{fmt} {w}x{h} bar {i}"
                    );
                    assert_eq!(pixel(fmt, w, h, &f, x + 1, y + 1), expect(fmt, c));
                }
                // PLUGE: below-black, black, above-black.
                let y = h - 2;
                let lv = |x: usize| pixel(fmt, w, h, &f, even(x), y)[0];
                let (sub, blk, sup) = (lv(w * 62 / 84), lv(w * 66 / 84), lv(w * 70 / 84));
                if fmt == PixelFormat::Rgb24 {
                    assert_eq!((sub, blk, sup), (0, 0, 10));
                } else {
                    assert_eq!((sub, blk, sup), (7, 16, 25));
                }
            }
        }
    }

    #[test]
    fn bad_sizes_and_buffers_are_errors() {
        for (w, h) in [
            (319, 240),
            (322, 240),
            (320, 239),
            (0, 0),
            (3842, 2160),
            (3840, 2162),
        ] {
            if PixelFormat::valid_size(w, h) {
                continue;
            }
            assert!(matches!(
                TestPattern::new(PixelFormat::Yuyv, w, h),
                Err(VideoError::BadSize { .. })
            ));
        }
        let mut p = TestPattern::new(PixelFormat::Nv12, 320, 240).expect("pattern");
        for len in [0, 1, p.frame_size() - 1, p.frame_size() + 1] {
            let mut out = vec![0u8; len];
            assert!(matches!(
                p.render(0, &mut out),
                Err(VideoError::BufferSize {
                    expected: 115_200,
                    ..
                })
            ));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn any_valid_size_renders_and_verifies(
            fmt in prop::sample::select(PixelFormat::ALL.to_vec()),
            hw in 160u32..=400,
            hh in 120u32..=300,
            n in any::<u64>(),
        ) {
            let (w, h) = (hw * 2, hh * 2);
            let mut p = TestPattern::new(fmt, w, h).expect("pattern");
            let mut out = vec![0u8; p.frame_size()];
            let s = p.render(n, &mut out).expect("render");
            prop_assert_eq!(verify(&out, fmt, w, h), Ok(s));
            let (x, y, bs, _) = p.box_rect(n);
            prop_assert!(x + bs <= w && y + bs <= even(h as usize * 2 / 3) as u32);
        }
    }
}
