//! Colours and their encodings: BT.601 limited-range Y'CbCr for YUYV and
//! NV12, full-range R'G'B' for RGB24.

/// One colour, encoded for every pixel format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Colour {
    pub y: u8,
    pub cb: u8,
    pub cr: u8,
    pub rgb: [u8; 3],
}

fn to_u8(v: f64, lo: f64, hi: f64) -> u8 {
    // Clamped to a u8 range first, so the cast cannot truncate.
    v.round().clamp(lo, hi) as u8
}

impl Colour {
    /// From gamma-corrected R'G'B' in 0.0..=1.0 (values slightly outside
    /// give the PLUGE's below-black and above-black levels in Y'CbCr).
    /// Y'CbCr codes are kept within 1..=254: 0 and 255 are sync codes in
    /// BT.656.
    pub fn rgb(r: f64, g: f64, b: f64) -> Colour {
        let luma = 0.299 * r + 0.587 * g + 0.114 * b;
        let cb = (b - luma) / 1.772;
        let cr = (r - luma) / 1.402;
        Colour {
            y: to_u8(16.0 + 219.0 * luma, 1.0, 254.0),
            cb: to_u8(128.0 + 224.0 * cb, 1.0, 254.0),
            cr: to_u8(128.0 + 224.0 * cr, 1.0, 254.0),
            rgb: [
                to_u8(255.0 * r, 0.0, 255.0),
                to_u8(255.0 * g, 0.0, 255.0),
                to_u8(255.0 * b, 0.0, 255.0),
            ],
        }
    }

    pub fn grey(level: f64) -> Colour {
        Colour::rgb(level, level, level)
    }
}

/// How one plane's rows are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlaneKind {
    /// YUYV: `Y0 U Y1 V` per pixel pair.
    Yuyv,
    /// RGB24: `R G B` per pixel.
    Rgb,
    /// NV12 Y plane: one byte per pixel.
    Luma,
    /// NV12 UV plane: `U V` per pixel pair, one row per two luma rows.
    ChromaUv,
}

impl PlaneKind {
    /// Bytes per pixel of a row, horizontally (a pixel pair is the unit for
    /// the subsampled kinds, so offsets must be at even pixels there).
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PlaneKind::Yuyv => 2,
            PlaneKind::Rgb => 3,
            PlaneKind::Luma | PlaneKind::ChromaUv => 1,
        }
    }

    /// Luma rows per row of this plane.
    pub fn vertical_subsampling(self) -> usize {
        match self {
            PlaneKind::ChromaUv => 2,
            _ => 1,
        }
    }

    /// Encodes one row of pixels (an even number of them) into `out`, which
    /// is `pixels.len() * bytes_per_pixel()` bytes. Chroma of a pair is the
    /// average of the two pixels'.
    pub fn encode_row(self, pixels: &[Colour], out: &mut [u8]) {
        fn avg(a: u8, b: u8) -> u8 {
            ((u16::from(a) + u16::from(b)).div_ceil(2)) as u8
        }
        match self {
            PlaneKind::Yuyv => {
                for (p, o) in pixels.chunks_exact(2).zip(out.chunks_exact_mut(4)) {
                    o.copy_from_slice(&[
                        p[0].y,
                        avg(p[0].cb, p[1].cb),
                        p[1].y,
                        avg(p[0].cr, p[1].cr),
                    ]);
                }
            }
            PlaneKind::Rgb => {
                for (p, o) in pixels.iter().zip(out.chunks_exact_mut(3)) {
                    o.copy_from_slice(&p.rgb);
                }
            }
            PlaneKind::Luma => {
                for (p, o) in pixels.iter().zip(out.iter_mut()) {
                    *o = p.y;
                }
            }
            PlaneKind::ChromaUv => {
                for (p, o) in pixels.chunks_exact(2).zip(out.chunks_exact_mut(2)) {
                    o.copy_from_slice(&[avg(p[0].cb, p[1].cb), avg(p[0].cr, p[1].cr)]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt601_limited_range_75_percent_bars() {
        // The published 8-bit values of 75% colour bars (ITU-R BT.801 /
        // EBU 75% bars in BT.601 Y'CbCr).
        let table = [
            ((0.75, 0.75, 0.75), (180, 128, 128)),
            ((0.75, 0.75, 0.0), (162, 44, 142)),
            ((0.0, 0.75, 0.75), (131, 156, 44)),
            ((0.0, 0.75, 0.0), (112, 72, 58)),
            ((0.75, 0.0, 0.75), (84, 184, 198)),
            ((0.75, 0.0, 0.0), (65, 100, 212)),
            ((0.0, 0.0, 0.75), (35, 212, 114)),
            ((1.0, 1.0, 1.0), (235, 128, 128)),
            ((0.0, 0.0, 0.0), (16, 128, 128)),
        ];
        for ((r, g, b), (y, cb, cr)) in table {
            let c = Colour::rgb(r, g, b);
            assert_eq!((c.y, c.cb, c.cr), (y, cb, cr), "{r} {g} {b}");
        }
        assert_eq!(Colour::rgb(0.75, 0.0, 0.75).rgb, [191, 0, 191]);
        assert_eq!(Colour::grey(-1.0).y, 1);
        assert_eq!(Colour::grey(2.0).y, 254);
        assert_eq!(Colour::grey(-1.0).rgb, [0, 0, 0]);
    }

    #[test]
    fn rows_encode_per_format() {
        let a = Colour::rgb(0.75, 0.75, 0.0);
        let b = Colour::rgb(0.0, 0.0, 0.75);
        let px = [a, a, b, b];
        let mut yuyv = [0u8; 8];
        PlaneKind::Yuyv.encode_row(&px, &mut yuyv);
        assert_eq!(yuyv, [162, 44, 162, 142, 35, 212, 35, 114]);
        let mut luma = [0u8; 4];
        PlaneKind::Luma.encode_row(&px, &mut luma);
        assert_eq!(luma, [162, 162, 35, 35]);
        let mut uv = [0u8; 4];
        PlaneKind::ChromaUv.encode_row(&px, &mut uv);
        assert_eq!(uv, [44, 142, 212, 114]);
        let mut rgb = [0u8; 12];
        PlaneKind::Rgb.encode_row(&px, &mut rgb);
        assert_eq!(rgb, [191, 191, 0, 191, 191, 0, 0, 0, 191, 0, 0, 191]);
    }
}
