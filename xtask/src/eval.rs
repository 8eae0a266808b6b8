//! `cargo xtask eval`: one policy's evaluation on fixtures/eval sets, sharded and resumable,
//! then `coe report`.
//!
//! Each set goes to OUT/NAME/<set>/ as summary.json (`coe eval --json`), the traces and the
//! episodes' page, or per shard as summary-I-of-N.json, traces-I-of-N.jsonl (direct-I-of-N.jsonl)
//! and shard-I-of-N/index.html. A shard's summary is written only once it is complete, so a
//! stopped run resumes by running the same command again.
//!
//! `--jobs J` runs up to J shards at once, each `coe` on cores/J threads: a batch of episodes
//! keeps one core busy only part of the time (sampling, attention per episode and the sandbox
//! run between products), so on 2 cores two one-thread shards evaluate about 1.3x as many
//! episodes an hour as one two-thread shard, with the same results (each task's episodes are
//! seeded by its position alone, and a product's sums do not depend on the thread count).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};

use crate::{run, sha256_file};

/// The sets `cargo xtask eval` runs unless `--sets` names others: the final report's.
pub(crate) const TEST_SETS: [&str; 3] = [
    "mbpp-synthetic-test",
    "mbpp-synthetic-test-hard",
    "humanevalfix",
];

/// Whether `coe` can resume a stopped evaluation (`coe eval --resume`), asked of its help.
pub(crate) fn coe_resumes_evals(coe: &Path) -> Result<bool> {
    let output = Command::new(coe)
        .args(["eval", "--help"])
        .output()
        .with_context(|| format!("running {}", coe.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).contains("--resume"))
}

/// fixtures/eval/SET.jsonl, or an error naming it when there is no such set.
pub(crate) fn eval_set_file(set: &str) -> Result<String> {
    existing(format!("fixtures/eval/{set}.jsonl"), "evaluation set")
}

/// fixtures/eval/SET.direct.jsonl, the direct-answer prompts of a set.
pub(crate) fn direct_set_file(set: &str) -> Result<String> {
    existing(
        format!("fixtures/eval/{set}.direct.jsonl"),
        "direct-answer set",
    )
}

fn existing(path: String, what: &str) -> Result<String> {
    if !Path::new(&path).is_file() {
        bail!("no {what} {path}");
    }
    Ok(path)
}

/// Options of `coe eval` that name a file whose contents make the policy.
const FILE_OPTIONS: [&str; 2] = ["--adapter", "--model"];

/// `args` with each file a [`FILE_OPTIONS`] option names (`--adapter F` or `--adapter=F`)
/// replaced by `sha256:<its checksum>`; `none` and folders (a Hugging Face model) stay as they are.
fn args_by_content(args: &[String]) -> Result<Vec<String>> {
    let by_content = |value: &str| -> Result<String> {
        let path = Path::new(value);
        Ok(if path.is_file() {
            format!("sha256:{}", sha256_file(path)?)
        } else {
            value.to_owned()
        })
    };
    let mut named = Vec::with_capacity(args.len());
    let mut file_next = false;
    for arg in args {
        let joined = FILE_OPTIONS
            .iter()
            .find_map(|option| Some((option, arg.strip_prefix(option)?.strip_prefix('=')?)));
        named.push(match joined {
            Some((option, value)) => format!("{option}={}", by_content(value)?),
            None if file_next => by_content(arg)?,
            None => arg.clone(),
        });
        file_next = FILE_OPTIONS.contains(&arg.as_str());
    }
    Ok(named)
}

/// Whether DIR holds any `summary*.json`.
fn dir_has_summaries(dir: &Path) -> Result<bool> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.filter_map(Result::ok).any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("summary") && name.ends_with(".json")
    }))
}

/// One policy's evaluation (see the module docs).
pub(crate) struct EvalRun<'a> {
    pub(crate) coe: &'a Path,
    /// Its checksum, taken once for all the sets.
    pub(crate) coe_sha256: String,
    /// Whether it has `coe eval --resume` (binaries kept from before it do not).
    pub(crate) resumable: bool,
    pub(crate) out: &'a Path,
    pub(crate) name: &'a str,
    pub(crate) direct: bool,
    pub(crate) shards: u32,
    /// Shards run at once (not part of the run's settings: it does not change the results).
    pub(crate) jobs: u32,
    pub(crate) extra: &'a [String],
}

