//! Images in and out: what the upload edge checks before a byte is stored
//! (type sniffed from the bytes, dimensions from the header, a complete
//! file), and what workers do around the model (decode under limits, scale,
//! pad to a shape bucket, crop, encode).
//!
//! Nothing here decodes pixels before the header's dimensions passed the
//! caps, so a decompression bomb (a small file that claims 50,000 × 50,000
//! pixels) is refused for what it claims, not for what it would cost.

use std::io::Cursor;

use ::image::{ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// The image types accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
}

impl ImageKind {
    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Webp => "image/webp",
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
            ImageKind::Webp => "webp",
        }
    }

    fn format(self) -> ImageFormat {
        match self {
            ImageKind::Jpeg => ImageFormat::Jpeg,
            ImageKind::Png => ImageFormat::Png,
            ImageKind::Webp => ImageFormat::WebP,
        }
    }
}

/// The type of an image, from its first bytes (never from a file name).
pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageKind::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageKind::Png)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageKind::Webp)
    } else {
        None
    }
}

/// Caps on what is accepted.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Largest width or height.
    pub max_side: u32,
    /// Most pixels.
    pub max_pixels: u64,
}

impl From<&crate::config::UploadsConfig> for Caps {
    fn from(c: &crate::config::UploadsConfig) -> Self {
        Self {
            max_side: c.max_side,
            max_pixels: c.max_pixels,
        }
    }
}

/// Why an image is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No bytes at all.
    #[error("the image is empty")]
    Empty,
    /// Not JPEG, PNG or WebP (by its bytes).
    #[error("not a JPEG, PNG or WebP image (type sniffed from the bytes)")]
    UnsupportedType,
    /// The header cannot be read.
    #[error("unreadable {0} header: {1}")]
    BadHeader(&'static str, String),
    /// The header claims more pixels than allowed.
    #[error("{width}x{height} pixels exceed the limit ({max_side} per side, {max_pixels} in all)")]
    TooManyPixels {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// The side cap.
        max_side: u32,
        /// The pixel cap.
        max_pixels: u64,
    },
    /// The file ends before its format says it does.
    #[error("the {0} file is truncated")]
    Truncated(&'static str),
}

/// What the edge learned about an accepted image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its type.
    pub kind: ImageKind,
    /// Width from the header.
    pub width: u32,
    /// Height from the header.
    pub height: u32,
}

/// Checks an upload without decoding its pixels: type, header dimensions
/// against the caps, and that the file is complete.
pub fn inspect(bytes: &[u8], caps: Caps) -> Result<ImageInfo, Rejection> {
    if bytes.is_empty() {
        return Err(Rejection::Empty);
    }
    let kind = sniff(bytes).ok_or(Rejection::UnsupportedType)?;
    let name = kind.content_type();
    let (width, height) = match png_ihdr(bytes) {
        // PNG's size is the first chunk: read it straight, so a header-only
        // bomb is refused for its size rather than for its missing data.
        Some(dims) if kind == ImageKind::Png => dims,
        _ => ImageReader::with_format(Cursor::new(bytes), kind.format())
            .into_dimensions()
            .map_err(|e| Rejection::BadHeader(name, e.to_string()))?,
    };
    if width == 0 || height == 0 {
        return Err(Rejection::BadHeader(name, "zero width or height".into()));
    }
    if width > caps.max_side
        || height > caps.max_side
        || u64::from(width) * u64::from(height) > caps.max_pixels
    {
        return Err(Rejection::TooManyPixels {
            width,
            height,
            max_side: caps.max_side,
            max_pixels: caps.max_pixels,
        });
    }
    if !complete(kind, bytes) {
        return Err(Rejection::Truncated(name));
    }
    Ok(ImageInfo {
        kind,
        width,
        height,
    })
}

/// Width and height from a PNG's IHDR chunk (always the first).
fn png_ihdr(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() < 24 || &b[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Some((be(16), be(20)))
}

/// Whether the file reaches its format's end marker: JPEG's EOI (padding
/// after it tolerated), PNG's IEND chunk, WebP's RIFF length.
fn complete(kind: ImageKind, b: &[u8]) -> bool {
    match kind {
        ImageKind::Jpeg => {
            let end = b
                .iter()
                .rposition(|&x| !matches!(x, 0x00 | 0xFF | b'\r' | b'\n' | b' '))
                .map_or(0, |i| i + 1);
            end >= 4 && b[end - 2..end] == [0xFF, 0xD9]
        }
        ImageKind::Png => {
            b.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82])
        }
        ImageKind::Webp => {
            let riff = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
            b.len() >= riff.saturating_add(8)
        }
    }
}

