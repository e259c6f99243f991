//! File input and output: NumPy `.npy` arrays and PNG images.
//!
//! The formats are the kept crates' work: `npyz` parses and writes `.npy`, `image` codes PNG,
//! `tempfile` makes writes atomic. What lives here is our thin layer on top: which dtypes and
//! layouts are accepted and how they are converted, and errors that name the file and say what
//! to do.
//!
//! * `.npy` reading understands format versions 1.0, 2.0 and 3.0; float32 and float64 arrays
//!   become `f32`, uint8 too (images saved from NumPy); int32 and int64 become `i32`. Either byte
//!   order is read; Fortran-order arrays are reordered to C order. Writing produces `<f4` or
//!   `<i4` files in C order.
//! * PNG images are read as RGB or grey tensors with values 0–255 and written from `[1, H, W, 1]`
//!   or `[1, H, W, 3]` tensors.
//!
//! Every writer goes through [`write_atomically`]: the bytes land in a temporary file in the
//! target's folder, which is renamed over the target only once everything was written, so a
//! failed run never leaves a half-written file behind.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use image::ImageEncoder;
use npyz::{DType, Order, TypeChar, WriterBuilder};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The element data of an `.npy` array after conversion.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// Floating-point data (float32, and float64 / uint8 converted to `f32`).
    F32(Vec<f32>),
    /// Integer data (int32, and int64 converted to `i32`).
    I32(Vec<i32>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::I32(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An array read from an `.npy` file: its shape (row-major / C order) and its elements.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The dimensions, outermost first; empty for a 0-d (scalar) array.
    pub shape: Vec<usize>,
    /// The elements in C order.
    pub data: NpyData,
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";
const READABLE: &str = "readable dtypes are float32, float64, int32, int64 and uint8 (either byte order)";

fn npy_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Npy { path: path.to_path_buf(), reason: reason.into(), source: None }
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}

/// Reads a `.npy` file (format version 1.0, 2.0 or 3.0).
///
/// float32 is returned as is; float64 and uint8 are converted to [`NpyData::F32`]; int32 is
/// returned as [`NpyData::I32`] and int64 is converted to it (values outside the `i32` range
/// are an error). Big-endian data is converted to the machine's order, Fortran-order arrays are
/// reordered to C order. Other dtypes, truncated files and data whose length does not match
/// the shape are [`Error::Npy`] errors.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    parse_npy(path, &bytes)
}

fn parse_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    // npyz reports a wrong magic string or a short file as a bare I/O error; these two checks
    // say what is wrong in words.
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(npy_err(path, "not a .npy file: it does not start with the \\x93NUMPY magic string"));
    }
    let mut data_bytes = bytes;
    let header = npyz::NpyHeader::from_reader(&mut data_bytes).map_err(|e| {
        let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
            "truncated file: it ends inside the header".to_string()
        } else {
            format!("malformed header: {e}")
        };
        Error::Npy { path: path.to_path_buf(), reason, source: Some(e) }
    })?;
    let shape = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| npy_err(path, format!("shape {:?} does not fit in memory", header.shape())))?;
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let type_str = match header.dtype() {
        DType::Plain(t) => t,
        other => {
            return Err(npy_err(
                path,
                format!("found a structured dtype ({}); only plain numeric arrays are supported", other.descr()),
            ))
        }
    };
    let item = type_str.num_bytes().unwrap_or(0);
    let needed = count
        .and_then(|n| n.checked_mul(item))
        .ok_or_else(|| npy_err(path, format!("shape {shape:?} has too many elements")))?;
    // The data after the header must be exactly what the shape needs: npyz would stop silently
    // at the end of the shape and report a short file only as an I/O error.
    let present = data_bytes.len();
    if present < needed {
        return Err(npy_err(
            path,
            format!("truncated file: shape {shape:?} needs {needed} bytes of data but only {present} are present"),
        ));
    }
    if present > needed {
        return Err(npy_err(
            path,
            format!("the data is {present} bytes long but shape {shape:?} needs exactly {needed} bytes"),
        ));
    }
    let order = header.order();
    let file = npyz::NpyFile::with_header(header, data_bytes);
    let read_err = |e: io::Error| Error::Npy {
        path: path.to_path_buf(),
        reason: format!("reading the data failed: {e}"),
        source: Some(e),
    };
    let data = match (type_str.type_char(), type_str.size_field()) {
        (TypeChar::Float, 4) => NpyData::F32(file.into_vec::<f32>().map_err(read_err)?),
        (TypeChar::Float, 8) => {
            NpyData::F32(file.into_vec::<f64>().map_err(read_err)?.into_iter().map(|v| v as f32).collect())
        }
        (TypeChar::Uint, 1) => {
            NpyData::F32(file.into_vec::<u8>().map_err(read_err)?.into_iter().map(f32::from).collect())
        }
        (TypeChar::Int, 4) => NpyData::I32(file.into_vec::<i32>().map_err(read_err)?),
        (TypeChar::Int, 8) => NpyData::I32(
            file.into_vec::<i64>()
                .map_err(read_err)?
                .into_iter()
                .map(|v| {
                    i32::try_from(v).map_err(|_| npy_err(path, format!("the int64 value {v} does not fit in int32")))
                })
                .collect::<Result<Vec<i32>>>()?,
        ),
        _ => return Err(npy_err(path, format!("found dtype '{type_str}'; {READABLE}"))),
    };
    let data = match (order, data) {
        (Order::C, data) => data,
        (Order::Fortran, NpyData::F32(v)) => NpyData::F32(fortran_to_c(&shape, &v)),
        (Order::Fortran, NpyData::I32(v)) => NpyData::I32(fortran_to_c(&shape, &v)),
    };
    Ok(NpyArray { shape, data })
}

