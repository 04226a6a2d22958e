//! The cluster recipes of docs/cluster.md (`tools/cluster/`): the Slurm job-array script passes
//! `bash -n` and, run as two array tasks at once (on the CPU, with a generated slide), fills one
//! OME-Zarr like one run; the Kubernetes indexed Job is the YAML it claims to be, and its container
//! command, run as two pods' indices at once, does the same. Every option either passes to
//! `seamless infer` is one `seamless infer --help` lists, and docs/cluster.md shows both files as
//! they are.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use common::unet;
use seamless::model::file::save_random;

const SLURM: &str = "tools/cluster/slurm-array.sh";
const K8S: &str = "tools/cluster/k8s-indexed-job.yaml";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `seamless infer` command in `text`: from the line that starts it through its `\`
/// continuations, joined into one line.
fn infer_command(text: &str) -> String {
    let starts = |l: &str| {
        let l = l.trim_start().to_lowercase();
        !l.starts_with('#') && (l.contains("seamless\" infer") || l.contains("seamless infer"))
    };
    let mut lines = text.lines().skip_while(|l| !starts(l));
    let mut cmd = String::new();
    for l in lines.by_ref() {
        let l = l.trim();
        match l.strip_suffix('\\') {
            Some(part) => cmd.push_str(part),
            None => {
                cmd.push_str(l);
                break;
            }
        }
    }
    assert!(!cmd.is_empty(), "no `seamless infer` command in:\n{text}");
    cmd
}

/// The options (`--name`) of `cmd`.
fn options(cmd: &str) -> Vec<&str> {
    cmd.split_whitespace().filter(|w| w.starts_with("--")).map(|w| w.split('=').next().unwrap()).collect()
}

/// Every option `cmd` gives is one that `seamless infer --help` lists, and it shards by an index
/// and a count from the environment.
fn check_against_cli(what: &str, cmd: &str, index: &str, count: &str) {
    let help = Command::new(env!("CARGO_BIN_EXE_seamless")).args(["infer", "--help"]).output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for o in options(cmd) {
        assert!(
            help.contains(&format!("{o} ")) || help.contains(&format!("{o}\n")),
            "{what}: {o} is no option of infer"
        );
    }
    for o in ["--model", "--input", "--output", "--tile", "--backend", "--resume", "--summary"] {
        assert!(options(cmd).contains(&o), "{what}: no {o} in {cmd}");
    }
    let shard = format!("--shard \"${index}/${count}\"");
    assert!(cmd.contains(&shard), "{what}: no {shard} in {cmd}");
}

/// A folder with a 1-channel model, and the environment both recipes read (an input of 80 tiles
/// of 64x64, the CPU backend).
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let site = Site { dir: tempfile::tempdir().unwrap() };
        save_random(&unet(1, 2, 4, 2, true, "transpose"), 5, false, &site.p("m.safetensors"), "test").unwrap();
        site
    }
    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn env(&self, out: &str) -> Vec<(String, String)> {
        let bin = Path::new(env!("CARGO_BIN_EXE_seamless"));
        let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
        [
            ("MODEL", self.p("m.safetensors").display().to_string()),
            ("INPUT", "synth:600x500:3".into()),
            ("OUTPUT", self.p(out).display().to_string()),
            ("TILE", "64x64".into()),
            ("BACKEND", "cpu".into()),
            ("SEAMLESS", bin.display().to_string()),
            ("PATH", path),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
    /// Start `program args` with the recipe's environment and `extra`.
    fn spawn(&self, out: &str, program: &str, args: &[&str], extra: &[(&str, String)]) -> Child {
        let mut c = Command::new(program);
        c.args(args).current_dir(self.dir.path()).envs(self.env(out));
        for (k, v) in extra {
            c.env(k, v);
        }
        c.env("SEAMLESS_LOG_INTERVAL", "0").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        c.spawn().expect("runs")
    }
    /// The output and the shards' summaries, after every shard exited 0.
    fn check_filled(&self, out: &str, children: Vec<Child>) {
        for (i, child) in children.into_iter().enumerate() {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{out}: shard {i}: {}", stderr(&o));
        }
        let one = self.p("one.zarr");
        if !one.exists() {
            let model = self.p("m.safetensors");
            let o = Command::new(env!("CARGO_BIN_EXE_seamless"))
                .args(["infer", "--model", model.to_str().unwrap(), "--input", "synth:600x500:3"])
                .args(["--output", one.to_str().unwrap(), "--tile", "64x64", "--backend", "cpu", "-q"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
        let read = |p: &Path| {
            let mut src = seamless::slide::open_source(p.to_str().unwrap(), None).unwrap();
            let (h, w, _) = src.shape();
            src.read(0, 0, h, w).unwrap()
        };
        assert!(!self.p(&format!("{out}.partial")).exists(), "{out}: the store was not moved into place");
        assert_eq!(read(&self.p(out)), read(&one), "{out}: the shards' output differs from one run");
        let computed: u64 = (0..2)
            .map(|i| {
                let sum = self.p(&format!("{out}.summary-{i}-of-2.json"));
                let sum: serde_json::Value = serde_json::from_slice(&std::fs::read(&sum).unwrap()).unwrap();
                sum["tiles_computed"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(computed, 80, "{out}");
    }
}

#[test]
fn the_slurm_array_script_fills_one_ome_zarr() {
    let script = read(SLURM);
    let o = Command::new("bash").arg("-n").arg(repo(SLURM)).output().expect("bash runs");
    assert!(o.status.success(), "bash -n {SLURM}: {}", stderr(&o));
    assert!(script.starts_with("#!/bin/bash\n"), "{SLURM}: no bash shebang");
    for line in ["#SBATCH --array=0-15", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task="] {
        assert!(script.lines().any(|l| l.starts_with(line)), "{SLURM}: no `{line}`");
    }
    for var in ["$SLURM_ARRAY_TASK_ID", "$SLURM_ARRAY_TASK_COUNT"] {
        assert!(script.contains(var), "{SLURM}: never reads {var}");
    }
    check_against_cli(SLURM, &infer_command(&script), "INDEX", "COUNT");

    // Two array tasks at once, as Slurm starts them (CPU, one thread each).
    let site = Site::new();
    let tasks = (0..2)
        .map(|i| {
            let env = [
                ("SLURM_ARRAY_TASK_ID", i.to_string()),
                ("SLURM_ARRAY_TASK_COUNT", "2".into()),
                ("SLURM_CPUS_PER_TASK", "1".into()),
            ];
            site.spawn("slurm.zarr", "bash", &[repo(SLURM).to_str().unwrap()], &env)
        })
        .collect();
    site.check_filled("slurm.zarr", tasks);
}

#[test]
fn the_kubernetes_indexed_job_fills_one_ome_zarr() {
    let yaml = read(K8S);
    assert!(!yaml.contains('\t'), "{K8S}: YAML indents with spaces only");
    // Top-level keys at the margin, the Job's spec two spaces in; the rest by content.
    for line in
        ["apiVersion: batch/v1", "kind: Job", "  completionMode: Indexed", "  completions: 16", "  parallelism: 16"]
    {
        assert!(yaml.lines().any(|l| l == line), "{K8S}: no `{line}`");
    }
    for line in [
        "restartPolicy: Never",
        "image: REGISTRY/seamless:TAG",
        "nvidia.com/gpu: 1",
        "persistentVolumeClaim:",
        "claimName: seamless-data",
        "mountPath: /data",
        "value: \"16\"",
    ] {
        assert!(yaml.lines().any(|l| l.trim() == line), "{K8S}: no `{line}`");
    }
    // The container's command: the block under `- |`, dedented, as `sh -c` gets it.
    let start = yaml.lines().position(|l| l.trim() == "- |").expect("an args block");
    let block: Vec<&str> = yaml.lines().skip(start + 1).take_while(|l| l.starts_with("              ")).collect();
    let script: String = block.iter().map(|l| format!("{}\n", &l[14..])).collect();
    let o = Command::new("sh").args(["-n", "-c", &script]).output().expect("sh runs");
    assert!(o.status.success(), "sh -n on the container command: {}", stderr(&o));
    check_against_cli(K8S, &infer_command(&script), "JOB_COMPLETION_INDEX", "SHARDS");
    for var in ["SHARDS", "MODEL", "INPUT", "OUTPUT", "TILE", "BACKEND", "THREADS"] {
        assert!(yaml.contains(&format!("- name: {var}")), "{K8S}: the command reads {var}, the pod does not set it");
    }

    // Two pods' indices at once, as the Job controller starts them.
    let site = Site::new();
    let pods = (0..2)
        .map(|i| {
            let env = [("JOB_COMPLETION_INDEX", i.to_string()), ("SHARDS", "2".into()), ("THREADS", "1".into())];
            site.spawn("k8s.zarr", "/bin/sh", &["-c", &script], &env)
        })
        .collect();
    site.check_filled("k8s.zarr", pods);
}

#[test]
fn docs_cluster_md_shows_both_recipes_as_they_are() {
    let doc = read("docs/cluster.md");
    for file in [SLURM, K8S] {
        assert!(doc.contains(&read(file)), "docs/cluster.md does not show {file} as it is");
    }
    assert!(read("README.md").contains("docs/cluster.md"), "README.md does not link docs/cluster.md");
}