/// Why a stored image cannot be turned into model input.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes an image under the caps (checked again: the bytes may not be
/// what the edge saw), applying its EXIF orientation.
pub fn decode(bytes: &[u8], caps: Caps) -> Result<RgbImage, DecodeError> {
    let info = inspect(bytes, caps).map_err(|e| DecodeError(e.to_string()))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), info.kind.format());
    let mut limits = ::image::Limits::default();
    limits.max_image_width = Some(caps.max_side);
    limits.max_image_height = Some(caps.max_side);
    // RGBA at 8 bits, plus the decoder's own buffers.
    limits.max_alloc = Some(caps.max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(limits);
    let bad =
        |e: ::image::ImageError| DecodeError(format!("corrupt {}: {e}", info.kind.content_type()));
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img = ::image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// An image ready for the model: scaled to fit, padded to its bucket.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Width of the picture inside the padding.
    pub width: u32,
    /// Height of the picture inside the padding.
    pub height: u32,
    /// Padded width (a multiple of the bucket).
    pub bucket_w: u32,
    /// Padded height.
    pub bucket_h: u32,
    /// `bucket_h × bucket_w × 3` RGB bytes, row-major.
    pub pixels: Vec<u8>,
}

fn round_up(x: u32, to: u32) -> u32 {
    x.div_ceil(to.max(1)) * to.max(1)
}

/// Scales `img` down to fit `max_side` (never up), then pads it to a
/// multiple of `bucket` on each side by repeating its edge pixels, so that
/// images of similar size share one batch shape.
pub fn prepare(img: RgbImage, max_side: u32, bucket: u32) -> Prepared {
    let (w0, h0) = img.dimensions();
    let longest = w0.max(h0);
    let img = if longest > max_side {
        let scale = f64::from(max_side) / f64::from(longest);
        let w = ((f64::from(w0) * scale).round() as u32).max(1);
        let h = ((f64::from(h0) * scale).round() as u32).max(1);
        ::image::imageops::resize(&img, w, h, ::image::imageops::FilterType::Triangle)
    } else {
        img
    };
    let (width, height) = img.dimensions();
    let (bucket_w, bucket_h) = (round_up(width, bucket), round_up(height, bucket));
    let src = img.into_raw();
    let pixels = if (bucket_w, bucket_h) == (width, height) {
        src
    } else {
        let (w, bw) = (width as usize * 3, bucket_w as usize * 3);
        let mut out = Vec::with_capacity(bw * bucket_h as usize);
        for y in 0..bucket_h as usize {
            let row = &src[y.min(height as usize - 1) * w..][..w];
            out.extend_from_slice(row);
            let last = &row[w - 3..];
            for _ in width..bucket_w {
                out.extend_from_slice(last);
            }
        }
        out
    };
    Prepared {
        width,
        height,
        bucket_w,
        bucket_h,
        pixels,
    }
}

/// Cuts the picture out of a padded `bucket_h × bucket_w × 3` output.
pub fn crop(padded: &[u8], bucket_w: u32, width: u32, height: u32) -> Vec<u8> {
    let (bw, w) = (bucket_w as usize * 3, width as usize * 3);
    if bw == w {
        return padded[..w * height as usize].to_vec();
    }
    let mut out = Vec::with_capacity(w * height as usize);
    for y in 0..height as usize {
        out.extend_from_slice(&padded[y * bw..][..w]);
    }
    out
}

/// Encodes RGB bytes as JPEG.
pub fn encode_jpeg(
    rgb: &[u8],
    width: u32,
    height: u32,
    quality: u8,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode(rgb, width, height, ::image::ExtendedColorType::Rgb8)
        .map_err(|e| DecodeError(format!("encoding JPEG: {e}")))?;
    Ok(out)
}

/// Encodes RGB bytes as PNG (tests and samples).
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    ::image::ImageEncoder::write_image(
        ::image::codecs::png::PngEncoder::new(&mut out),
        rgb,
        width,
        height,
        ::image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| DecodeError(format!("encoding PNG: {e}")))?;
    Ok(out)
}

