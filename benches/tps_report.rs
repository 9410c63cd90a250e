//! llama-bench's output formats: the markdown table and the JSON records.

use std::fmt::Write;

/// One finished test.
#[derive(Clone, Debug)]
pub struct Row {
    pub model_name: String,
    pub model_filename: String,
    pub synthetic: bool,
    pub size: u64,
    pub n_params: u64,
    pub backend: String,
    pub ngl: i32,
    pub threads: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub type_k: &'static str,
    pub type_v: &'static str,
    pub split_mode: &'static str,
    pub split_auto: bool,
    pub main_gpu: usize,
    pub tensor_split: Vec<f32>,
    pub flash_attn: &'static str,
    pub n_prompt: u32,
    pub n_gen: u32,
    pub n_depth: u32,
    pub test_time: String,
    /// Nanoseconds per repetition.
    pub samples_ns: Vec<u64>,
}

impl Row {
    pub fn test_name(&self) -> String {
        let mut s = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, n) => format!("tg{n}"),
            (p, n) => format!("pp{p}+tg{n}"),
        };
        if self.n_depth > 0 {
            write!(s, " @ d{}", self.n_depth).unwrap();
        }
        s
    }

    pub fn samples_ts(&self) -> Vec<f64> {
        let n = (self.n_prompt + self.n_gen) as f64;
        self.samples_ns.iter().map(|&ns| n * 1e9 / ns.max(1) as f64).collect()
    }
}

/// Mean and sample standard deviation (0 for one sample), as llama-bench.
pub fn mean_stddev(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

pub fn fmt_size(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let b = bytes as f64;
    if b < GIB {
        format!("{:.2} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", b / GIB)
    }
}

pub fn fmt_params(n: u64) -> String {
    if n < 1_000_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        format!("{:.2} B", n as f64 / 1e9)
    }
}

pub fn fmt_split(ts: &[f32]) -> String {
    if ts.is_empty() {
        "0.00".into()
    } else {
        ts.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join("/")
    }
}

/// The markdown table: the column set is fixed when the table starts.
pub struct Markdown {
    cols: Vec<(&'static str, usize)>,
}

impl Markdown {
    /// `extra`: optional columns to show (`threads`, `n_batch`, `n_ubatch`,
    /// `type_k`, `type_v`, `mg`), in llama-bench's order.
    /// `model_width`: the longest model name known in advance (at least 30).
    /// `auto_sm`: some rows show `auto:<mode>` in the sm column.
    pub fn new(extra: &[&'static str], model_width: usize, auto_sm: bool) -> Markdown {
        let mut cols = vec![("model", model_width.max(30)), ("size", 10), ("params", 10), ("backend", 10), ("ngl", 4)];
        for c in ["threads", "n_batch", "n_ubatch", "type_k", "type_v"] {
            if extra.contains(&c) {
                cols.push((c, c.len()));
            }
        }
        cols.push(("sm", if auto_sm { 11 } else { 6 }));
        if extra.contains(&"mg") {
            cols.push(("mg", 3));
        }
        cols.extend([("ts", 9), ("fa", 4), ("test", 14), ("t/s", 20)]);
        Markdown { cols }
    }

    pub fn header(&self) -> String {
        let left = |c: &str| c == "model" || c == "test";
        let names: Vec<String> = self.cols.iter().map(|&(c, w)| pad(c, w, left(c))).collect();
        let rules: Vec<String> = self
            .cols
            .iter()
            .map(|&(c, w)| if left(c) { "-".repeat(w) } else { format!("{}:", "-".repeat(w - 1)) })
            .collect();
        format!("| {} |\n| {} |", names.join(" | "), rules.join(" | "))
    }

    pub fn row(&self, r: &Row) -> String {
        let (mean, sd) = mean_stddev(&r.samples_ts());
        let cells: Vec<String> = self
            .cols
            .iter()
            .map(|&(c, w)| {
                let v = match c {
                    "model" => r.model_name.clone(),
                    "size" => fmt_size(r.size),
                    "params" => fmt_params(r.n_params),
                    "backend" => r.backend.clone(),
                    "ngl" => r.ngl.to_string(),
                    "threads" => r.threads.to_string(),
                    "n_batch" => r.n_batch.to_string(),
                    "n_ubatch" => r.n_ubatch.to_string(),
                    "type_k" => r.type_k.to_string(),
                    "type_v" => r.type_v.to_string(),
                    "sm" if r.split_auto => format!("auto:{}", r.split_mode),
                    "sm" => r.split_mode.to_string(),
                    "mg" => r.main_gpu.to_string(),
                    "ts" => fmt_split(&r.tensor_split),
                    "fa" => r.flash_attn.to_string(),
                    "test" => r.test_name(),
                    _ => format!("{mean:.2} ± {sd:.2}"),
                };
                pad(&v, w, c == "model" || c == "test")
            })
            .collect();
        format!("| {} |", cells.join(" | "))
    }
}

fn pad(s: &str, w: usize, left: bool) -> String {
    if left {
        format!("{s:<w$}")
    } else {
        format!("{s:>w$}")
    }
}

/// A JSON string literal (serde_json's escaping).
pub fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".into()
    }
}

