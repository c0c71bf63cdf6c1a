//! The PEM files of the mesh: reading certificates and keys, naming the file at fault, and
//! writing them so that a private key is never readable by others and a reader never sees
//! half a file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{FileKind, TlsError};

fn read_pem(path: &Path, what: FileKind) -> Result<Vec<rustls_pemfile::Item>, TlsError> {
    let file = File::open(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let items = rustls_pemfile::read_all(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            // Malformed PEM comes back as InvalidData; anything else is a read error.
            if e.kind() == io::ErrorKind::InvalidData {
                TlsError::NotPem {
                    what,
                    path: path.to_owned(),
                    detail: e.to_string(),
                }
            } else {
                TlsError::Read {
                    what,
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    if items.is_empty() {
        return Err(TlsError::NotPem {
            what,
            path: path.to_owned(),
            detail: "no -----BEGIN ...----- block found".into(),
        });
    }
    Ok(items)
}

pub(super) fn read_certs(
    path: &Path,
    what: FileKind,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = read_pem(path, what)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::X509Certificate(der) => Some(der),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads a private key, refusing one that every user of the host may read or write (as
/// OpenSSH does). Group access is allowed: a service user often reads its key through a group.
pub(super) fn read_key(path: &Path, what: FileKind) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = read_pem(path, what)?
        .into_iter()
        .find_map(|item| match item {
            rustls_pemfile::Item::Pkcs8Key(k) => Some(PrivateKeyDer::Pkcs8(k)),
            rustls_pemfile::Item::Sec1Key(k) => Some(PrivateKeyDer::Sec1(k)),
            rustls_pemfile::Item::Pkcs1Key(k) => Some(PrivateKeyDer::Pkcs1(k)),
            _ => None,
        })
        .ok_or_else(|| TlsError::NoKey {
            what,
            path: path.to_owned(),
        })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| TlsError::Read {
                what,
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o007 != 0 {
            return Err(TlsError::KeyExposed {
                what,
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(key)
}

pub(super) fn create_dir(path: &Path) -> Result<(), TlsError> {
    // 0700 for directories we create: they hold private keys. Existing ones are left alone.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| TlsError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Creates `path`, failing if it exists. The mode is given at creation, so a private key is
/// never readable by others, not even for an instant.
pub(super) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_err)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        let _ = fs::remove_file(path);
        return Err(write_err(source));
    }
    Ok(())
}

/// Writes `path` through a fresh temporary file renamed over it: readers see the old or the
/// new contents, never half of them, and the new file has `mode` whatever the old one had.
pub(super) fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    // A temporary file left by a crashed run of this same process id is stale.
    let _ = fs::remove_file(&tmp);
    write_new_file(&tmp, contents, mode).map_err(|e| match e {
        TlsError::Write { source, .. } => TlsError::Write {
            path: path.to_owned(),
            source,
        },
        other => other,
    })?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        TlsError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    let unix = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), unix)
}
