//! The llama.cpp source: a user's tree (`LLAMA_CPP_DIR`), or the pinned tree
//! taken from the registry package named in the pin (`pin.toml`, a copy of
//! the workspace's `vendor/pin/Cargo.toml`), fetched by cargo itself (from the
//! registry, or from a `cargo vendor` folder that replaces it), checked by
//! sha256 and extracted once into the shared cache.

use crate::config::{var, Config};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where cargo put the pinned package.
enum Fetched {
    /// The registry's package file (`<cargo home>/registry/cache/<index>/<pkg>-<ver>.crate`).
    Archive(PathBuf),
    /// A `cargo vendor` folder (source replacement): the unpacked package and its
    /// `.cargo-checksum.json`, which records the package file's sha256 and each file's.
    Vendored(PathBuf),
}

/// The pin, as written in `[package.metadata.llama-cpp]` of the pin manifest.
pub struct Pin {
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub commit: String,
    pub folder: String,
}

pub fn llama_cpp_dir(cfg: &Config) -> PathBuf {
    if let Some(dir) = var("LLAMA_CPP_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("include").join("llama.h").is_file() {
            panic!(
                "LLAMA_CPP_DIR={} is not a llama.cpp tree (no include/llama.h); \
                 point it at the root of a llama.cpp checkout or unset it to use the pinned tree",
                dir.display()
            );
        }
        for sub in ["include", "src", "ggml", "CMakeLists.txt"] {
            println!("cargo:rerun-if-changed={}", dir.join(sub).display());
        }
        return dir;
    }
    let pin = read_pin(&cfg.pin_manifest);
    let patches = read_patches(&cfg.patch_dir, cfg.rpc);
    // The folder names the pin and the patches, so an edited patch extracts anew.
    let dest = if patches.is_empty() {
        cfg.cache_dir.join(format!("src-{}", &pin.sha256[..16]))
    } else {
        cfg.cache_dir.join(format!("src-{}-p{}", &pin.sha256[..16], patch_key(&patches)))
    };
    let tree = dest.join(&pin.folder);
    if dest.join(".complete").is_file() {
        return tree;
    }
    match fetch(cfg, &pin) {
        Fetched::Archive(file) => {
            verify_archive(&file, &pin);
            place(&pin, &dest, &patches, |tmp| extract(&file, &pin, tmp));
        }
        Fetched::Vendored(dir) => place(&pin, &dest, &patches, |tmp| copy_vendored(&dir, &pin, tmp)),
    }
    tree
}

