//! File input and output: NumPy `.npy` arrays and PNG images.
//!
//! * `.npy` reading understands format versions 1.0, 2.0 and 3.0 and the dtypes `<f4`, `<f8`,
//!   `<i4`, `<i8` and `|u1` (little-endian, C order). Writing produces version 1.0 files
//!   (`<f4` or `<i4`).
//! * PNG images are read as RGB or grey tensors with values 0–255 and written from `[1, H, W, 1]`
//!   or `[1, H, W, 3]` tensors.
//!
//! Every writer goes through [`write_atomically`]: the bytes land in a temporary file next to
//! the target, which is renamed over the target only once everything was written, so a failed
//! run never leaves a half-written file behind.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::ImageEncoder;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The element data of an `.npy` array after conversion.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// Floating-point data (`<f4`, and `<f8` / `|u1` converted to `f32`).
    F32(Vec<f32>),
    /// Integer data (`<i4`, and `<i8` converted to `i32`).
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
const EXPECTED: &str = "expected a little-endian float32 array in C order";

fn npy_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Npy { path: path.to_path_buf(), reason: reason.into() }
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}

// ---------------------------------------------------------------------------------------------
// Header parsing: a tiny reader for the Python literal the header holds.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Int(i128),
    None,
    Seq(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
}

struct LiteralParser {
    chars: Vec<char>,
    pos: usize,
}

impl LiteralParser {
    fn new(text: &str) -> Self {
        LiteralParser { chars: text.chars().collect(), pos: 0 }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(format!("expected '{c}' at character {} of the header, found '{x}'", self.pos)),
            None => Err(format!("expected '{c}' but the header ended")),
        }
    }

    fn value(&mut self) -> std::result::Result<PyValue, String> {
        match self.peek() {
            None => Err("the header ended where a value was expected".into()),
            Some('\'') | Some('"') => self.string(),
            Some('(') => self.seq('(', ')'),
            Some('[') => self.seq('[', ']'),
            Some('{') => self.dict(),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => self.int(),
            Some(c) if c.is_alphabetic() => {
                let start = self.pos;
                while self.pos < self.chars.len()
                    && (self.chars[self.pos].is_alphanumeric() || self.chars[self.pos] == '_')
                {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(PyValue::Bool(true)),
                    "False" => Ok(PyValue::Bool(false)),
                    "None" => Ok(PyValue::None),
                    _ => Err(format!("unexpected word `{word}` in the header")),
                }
            }
            Some(c) => Err(format!("unexpected character '{c}' in the header")),
        }
    }

    fn string(&mut self) -> std::result::Result<PyValue, String> {
        let quote = self.chars[self.pos];
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.chars.get(self.pos).copied() {
                None => return Err("unterminated string in the header".into()),
                Some('\\') => {
                    let next = self.chars.get(self.pos + 1).copied().ok_or("unterminated string in the header")?;
                    out.push(next);
                    self.pos += 2;
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(PyValue::Str(out));
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn int(&mut self) -> std::result::Result<PyValue, String> {
        let start = self.pos;
        if matches!(self.chars[self.pos], '-' | '+') {
            self.pos += 1;
        }
        while self.pos < self.chars.len() && (self.chars[self.pos].is_ascii_digit() || self.chars[self.pos] == '_') {
            self.pos += 1;
        }
        // Python 2 era files may carry a trailing `L` on longs.
        if self.pos < self.chars.len() && matches!(self.chars[self.pos], 'L' | 'l') {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().filter(|c| c.is_ascii_digit() || **c == '-').collect();
        text.parse::<i128>().map(PyValue::Int).map_err(|_| format!("`{text}` in the header is not an integer"))
    }

    fn seq(&mut self, open: char, close: char) -> std::result::Result<PyValue, String> {
        self.expect(open)?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(PyValue::Seq(items));
            }
            items.push(self.value()?);
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(format!("expected ',' or '{close}' in the header")),
            }
        }
    }

    fn dict(&mut self) -> std::result::Result<PyValue, String> {
        self.expect('{')?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(PyValue::Dict(entries));
            }
            let key = self.value()?;
            self.expect(':')?;
            let value = self.value()?;
            entries.push((key, value));
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err("expected ',' or '}' in the header".into()),
            }
        }
    }
}

/// Element types this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F4,
    F8,
    I4,
    I8,
    U1,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F4 | Dtype::I4 => 4,
            Dtype::F8 | Dtype::I8 => 8,
            Dtype::U1 => 1,
        }
    }
}

