//! Embedding seamless in a Rust program: load a model once, segment an image held in memory with
//! progress, then a generated slide to a file, and cancel a run from another thread.
//!
//! `cargo run --release --example embed [MODEL]` (default: the shipped demo U-Net).

use std::sync::Arc;

use seamless::embed::{Cancel, Device, Engine, Error, Options, OutputKind, Progress};

fn main() -> Result<(), Error> {
    let model = std::env::args().nth(1).unwrap_or_else(|| "models/unet-demo.safetensors".into());
    // The CPU with a 256 MiB budget: the planner picks tiles that fit (as `--tile auto`).
    let options = Options { device: Device::Cpu, memory_budget: Some(256 << 20), ..Options::default() };
    let engine = Engine::open(&model, &options)?;
    println!("{} on {}", model, engine.backend_name());

    // An image in memory (channels x height x width, raw values): probabilities come back.
    let (c, h, w) = (engine.model().in_channels(), 700, 900);
    let image = seamless::Tensor::from_vec(c, h, w, (0..c * h * w).map(|i| ((i * 7919) % 251) as f32).collect());
    let probs = engine.segment(
        &image,
        &mut |p| {
            if let Progress::Tiles { done, total, .. } = p {
                eprint!("\rtile {done}/{total}");
            }
        },
        None,
    )?;
    eprintln!();
    let labels = seamless::pipeline::labels(&probs);
    let foreground = labels.data.iter().filter(|&&l| l > 0.0).count();
    println!("{}x{}: {foreground} pixels not of class 0", probs.w, probs.h);

    // A slide from disk (here a generated one) to a file, streamed a tile at a time.
    let out = std::env::temp_dir().join("seamless-embed-example.zarr");
    let summary = engine.run_file("synth:3000x2000", &out, OutputKind::Labels, true, &mut |_| {}, None)?;
    println!("{} tiles into {} in {:.2} s", summary.tiles_total, out.display(), summary.seconds);

    // Cancellation from another thread: the run stops at its next window with Error::Cancelled.
    let cancel = Arc::new(Cancel::new());
    let stopper = {
        let cancel = cancel.clone();
        std::thread::spawn(move || cancel.cancel())
    };
    stopper.join().expect("the stopping thread");
    match engine.segment(&image, &mut |_| {}, Some(&cancel)) {
        Err(Error::Cancelled) => println!("cancelled, as asked"),
        other => println!("not cancelled: {:?}", other.map(|t| t.h)),
    }
    Ok(())
}
