//! The llama.cpp source: a user's tree (`LLAMA_CPP_DIR`), or the pinned tree
//! taken from the registry package named in `vendor/pin/Cargo.toml`, fetched by
//! cargo itself, checked by sha256 and extracted once into the shared cache.

use crate::config::{var, Config};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let pin = read_pin(&cfg.vendor_dir.join("pin").join("Cargo.toml"));
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
    let crate_file = fetch(cfg, &pin);
    verify(&crate_file, &pin);
    extract(&crate_file, &pin, &dest, &patches);
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
    let section = text
        .split("[package.metadata.llama-cpp]")
        .nth(1)
        .unwrap_or_else(|| panic!("{} has no [package.metadata.llama-cpp] table", manifest.display()));
    let field = |key: &str| -> String {
        section
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_else(|| panic!("{}: pin field `{key}` missing", manifest.display()))
    };
    Pin {
        package: field("package"),
        version: field("version"),
        sha256: field("sha256"),
        commit: field("commit"),
        folder: field("folder"),
    }
}

/// Runs `cargo fetch` on a copy of the pin manifest and returns the path of the
/// downloaded package file in cargo's own cache.
fn fetch(cfg: &Config, pin: &Pin) -> PathBuf {
    let work = cfg.cache_dir.join("pin");
    fs::create_dir_all(&work).expect("create the pin work folder");
    for f in ["Cargo.toml", "lib.rs"] {
        fs::copy(cfg.vendor_dir.join("pin").join(f), work.join(f)).expect("copy the pin manifest");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = work.join("Cargo.toml");
    let how_to_fix = format!(
        "llama-sys needs the llama.cpp source (package {} {}, llama.cpp {}). Either run once while online:\n    \
         cargo fetch --manifest-path {}\nor set LLAMA_CPP_DIR=/path/to/llama.cpp (a checkout of commit {}).",
        pin.package,
        pin.version,
        pin.commit,
        cfg.vendor_dir.join("pin").join("Cargo.toml").display(),
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
    let json = String::from_utf8_lossy(&out.stdout);
    let needle = format!("/{}-{}/Cargo.toml\"", pin.package, pin.version);
    let end = json.find(&needle).unwrap_or_else(|| panic!("the pin's metadata does not list {needle}"));
    let start = json[..end].rfind('"').expect("a JSON string") + 1;
    // <cargo home>/registry/src/<index>/<pkg>-<ver>/Cargo.toml -> registry/cache/<index>/<pkg>-<ver>.crate
    let unpacked = Path::new(&json[start..end + needle.len() - 1]);
    let pkg_dir = unpacked.parent().expect("package folder");
    let index = pkg_dir.parent().expect("index folder");
    let registry = index.parent().and_then(Path::parent).expect("registry folder");
    let file = registry
        .join("cache")
        .join(index.file_name().expect("index name"))
        .join(format!("{}-{}.crate", pin.package, pin.version));
    if !file.is_file() {
        panic!("cargo fetched the pin but {} is missing.\n{how_to_fix}", file.display());
    }
    file
}

fn verify(file: &Path, pin: &Pin) {
    let mut hasher = Sha256::new();
    let mut f = fs::File::open(file).expect("open the pinned package");
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read the pinned package");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != pin.sha256 {
        panic!(
            "{} has sha256 {got}, but the pin in vendor/pin/Cargo.toml says {}; refusing to build from it. \
             Delete the file and fetch again, or set LLAMA_CPP_DIR.",
            file.display(),
            pin.sha256
        );
    }
}

/// Extracts only `<package>-<version>/<folder>/` into `dest`, atomically:
/// into a temporary sibling first, renamed when complete.
fn extract(file: &Path, pin: &Pin, dest: &Path, patches: &[(String, String)]) {
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).expect("create extraction folder");
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
    apply_patches(&tmp.join(&pin.folder), patches);
    fs::write(tmp.join(".complete"), format!("{} {}\n", pin.sha256, pin.commit)).expect("stamp");
    if fs::rename(&tmp, dest).is_err() {
        // Another build extracted it meanwhile.
        let _ = fs::remove_dir_all(&tmp);
        assert!(dest.join(".complete").is_file(), "could not place the llama.cpp tree at {}", dest.display());
    }
}