/// Reorders elements stored first-index-fastest (Fortran order) to last-index-fastest (C order).
fn fortran_to_c<T: Copy>(shape: &[usize], fortran: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(fortran.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..fortran.len() {
        // Fortran offset of the current C-order index: the first dimension has stride 1.
        let (offset, _) =
            index.iter().zip(shape).fold((0, 1), |(off, stride), (&i, &d)| (off + i * stride, stride * d));
        out.push(fortran[offset]);
        // Advance the index in C order: the last dimension fastest.
        for (i, &d) in index.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    out
}

/// Reads a float `.npy` array of rank 4 (`[batch, height, width, channels]`) as a [`Tensor`].
///
/// `name` names the input in errors. A rank other than 4 is an [`Error::Shape`] that names
/// `name` and the shape found; an integer array is an [`Error::Npy`].
pub fn read_tensor_npy(path: &Path, name: &str) -> Result<Tensor> {
    let array = read_npy(path)?;
    let data = match array.data {
        NpyData::F32(v) => v,
        NpyData::I32(_) => {
            return Err(npy_err(
                path,
                format!("`{name}` must be a float array, found an integer array; save it with `a.astype(np.float32)`"),
            ))
        }
    };
    let shape: [usize; 4] = array.shape.as_slice().try_into().map_err(|_| {
        Error::shape(
            name,
            format!(
                "expected 4 dimensions [batch, height, width, channels], found {:?} (in {})",
                array.shape,
                path.display()
            ),
        )
    })?;
    Tensor::new(shape, data)
}

fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if count != Some(data.len()) {
        return Err(Error::shape(
            path.display().to_string(),
            format!("shape {shape:?} does not match the {} elements given", data.len()),
        ));
    }
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    write_atomically(path, |w| {
        let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(w).begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}

/// Writes `data` (C order) with `shape` as a `.npy` file of dtype `<f4`, atomically.
///
/// A length that does not match the shape is an [`Error::Shape`].
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_npy(path, shape, data)
}

/// Writes `data` (C order) with `shape` as a `.npy` file of dtype `<i4`, atomically.
///
/// A length that does not match the shape is an [`Error::Shape`].
pub fn write_npy_i32(path: &Path, shape: &[usize], data: &[i32]) -> Result<()> {
    write_npy(path, shape, data)
}

/// Writes a file atomically: `write` fills a temporary file in the target's folder, which is
/// flushed, synced and then renamed over `path`.
///
/// If `write` (or any later step) fails, or panics, the temporary file is removed and the
/// target is left untouched; the error is an [`Error::Io`] naming `path`.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    if path.file_name().is_none() {
        return Err(io_err(path, io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The temporary file removes itself when dropped, on error and on unwinding alike.
    let temp =
        tempfile::Builder::new().prefix(".contextual-attention-").tempfile_in(dir).map_err(|e| io_err(path, e))?;
    let mut writer = BufWriter::new(temp);
    write(&mut writer).map_err(|e| io_err(path, e))?;
    let temp = writer.into_inner().map_err(|e| io_err(path, e.into_error()))?;
    temp.as_file().sync_all().map_err(|e| io_err(path, e))?;
    // tempfile creates files readable by the owner only; the result should look like any other
    // file the user writes, so it gets the permissions a plain create would give it.
    set_ordinary_permissions(temp.as_file(), dir).map_err(|e| io_err(path, e))?;
    temp.persist(path).map_err(|e| io_err(path, e.error))?;
    Ok(())
}

/// Gives `file` the permissions a new file created in `dir` would get (the process's umask
/// applied to 0o666), found by creating and removing a probe file.
#[cfg(unix)]
fn set_ordinary_permissions(file: &fs::File, dir: &Path) -> io::Result<()> {
    let probe = tempfile::Builder::new()
        .prefix(".contextual-attention-probe-")
        .make_in(dir, |p| fs::OpenOptions::new().write(true).create_new(true).open(p))?;
    let permissions = probe.as_file().metadata()?.permissions();
    file.set_permissions(permissions)
}

#[cfg(not(unix))]
fn set_ordinary_permissions(_file: &fs::File, _dir: &Path) -> io::Result<()> {
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------------

fn decode_image(path: &Path) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| io_err(path, e))?
        .with_guessed_format()
        .map_err(|e| io_err(path, e))?;
    reader.decode().map_err(|source| Error::Image { path: path.to_path_buf(), source })
}

/// Reads an image as a `[1, H, W, 3]` tensor with values 0–255.
///
/// Grey images are expanded to three equal channels, an alpha channel is dropped and 16-bit
/// images are scaled to 8 bits.
pub fn read_image_rgb(path: &Path) -> Result<Tensor> {
    to_tensor(decode_image(path)?, 3)
}

/// Reads an image as `[1, H, W, 1]` if it is grey (with or without alpha), else as
/// `[1, H, W, 3]`, values 0–255 (see [`read_image_rgb`]).
pub fn read_image(path: &Path) -> Result<Tensor> {
    let img = decode_image(path)?;
    let channels = if img.color().has_color() { 3 } else { 1 };
    to_tensor(img, channels)
}

/// Reads an image as a `[1, H, W, 1]` grey tensor with values 0–255 (colour images are
/// converted to luminance).
pub fn read_image_gray(path: &Path) -> Result<Tensor> {
    to_tensor(decode_image(path)?, 1)
}

/// `img` as a `[1, H, W, channels]` tensor of 0–255 values: RGB for 3 channels, luminance for 1.
fn to_tensor(img: image::DynamicImage, channels: usize) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = if channels == 3 { img.to_rgb8().into_raw() } else { img.to_luma8().into_raw() };
    Tensor::new([1, h, w, channels], data.into_iter().map(f32::from).collect())
}

/// Float to byte as OpenCV converts images: round half away from zero, saturate to 0..=255
/// (NaN becomes 0).
fn to_u8(v: f32) -> u8 {
    // `as` saturates and maps NaN to 0.
    v.round() as u8
}

fn encode_png(path: &Path, width: u32, height: u32, pixels: &[u8], color: image::ExtendedColorType) -> Result<()> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(pixels, width, height, color)
        .map_err(|source| Error::Image { path: path.to_path_buf(), source })?;
    write_atomically(path, |w| w.write_all(&png))
}

