//! File input and output (`contextual_attention::io`): `.npy` reading and writing, atomic
//! writes and PNG helpers.

use std::path::{Path, PathBuf};

use contextual_attention::io::{
    read_image_gray, read_image_rgb, read_npy, read_tensor_npy, write_atomically, write_image, write_npy_f32,
    write_npy_i32, write_rgb8, NpyData,
};
use contextual_attention::{Error, Tensor};

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("npy-tests-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The names of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A hand-built `.npy` file: magic, version, header length, `dict` padded to 64 bytes, `data`.
fn build_npy(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let len_bytes = if major == 1 { 2 } else { 4 };
    let unpadded = 8 + len_bytes + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad));
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn npy_reason(err: Error) -> String {
    match err {
        Error::Npy { reason, .. } => reason,
        other => panic!("expected an Npy error, got {other:?}"),
    }
}

#[test]
fn f32_round_trip_with_odd_shapes() {
    let dir = scratch("f32");
    for shape in [vec![], vec![7], vec![1, 3, 5, 2], vec![2, 1, 3], vec![0, 4], vec![3, 0, 2, 1]] {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * -0.37 + 1e-3 * (i * i) as f32).collect();
        let path = dir.join("a.npy");
        write_npy_f32(&path, &shape, &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "data is 64-byte aligned");
        let back = read_npy(&path).unwrap();
        assert_eq!(back.shape, shape);
        assert_eq!(back.data, NpyData::F32(data));
    }
    assert_eq!(listing(&dir), vec!["a.npy"]);
}

#[test]
fn i32_round_trip_with_odd_shapes() {
    let dir = scratch("i32");
    for shape in [vec![5, 1], vec![1, 2, 3, 2], vec![3], vec![]] {
        let n: usize = shape.iter().product();
        let data: Vec<i32> = (0..n as i32).map(|i| if i == 2 { i32::MIN } else { i * 7919 - 40000 }).collect();
        let path = dir.join("offsets.npy");
        write_npy_i32(&path, &shape, &data).unwrap();
        let back = read_npy(&path).unwrap();
        assert_eq!(back.shape, shape);
        assert_eq!(back.data, NpyData::I32(data));
    }
}

#[test]
fn write_rejects_a_shape_that_does_not_match_the_data() {
    let dir = scratch("mismatch");
    let err = write_npy_f32(&dir.join("x.npy"), &[2, 3], &[0.0; 5]).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    assert!(listing(&dir).is_empty());
}