/// `patches/*.patch` (sorted by name): small changes written in this project and
/// applied to the pinned tree, each listed in docs/SAFETY.md. `ggml-rpc-*`
/// patches touch only files that builds with the `rpc` feature compile, so
/// only those builds take them (the others keep the plain tree and its build
/// folders). Not applied to a user's tree (`LLAMA_CPP_DIR`).
pub fn read_patches(dir: &Path, rpc: bool) -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .filter(|p| rpc || !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ggml-rpc-")))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

fn patch_key(patches: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (name, text) in patches {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Applies each patch (unified diffs, one or more files each, paths `a/...`
/// relative to the llama.cpp folder) to `tree`; a patch that does not apply
/// exactly stops the build with the file and the reason.
fn apply_patches(tree: &Path, patches: &[(String, String)]) {
    for (name, text) in patches {
        for (file, section) in split_patch(text) {
            let path = tree.join(&file);
            let original = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("patch {name}: cannot read {} in the pinned tree: {e}", path.display()));
            let patch = diffy::Patch::from_str(&section)
                .unwrap_or_else(|e| panic!("patch {name}: the diff of {file} does not parse: {e}"));
            let patched = diffy::apply(&original, &patch).unwrap_or_else(|e| {
                panic!(
                    "patch {name} does not apply to {file} of the pinned llama.cpp ({e}); update the patch for the pin"
                )
            });
            fs::write(&path, patched).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }
}

/// Splits a multi-file unified diff into (file, single-file diff) pairs.
fn split_patch(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("--- ") {
            let file = rest.trim_end().trim_start_matches("a/").to_string();
            out.push((file, String::new()));
        }
        if let Some((_, section)) = out.last_mut() {
            section.push_str(line);
        }
    }
    assert!(!out.is_empty(), "a patch in llama-sys/patches holds no file diff");
    out
}

pub fn read_pin(manifest: &Path) -> Pin {
    let text = fs::read_to_string(manifest)
        .unwrap_or_else(|e| panic!("cannot read the llama.cpp pin {}: {e}", manifest.display()));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", manifest.display()));
    let table = doc
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("llama-cpp"))
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("{} has no [package.metadata.llama-cpp] table", manifest.display()));
    let field = |key: &str| -> String {
        match table.get(key).and_then(toml::Value::as_str) {
            Some(v) if !v.is_empty() => v.to_string(),
            _ => panic!("{}: pin field `{key}` missing or not a string", manifest.display()),
        }
    };
    let pin = Pin {
        package: field("package"),
        version: field("version"),
        sha256: field("sha256"),
        commit: field("commit"),
        folder: field("folder"),
    };
    assert!(
        pin.sha256.len() == 64 && pin.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
        "{}: pin field `sha256` is not 64 hex digits",
        manifest.display()
    );
    pin
}

/// Runs `cargo fetch` on a copy of the pin manifest and returns where cargo put
/// the package: its `.crate` file in cargo's cache, or a vendored folder when a
/// `cargo vendor` directory replaces the registry (cargo's configuration is
/// found from this script's folder, as for the outer build; `CARGO_HOME` and
/// `CARGO_NET_OFFLINE` pass through the environment).
fn fetch(cfg: &Config, pin: &Pin) -> Fetched {
    let work = cfg.cache_dir.join("pin");
    fs::create_dir_all(&work).expect("create the pin work folder");
    fs::copy(&cfg.pin_manifest, work.join("Cargo.toml")).expect("copy the pin manifest");
    // Resolved afresh each time: a lock file left by an online fetch may name
    // versions of the pin's dependencies that a vendored folder lacks. Only the
    // pinned package itself matters, and its version is exact.
    let _ = fs::remove_file(work.join("Cargo.lock"));
    fs::write(work.join("lib.rs"), "// Empty: this package only exists so that cargo fetches the llama.cpp pin.\n")
        .expect("write the pin's lib.rs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = work.join("Cargo.toml");
    let how_to_fix = format!(
        "llama-sys needs the llama.cpp source (package {} {}, llama.cpp {}). Either run once while online:\n    \
         cargo fetch --manifest-path {}\nor vendor it (docs/offline-builds.md of llama-rs: `cargo vendor --sync` \
         on that manifest), or set LLAMA_CPP_DIR=/path/to/llama.cpp (a checkout of commit {}).",
        pin.package,
        pin.version,
        pin.commit,
        manifest.display(),
        pin.commit
    );
    let status = Command::new(&cargo)
        .arg("fetch")
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("`cargo fetch` of the llama.cpp pin failed ({s}).\n{how_to_fix}"),
        Err(e) => panic!("cannot run {cargo}: {e}.\n{how_to_fix}"),
    }
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo} metadata: {e}"));
    if !out.status.success() {
        panic!("`cargo metadata` on the pin failed: {}\n{how_to_fix}", String::from_utf8_lossy(&out.stderr));
    }
    let pkg_manifest = pin_manifest_path(&out.stdout, pin);
    let pkg_dir = pkg_manifest.parent().expect("package folder");
    if pkg_dir.join(".cargo-checksum.json").is_file() {
        return Fetched::Vendored(pkg_dir.to_path_buf());
    }
    // <cargo home>/registry/src/<index>/<pkg>-<ver>/Cargo.toml -> registry/cache/<index>/<pkg>-<ver>.crate
    let index = pkg_dir.parent().expect("index folder");
    let registry = index.parent().and_then(Path::parent).expect("registry folder");
    let file = registry
        .join("cache")
        .join(index.file_name().expect("index name"))
        .join(format!("{}-{}.crate", pin.package, pin.version));
    if !file.is_file() {
        panic!("cargo fetched the pin but {} is missing.\n{how_to_fix}", file.display());
    }
    Fetched::Archive(file)
}

/// The `manifest_path` of the pinned package in `cargo metadata`'s JSON.
fn pin_manifest_path(json: &[u8], pin: &Pin) -> PathBuf {
    let meta: serde_json::Value = serde_json::from_slice(json).expect("`cargo metadata` printed invalid JSON");
    let packages = meta["packages"].as_array().expect("`cargo metadata` lists no packages");
    let found = packages
        .iter()
        .find(|p| p["name"] == pin.package.as_str() && p["version"] == pin.version.as_str())
        .unwrap_or_else(|| panic!("the pin's metadata does not list {} {}", pin.package, pin.version));
    PathBuf::from(found["manifest_path"].as_str().expect("a manifest_path string"))
}