/// What one shard of a set writes.
struct ShardFiles {
    index: u32,
    summary: PathBuf,
    traces: PathBuf,
    page: PathBuf,
}

impl EvalRun<'_> {
    /// Evaluates fixtures/eval/SET.jsonl.
    pub(crate) fn set(&self, set: &str) -> Result<()> {
        let direct = self.direct.then(|| direct_set_file(set)).transpose()?;
        self.run_set(set, &eval_set_file(set)?, direct.as_deref())
    }

    /// Evaluates the tasks of `tasks` (with the direct-answer prompts of `direct`, if given)
    /// into OUT/NAME/SET, skipping shards already done and running up to `jobs` at once; after a
    /// shard fails no other starts, and its error is returned once those running have ended.
    fn run_set(&self, set: &str, tasks: &str, direct: Option<&str>) -> Result<()> {
        let dir = self.out.join(self.name).join(set);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.check_record(&dir, tasks, direct)?;
        let pending: Vec<ShardFiles> = (0..self.shards)
            .map(|index| self.shard_files(&dir, index))
            .filter(|shard| {
                let done = shard.summary.exists();
                if done {
                    println!("== {set}: {}: done", self.shard_name(shard.index));
                }
                !done
            })
            .collect();
        let jobs = (self.jobs.max(1) as usize).min(pending.len());
        // Fewer shards left than jobs: the cores go to those there are.
        let threads = Self::threads_per_job(jobs);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..jobs)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        while !failed.load(Ordering::SeqCst) {
                            let Some(shard) = pending.get(next.fetch_add(1, Ordering::SeqCst))
                            else {
                                break;
                            };
                            let result = self.run_shard(set, tasks, direct, shard, threads);
                            if result.is_err() {
                                failed.store(true, Ordering::SeqCst);
                                return result;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            let mut first_error = None;
            for worker in workers {
                let result = worker
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("a shard's thread panicked")));
                if let Err(error) = result {
                    first_error.get_or_insert(error);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// The files of shard `index` in DIR; one shard keeps the unsharded names, which `coe
    /// report` reads as they are.
    fn shard_files(&self, dir: &Path, index: u32) -> ShardFiles {
        let suffix = if self.shards == 1 {
            String::new()
        } else {
            format!("-{index}-of-{}", self.shards)
        };
        let traces = if self.direct { "direct" } else { "traces" };
        ShardFiles {
            index,
            summary: dir.join(format!("summary{suffix}.json")),
            traces: dir.join(format!("{traces}{suffix}.jsonl")),
            page: if self.shards == 1 {
                dir.to_path_buf()
            } else {
                dir.join(format!("shard{suffix}"))
            },
        }
    }

    fn shard_name(&self, index: u32) -> String {
        format!("{} shard {index}/{}", self.name, self.shards)
    }

    /// RAYON_NUM_THREADS for each `coe` when `jobs` shards run side by side (the machine's
    /// cores shared out, at least one each), unless the caller set it; `None` leaves it alone.
    fn threads_per_job(jobs: usize) -> Option<usize> {
        if jobs <= 1 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Some((cores / jobs).max(1))
    }

    /// Runs one shard's `coe eval`, its progress lines on stderr marked with the shard, and
    /// writes its summary once it has succeeded.
    fn run_shard(
        &self,
        set: &str,
        tasks: &str,
        direct: Option<&str>,
        shard: &ShardFiles,
        threads: Option<usize>,
    ) -> Result<()> {
        let mut command = Command::new(self.coe);
        command.args(["eval", tasks, "--json"]);
        if self.shards > 1 {
            command.args(["--shard", &format!("{}/{}", shard.index, self.shards)]);
        }
        match direct {
            Some(prompts) => command.args(["--direct", prompts]),
            None => command.arg("--html").arg(&shard.page),
        };
        command.arg("--traces").arg(&shard.traces);
        if self.resumable {
            command.arg("--resume");
        }
        command.args(self.extra);
        if let Some(threads) = threads {
            command.env("RAYON_NUM_THREADS", threads.to_string());
        }
        let name = self.shard_name(shard.index);
        println!("== {set}: {name}");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.coe.display()))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let mut summary = Vec::new();
        let read = std::thread::scope(|scope| {
            if let Some(stderr) = stderr {
                let prefix = format!("[{set} {}/{}] ", shard.index, self.shards);
                scope.spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        eprintln!("{prefix}{line}");
                    }
                });
            }
            stdout.map_or(Ok(0), |mut stdout| stdout.read_to_end(&mut summary))
        });
        if let Err(error) = read {
            // Not left running unwatched: its summary could no longer be kept.
            let _ = child.kill();
            let _ = child.wait();
            return Err(error)
                .with_context(|| format!("reading the output of {}", self.coe.display()));
        }
        let status = child
            .wait()
            .with_context(|| format!("running {}", self.coe.display()))?;
        if !status.success() {
            bail!("coe eval on {set}, {name}, failed ({status})");
        }
        // Written only once the shard is complete, so its presence means done.
        coe_cache::write_atomically(&shard.summary, &summary)
            .with_context(|| format!("writing {}", shard.summary.display()))?;
        print!("{}", String::from_utf8_lossy(&summary));
        Ok(())
    }

    /// The run's settings, kept in DIR/run.json: finished shards are only reused by a run
    /// with the same settings, since a folder mixing two runs' results would report neither.
    /// Files are named by their checksums, not their paths: the `coe` binary (a rebuild may
    /// change the code or the built-in default policy), the task file, the direct-answer
    /// prompts and the `--adapter` and `--model` files (retrained in place, it would be another
    /// policy under the same path; a copy elsewhere, or the same file named relatively, is the
    /// same policy).
    fn check_record(&self, dir: &Path, tasks: &str, direct: Option<&str>) -> Result<()> {
        let record = serde_json::json!({
            "shards": self.shards,
            "direct": self.direct,
            "coe_sha256": self.coe_sha256,
            "tasks_sha256": sha256_file(Path::new(tasks))?,
            "direct_sha256": direct.map(|file| sha256_file(Path::new(file))).transpose()?,
            "args": args_by_content(self.extra)?,
        });
        let path = dir.join("run.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let earlier: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                if earlier != record {
                    bail!(
                        "{} holds a run with other settings ({earlier}); this one is {record}: \
                         to go on with it, run the same binary (--coe, a copy kept aside) and \
                         files; else choose another --name or --out, or delete the folder",
                        dir.display()
                    );
                }
                Ok(())
            }
            Err(_) if dir_has_summaries(dir)? => bail!(
                "{} holds results without a run.json (an earlier xtask): choose another \
                 --name or --out, or delete the folder",
                dir.display()
            ),
            Err(_) => coe_cache::write_atomically(&path, record.to_string().as_bytes())
                .with_context(|| format!("writing {}", path.display())),
        }
    }

    /// `coe report OUT`.
    pub(crate) fn report(&self) -> Result<()> {
        run(Command::new(self.coe).arg("report").arg(self.out))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A stand-in for `coe`: `eval ... --shard I/N` prints a summary naming its shard and its
    /// RAYON_NUM_THREADS after a short wait, counting the shards running beside it; it fails
    /// (exit 3) for shard FAIL when that file holds its index.
    fn fake_coe(dir: &Path) -> PathBuf {
        let path = dir.join("coe");
        std::fs::write(
            &path,
            r#"#!/bin/sh
dir=$(dirname "$0")
shard=$(echo "$@" | sed -n 's/.*--shard \([0-9]*\)\/.*/\1/p')
echo "progress of $shard" >&2
if [ -f "$dir/FAIL" ] && [ "$(cat "$dir/FAIL")" = "$shard" ]; then exit 3; fi
touch "$dir/running-$shard"
sleep 0.3
beside=$(ls "$dir" | grep -c '^running-')
rm "$dir/running-$shard"
echo "{\"shard\":$shard,\"threads\":\"$RAYON_NUM_THREADS\",\"beside\":$beside}"
"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn summary(dir: &Path, index: u32) -> Option<serde_json::Value> {
        let path = dir.join(format!("policy/set/summary-{index}-of-4.json"));
        let text = std::fs::read_to_string(path).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    /// A temporary folder with the fake `coe`, a one-task file and the output folder's path.
    fn fake_workspace() -> (tempfile::TempDir, PathBuf, String, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let coe = fake_coe(root.path());
        let tasks = root.path().join("tasks.jsonl");
        std::fs::write(&tasks, "{}\n").unwrap();
        let out = root.path().join("out");
        (root, coe, tasks.display().to_string(), out)
    }

    /// A 4-shard run of policy `policy` with the fake `coe`.
    fn fake_run<'a>(coe: &'a Path, out: &'a Path, jobs: u32, extra: &'a [String]) -> EvalRun<'a> {
        EvalRun {
            coe,
            coe_sha256: "fake".into(),
            resumable: true,
            out,
            name: "policy",
            direct: false,
            shards: 4,
            jobs,
            extra,
        }
    }

    #[test]
    fn shards_run_side_by_side_up_to_jobs_and_a_failure_stops_new_ones() {
        let (root, coe, tasks, out) = fake_workspace();
        let run = |jobs| fake_run(&coe, &out, jobs, &[]);

        // One job: shard 1 fails, so shards 2 and 3 never start.
        std::fs::write(root.path().join("FAIL"), "1").unwrap();
        let error = run(1).run_set("set", &tasks, None).unwrap_err();
        assert!(error.to_string().contains("shard 1/4"), "{error:#}");
        assert_eq!(summary(&out, 0).unwrap()["shard"], 0);
        assert!((1..4).all(|i| summary(&out, i).is_none()));

        // Run again with 2 jobs: shard 0 is kept as it was, the other three run, at most two at
        // a time, each on its share of the cores.
        std::fs::remove_file(root.path().join("FAIL")).unwrap();
        let first = std::fs::metadata(out.join("policy/set/summary-0-of-4.json"))
            .unwrap()
            .modified()
            .unwrap();
        run(2).run_set("set", &tasks, None).unwrap();
        let modified = std::fs::metadata(out.join("policy/set/summary-0-of-4.json"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(first, modified, "a finished shard is not run again");
        // (A RAYON_NUM_THREADS the caller set is passed through as it is.)
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .or_else(|| EvalRun::threads_per_job(2).map(|t| t.to_string()))
            .unwrap_or_default();
        for index in 1..4 {
            let summary = summary(&out, index).unwrap();
            assert_eq!(summary["shard"], index);
            assert_eq!(summary["threads"], threads.as_str());
            assert!(summary["beside"].as_u64().unwrap() <= 2, "{summary}");
        }
    }

    #[test]
    fn a_run_is_recognised_by_its_files_contents_not_their_paths() {
        let (root, coe, tasks, out) = fake_workspace();
        let adapter = root.path().join("adapter.safetensors");
        std::fs::write(&adapter, "weights").unwrap();
        let copy = root.path().join("copy.safetensors");
        std::fs::copy(&adapter, &copy).unwrap();
        let dir = out.join("policy/set");
        std::fs::create_dir_all(&dir).unwrap();
        let check = |coe_sha256: &str, extra: &[String]| {
            let mut run = fake_run(&coe, &out, 1, extra);
            run.coe_sha256 = coe_sha256.into();
            run.check_record(&dir, &tasks, None)
        };
        let args = |adapter: &Path| ["--adapter".to_owned(), adapter.display().to_string()];
        check("fake", &args(&adapter)).unwrap();
        // The same binary and adapter under another path, or named with `=`: the same run.
        check("fake", &args(&copy)).unwrap();
        let joined = [format!("--adapter={}", copy.display())];
        let refused = |result: Result<()>| {
            let error = result.unwrap_err();
            assert!(error.to_string().contains("other settings"), "{error:#}");
        };
        // (`=` is another spelling in the arguments `coe` gets, so it is another record.)
        refused(check("fake", &joined));
        // Another binary: another run.
        refused(check("rebuilt", &args(&adapter)));
        // The adapter retrained in place: another run.
        std::fs::write(&adapter, "other weights").unwrap();
        refused(check("fake", &args(&adapter)));
    }

    #[test]
    fn adapter_and_model_files_are_named_by_checksum_in_either_spelling() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("adapter.safetensors");
        std::fs::write(&file, "weights").unwrap();
        let sum = format!("sha256:{}", sha256_file(&file).unwrap());
        let path = file.display().to_string();
        let folder = root.path().display().to_string();
        let args: Vec<String> = [
            "--adapter",
            &path,
            &format!("--model={path}"),
            "--adapter",
            "none",
            "--model",
            &folder,
            "--samples",
            "4",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            args_by_content(&args).unwrap(),
            [
                "--adapter",
                &sum,
                &format!("--model={sum}"),
                "--adapter",
                "none",
                "--model",
                &folder,
                "--samples",
                "4",
            ]
        );
    }

    #[test]
    fn one_job_leaves_the_thread_count_alone() {
        assert_eq!(EvalRun::threads_per_job(1), None);
    }
}