/// A deterministic test picture (gradients, discs, stripes): for
/// benchmarks, demos and tests, which cannot download images.
pub fn test_pattern(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let s = seed as f32 * 0.37;
        let disc = ((fx - 0.35 - 0.1 * s.sin()).powi(2) + (fy - 0.4).powi(2)).sqrt() < 0.22;
        let disc2 = ((fx - 0.7).powi(2) + (fy - 0.65 - 0.1 * s.cos()).powi(2)).sqrt() < 0.15;
        let stripe = ((x + y * 2 + seed * 7) / 12).is_multiple_of(2) && fy > 0.8;
        let base = [
            (255.0 * fx) as u8,
            (255.0 * fy) as u8,
            (255.0 * (1.0 - fx * fy)) as u8,
        ];
        let px = if disc {
            [230, 60 + (seed * 40 % 150) as u8, 40]
        } else if disc2 {
            [30, 160, 90 + (seed * 30 % 160) as u8]
        } else if stripe {
            [250, 250, 240]
        } else {
            base
        };
        ::image::Rgb(px)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_side: 4_000,
        max_pixels: 8_000_000,
    };

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = test_pattern(w, h, 1);
        encode_jpeg(img.as_raw(), w, h, 85).unwrap()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = test_pattern(w, h, 2);
        encode_png(img.as_raw(), w, h).unwrap()
    }

    /// A PNG whose header claims `w × h` but holds no pixel data.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        b.extend(13u32.to_be_bytes());
        b.extend(&ihdr);
        b.extend(crc32(&ihdr).to_be_bytes());
        b
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &x in data {
            c ^= u32::from(x);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn accepts_complete_images_and_reads_their_size() {
        let info = inspect(&jpeg(64, 48), CAPS).unwrap();
        assert_eq!(
            (info.kind, info.width, info.height),
            (ImageKind::Jpeg, 64, 48)
        );
        let info = inspect(&png(30, 20), CAPS).unwrap();
        assert_eq!(
            (info.kind, info.width, info.height),
            (ImageKind::Png, 30, 20)
        );
    }

    #[test]
    fn refuses_what_the_edge_must_refuse() {
        let j = jpeg(64, 48);
        assert_eq!(inspect(&[], CAPS), Err(Rejection::Empty));
        assert_eq!(
            inspect(b"hello, I am text named cat.jpg", CAPS),
            Err(Rejection::UnsupportedType)
        );
        assert_eq!(
            inspect(&j[..j.len() / 2], CAPS),
            Err(Rejection::Truncated("image/jpeg"))
        );
        let p = png(30, 20);
        assert_eq!(
            inspect(&p[..p.len() - 5], CAPS),
            Err(Rejection::Truncated("image/png"))
        );
        let bomb = png_claiming(50_000, 50_000);
        assert!(
            matches!(
                inspect(&bomb, CAPS),
                Err(Rejection::TooManyPixels {
                    width: 50_000,
                    height: 50_000,
                    ..
                })
            ),
            "{:?}",
            inspect(&bomb, CAPS)
        );
        // The worker's decode refuses it too, without allocating 7.5 GB.
        assert!(decode(&bomb, CAPS).is_err());
    }

    #[test]
    fn prepare_pads_to_the_bucket_and_crop_undoes_it() {
        let img = test_pattern(50, 30, 3);
        let raw = img.as_raw().clone();
        let p = prepare(img, 1024, 16);
        assert_eq!(
            (p.width, p.height, p.bucket_w, p.bucket_h),
            (50, 30, 64, 32)
        );
        assert_eq!(p.pixels.len(), 64 * 32 * 3);
        assert_eq!(crop(&p.pixels, p.bucket_w, p.width, p.height), raw);
        // Padding repeats the last column.
        assert_eq!(p.pixels[63 * 3..64 * 3], p.pixels[49 * 3..50 * 3]);
    }

    #[test]
    fn prepare_scales_large_images_down_keeping_the_aspect() {
        let p = prepare(test_pattern(400, 200, 1), 100, 8);
        assert_eq!(
            (p.width, p.height, p.bucket_w, p.bucket_h),
            (100, 50, 104, 56)
        );
    }

    #[test]
    fn decode_round_trips_and_refuses_garbage_in_the_middle() {
        let j = jpeg(40, 40);
        let img = decode(&j, CAPS).unwrap();
        assert_eq!(img.dimensions(), (40, 40));
        // A PNG with its pixel data zeroed: header and trailer intact.
        let mut p = png(40, 40);
        let n = p.len();
        for b in &mut p[60..n - 20] {
            *b = 0;
        }
        assert!(decode(&p, CAPS).is_err());
    }
}