fn sha256_file(file: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut f = fs::File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn verify_archive(file: &Path, pin: &Pin) {
    let got = sha256_file(file);
    if got != pin.sha256 {
        panic!(
            "{} has sha256 {got}, but the llama.cpp pin (llama-sys/pin.toml) says {}; refusing to build from it. \
             Delete the file and fetch again, or set LLAMA_CPP_DIR.",
            file.display(),
            pin.sha256
        );
    }
}

/// Fills a temporary sibling of `dest` with `fill`, patches it, stamps it
/// complete and renames it into place: the tree appears whole or not at all.
fn place(pin: &Pin, dest: &Path, patches: &[(String, String)], fill: impl FnOnce(&Path)) {
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).expect("create extraction folder");
    fill(&tmp);
    apply_patches(&tmp.join(&pin.folder), patches);
    fs::write(tmp.join(".complete"), format!("{} {}\n", pin.sha256, pin.commit)).expect("stamp");
    if fs::rename(&tmp, dest).is_err() {
        // Another build extracted it meanwhile.
        let _ = fs::remove_dir_all(&tmp);
        assert!(dest.join(".complete").is_file(), "could not place the llama.cpp tree at {}", dest.display());
    }
}

/// Extracts only `<package>-<version>/<folder>/` of the package file into `tmp`.
fn extract(file: &Path, pin: &Pin, tmp: &Path) {
    let prefix = PathBuf::from(format!("{}-{}", pin.package, pin.version));
    let keep = prefix.join(&pin.folder);
    let gz = flate2::read::GzDecoder::new(fs::File::open(file).expect("open package"));
    let mut archive = tar::Archive::new(gz);
    let mut count = 0usize;
    for entry in archive.entries().expect("read package archive") {
        let mut entry = entry.expect("read archive entry");
        let path = entry.path().expect("entry path").into_owned();
        if !path.starts_with(&keep) {
            continue;
        }
        let rel = path.strip_prefix(&prefix).expect("checked prefix");
        let target = tmp.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).expect("create folder");
        }
        entry.unpack(&target).expect("extract entry");
        count += 1;
    }
    assert!(count > 0, "{} holds no {}/ folder", file.display(), pin.folder);
}

/// Copies `<folder>/` of a vendored package into `tmp`, after checking that the
/// vendored package is the pinned one (`package` in `.cargo-checksum.json` is
/// the package file's sha256, taken from the registry's index when vendored)
/// and that every file copied has the sha256 recorded for it there.
fn copy_vendored(dir: &Path, pin: &Pin, tmp: &Path) {
    let sums_path = dir.join(".cargo-checksum.json");
    let text = fs::read_to_string(&sums_path).unwrap_or_else(|e| panic!("read {}: {e}", sums_path.display()));
    let sums: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", sums_path.display()));
    if sums["package"] != pin.sha256.as_str() {
        panic!(
            "the vendored {} at {} is not the pinned package: its checksum file says sha256 {}, the llama.cpp pin \
             (llama-sys/pin.toml) says {}; vendor it again (`cargo vendor --sync` on the pin manifest).",
            pin.package,
            dir.display(),
            sums["package"],
            pin.sha256
        );
    }
    let files = sums["files"].as_object().unwrap_or_else(|| panic!("{} lists no files", sums_path.display()));
    let mut count = 0usize;
    for (rel, want) in files {
        let inside = Path::new(rel).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside || !Path::new(rel).starts_with(&pin.folder) {
            continue;
        }
        let from = dir.join(rel);
        let got = sha256_file(&from);
        if want != got.as_str() {
            panic!(
                "{} has sha256 {got}, but {} records {want}: the vendored llama.cpp tree was changed; vendor it again",
                from.display(),
                sums_path.display()
            );
        }
        let to = tmp.join(rel);
        fs::create_dir_all(to.parent().expect("a parent folder")).expect("create folder");
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        count += 1;
    }
    assert!(count > 0, "{} holds no {}/ folder", dir.display(), pin.folder);
}
