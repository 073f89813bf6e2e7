//! CRC64NVME against the values S3 and the reference implementations agree on.

use std::io::{Read as _, Write as _};

use herd_fetch::checksum::{HashingReader, HashingWriter};
use herd_fetch::{
    Crc64Nvme, Crc64NvmeHasher, ErrorKind, crc64nvme, crc64nvme_file, crc64nvme_reader,
    verify_crc64nvme_file,
};

use crate::support::{CRC_123456789, CRC_EMPTY, CRC_HELLO, write};

#[test]
fn known_values() {
    assert_eq!(crc64nvme(b"123456789").to_base64(), CRC_123456789);
    assert_eq!(crc64nvme(b"123456789").as_u64(), 0xAE8B_1486_0A79_9888);
    assert_eq!(crc64nvme(b"").to_base64(), CRC_EMPTY);
    assert_eq!(crc64nvme(b"").to_string(), CRC_EMPTY);
    assert_eq!(crc64nvme(b"Hello, World!").to_base64(), CRC_HELLO);
    assert_eq!(crc64nvme(b"test data").to_base64(), "rsrzr5yYqFU=");
    assert_eq!(Crc64Nvme::EMPTY, crc64nvme(b""));
}

#[test]
fn streaming_matches_one_shot_whatever_the_chunks() {
    let data: Vec<u8> = (0..200_003u32)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = crc64nvme(&data);
    for chunk in [1, 7, 4096, 65_536, 1 << 20] {
        let mut hasher = Crc64NvmeHasher::new();
        for piece in data.chunks(chunk) {
            hasher.update(piece);
        }
        assert_eq!(hasher.finish(), expected, "chunk {chunk}");
        assert_eq!(hasher.length(), data.len() as u64);
    }
    let (checksum, length) = crc64nvme_reader(&data[..]).unwrap();
    assert_eq!((checksum, length), (expected, data.len() as u64));

    let mut reader = HashingReader::new(&data[..]);
    let mut sink = Vec::new();
    reader.read_to_end(&mut sink).unwrap();
    assert_eq!(reader.finish(), (expected, data.len() as u64));

    let mut writer = HashingWriter::new(Vec::new());
    writer.write_all(&data).unwrap();
    assert_eq!(writer.finish(), (expected, data.len() as u64));
    assert_eq!(writer.into_inner(), data);
}

#[test]
fn files_are_checksummed_in_base64() {
    let temp = tempfile::tempdir().unwrap();
    for (name, content, expected) in [
        ("check", &b"123456789"[..], CRC_123456789),
        ("empty", b"", CRC_EMPTY),
        ("hello", b"Hello, World!", CRC_HELLO),
    ] {
        let path = temp.path().join(name);
        write(&path, content);
        assert_eq!(crc64nvme_file(&path).unwrap(), expected, "{name}");
        verify_crc64nvme_file(&path, expected).unwrap();
    }
}

#[test]
fn a_mismatch_is_a_checksum_error() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("hello");
    write(&path, b"Hello, World?");
    let error = verify_crc64nvme_file(&path, CRC_HELLO).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Checksum);
    let actual = crc64nvme(b"Hello, World?");
    assert_eq!(
        error.to_string(),
        format!(
            "`{}` has crc64nvme {actual} but {CRC_HELLO} was expected: the file is corrupt or changed; download it again",
            path.display()
        )
    );
    assert!(error.kind().is_retryable());
}

#[test]
fn base64_round_trips_and_rejects_garbage() {
    assert_eq!(
        Crc64Nvme::from_base64(CRC_123456789).unwrap().as_u64(),
        0xAE8B_1486_0A79_9888
    );
    let error = Crc64Nvme::from_base64("abc").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Checksum);
    assert_eq!(
        error.to_string(),
        "`abc` is not a crc64nvme checksum: expected base64 of 8 bytes, e.g. rosUhgp5mIg="
    );
}

#[test]
fn a_missing_file_is_not_found() {
    let error = crc64nvme_file("/nonexistent/herd/file").unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(
        error.to_string(),
        "cannot open `/nonexistent/herd/file`: it does not exist; check the path"
    );
    assert!(
        error.report().starts_with(
            "cannot open `/nonexistent/herd/file`: it does not exist; check the path: "
        )
    );
}
