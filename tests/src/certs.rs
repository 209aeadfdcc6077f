//! Throwaway certificates for the TLS tests, made with the `openssl` command: a CA, a
//! server certificate it signed for `localhost` and `127.0.0.1`, and a second CA that
//! signed nothing (for the "wrong CA" cases). Valid for two days.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pg::{output_text, run_async};

/// The files [`make`] writes into a directory (PEM).
pub struct Certs {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn in_dir(dir: &Path) -> Certs {
        Certs {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        }
    }
}

/// Makes the certificates in `dir`; `command` builds the `openssl` invocation (the
/// PostgreSQL harness runs it as the server's OS user, who must own the key).
pub async fn make(dir: &Path, command: impl Fn(&Path, &[&OsStr]) -> Command) -> Certs {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [(Vec<&str>, &str); 4] = [
        (
            [
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat(),
            "/CN=rekey test CA",
        ),
        (
            [
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "other-ca.key", "-out", "other-ca.crt"],
            ]
            .concat(),
            "/CN=rekey other CA",
        ),
        (
            [
                &["req"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
            "/CN=localhost",
        ),
        (
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
            "",
        ),
    ];
    for (mut args, subject) in steps {
        args.extend(["-days", "2"]);
        if !subject.is_empty() {
            args.extend(["-subj", subject]);
        }
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let mut cmd = command(Path::new("openssl"), &args);
        cmd.current_dir(dir);
        let out = run_async(cmd).await;
        if !out.status.success() {
            panic!(
                "openssl {args:?} failed (is openssl installed?):\n{}",
                output_text(&out)
            );
        }
    }
    Certs::in_dir(dir)
}
