//! The emulated CUDA device (`cuda_emulator/`) for tests on machines without a GPU: built here with
//! the host C++ compiler from the same `kernels/*.cu` sources NVRTC compiles (the ones embedded in
//! this binary), cached under the target folder, and loaded in place of libcuda.
//!
//! Which device the CUDA tests use: `SEAMLESS_TEST_CUDA=real` or `=emulated` decides; otherwise a
//! real GPU when this machine has an NVIDIA driver node (`/dev/nvidiactl`) or SEAMLESS_REQUIRE_GPU=1
//! (the GPU bundle's run script), the emulated device everywhere else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use seamless::cuda::sources::FAMILIES;

/// The random-delay seed the tests run the emulated device with (`SEAMLESS_EMU_DELAYS`).
pub const DELAY_SEED: u64 = 0x5EA1_1E55;

const EMULATOR_FILES: &[&str] =
    &["driver.cpp", "scheduler.cpp", "prelude.hpp", "runtime.hpp", "registry.hpp", "half.hpp", "internal.hpp"];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda_emulator")
}

fn compiler() -> String {
    std::env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "c++".into())
}

const FLAGS: &[&str] = &[
    "-std=c++17",
    "-O3",
    // Built on the machine that runs it, so its own instruction set: fmaf becomes one instruction.
    "-march=native",
    "-fPIC",
    "-fvisibility=hidden",
    // No contraction: `a * b + c` rounds twice, as NVRTC's --fmad=false does.
    "-ffp-contract=off",
    "-fno-fast-math",
    "-Wall",
    "-Wno-unknown-pragmas",
];

/// The translation unit for one family: the host prelude, the family's source in an unnamed
/// namespace, and one registration per kernel the backend loads by name.
fn family_unit(name: &str, source: &str, functions: &[&str]) -> String {
    let mut s =
        format!("#include \"prelude.hpp\"\nnamespace {{\n#line 1 \"kernels/{name}.cu\"\n{source}\n}}  // namespace\n");
    for f in functions {
        s.push_str(&format!("KERNEL({f})\n"));
    }
    s
}

/// Adds one input of the build to its key, after its length so that bytes cannot move from one
/// input to the next and leave the key unchanged.
fn add_to_key(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Build the emulator (or find it built with the same sources, flags and compiler).
fn build() -> Result<PathBuf, String> {
    let cxx = compiler();
    let version = Command::new(&cxx)
        .arg("--version")
        .output()
        .map_err(|e| format!("the emulated CUDA device needs a C++ compiler ({cxx}): {e}"))?;
    let mut key = blake3::Hasher::new();
    add_to_key(&mut key, &version.stdout);
    add_to_key(&mut key, FLAGS.join(" ").as_bytes());
    let dir = source_dir();
    for f in EMULATOR_FILES {
        let text = std::fs::read(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()))?;
        add_to_key(&mut key, &text);
    }
    let units: Vec<(String, String)> = FAMILIES
        .iter()
        .map(|f| (format!("family_{}.cpp", f.name), family_unit(f.name, f.source, f.functions)))
        .collect();
    for (_, text) in &units {
        add_to_key(&mut key, text.as_bytes());
    }
    let key = &key.finalize().to_hex()[..16];
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emulator");
    let done = root.join(key);
    let lib = done.join("libcuda-emulator.so");
    if lib.exists() {
        return Ok(lib);
    }
    // Built in a folder of its own and renamed into place, so concurrent builders (test binaries
    // run in parallel by nextest) never see half a library.
    let work = root.join(format!("{key}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let mut sources: Vec<PathBuf> = vec![dir.join("driver.cpp"), dir.join("scheduler.cpp")];
    for (name, text) in &units {
        let p = work.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        sources.push(p);
    }
    let mut children = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let obj = work.join(format!("{i}.o"));
        let mut cmd = Command::new(&cxx);
        cmd.args(FLAGS).arg("-I").arg(&dir).arg("-c").arg(src).arg("-o").arg(&obj);
        children.push((cmd.spawn().map_err(|e| format!("cannot run {cxx}: {e}"))?, src.clone(), obj));
    }
    let mut objects = Vec::new();
    for (child, src, obj) in children {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("compiling {} for the emulated device failed", src.display()));
        }
        objects.push(obj);
    }
    let map = work.join("exports.map");
    std::fs::write(&map, "{ global: cu*; seamless_emu_*; local: *; };\n").map_err(|e| e.to_string())?;
    let built = work.join("libcuda-emulator.so");
    run(Command::new(&cxx)
        .arg("-shared")
        .arg("-Wl,-soname,libcuda.so")
        .arg(format!("-Wl,--version-script={}", map.display()))
        .arg("-o")
        .arg(&built)
        .args(&objects)
        .arg("-lpthread"))?;
    match std::fs::rename(&work, &done) {
        Ok(()) => {}
        Err(_) if lib.exists() => {
            let _ = std::fs::remove_dir_all(&work); // another process finished first
        }
        Err(e) => return Err(format!("{} -> {}: {e}", work.display(), done.display())),
    }
    Ok(lib)
}

/// The emulator library, built once per process.
pub fn emulator_library() -> &'static Path {
    static LIB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match LIB.get_or_init(build) {
        Ok(p) => p,
        Err(e) => panic!("the emulated CUDA device could not be built: {e}"),
    }
}

/// Whether the CUDA tests run on the emulated device (see the module comment).
pub fn emulated() -> bool {
    match std::env::var("SEAMLESS_TEST_CUDA").as_deref() {
        Ok("real") => false,
        Ok("emulated") => true,
        _ => {
            !(std::env::var_os("SEAMLESS_REQUIRE_GPU").is_some_and(|v| v == "1")
                || Path::new("/dev/nvidiactl").exists())
        }
    }
}

/// Make this process's CUDA backend run on the emulated device (with the test delays on) unless
/// the tests target a real GPU. Call before anything touches CUDA; idempotent.
pub fn select_cuda_device() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if !emulated() {
            return;
        }
        let lib = emulator_library();
        seamless::cuda::libs::use_driver_library(lib).expect("chosen before any CUDA use");
        // SAFETY: the emulator's initialisers only set up its own state; seamless_emu_set_delays
        // takes a u64 and touches nothing but the emulator's settings.
        unsafe {
            let l = libloading::Library::new(lib).expect("the emulator loads");
            let set: libloading::Symbol<unsafe extern "C" fn(u64)> =
                l.get(b"seamless_emu_set_delays").expect("the emulator exports seamless_emu_set_delays");
            set(DELAY_SEED);
            std::mem::forget(l);
        }
    });
}

/// Environment for a child `seamless` process that should run on the same device as the tests.
pub fn cuda_env() -> Vec<(String, String)> {
    if emulated() {
        vec![
            ("SEAMLESS_CUDA_DRIVER".into(), emulator_library().display().to_string()),
            ("SEAMLESS_EMU_DELAYS".into(), DELAY_SEED.to_string()),
        ]
    } else {
        Vec::new()
    }
}
