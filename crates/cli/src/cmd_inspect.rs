//! `tersor inspect`: what a model file holds, from its header alone (no
//! tensor data is decoded, so it is instant even for large models and works
//! for architectures tersor cannot run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A GGUF file, a safetensors file, or a Hugging Face model folder
    /// (default: the default LM).
    model: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct TensorRow {
    name: String,
    /// GGUF: ggml order (`ne[0]`, the row length, first). safetensors:
    /// row-major order as stored.
    shape: Vec<u64>,
    #[serde(rename = "type")]
    ty: String,
    params: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct TypeTotal {
    #[serde(rename = "type")]
    ty: String,
    tensors: usize,
    params: u64,
    bytes: u64,
    bits_per_weight: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    path: String,
    format: &'static str,
    /// GGUF `general.architecture`, or `model_type` of the `config.json`
    /// beside safetensors weights.
    architecture: Option<String>,
    /// GGUF `general.name`.
    name: Option<String>,
    /// The weight files measured (one for GGUF).
    files: Vec<String>,
    /// Total size of `files`.
    file_bytes: u64,
    /// Every element of every tensor (tied weights are stored, and counted,
    /// once).
    parameters: u64,
    /// `file_bytes * 8 / parameters`: headers and padding included.
    bits_per_weight: Option<f64>,
    n_tensors: usize,
    types: Vec<TypeTotal>,
    tensors: Vec<TensorRow>,
}

fn bpw(bytes: u64, params: u64) -> Option<f64> {
    (params > 0).then(|| bytes as f64 * 8.0 / params as f64)
}

impl Report {
    fn new(
        path: &Path,
        format: &'static str,
        architecture: Option<String>,
        name: Option<String>,
        files: Vec<PathBuf>,
        tensors: Vec<TensorRow>,
    ) -> anyhow::Result<Self> {
        let mut file_bytes = 0u64;
        for f in &files {
            file_bytes += std::fs::metadata(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .len();
        }
        let mut by_type: BTreeMap<&str, (usize, u64, u64)> = BTreeMap::new();
        for t in &tensors {
            let e = by_type.entry(&t.ty).or_default();
            e.0 += 1;
            e.1 += t.params;
            e.2 += t.bytes;
        }
        let types = by_type
            .into_iter()
            .map(|(ty, (n, params, bytes))| TypeTotal {
                ty: ty.to_string(),
                tensors: n,
                params,
                bytes,
                bits_per_weight: bpw(bytes, params),
            })
            .collect();
        let parameters = tensors.iter().map(|t| t.params).sum();
        Ok(Report {
            path: path.display().to_string(),
            format,
            architecture,
            name,
            files: files.iter().map(|f| f.display().to_string()).collect(),
            file_bytes,
            parameters,
            bits_per_weight: bpw(file_bytes, parameters),
            n_tensors: tensors.len(),
            types,
            tensors,
        })
    }
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let path = crate::model_or_default(args.model)?;
    let report = inspect(&path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn inspect(path: &Path) -> anyhow::Result<Report> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        return inspect_safetensors(path);
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("gguf") || starts_with_gguf_magic(path)? {
        return inspect_gguf(path);
    }
    if ext.eq_ignore_ascii_case("safetensors") || ext.eq_ignore_ascii_case("json") {
        return inspect_safetensors(path);
    }
    // No telling extension or magic: safetensors has no magic, so let its
    // reader decide and say what was tried.
    inspect_safetensors(path).with_context(|| {
        format!(
            "{}: not a GGUF file (no GGUF magic) and not readable as safetensors",
            path.display()
        )
    })
}

fn starts_with_gguf_magic(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(magic == tersor_gguf::GGUF_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn inspect_gguf(path: &Path) -> anyhow::Result<Report> {
    let file = tersor_gguf::GgufFile::open(path)?;
    let tensors = file
        .tensors()
        .iter()
        .map(|t| TensorRow {
            name: t.name.clone(),
            shape: t.dims.clone(),
            ty: t.ty.name().to_string(),
            params: t.n_elements(),
            bytes: t.n_bytes(),
        })
        .collect();
    Report::new(
        path,
        "gguf",
        file.get_str("general.architecture").map(str::to_string),
        file.get_str("general.name").map(str::to_string),
        vec![path.to_path_buf()],
        tensors,
    )
}

/// A safetensors file, a `*.safetensors.index.json`, or a folder holding
/// either; the architecture comes from the `config.json` beside it.
fn inspect_safetensors(path: &Path) -> anyhow::Result<Report> {
    let model = tersor_safetensors::SafetensorsModel::open(path)?;
    let tensors = model
        .names()
        .into_iter()
        .map(|name| {
            let info = model.info(name).expect("name listed by the model");
            TensorRow {
                name: name.to_string(),
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                ty: info.dtype.name().to_string(),
                params: info.shape.iter().map(|&d| d as u64).product(),
                bytes: info.n_bytes as u64,
            }
        })
        .collect();
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let files = model
        .shard_paths()
        .into_iter()
        .map(Path::to_path_buf)
        .collect();
    Report::new(
        path,
        "safetensors",
        hf_model_type(dir),
        None,
        files,
        tensors,
    )
}

/// `model_type` (else the first of `architectures`) of `dir/config.json`;
/// `None` when there is no readable config, which only leaves the
/// architecture unknown.
fn hf_model_type(dir: &Path) -> Option<String> {
    let text = std::fs::read(dir.join("config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    json.get("model_type")
        .and_then(|v| v.as_str())
        .or_else(|| json.get("architectures")?.get(0)?.as_str())
        .map(str::to_string)
}

fn print_text(r: &Report) {
    let int = |n: u64| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let f_bpw = |b: Option<f64>| b.map_or("-".to_string(), |b| format!("{b:.3}"));
    println!("{}", r.path);
    println!("  format        {}", r.format);
    println!(
        "  architecture  {}",
        r.architecture.as_deref().unwrap_or("(unknown)")
    );
    if let Some(name) = &r.name {
        println!("  name          {name}");
    }
    println!("  tensors       {}", r.n_tensors);
    println!("  parameters    {}", int(r.parameters));
    println!("  file size     {} bytes", int(r.file_bytes));
    println!(
        "  bits/weight   {} (file bytes x 8 / parameters)",
        f_bpw(r.bits_per_weight)
    );
    println!();
    println!(
        "  {:<8} {:>7} {:>14} {:>14} {:>11}",
        "type", "tensors", "parameters", "bytes", "bits/weight"
    );
    for t in &r.types {
        println!(
            "  {:<8} {:>7} {:>14} {:>14} {:>11}",
            t.ty,
            t.tensors,
            int(t.params),
            int(t.bytes),
            f_bpw(t.bits_per_weight)
        );
    }
    println!();
    let shape_note = if r.format == "gguf" {
        "shape (ggml order, row length first)"
    } else {
        "shape"
    };
    let name_w = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "  {:<name_w$} {:<6} {:>12} {:>12}  {shape_note}",
        "tensor", "type", "parameters", "bytes"
    );
    for t in &r.tensors {
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        println!(
            "  {:<name_w$} {:<6} {:>12} {:>12}  [{}]",
            t.name,
            t.ty,
            int(t.params),
            int(t.bytes),
            shape.join(", ")
        );
    }
}