#[test]
fn f8_u1_and_i8_are_converted() {
    let dir = scratch("convert");
    let values = [1.5f64, -2.25, 1e-3, 123456.789];
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.join("f8.npy");
    std::fs::write(&path, build_npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", &data)).unwrap();
    let a = read_npy(&path).unwrap();
    assert_eq!(a.shape, vec![2, 2]);
    assert_eq!(a.data, NpyData::F32(values.iter().map(|&v| v as f32).collect()));

    let path = dir.join("u1.npy");
    std::fs::write(&path, build_npy(2, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", &[0, 128, 255]))
        .unwrap();
    let a = read_npy(&path).unwrap();
    assert_eq!(a.shape, vec![3]);
    assert_eq!(a.data, NpyData::F32(vec![0.0, 128.0, 255.0]));

    let path = dir.join("i8.npy");
    let data: Vec<u8> = [-3i64, 0, 2_000_000_000].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, build_npy(3, "{\"descr\": \"<i8\", \"fortran_order\": False, \"shape\": (1, 3)}", &data))
        .unwrap();
    let a = read_npy(&path).unwrap();
    assert_eq!(a.shape, vec![1, 3]);
    assert_eq!(a.data, NpyData::I32(vec![-3, 0, 2_000_000_000]));

    // An int64 outside the int32 range is an error rather than a silent wrap.
    let data: Vec<u8> = [1i64 << 40].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, build_npy(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", &data)).unwrap();
    assert!(npy_reason(read_npy(&path).unwrap_err()).contains("int32"));
}

#[test]
fn big_endian_is_read_and_converted() {
    let dir = scratch("big-endian");
    let path = dir.join("be.npy");
    let data: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_be_bytes()).collect();
    std::fs::write(&path, build_npy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", &data)).unwrap();
    assert_eq!(read_npy(&path).unwrap().data, NpyData::F32(vec![1.0, -2.5]));

    let data: Vec<u8> = [0.125f64, 3e10].iter().flat_map(|v| v.to_be_bytes()).collect();
    std::fs::write(&path, build_npy(1, "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }", &data)).unwrap();
    assert_eq!(read_npy(&path).unwrap().data, NpyData::F32(vec![0.125, 3e10]));

    let data: Vec<u8> = [-7i32, 1 << 20].iter().flat_map(|v| v.to_be_bytes()).collect();
    std::fs::write(&path, build_npy(1, "{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }", &data)).unwrap();
    assert_eq!(read_npy(&path).unwrap().data, NpyData::I32(vec![-7, 1 << 20]));
}

#[test]
fn fortran_order_is_reordered_to_c_order() {
    let dir = scratch("fortran");
    let path = dir.join("f.npy");
    // The 2x3 array [[0, 1, 2], [3, 4, 5]] stored column by column.
    let column_major = [0f32, 3.0, 1.0, 4.0, 2.0, 5.0];
    let data: Vec<u8> = column_major.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, build_npy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", &data)).unwrap();
    let a = read_npy(&path).unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, NpyData::F32(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));

    // Rank 3, shape (2, 3, 2): element [i, j, k] = 100 i + 10 j + k, Fortran order (i fastest).
    let mut column_major = Vec::new();
    for k in 0..2 {
        for j in 0..3 {
            for i in 0..2 {
                column_major.push(100 * i + 10 * j + k);
            }
        }
    }
    let data: Vec<u8> = column_major.iter().flat_map(|v: &i32| v.to_le_bytes()).collect();
    std::fs::write(&path, build_npy(1, "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3, 2), }", &data))
        .unwrap();
    let a = read_npy(&path).unwrap();
    let c_order: Vec<i32> =
        (0..2).flat_map(|i| (0..3).flat_map(move |j| (0..2).map(move |k| 100 * i + 10 * j + k))).collect();
    assert_eq!(a.data, NpyData::I32(c_order));
}

#[test]
fn unsupported_dtype_and_garbage_are_errors() {
    let dir = scratch("dtype");
    let path = dir.join("c.npy");
    std::fs::write(&path, build_npy(1, "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", &[0; 8])).unwrap();
    let reason = npy_reason(read_npy(&path).unwrap_err());
    assert!(reason.contains("<c8"), "{reason}");
    assert!(reason.contains("readable dtypes are"), "{reason}");

    std::fs::write(&path, b"PK\x03\x04 definitely not numpy").unwrap();
    let reason = npy_reason(read_npy(&path).unwrap_err());
    assert!(reason.contains("not a .npy file"), "{reason}");

    let err = read_npy(&dir.join("missing.npy")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn truncated_files_are_errors() {
    let dir = scratch("truncated");
    let path = dir.join("t.npy");
    write_npy_f32(&path, &[2, 3], &[1.0; 6]).unwrap();
    let full = std::fs::read(&path).unwrap();

    // Cut inside the data.
    std::fs::write(&path, &full[..full.len() - 3]).unwrap();
    let reason = npy_reason(read_npy(&path).unwrap_err());
    assert!(reason.contains("truncated"), "{reason}");

    // Cut inside the header.
    std::fs::write(&path, &full[..30]).unwrap();
    let reason = npy_reason(read_npy(&path).unwrap_err());
    assert!(reason.contains("truncated"), "{reason}");

    // Cut inside the magic / version.
    std::fs::write(&path, &full[..7]).unwrap();
    read_npy(&path).unwrap_err();

    // Extra bytes after the data do not match the shape either.
    let mut long = full.clone();
    long.extend_from_slice(&[0; 4]);
    std::fs::write(&path, &long).unwrap();
    let reason = npy_reason(read_npy(&path).unwrap_err());
    assert!(reason.contains("[2, 3]"), "{reason}");
}

#[test]
fn read_tensor_npy_checks_rank_and_type() {
    let dir = scratch("tensor");
    let path = dir.join("f.npy");
    let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
    write_npy_f32(&path, &[1, 2, 3, 4], &data).unwrap();
    let t = read_tensor_npy(&path, "f").unwrap();
    assert_eq!(t.shape(), [1, 2, 3, 4]);
    assert_eq!(t.data(), &data[..]);

    write_npy_f32(&path, &[2, 3, 4], &data).unwrap();
    match read_tensor_npy(&path, "f").unwrap_err() {
        Error::Shape { tensor, reason } => {
            assert_eq!(tensor, "f");
            assert!(reason.contains("expected 4 dimensions [batch, height, width, channels]"), "{reason}");
            assert!(reason.contains("[2, 3, 4]"), "{reason}");
        }
        other => panic!("expected a shape error, got {other:?}"),
    }

    let ipath = dir.join("i.npy");
    write_npy_i32(&ipath, &[1, 1, 1, 2], &[3, 4]).unwrap();
    let err = read_tensor_npy(&ipath, "mask").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("mask") && msg.contains("integer"), "{msg}");
}

#[test]
fn failing_writes_leave_nothing_behind() {
    let dir = scratch("atomic");

    // The target's directory does not exist.
    let err = write_npy_f32(&dir.join("no-such-dir").join("x.npy"), &[1], &[1.0]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(listing(&dir).is_empty());

    // The write closure fails halfway: no target, no temporary file.
    let target = dir.join("out.bin");
    let err = write_atomically(&target, |w| {
        w.write_all(b"half of it")?;
        Err(std::io::Error::other("disk on fire"))
    })
    .unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert!(listing(&dir).is_empty(), "{:?}", listing(&dir));

    // A failure does not touch an existing target either.
    std::fs::write(&target, b"old").unwrap();
    write_atomically(&target, |_| Err(std::io::Error::other("nope"))).unwrap_err();
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(listing(&dir), vec!["out.bin"]);

    // A panicking closure cleans up as well.
    let t2 = target.clone();
    let result = std::panic::catch_unwind(move || {
        let _ = write_atomically(&t2, |w| {
            w.write_all(b"x")?;
            panic!("boom")
        });
    });
    assert!(result.is_err());
    assert_eq!(listing(&dir), vec!["out.bin"]);

    // A successful write replaces the target.
    write_atomically(&target, |w| w.write_all(b"new")).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    assert_eq!(listing(&dir), vec!["out.bin"]);

    // An image with a bad shape never creates a file.
    let bad = Tensor::zeros([1, 2, 2, 2]);
    assert!(matches!(write_image(&dir.join("bad.png"), &bad).unwrap_err(), Error::Shape { .. }));
    assert_eq!(listing(&dir), vec!["out.bin"]);
}

#[test]
fn png_round_trip_rgb_and_gray() {
    let dir = scratch("png");
    let t = Tensor::from_fn([1, 3, 5, 3], |_, y, x, c| (y * 40 + x * 30 + c * 13) as f32);
    let path = dir.join("rgb.png");
    write_image(&path, &t).unwrap();
    assert_eq!(read_image_rgb(&path).unwrap(), t);

    // Rounding half away from zero, saturation.
    let t = Tensor::new([1, 1, 6, 1], vec![-3.0, 0.49, 0.5, 1.5, 254.5, 300.0]).unwrap();
    let path = dir.join("gray.png");
    write_image(&path, &t).unwrap();
    let back = read_image_gray(&path).unwrap();
    assert_eq!(back.shape(), [1, 1, 6, 1]);
    assert_eq!(back.data(), &[0.0, 0.0, 1.0, 2.0, 255.0, 255.0]);
    // A grey image read as RGB has three equal channels.
    let rgb = read_image_rgb(&path).unwrap();
    assert_eq!(rgb.shape(), [1, 1, 6, 3]);
    assert_eq!(&rgb.data()[6..9], &[1.0, 1.0, 1.0]);

    let path = dir.join("raw.png");
    let bytes: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 14) as u8).collect();
    write_rgb8(&path, 3, 2, &bytes).unwrap();
    let back = read_image_rgb(&path).unwrap();
    assert_eq!(back.shape(), [1, 2, 3, 3]);
    assert_eq!(back.data(), bytes.iter().map(|&b| b as f32).collect::<Vec<_>>().as_slice());
    assert!(matches!(write_rgb8(&dir.join("short.png"), 3, 2, &bytes[1..]).unwrap_err(), Error::Shape { .. }));

    let mut names = listing(&dir);
    names.sort();
    assert_eq!(names, vec!["gray.png", "raw.png", "rgb.png"]);
}

#[cfg(unix)]
#[test]
fn written_files_get_ordinary_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("permissions");
    // What a plain create gives under this process's umask.
    let plain = dir.join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let expected = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
    let path = dir.join("y.npy");
    write_npy_f32(&path, &[1], &[1.0]).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, expected);
    assert_eq!(listing(&dir), vec!["plain", "y.npy"]);
}
