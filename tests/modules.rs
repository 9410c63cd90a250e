//! Backend modules loaded at run time (feature `dynamic-backends`): modules
//! from another llama.cpp version are refused; in static builds the API says
//! that modules cannot be loaded.

use llama_rs::Error;

#[cfg(not(feature = "dynamic-backends"))]
#[test]
fn static_builds_refuse_modules() {
    // SAFETY: nothing else in this test binary uses llama-rs concurrently (one
    // test); the file does not exist.
    match unsafe { llama_rs::load_backend_module("/nonexistent/libggml-cuda.so") } {
        Err(Error::BackendModule { reason, .. }) => assert!(reason.contains("dynamic-backends"), "{reason}"),
        other => panic!("expected a BackendModule error, got {other:?}"),
    }
    // Nothing was loaded at init; the refused attempt is listed.
    let listed = llama_rs::backend_modules();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].name.is_none() && listed[0].error.is_some());
}

#[cfg(feature = "dynamic-backends")]
mod dynamic {
    use super::*;
    use std::path::PathBuf;

    fn cpu_module() -> PathBuf {
        let m = llama_rs::backend_modules();
        let cpu = m.iter().find(|m| m.name.as_deref() == Some("CPU")).unwrap_or_else(|| panic!("{m:?}"));
        cpu.path.clone()
    }

    #[test]
    fn the_cpu_module_was_loaded_at_init() {
        let path = cpu_module();
        assert!(std::fs::read_to_string(format!("{}.pin", path.display())).unwrap().trim() == llama_rs::pin_stamp());
        assert!(llama_rs::devices().iter().any(|d| d.kind == llama_rs::DeviceKind::Cpu));
    }

    #[test]
    fn modules_without_a_matching_pin_are_refused() {
        let src = cpu_module();
        let dir = std::env::temp_dir().join(format!("llama-rs-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("libggml-cpu.so");
        std::fs::copy(&src, &copy).unwrap();
        let stamp = dir.join("libggml-cpu.so.pin");

        // No stamp at all.
        let _ = std::fs::remove_file(&stamp);
        // SAFETY: each attempt below is refused before ggml_backend_load (no
        // stamp, wrong stamp, already loaded), so the registry the other
        // test reads is never changed.
        match unsafe { llama_rs::load_backend_module(&copy) } {
            Err(Error::BackendModule { reason, .. }) => assert!(reason.contains("no pin stamp"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A stamp from another llama.cpp version.
        std::fs::write(&stamp, "llama.cpp 0123456789ab\n").unwrap();
        // SAFETY: each attempt below is refused before ggml_backend_load (no
        // stamp, wrong stamp, already loaded), so the registry the other
        // test reads is never changed.
        match unsafe { llama_rs::load_backend_module(&copy) } {
            Err(Error::BackendModule { reason, .. }) => {
                assert!(reason.contains("0123456789ab") && reason.contains(llama_rs::sys::LLAMA_CPP_COMMIT), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // The right stamp, but that backend is already loaded.
        std::fs::write(&stamp, format!("{}\n", llama_rs::pin_stamp())).unwrap();
        // SAFETY: each attempt below is refused before ggml_backend_load (no
        // stamp, wrong stamp, already loaded), so the registry the other
        // test reads is never changed.
        match unsafe { llama_rs::load_backend_module(&copy) } {
            Err(Error::BackendModule { reason, .. }) => assert!(reason.contains("already loaded"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Every attempt is listed with its outcome.
        let listed = llama_rs::backend_modules();
        assert!(listed.iter().filter(|m| m.path == copy && m.error.is_some()).count() >= 3, "{listed:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