fn parse_descr(descr: &PyValue) -> std::result::Result<Dtype, String> {
    let s = match descr {
        PyValue::Str(s) => s.as_str(),
        other => {
            return Err(format!(
                "{EXPECTED}, found a structured dtype ({other:?}); only plain numeric arrays are supported"
            ))
        }
    };
    let unsupported =
        || format!("{EXPECTED} ('<f4'), found dtype '{s}'; readable dtypes are '<f4', '<f8', '<i4', '<i8' and '|u1'");
    let mut chars = s.chars();
    let order = chars.next().ok_or_else(unsupported)?;
    let kind_size: String = chars.collect();
    let dtype = match kind_size.as_str() {
        "f4" => Dtype::F4,
        "f8" => Dtype::F8,
        "i4" => Dtype::I4,
        "i8" => Dtype::I8,
        "u1" => Dtype::U1,
        _ => return Err(unsupported()),
    };
    match order {
        '<' => Ok(dtype),
        '|' | '=' | '>' if dtype.size() == 1 => Ok(dtype),
        '>' => Err(format!(
            "{EXPECTED}, found a big-endian array (dtype '{s}'); convert it with `a.astype('<{kind_size}')` before saving"
        )),
        _ => Err(unsupported()),
    }
}

struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
    data_start: usize,
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a .npy file: it does not start with the \\x93NUMPY magic string".into());
    }
    if bytes.len() < 8 {
        return Err("truncated file: it ends inside the format version".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match (major, minor) {
        (1, 0) => (2usize, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(format!("unsupported .npy format version {major}.{minor}; expected 1.0, 2.0 or 3.0")),
    };
    let len_end = 8 + len_bytes;
    if bytes.len() < len_end {
        return Err("truncated file: it ends inside the header length".into());
    }
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    let data_start = len_end.checked_add(header_len).ok_or("the header length does not fit in memory")?;
    if bytes.len() < data_start {
        return Err(format!(
            "truncated file: the header claims {header_len} bytes but only {} are present",
            bytes.len() - len_end
        ));
    }
    let raw = &bytes[len_end..data_start];
    let text: String = if utf8 {
        std::str::from_utf8(raw).map_err(|e| format!("the header is not valid UTF-8: {e}"))?.to_owned()
    } else {
        raw.iter().map(|&b| b as char).collect()
    };
    let mut parser = LiteralParser::new(&text);
    let dict = match parser.value().map_err(|e| format!("malformed header {text:?}: {e}"))? {
        PyValue::Dict(entries) => entries,
        _ => return Err(format!("malformed header {text:?}: it is not a dictionary")),
    };
    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("malformed header {text:?}: the key '{key}' is missing"))
    };
    let dtype = parse_descr(get("descr")?)?;
    match get("fortran_order")? {
        PyValue::Bool(false) => {}
        PyValue::Bool(true) => {
            return Err(format!(
                "{EXPECTED}, found a Fortran-order (column-major) array (fortran_order: True); \
                 save it with `np.save(path, np.ascontiguousarray(a))`"
            ))
        }
        other => return Err(format!("malformed header: fortran_order is {other:?}, expected True or False")),
    }
    let shape = match get("shape")? {
        PyValue::Seq(items) => items
            .iter()
            .map(|v| match v {
                PyValue::Int(n) if *n >= 0 => usize::try_from(*n).map_err(|_| format!("dimension {n} is too large")),
                other => Err(format!("malformed header: shape entry {other:?} is not a non-negative integer")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        other => return Err(format!("malformed header: shape is {other:?}, expected a tuple of integers")),
    };
    Ok(Header { dtype, shape, data_start })
}

/// Reads a `.npy` file (format version 1.0, 2.0 or 3.0).
///
/// `<f4` is returned as is; `<f8` and `|u1` are converted to [`NpyData::F32`]; `<i4` is returned as
/// [`NpyData::I32`] and `<i8` is converted to it (values outside the `i32` range are an error).
/// Big-endian data, Fortran-order arrays, other dtypes, truncated files and data whose length
/// does not match the shape are [`Error::Npy`] errors.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
    parse_npy(path, &bytes)
}

fn parse_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    let header = parse_header(bytes).map_err(|reason| npy_err(path, reason))?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| npy_err(path, format!("shape {:?} has too many elements", header.shape)))?;
    let size = header.dtype.size();
    let needed = count
        .checked_mul(size)
        .ok_or_else(|| npy_err(path, format!("shape {:?} has too many elements", header.shape)))?;
    let payload = &bytes[header.data_start..];
    if payload.len() < needed {
        return Err(npy_err(
            path,
            format!(
                "truncated file: shape {:?} needs {needed} bytes of data but only {} are present",
                header.shape,
                payload.len()
            ),
        ));
    }
    if payload.len() > needed {
        return Err(npy_err(
            path,
            format!(
                "the data is {} bytes long but shape {:?} needs exactly {needed} bytes",
                payload.len(),
                header.shape
            ),
        ));
    }
    let data = match header.dtype {
        Dtype::F4 => {
            NpyData::F32(payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        Dtype::F8 => NpyData::F32(
            payload.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32).collect(),
        ),
        Dtype::U1 => NpyData::F32(payload.iter().map(|&b| b as f32).collect()),
        Dtype::I4 => {
            NpyData::I32(payload.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        Dtype::I8 => {
            let mut out = Vec::with_capacity(count);
            for c in payload.chunks_exact(8) {
                let v = i64::from_le_bytes(c.try_into().expect("chunk of 8"));
                let v = i32::try_from(v)
                    .map_err(|_| npy_err(path, format!("the int64 value {v} does not fit in int32")))?;
                out.push(v);
            }
            NpyData::I32(out)
        }
    };
    Ok(NpyArray { shape: header.shape, data })
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
            return Err(npy_err(path, format!("`{name}` must be a float array ({EXPECTED}), found an integer array")))
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

fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Version 1.0 has a 2-byte header length; fall back to 2.0 only for absurdly long shapes.
    let prefix_v1 = MAGIC.len() + 2 + 2;
    let long = dict.len() + 1 + 64 + prefix_v1 > u16::MAX as usize;
    let prefix = if long { prefix_v1 + 2 } else { prefix_v1 };
    // Pad with spaces so that the data starts on a 64-byte boundary; the header ends in '\n'.
    let total = prefix + dict.len() + 1;
    let pad = (64 - total % 64) % 64;
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(prefix + dict.len());
    out.extend_from_slice(MAGIC);
    if long {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out
}

fn check_len(path: &Path, shape: &[usize], len: usize) -> Result<()> {
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if count != Some(len) {
        return Err(Error::shape(
            path.display().to_string(),
            format!("shape {shape:?} does not match the {len} elements given"),
        ));
    }
    Ok(())
}

fn write_npy_words<T: bytemuck::Pod>(
    path: &Path,
    descr: &str,
    shape: &[usize],
    data: &[T],
    to_le: impl Fn(&T) -> [u8; 4],
) -> Result<()> {
    check_len(path, shape, data.len())?;
    let header = npy_header(descr, shape);
    write_atomically(path, |w| {
        w.write_all(&header)?;
        if cfg!(target_endian = "little") {
            w.write_all(bytemuck::cast_slice(data))
        } else {
            for v in data {
                w.write_all(&to_le(v))?;
            }
            Ok(())
        }
    })
}

/// Writes `data` (C order) with `shape` as a version 1.0 `.npy` file of dtype `<f4`, atomically.
///
/// A length that does not match the shape is an [`Error::Shape`].
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_npy_words(path, "<f4", shape, data, |v| v.to_le_bytes())
}

/// Writes `data` (C order) with `shape` as a version 1.0 `.npy` file of dtype `<i4`, atomically.
///
/// A length that does not match the shape is an [`Error::Shape`].
pub fn write_npy_i32(path: &Path, shape: &[usize], data: &[i32]) -> Result<()> {
    write_npy_words(path, "<i4", shape, data, |v| v.to_le_bytes())
}

// ---------------------------------------------------------------------------------------------
// Atomic writes
// ---------------------------------------------------------------------------------------------

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file when dropped, unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes a file atomically: `write` fills a temporary file `.NAME.tmp-<pid>-<n>` in the
/// target's directory, which is flushed, synced and then renamed over `path`.
///
/// If `write` (or any later step) fails, or panics, the temporary file is removed and the
/// target is left untouched; the error is an [`Error::Io`] naming `path`.
pub fn write_atomically(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err(path, io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp_path = dir.join(tmp_name);

    let file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp_path).map_err(|e| io_err(path, e))?;
    let mut guard = TempFile { path: tmp_path, keep: false };

    let result = (|| -> io::Result<()> {
        let mut writer = BufWriter::new(file);
        write(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&guard.path, path)
    })();
    match result {
        Ok(()) => {
            guard.keep = true;
            Ok(())
        }
        Err(e) => Err(io_err(path, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------------

fn decode_image(path: &Path) -> Result<image::DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| io_err(path, e))?
        .with_guessed_format()
        .map_err(|e| io_err(path, e))?;
    reader.decode().map_err(|e| Error::Image { path: path.to_path_buf(), reason: e.to_string() })
}

/// Reads an image as a `[1, H, W, 3]` tensor with values 0–255.
///
/// Grey images are expanded to three equal channels, an alpha channel is dropped and 16-bit
/// images are scaled to 8 bits.
pub fn read_image_rgb(path: &Path) -> Result<Tensor> {
    let img = decode_image(path)?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Tensor::new([1, h, w, 3], img.into_raw().into_iter().map(f32::from).collect())
}

/// Reads an image as a `[1, H, W, 1]` grey tensor with values 0–255 (colour images are
/// converted to luminance).
pub fn read_image_gray(path: &Path) -> Result<Tensor> {
    let img = decode_image(path)?.to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Tensor::new([1, h, w, 1], img.into_raw().into_iter().map(f32::from).collect())
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
        .map_err(|e| Error::Image { path: path.to_path_buf(), reason: e.to_string() })?;
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