/// Writes a `[1, H, W, 1]` (grey) or `[1, H, W, 3]` (RGB) tensor as a PNG, atomically.
///
/// Values are rounded half away from zero and saturated to 0..=255. Other shapes are an
/// [`Error::Shape`].
pub fn write_image(path: &Path, t: &Tensor) -> Result<()> {
    let [n, h, w, c] = t.shape();
    let color = match c {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        _ => {
            return Err(Error::shape(
                path.display().to_string(),
                format!("an image needs 1 or 3 channels, found shape {:?}", t.shape()),
            ))
        }
    };
    if n != 1 {
        return Err(Error::shape(
            path.display().to_string(),
            format!("an image needs a batch of 1, found shape {:?}; write each item separately", t.shape()),
        ));
    }
    let (width, height) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(width), Ok(height)) => (width, height),
        _ => {
            return Err(Error::shape(
                path.display().to_string(),
                format!("shape {:?} is too large for an image", t.shape()),
            ))
        }
    };
    let pixels: Vec<u8> = t.data().iter().map(|&v| to_u8(v)).collect();
    encode_png(path, width, height, &pixels, color)
}

/// Writes interleaved RGB8 pixels (`width * height * 3` bytes, row-major) as a PNG, atomically.
///
/// A length that does not match the size is an [`Error::Shape`].
pub fn write_rgb8(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let needed = width as u64 * height as u64 * 3;
    if rgb.len() as u64 != needed {
        return Err(Error::shape(
            path.display().to_string(),
            format!("a {width}x{height} RGB image needs {needed} bytes, found {}", rgb.len()),
        ));
    }
    encode_png(path, width, height, rgb, image::ExtendedColorType::Rgb8)
}
