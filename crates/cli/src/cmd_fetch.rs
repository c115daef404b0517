//! `tersor fetch`: obtain and verify every default asset.

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Print the paths as a JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let cache = tersor_assets::assets_dir()?;
    let paths = tersor_assets::ensure_all(true)
        .with_context(|| format!("cannot fetch the default assets into {}", cache.display()))?;
    let rows = [
        ("cache_dir", &cache),
        ("lm", &paths.lm),
        ("encoder_dir", &paths.encoder_dir),
        ("botchan", &paths.botchan),
        ("botchan_calib", &paths.botchan_calib),
        ("botchan_eval", &paths.botchan_eval),
    ];
    if args.json {
        let obj: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, p)| (k.to_string(), p.display().to_string().into()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&obj)?);
    } else {
        for (k, p) in rows {
            println!("{k:<14} {}", p.display());
        }
    }
    Ok(())
}
