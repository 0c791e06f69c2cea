//! Generates the server side of KurrentDB's gRPC services from the `.proto`
//! files shipped inside the `kurrentdb` client crate, so the test server
//! speaks exactly the wire format of the client version the workspace uses.
//!
//! The client's sources are found in Cargo's registry by the version pinned in
//! the workspace's `Cargo.lock`; set `KURRENTDB_PROTO_DIR` to a directory of
//! those `.proto` files to build elsewhere (e.g. with vendored sources).
//! `protoc` comes from the `protoc-bin-vendored` crate: nothing to install.

use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &["shared.proto", "streams.proto", "serverfeatures.proto"];

fn main() {
    println!("cargo:rerun-if-env-changed=KURRENTDB_PROTO_DIR");
    let proto_dir = match std::env::var_os("KURRENTDB_PROTO_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => find_client_protos().unwrap_or_else(|why| {
            panic!(
                "could not find the .proto files of the kurrentdb crate: {why}. \
                 Run `cargo fetch`, or set KURRENTDB_PROTO_DIR to the crate's `protos` directory."
            )
        }),
    };
    let protoc = protoc_bin_vendored::protoc_bin_path().expect(
        "protoc-bin-vendored has no protoc for this platform; set PROTOC to a protoc binary",
    );
    let well_known = protoc_bin_vendored::include_path()
        .expect("protoc-bin-vendored ships the well-known types");
    // prost-build finds protoc through PROTOC; one set by the user wins.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc);
    }
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_protos(&files, &[proto_dir.clone(), well_known])
        .unwrap_or_else(|e| panic!("compiling {}: {e}", proto_dir.display()));
}

/// `$CARGO_HOME/registry/src/*/kurrentdb-<locked version>/protos`.
fn find_client_protos() -> Result<PathBuf, String> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let lock = manifest
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.exists())
        .ok_or("no Cargo.lock above the crate")?;
    println!("cargo:rerun-if-changed={}", lock.display());
    let version = locked_version(&lock, "kurrentdb")
        .ok_or_else(|| format!("kurrentdb is not in {}", lock.display()))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let registry = cargo_home.join("registry").join("src");
    let entries =
        std::fs::read_dir(&registry).map_err(|e| format!("reading {}: {e}", registry.display()))?;
    for index in entries.flatten() {
        let candidate = index
            .path()
            .join(format!("kurrentdb-{version}"))
            .join("protos");
        if candidate.join("streams.proto").exists() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "kurrentdb-{version} is not unpacked under {}",
        registry.display()
    ))
}

/// The version of `package` in a Cargo.lock (the first, if several).
fn locked_version(lock: &Path, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(lock).ok()?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"") {
            let version = lines.next()?.trim();
            return version
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
        }
    }
    None
}