/// Build identity shared by every JSON record.
pub struct Build {
    pub commit: String,
    pub features: String,
    pub llama_cpp_commit: String,
    pub backends: String,
    pub system_info: String,
}

impl Build {
    /// The build running now: this commit, its features, the pinned
    /// llama.cpp, the backends compiled in and llama.cpp's system line.
    pub fn here() -> Build {
        Build {
            commit: llama_rs_suite::GIT_COMMIT.into(),
            features: if llama_rs_suite::BUILD_FEATURES.is_empty() {
                "cpu".into()
            } else {
                llama_rs_suite::BUILD_FEATURES.into()
            },
            llama_cpp_commit: llama_rs::sys::LLAMA_CPP_COMMIT.into(),
            backends: llama_rs::sys::BUILT_BACKENDS.join(","),
            system_info: llama_rs::system_info().trim().to_string(),
        }
    }

    /// A benchmark's first two lines: this build, the devices it measures
    /// (`gpus`, or the CPU) and llama.cpp's system line.
    pub fn write_header(&self, out: &mut dyn std::io::Write, gpus: &[llama_rs::Device]) -> std::io::Result<()> {
        let devices = if gpus.is_empty() {
            "CPU only".to_string()
        } else {
            gpus.iter().map(|g| format!("{} ({})", g.name, g.description)).collect::<Vec<_>>().join(", ")
        };
        writeln!(
            out,
            "build: llama-rs {} (features: {}) | llama.cpp {} | backends: {} | devices: {devices}",
            self.commit, self.features, self.llama_cpp_commit, self.backends
        )?;
        writeln!(out, "system_info: {}", self.system_info)
    }
}

/// One record with llama-bench's JSON field names (plus `test`, `synthetic`,
/// `split_mode_auto`, `llama_cpp_commit`, `build_features`, `system_info`).
pub fn json_record(r: &Row, b: &Build) -> String {
    let ts = r.samples_ts();
    let ns: Vec<f64> = r.samples_ns.iter().map(|&n| n as f64).collect();
    let (avg_ns, sd_ns) = mean_stddev(&ns);
    let (avg_ts, sd_ts) = mean_stddev(&ts);
    let fields: Vec<(&str, String)> = vec![
        ("build_commit", json_str(&b.commit)),
        ("build_features", json_str(&b.features)),
        ("llama_cpp_commit", json_str(&b.llama_cpp_commit)),
        ("backends", json_str(&r.backend)),
        ("built_backends", json_str(&b.backends)),
        ("system_info", json_str(&b.system_info)),
        ("model_filename", json_str(&r.model_filename)),
        ("model_type", json_str(&r.model_name)),
        ("synthetic", r.synthetic.to_string()),
        ("model_size", r.size.to_string()),
        ("model_n_params", r.n_params.to_string()),
        ("n_batch", r.n_batch.to_string()),
        ("n_ubatch", r.n_ubatch.to_string()),
        ("n_threads", r.threads.to_string()),
        ("type_k", json_str(r.type_k)),
        ("type_v", json_str(r.type_v)),
        ("n_gpu_layers", r.ngl.to_string()),
        ("split_mode", json_str(r.split_mode)),
        ("split_mode_auto", r.split_auto.to_string()),
        ("main_gpu", r.main_gpu.to_string()),
        ("flash_attn", json_str(r.flash_attn)),
        ("tensor_split", json_str(&fmt_split(&r.tensor_split))),
        ("n_prompt", r.n_prompt.to_string()),
        ("n_gen", r.n_gen.to_string()),
        ("n_depth", r.n_depth.to_string()),
        ("test", json_str(&r.test_name())),
        ("test_time", json_str(&r.test_time)),
        ("avg_ns", format!("{}", avg_ns.round() as u64)),
        ("stddev_ns", format!("{}", sd_ns.round() as u64)),
        ("avg_ts", json_f64(avg_ts)),
        ("stddev_ts", json_f64(sd_ts)),
        ("samples_ns", format!("[ {} ]", r.samples_ns.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))),
        ("samples_ts", format!("[ {} ]", ts.iter().map(|&v| json_f64(v)).collect::<Vec<_>>().join(", "))),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("    {}: {v}", json_str(k))).collect();
    format!("  {{\n{}\n  }}", body.join(",\n"))
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
