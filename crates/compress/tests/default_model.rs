//! `tersor compress` on the default LM (a short search with cheap levels): the file
//! meets its whole-file budget to the byte and gguf-py decodes every tensor to the
//! values the search scored.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tersor_compress::{Budget, CompressOptions, DbInputs, Format, SearchOptions};
use tersor_gguf::GgufFile;
use tersor_levels::LevelDb;
use tersor_quantize::{CalibConfig, Method};
use tersor_testkit::{assets, gguf_py_hashes, python_has, TempDir, DEFAULT_GGUF};

fn hash_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    hex::encode(Sha256::digest(&bytes))
}

#[test]
fn default_lm_budget_and_gguf_py_decoding() {
    let Some(dir) = assets() else { return };
    if !python_has(&["gguf", "numpy"]) {
        return;
    }
    let tmp = TempDir::new("compress-default");
    let input = dir.join(DEFAULT_GGUF);
    let opts = CompressOptions {
        input: input.clone(),
        output: tmp.path().join("out.gguf"),
        format: Format::Gguf,
        budget: Budget::Bpw(6.0),
        calib: CalibConfig {
            path: dir.join("botchan_calib.txt"),
            max_tokens: 32,
            ctx: 32,
        },
        levels: Some(vec!["Q4_0".parse().unwrap(), "Q8_0".parse().unwrap()]),
        method: Method::Rtn,
        gptq: Default::default(),
        db_inputs: DbInputs::Reference,
        db: None,
        search: SearchOptions {
            generations: 2,
            offspring: 2,
            stage_windows: vec![1],
            survivors: vec![],
            max_switches: 2,
            seed: 3,
            random_samples: 2,
            batch: 1,
            kl_top_k: None,
            unit_errors: Default::default(),
            guided: true,
        },
        resume: false,
        baselines_dir: None,
        eval: None,
    };
    let t = std::time::Instant::now();
    let r = tersor_compress::run(&opts, &|_| {}).unwrap();
    eprintln!(
        "compress: {:.1} s (database {:.1} s, baselines {:.1} s, search {:.1} s)",
        t.elapsed().as_secs_f64(),
        r.seconds_build,
        r.seconds_baselines,
        r.seconds_search
    );

    // Whole-file budget, to the byte: 6.0 bits × 134,515,008 parameters.
    assert_eq!(r.bpw_params, 134_515_008);
    assert_eq!(r.budget_bytes, 134_515_008 * 6 / 8);
    let evo = &r.methods[0];
    let size = std::fs::metadata(&opts.output).unwrap().len();
    assert_eq!(size, evo.bytes);
    assert!(size <= r.budget_bytes);
    // Q4_0 is 4.5 and Q8_0 8.5 bits per weight: a 6.0 budget needs both.
    assert!(evo.levels.iter().any(|l| l == "Q4_0") && evo.levels.iter().any(|l| l == "Q8_0"));

    // gguf-py decodes the chosen levels exactly; the norms are the input's.
    let db = LevelDb::open(&r.db).unwrap();
    let py: HashMap<String, String> = gguf_py_hashes(&opts.output).into_iter().collect();
    let out = GgufFile::open(&opts.output).unwrap();
    let inp = GgufFile::open(&input).unwrap();
    assert_eq!(py.len(), out.tensors().len());
    for t in out.tensors() {
        let want = match r.units.iter().position(|u| u.name == t.name) {
            Some(u) => {
                let ti = db.find(&t.name).unwrap();
                let l = db.tensors()[ti]
                    .levels
                    .iter()
                    .position(|lv| lv.kind.to_string() == evo.levels[u])
                    .unwrap();
                hash_f32(&db.values(ti, l).unwrap())
            }
            None => {
                let src = inp.tensor(&t.name).unwrap();
                let v = tersor_ggml::dequantize_to_vec(
                    src.ty,
                    inp.tensor_data(src),
                    src.n_elements() as usize,
                )
                .unwrap();
                hash_f32(&v)
            }
        };
        assert_eq!(py[&t.name], want, "{}", t.name);
    }
}
